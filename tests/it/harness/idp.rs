//! The real test IdP: npm `oidc-provider` (pinned by `tests/idp/package-lock.json`) run by
//! `tests/idp/provider.mjs`, configured per test by one JSON document (`IDP_CONFIG`, schema in
//! `tests/idp/README.md`). It listens on an ephemeral loopback port and prints `READY <issuer>` and one JSON line
//! per issued token and per error, which [`TestIdp::issued_tokens`] and [`TestIdp::events`] read back.
//!
//! ```ignore
//! let idp = TestIdp::builder()
//!     .client(ClientSpec { redirect_uris: vec![callback], ..ClientSpec::default() })
//!     .user(UserSpec::new("bob", "bob-sub").password("pw").claim("email", "bob@example.com"))
//!     .claims_in_id_token(false)
//!     .start();
//! let code_url = Browser::new().idp_login(&idp.authorization_url(...), "bob", "pw").await;
//! ```

use std::process::Command;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::process::ChildProcess;

pub const DEFAULT_CLIENT_ID: &str = "headgate";
pub const DEFAULT_CLIENT_SECRET: &str = "headgate-test-secret";
/// Placeholder redirect URI of [`ClientSpec::default`]: nothing listens there; tests that run headgate register
/// headgate's real callback instead.
pub const DEFAULT_REDIRECT_URI: &str = "http://127.0.0.1:9/callback";
pub const ALICE_LOGIN: &str = "alice";
pub const ALICE_PASSWORD: &str = "alice-password";
pub const ALICE_SUB: &str = "alice-sub";
pub const ALICE_EMAIL: &str = "alice@example.com";
pub const ALICE_NAME: &str = "Alice Example";

/// How a client authenticates at the token endpoint; a client accepts only the one it is registered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
        }
    }
}

/// One registered client (relying party).
#[derive(Clone, Debug)]
pub struct ClientSpec {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    pub token_endpoint_auth_method: AuthMethod,
    /// `"RS256"` or `"ES256"`.
    pub id_token_signed_response_alg: String,
    pub post_logout_redirect_uris: Vec<String>,
    /// Must be a loopback URL (the IdP never reaches further).
    pub backchannel_logout_uri: Option<String>,
    pub backchannel_logout_session_required: Option<bool>,
    /// Overrides [`TestIdpBuilder::pkce_required`] for this client.
    pub pkce_required: Option<bool>,
}

impl Default for ClientSpec {
    fn default() -> Self {
        ClientSpec {
            client_id: DEFAULT_CLIENT_ID.into(),
            client_secret: DEFAULT_CLIENT_SECRET.into(),
            redirect_uris: vec![DEFAULT_REDIRECT_URI.into()],
            token_endpoint_auth_method: AuthMethod::ClientSecretBasic,
            id_token_signed_response_alg: "RS256".into(),
            post_logout_redirect_uris: Vec::new(),
            backchannel_logout_uri: None,
            backchannel_logout_session_required: None,
            pkce_required: None,
        }
    }
}

impl ClientSpec {
    /// A client with the default secret, basic auth and RS256, registered for `redirect_uri`.
    pub fn new(client_id: &str, redirect_uri: &str) -> ClientSpec {
        ClientSpec {
            client_id: client_id.into(),
            redirect_uris: vec![redirect_uri.into()],
            ..ClientSpec::default()
        }
    }

    fn to_json(&self) -> Value {
        let mut c = json!({
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": self.redirect_uris,
            "token_endpoint_auth_method": self.token_endpoint_auth_method.as_str(),
            "id_token_signed_response_alg": self.id_token_signed_response_alg,
        });
        let o = c.as_object_mut().unwrap();
        if !self.post_logout_redirect_uris.is_empty() {
            o.insert(
                "post_logout_redirect_uris".into(),
                json!(self.post_logout_redirect_uris),
            );
        }
        if let Some(u) = &self.backchannel_logout_uri {
            o.insert("backchannel_logout_uri".into(), json!(u));
        }
        if let Some(b) = self.backchannel_logout_session_required {
            o.insert("backchannel_logout_session_required".into(), json!(b));
        }
        if let Some(b) = self.pkce_required {
            o.insert("pkce_required".into(), json!(b));
        }
        c
    }
}

