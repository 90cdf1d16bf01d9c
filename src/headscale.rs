//! Typed client for Headscale's REST API (`spec/headscale.md`): v0.24 … v0.29 and 0.30 shapes, string or
//! numeric ids, every field optional on read, "401, or 500 whose body is exactly `Unauthorized`" (or a 0.30
//! problem document with status 401) as its own error.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::config::Secret;
use crate::http_client::{HttpClient, HttpError, Response};

pub const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Headscale {
    http: HttpClient,
    base: Url,
    key: Secret,
    /// A short-lived copy of the user list, so sign-in storms do not hammer Headscale.
    users_cache: UsersCache,
}

type UsersCache =
    std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, std::sync::Arc<Vec<User>>)>>>;

/// How long the user list is reused.
pub const USERS_CACHE_TTL: Duration = Duration::from_secs(10);

/// The synthetic user that owns tagged nodes.
pub const TAGGED_DEVICES_USER_ID: &str = "2147455555";

/// A Headscale user (every field optional on read; ids as strings).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct User {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    pub name: String,
    pub display_name: String,
    pub email: String,
    pub provider: String,
    pub provider_id: String,
    pub profile_pic_url: String,
    #[serde(deserialize_with = "opt_string")]
    pub created_at: String,
}

impl User {
    pub fn is_oidc(&self) -> bool {
        self.provider == "oidc" || !self.provider_id.is_empty()
    }
    pub fn is_tagged_devices(&self) -> bool {
        self.id == TAGGED_DEVICES_USER_ID || self.name == "tagged-devices"
    }
    /// A readable name: display name, name, email, id.
    pub fn label(&self) -> &str {
        [&self.display_name, &self.name, &self.email]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or(&self.id)
    }
}

/// A Headscale node (the fields headgate reads).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Node {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    pub name: String,
    pub given_name: String,
    pub user: Option<User>,
    pub online: bool,
    pub tags: Vec<String>,
    #[serde(deserialize_with = "opt_string")]
    pub created_at: String,
}

/// A pre-auth key (the `key` is masked when listed, full when just created).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PreAuthKey {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    pub user: Option<User>,
    pub key: String,
    pub reusable: bool,
    pub ephemeral: bool,
    pub used: bool,
    #[serde(deserialize_with = "opt_string")]
    pub expiration: String,
    #[serde(deserialize_with = "opt_string")]
    pub created_at: String,
    pub acl_tags: Vec<String>,
}

/// `null` and absent become "".
pub fn opt_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, thiserror::Error)]
pub enum HeadscaleError {
    #[error(
        "Headscale refused the API key (it is invalid or expired): create one with `headscale apikeys create \
         --expiration 90d` and set headscale.api_key"
    )]
    InvalidKey,
    #[error("Headscale at {0} is unreachable: {1}")]
    Unreachable(String, HttpError),
    #[error("Headscale answered {status} to {what}: {detail}")]
    Unexpected {
        what: &'static str,
        status: u16,
        detail: String,
    },
}

/// An API key as `GET /api/v1/apikey` lists it (the prefix is masked with `*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    #[serde(default, deserialize_with = "id_string")]
    pub id: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub expiration: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

impl ApiKey {
    /// The listed prefix without its `*` mask: a prefix of the full key.
    pub fn bare_prefix(&self) -> &str {
        self.prefix
            .trim_end_matches('*')
            .trim_end_matches('-')
            .trim_end_matches('.')
    }
}

/// Accept `"1"` and `1`.
pub fn id_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        N(u64),
    }
    Ok(match Option::<Id>::deserialize(d)? {
        Some(Id::S(s)) => s,
        Some(Id::N(n)) => n.to_string(),
        None => String::new(),
    })
}

impl Headscale {
    pub fn new(http: HttpClient, base: Url, key: Secret) -> Self {
        Headscale {
            http,
            base,
            key,
            users_cache: Default::default(),
        }
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    fn url(&self, path_and_query: &str) -> String {
        format!(
            "{}{}",
            self.base.as_str().trim_end_matches('/'),
            path_and_query
        )
    }

    async fn get_with(&self, key: &str, path: &str) -> Result<Response, HeadscaleError> {
        let auth = format!("Bearer {key}");
        self.http
            .get(
                &self.url(path),
                &[
                    ("authorization", auth.as_str()),
                    ("accept", "application/json"),
                ],
                TIMEOUT,
            )
            .await
            .map_err(|e| {
                HeadscaleError::Unreachable(self.base.as_str().trim_end_matches('/').to_string(), e)
            })
    }

    /// Check headgate's own key with the cheapest authenticated call: `GET /api/v1/health` (v0.27+), falling
    /// back to an empty user lookup on older versions.
    pub async fn check_key(&self) -> Result<(), HeadscaleError> {
        let r = self.get_with(self.key.expose(), "/api/v1/health").await?;
        if is_invalid_key(&r) {
            return Err(HeadscaleError::InvalidKey);
        }
        if r.status.is_success() {
            return Ok(());
        }
        // Before v0.27 there is no health endpoint: grpc-gateway answers 404 (or 501) for the unknown route.
        let r = self
            .get_with(self.key.expose(), "/api/v1/user?id=18446744073709551615")
            .await?;
        if is_invalid_key(&r) {
            return Err(HeadscaleError::InvalidKey);
        }
        if r.status.is_success() {
            return Ok(());
        }
        Err(unexpected("GET /api/v1/user", &r))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
    ) -> Result<T, HeadscaleError> {
        let r = self.get_with(self.key.expose(), path).await?;
        Self::decode(what, r)
    }

    fn decode<T: serde::de::DeserializeOwned>(
        what: &'static str,
        r: Response,
    ) -> Result<T, HeadscaleError> {
        if is_invalid_key(&r) {
            return Err(HeadscaleError::InvalidKey);
        }
        if !r.status.is_success() {
            return Err(unexpected(what, &r));
        }
        serde_json::from_slice(&r.body).map_err(|e| HeadscaleError::Unexpected {
            what,
            status: r.status.as_u16(),
            detail: format!("the body is not the expected JSON ({e})"),
        })
    }

    async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, HeadscaleError> {
        let auth = format!("Bearer {}", self.key.expose());
        let r = self
            .http
            .post(
                &self.url(path),
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                    ("accept", "application/json"),
                ],
                body.to_string().into(),
                TIMEOUT,
            )
            .await
            .map_err(|e| {
                HeadscaleError::Unreachable(self.base.as_str().trim_end_matches('/').to_string(), e)
            })?;
        Self::decode(what, r)
    }

