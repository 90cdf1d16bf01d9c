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
        Headscale { http, base, key }
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