/// One person who can sign in: types `login` and `password`, is `sub` to the relying party, and has `claims`.
#[derive(Clone, Debug)]
pub struct UserSpec {
    pub login: String,
    /// `None`: any non-empty password is accepted.
    pub password: Option<String>,
    pub sub: String,
    /// `email`, `email_verified`, `name`, `preferred_username`, `picture`, `groups`, or anything else (a role
    /// claim...). A claim no standard scope names is released with the `profile` scope.
    pub claims: Map<String, Value>,
}

impl UserSpec {
    /// A user with no claims but `sub` whose password is `<login>-password`.
    pub fn new(login: &str, sub: &str) -> UserSpec {
        UserSpec {
            login: login.into(),
            password: Some(format!("{login}-password")),
            sub: sub.into(),
            claims: Map::new(),
        }
    }

    /// The default user: `alice` / `alice-password`, sub `alice-sub`, `alice@example.com` (verified),
    /// "Alice Example", preferred_username `alice`.
    pub fn alice() -> UserSpec {
        UserSpec::new(ALICE_LOGIN, ALICE_SUB)
            .claim("email", ALICE_EMAIL)
            .claim("email_verified", true)
            .claim("name", ALICE_NAME)
            .claim("preferred_username", ALICE_LOGIN)
    }

    pub fn password(mut self, password: &str) -> UserSpec {
        self.password = Some(password.into());
        self
    }

    pub fn any_password(mut self) -> UserSpec {
        self.password = None;
        self
    }

    pub fn claim(mut self, name: &str, value: impl Into<Value>) -> UserSpec {
        self.claims.insert(name.into(), value.into());
        self
    }

    fn to_json(&self) -> Value {
        let mut u = json!({ "login": self.login, "sub": self.sub, "claims": self.claims });
        if let Some(p) = &self.password {
            u.as_object_mut()
                .unwrap()
                .insert("password".into(), json!(p));
        }
        u
    }
}

#[derive(Clone, Debug)]
pub struct TestIdpBuilder {
    clients: Vec<ClientSpec>,
    users: Vec<UserSpec>,
    extra_redirect_uris: Vec<String>,
    pkce_required: bool,
    claims_in_id_token: bool,
    jwks_strip_alg: bool,
    issuer_path: Option<String>,
    scope_claims: Map<String, Value>,
    ttl: Map<String, Value>,
}

impl TestIdpBuilder {
    /// Register a client. Without any, the IdP has [`ClientSpec::default`] (`headgate`, basic auth, RS256).
    pub fn client(mut self, client: ClientSpec) -> Self {
        self.clients.push(client);
        self
    }

    /// Add a redirect URI to the first client (the default client when none was added).
    pub fn redirect_uri(mut self, uri: &str) -> Self {
        self.extra_redirect_uris.push(uri.into());
        self
    }

    /// Add a user. Without any, the IdP has [`UserSpec::alice`].
    pub fn user(mut self, user: UserSpec) -> Self {
        self.users.push(user);
        self
    }

    /// Whether every client must send PKCE (oidc-provider's `pkce.required`); default true, as oidc-provider 9.
    pub fn pkce_required(mut self, yes: bool) -> Self {
        self.pkce_required = yes;
        self
    }

    /// true (default): the ID token carries the profile/email claims the scopes grant. false: the ID token has
    /// only `sub` and the protocol claims, and profile/email come only from userinfo (oidc-provider
    /// `conformIdTokenClaims: true`).
    pub fn claims_in_id_token(mut self, yes: bool) -> Self {
        self.claims_in_id_token = yes;
        self
    }

    /// Publish the JWKS without `alg` members (as Entra ID does).
    pub fn jwks_strip_alg(mut self, yes: bool) -> Self {
        self.jwks_strip_alg = yes;
        self
    }

    /// Serve the IdP under a path: issuer `http://127.0.0.1:<port><path>` (e.g. `/realms/test`).
    pub fn issuer_path(mut self, path: &str) -> Self {
        assert!(path.starts_with('/'), "issuer_path must start with /");
        self.issuer_path = Some(path.trim_end_matches('/').into());
        self
    }

    /// Release these claims with `scope` (replaces the built-in list for that scope; e.g. put a role claim in
    /// `openid` so it is always in the ID token).
    pub fn scope_claims(mut self, scope: &str, claims: &[&str]) -> Self {
        self.scope_claims.insert(scope.into(), json!(claims));
        self
    }