    /// Every user, reused for `USERS_CACHE_TTL`.
    pub async fn users(&self) -> Result<std::sync::Arc<Vec<User>>, HeadscaleError> {
        if let Some((at, list)) = self.users_cache.lock().unwrap().as_ref()
            && at.elapsed() < USERS_CACHE_TTL
        {
            return Ok(list.clone());
        }
        #[derive(Deserialize)]
        struct L {
            #[serde(default)]
            users: Vec<User>,
        }
        let l: L = self.get_json("GET /api/v1/user", "/api/v1/user").await?;
        let list = std::sync::Arc::new(l.users);
        *self.users_cache.lock().unwrap() = Some((std::time::Instant::now(), list.clone()));
        Ok(list)
    }

    /// Forget the cached user list (after a change, or when a fresh answer matters).
    pub fn forget_users(&self) {
        *self.users_cache.lock().unwrap() = None;
    }

    pub async fn nodes(&self) -> Result<Vec<Node>, HeadscaleError> {
        #[derive(Deserialize)]
        struct L {
            #[serde(default)]
            nodes: Vec<Node>,
        }
        Ok(self
            .get_json::<L>("GET /api/v1/node", "/api/v1/node")
            .await?
            .nodes)
    }

    /// One node; `Ok(None)` for an unknown id (a true 404).
    pub async fn node(&self, id: &str) -> Result<Option<Node>, HeadscaleError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || id.len() > 20 {
            return Ok(None);
        }
        let r = self
            .get_with(self.key.expose(), &format!("/api/v1/node/{id}"))
            .await?;
        if r.status == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        #[derive(Deserialize)]
        struct N {
            node: Option<Node>,
        }
        Ok(Self::decode::<N>("GET /api/v1/node/{id}", r)?.node)
    }

    pub async fn preauth_keys(&self) -> Result<Vec<PreAuthKey>, HeadscaleError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct L {
            #[serde(default)]
            pre_auth_keys: Vec<PreAuthKey>,
        }
        Ok(self
            .get_json::<L>("GET /api/v1/preauthkey", "/api/v1/preauthkey")
            .await?
            .pre_auth_keys)
    }

    /// A single-use, untagged, non-ephemeral key for `user_id`, expiring at `expiration` (RFC 3339).
    pub async fn create_own_preauth_key(
        &self,
        user_id: &str,
        expiration: &str,
    ) -> Result<PreAuthKey, HeadscaleError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct C {
            pre_auth_key: PreAuthKey,
        }
        let body = serde_json::json!({
            "user": user_id, "reusable": false, "ephemeral": false, "expiration": expiration, "aclTags": []
        });
        Ok(self
            .post_json::<C>("POST /api/v1/preauthkey", "/api/v1/preauthkey", body)
            .await?
            .pre_auth_key)
    }

    pub async fn expire_preauth_key(&self, id: &str) -> Result<(), HeadscaleError> {
        let _: serde_json::Value = self
            .post_json(
                "POST /api/v1/preauthkey/expire",
                "/api/v1/preauthkey/expire",
                serde_json::json!({ "id": id }),
            )
            .await?;
        Ok(())
    }

    /// `GET /api/v1/apikey` with a given key (a person's, at API-key sign-in, or headgate's own).
    pub async fn list_api_keys_with(&self, key: &str) -> Result<Vec<ApiKey>, HeadscaleError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct List {
            #[serde(default)]
            api_keys: Vec<ApiKey>,
        }
        let r = self.get_with(key, "/api/v1/apikey").await?;
        if is_invalid_key(&r) {
            return Err(HeadscaleError::InvalidKey);
        }
        if !r.status.is_success() {
            return Err(unexpected("GET /api/v1/apikey", &r));
        }
        let list: List =
            serde_json::from_slice(&r.body).map_err(|e| HeadscaleError::Unexpected {
                what: "GET /api/v1/apikey",
                status: r.status.as_u16(),
                detail: format!("the body is not the expected JSON ({e})"),
            })?;
        Ok(list.api_keys)
    }
}

/// 401 (any body), or 500 whose body is exactly `Unauthorized` (v0.26 and older).
pub fn is_invalid_key(r: &Response) -> bool {
    r.status == http::StatusCode::UNAUTHORIZED
        || (r.status == http::StatusCode::INTERNAL_SERVER_ERROR
            && r.body.trim_ascii() == b"Unauthorized")
}

fn unexpected(what: &'static str, r: &Response) -> HeadscaleError {
    #[derive(Deserialize)]
    struct GrpcError {
        message: Option<String>,
        detail: Option<String>,
        title: Option<String>,
    }
    let detail = match serde_json::from_slice::<GrpcError>(&r.body) {
        Ok(e) => e.message.or(e.detail).or(e.title).unwrap_or_default(),
        Err(_) => r.text().chars().take(200).collect(),
    };
    HeadscaleError::Unexpected {
        what,
        status: r.status.as_u16(),
        detail,
    }
}