    /// Lifetime in seconds of one oidc-provider artifact: `AccessToken`, `IdToken`, `RefreshToken`,
    /// `AuthorizationCode`, `Session`, `Grant`, `Interaction`.
    pub fn ttl(mut self, artifact: &str, seconds: u64) -> Self {
        self.ttl.insert(artifact.into(), json!(seconds));
        self
    }

    /// The JSON document given to `provider.mjs` in `IDP_CONFIG`.
    pub fn config_json(&self) -> Value {
        let mut clients = if self.clients.is_empty() {
            vec![ClientSpec::default()]
        } else {
            self.clients.clone()
        };
        clients[0]
            .redirect_uris
            .extend(self.extra_redirect_uris.iter().cloned());
        let users = if self.users.is_empty() {
            vec![UserSpec::alice()]
        } else {
            self.users.clone()
        };
        let mut cfg = json!({
            "port": 0,
            "clients": clients.iter().map(ClientSpec::to_json).collect::<Vec<_>>(),
            "users": users.iter().map(UserSpec::to_json).collect::<Vec<_>>(),
            "pkce_required": self.pkce_required,
            "claims_in_id_token": self.claims_in_id_token,
            "jwks_strip_alg": self.jwks_strip_alg,
        });
        let o = cfg.as_object_mut().unwrap();
        if let Some(p) = &self.issuer_path {
            o.insert("issuer_path".into(), json!(p));
        }
        if !self.scope_claims.is_empty() {
            o.insert("claims".into(), Value::Object(self.scope_claims.clone()));
        }
        if !self.ttl.is_empty() {
            o.insert("ttl".into(), Value::Object(self.ttl.clone()));
        }
        cfg
    }

    /// Start the IdP and wait until it listens. Panics with the fix when Node.js or the npm packages are missing.
    pub fn start(self) -> TestIdp {
        TestIdp::start_config(self.config_json())
    }
}

impl TestIdp {
    /// Start the IdP with this whole `IDP_CONFIG` document (e.g. the one `deploy/demo/run` writes).
    pub fn start_config(config: Value) -> TestIdp {
        preflight();
        let dir = super::root().join("tests/idp");
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("provider.mjs"))
            .current_dir(&dir)
            .env("IDP_CONFIG", config.to_string());
        // oidc-provider's "Unsupported runtime" and dev-adapter notices are harmless; keep its debug output off.
        cmd.env_remove("DEBUG");
        let mut process = ChildProcess::spawn("test IdP (oidc-provider)", cmd);
        let ready = process.wait_for_line(Duration::from_secs(20), |l| l.starts_with("READY "));
        let issuer = ready.trim_start_matches("READY ").trim().to_string();
        let port = url::Url::parse(&issuer)
            .expect("issuer URL")
            .port()
            .expect("issuer port");
        let clients = config["clients"].as_array().unwrap().clone();
        TestIdp {
            process,
            issuer,
            port,
            config,
            clients,
        }
    }
}

fn preflight() {
    let dir = super::root().join("tests/idp");
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "\n\nThe integration tests need Node.js (20 or later) for the real test IdP, and `node` is not on PATH.\n\
             Fix: apt-get install -y nodejs npm && npm ci --prefix tests/idp\n\n"
        ),
    }
    if !dir
        .join("node_modules/oidc-provider/package.json")
        .is_file()
    {
        panic!(
            "\n\nThe test IdP's npm packages are not installed ({} is missing).\n\
             Fix: npm ci --prefix tests/idp   (from {})\n\n",
            dir.join("node_modules/oidc-provider").display(),
            super::root().display()
        );
    }
}

/// A running test IdP; killed when dropped (its output is printed if the test failed).
pub struct TestIdp {
    process: ChildProcess,
    issuer: String,
    port: u16,
    config: Value,
    clients: Vec<Value>,
}

impl TestIdp {
    pub fn builder() -> TestIdpBuilder {
        TestIdpBuilder {
            clients: Vec::new(),
            users: Vec::new(),
            extra_redirect_uris: Vec::new(),
            pkce_required: true,
            claims_in_id_token: true,
            jwks_strip_alg: false,
            issuer_path: None,
            scope_claims: Map::new(),
            ttl: Map::new(),
        }
    }

    /// The issuer exactly as the IdP puts it in `iss` (no trailing slash).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The configuration it was started with (`IDP_CONFIG`).
    pub fn config(&self) -> &Value {
        &self.config
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    // oidc-provider's default routes (the discovery document says the same; a test checks it).
    pub fn authorization_endpoint(&self) -> String {
        format!("{}/auth", self.issuer)
    }
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }
    pub fn userinfo_endpoint(&self) -> String {
        format!("{}/me", self.issuer)
    }
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }
    pub fn end_session_endpoint(&self) -> String {
        format!("{}/session/end", self.issuer)
    }
    pub fn revocation_endpoint(&self) -> String {
        format!("{}/token/revocation", self.issuer)
    }
    pub fn introspection_endpoint(&self) -> String {
        format!("{}/token/introspection", self.issuer)
    }

    /// The registered client `client_id` as sent to the IdP (JSON); panics when there is none.
    pub fn client(&self, client_id: &str) -> &Value {
        self.clients
            .iter()
            .find(|c| c["client_id"] == client_id)
            .unwrap_or_else(|| panic!("the test IdP has no client {client_id}"))
    }

    /// An authorization request URL for `client_id` at its first redirect URI, scope `openid email profile`.
    /// `code_challenge` is the S256 challenge (see [`pkce_challenge`]) or `None` for no PKCE.
    pub fn authorization_url(
        &self,
        client_id: &str,
        state: &str,
        nonce: &str,
        code_challenge: Option<&str>,
    ) -> String {
        let redirect_uri = self.client(client_id)["redirect_uris"][0]
            .as_str()
            .unwrap()
            .to_string();
        self.authorization_url_with(
            &[
                ("client_id", client_id),
                ("response_type", "code"),
                ("redirect_uri", &redirect_uri),
                ("scope", "openid email profile"),
                ("state", state),
                ("nonce", nonce),
            ],
            code_challenge,
        )
    }

    /// An authorization request URL with exactly these parameters (plus the S256 challenge when given).
    pub fn authorization_url_with(
        &self,
        params: &[(&str, &str)],
        code_challenge: Option<&str>,
    ) -> String {
        let mut u = url::Url::parse(&self.authorization_endpoint()).unwrap();
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            if let Some(c) = code_challenge {
                q.append_pair("code_challenge", c)
                    .append_pair("code_challenge_method", "S256");
            }
        }
        u.to_string()
    }

    /// Every token it issued so far, oldest first, as (kind, value): kind is `authorization_code`,
    /// `access_token`, `id_token`, `refresh_token` or `logout_token`.
    pub fn issued_tokens(&self) -> Vec<(String, String)> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == "issued")
            .map(|e| {
                (
                    e["kind"].as_str().unwrap_or("").to_string(),
                    e["value"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Every JSON line it printed (issued tokens, requests, errors such as `grant.error`, `login.failed`,
    /// `backchannel.success`...).
    pub fn events(&self) -> Vec<Value> {
        self.process
            .output()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }

    /// The events named `name` (e.g. `grant.error`).
    pub fn events_named(&self, name: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }

    /// Wait until an event satisfies `pred` (e.g. a back-channel logout was delivered) and return it.
    pub fn wait_for_event(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let line = self.process.wait_for_line(timeout, |l| {
            l.starts_with('{')
                && serde_json::from_str::<Value>(l)
                    .map(|v| pred(&v))
                    .unwrap_or(false)
        });
        serde_json::from_str(&line).unwrap()
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.process.output()
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    pub fn process_mut(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}

/// A PKCE pair: (verifier, S256 challenge).
pub fn pkce_pair() -> (String, String) {
    let mut bytes = [0u8; 48];
    getrandom::fill(&mut bytes).unwrap();
    let verifier = b64url(&bytes);
    let challenge = pkce_challenge(&verifier);
    (verifier, challenge)
}

/// The S256 code challenge of `verifier`.
pub fn pkce_challenge(verifier: &str) -> String {
    use sha2::Digest;
    b64url(&sha2::Sha256::digest(verifier.as_bytes()))
}

/// A random base64url string of `n` bytes (state, nonce).
pub fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).unwrap();
    b64url(&bytes)
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The decoded header and claims of a compact JWT, without checking anything.
pub fn jwt_parts(token: &str) -> (Value, Value) {
    use base64::Engine;
    let mut it = token.split('.');
    let mut part = |what: &str| -> Value {
        let p = it
            .next()
            .unwrap_or_else(|| panic!("JWT without {what}: {token}"));
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p.trim_end_matches('='))
            .unwrap_or_else(|e| panic!("JWT {what} is not base64url ({e}): {token}"));
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("JWT {what} is not JSON ({e}): {token}"))
    };
    let header = part("header");
    let claims = part("claims");
    (header, claims)
}
