//! The relying party: cached discovery (retried on the next sign-in when it failed), the authorization URL,
//! the code exchange (client_secret_basic or _post, or post then basic once on `invalid_client`,
//! remembered), ID-token verification against the IdP's JWKS (refetched once on an unknown `kid`), and
//! userinfo. No lock is held across an `.await`: state is cloned out, the network is used, results are put
//! back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;

use super::discovery::{self, DiscoveryError, Endpoints};
use super::flow::Flow;
use crate::config::{OidcConfig, TokenAuthMethod};
use crate::crypto;
use crate::http_client::{HttpClient, HttpError};

pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted clock difference with the IdP for `exp`, `iat`, `nbf`.
pub const SKEW_SECS: i64 = 60;
/// Discovery is refreshed after this long (a failure keeps the previous document).
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// A failed discovery is not retried more often than this (each sign-in or login page may retry).
const DISCOVERY_RETRY: Duration = Duration::from_secs(2);
/// Unknown `kid`s refetch the JWKS at most this often, so forged tokens cannot hammer the IdP.
const JWKS_REFETCH_MIN: Duration = Duration::from_secs(5);
/// Keys are refetched after this long, so a key the IdP withdrew stops verifying without a restart.
const JWKS_TTL: Duration = Duration::from_secs(3600);
/// The login page asks whether the IdP answers (its JWKS) at most this often while it does...
const PROBE_OK_TTL: Duration = Duration::from_secs(5);
/// ...and this often while it does not, so the page notices the IdP is back without a restart.
const PROBE_FAILED_TTL: Duration = Duration::from_secs(2);
/// How long that question may take (a hanging IdP must not hold the login page).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a sign-in failed. `code()` is the `?s=` value the login page shows; `Display` is the operator log
/// line (it names the config key to change and never holds a secret or token).
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("{0}")]
    Discovery(#[from] DiscoveryError),
    #[error(
        "the IdP answered the sign-in with error {error:?} ({description}){}",
        idp_error_hint(error, description)
    )]
    Idp { error: String, description: String },
    #[error(
        "the token endpoint refused the code: HTTP {status} {error:?} ({description}){}",
        token_error_hint(error, description, redirect_uri)
    )]
    TokenEndpoint {
        status: u16,
        error: String,
        description: String,
        redirect_uri: String,
    },
    #[error("the token endpoint could not be reached: {0}")]
    TokenTransport(HttpError),
    #[error("the token endpoint's answer has no id_token (is \"openid\" in oidc.scope?)")]
    NoIdToken,
    #[error("the ID token was refused: {0}")]
    InvalidIdToken(String),
    #[error("the IdP's JWKS could not be used: {0}")]
    Jwks(String),
    #[error("the ID token has no subject (`sub`, or one of oidc.subject_claims)")]
    NoSubject,
    #[error("{0}")]
    NotAllowed(String),
}

impl SignInError {
    /// The login page's `?s=` code.
    pub fn code(&self) -> &'static str {
        match self {
            SignInError::NoSubject => "error_no_sub",
            SignInError::NotAllowed(_) => "error_not_allowed",
            _ => "error_auth_failed",
        }
    }
}

fn mentions_pkce(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.contains("pkce")
        || l.contains("code_challenge")
        || l.contains("code_verifier")
        || l.contains("code challenge")
}

fn idp_error_hint(error: &str, description: &str) -> String {
    if mentions_pkce(description) || mentions_pkce(error) {
        "; the IdP requires PKCE: set oidc.use_pkce = true".into()
    } else if description.to_ascii_lowercase().contains("redirect") {
        "; register headgate's redirect URI (server.base_url + oidc.callback_path) at the IdP"
            .into()
    } else if error == "access_denied" {
        "; the person declined, or the IdP does not allow them to use this client".into()
    } else {
        String::new()
    }
}

fn token_error_hint(error: &str, description: &str, redirect_uri: &str) -> String {
    if error == "invalid_client" {
        "; check oidc.client_id, oidc.client_secret and oidc.token_endpoint_auth_method".into()
    } else if mentions_pkce(description) {
        "; the IdP requires PKCE: set oidc.use_pkce = true".into()
    } else if description.to_ascii_lowercase().contains("redirect") {
        format!("; register {redirect_uri} as a redirect URI at the IdP")
    } else if error == "unauthorized_client" {
        "; allow the authorization-code grant for oidc.client_id at the IdP".into()
    } else {
        String::new()
    }
}

/// What the token endpoint handed over.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    pub access_token: Option<String>,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
}

struct Jwks {
    keys: Vec<Value>,
    fetched: Instant,
}

#[derive(Default)]
struct RpState {
    endpoints: Option<(Arc<Endpoints>, Instant)>,
    last_failure: Option<(Instant, String)>,
    jwks: Option<Arc<Jwks>>,
    auth_method: Option<TokenAuthMethod>,
    /// The last answer to "does the IdP answer?" (for the login page).
    probe: Option<(Instant, bool)>,
}

pub struct RelyingParty {
    cfg: Arc<OidcConfig>,
    http: HttpClient,
    redirect_uri: String,
    state: Mutex<RpState>,
}

/// Whether the login page can offer SSO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SsoStatus {
    Available,
    Unavailable(String),
}

impl RelyingParty {
    pub fn new(cfg: Arc<OidcConfig>, http: HttpClient, base_url: &Url) -> Self {
        let redirect_uri = format!(
            "{}{}",
            base_url.as_str().trim_end_matches('/'),
            cfg.callback_path
        );
        RelyingParty {
            cfg,
            http,
            redirect_uri,
            state: Mutex::new(RpState::default()),
        }
    }

    pub fn config(&self) -> &OidcConfig {
        &self.cfg
    }

    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// The endpoints, from the cache or discovery. A failure is kept for the login page and retried later.
    pub async fn endpoints(&self) -> Result<Arc<Endpoints>, SignInError> {
        {
            let st = self.state.lock().unwrap();
            if let Some((e, at)) = &st.endpoints
                && at.elapsed() < DISCOVERY_TTL
            {
                return Ok(e.clone());
            }
            if let (None, Some((at, msg))) = (&st.endpoints, &st.last_failure)
                && at.elapsed() < DISCOVERY_RETRY
            {
                return Err(SignInError::Discovery(DiscoveryError::Cached(msg.clone())));
            }
        }
        match discovery::discover(&self.http, &self.cfg).await {
            Ok((e, _)) => {
                let e = Arc::new(e);
                let mut st = self.state.lock().unwrap();
                st.endpoints = Some((e.clone(), Instant::now()));
                st.last_failure = None;
                Ok(e)
            }
            Err(err) => {
                let mut st = self.state.lock().unwrap();
                st.last_failure = Some((Instant::now(), err.to_string()));
                // An expired cache still beats no cache during an IdP outage.
                if let Some((e, _)) = &st.endpoints {
                    tracing::warn!(error = %err, "IdP discovery refresh failed; keeping the previous document");
                    return Ok(e.clone());
                }
                Err(SignInError::Discovery(err))
            }
        }
    }

    /// For the login page: SSO is offered when the endpoints are known (fetching them if needed) and the IdP
    /// answers now (its JWKS, asked with a short timeout; the answer is reused for a few seconds). Discovery
    /// stays cached for an hour, so without this question a page would offer SSO through a whole outage.
    pub async fn status(&self) -> SsoStatus {
        let unavailable = || {
            SsoStatus::Unavailable(
                "the identity provider could not be reached. Try again in a moment, or sign in with an API key."
                    .into(),
            )
        };
        let Ok(e) = self.endpoints().await else {
            return unavailable();
        };
        let last = self.state.lock().unwrap().probe;
        let ok = match last {
            Some((at, ok)) if at.elapsed() < if ok { PROBE_OK_TTL } else { PROBE_FAILED_TTL } => ok,
            _ => {
                let r = self
                    .http
                    .get(
                        e.jwks.as_str(),
                        &[("accept", "application/json")],
                        PROBE_TIMEOUT,
                    )
                    .await;
                let ok = matches!(&r, Ok(r) if r.status.is_success());
                if !ok {
                    tracing::warn!(
                        "the IdP does not answer ({}): the login page says SSO is unavailable",
                        match &r {
                            Ok(r) => format!("{} answered HTTP {}", e.jwks, r.status.as_u16()),
                            Err(err) => err.to_string(),
                        }
                    );
                }
                self.state.lock().unwrap().probe = Some((Instant::now(), ok));
                ok
            }
        };
        if ok {
            SsoStatus::Available
        } else {
            unavailable()
        }
    }

    /// The authorization URL for a flow (PKCE challenge derived from the flow's verifier).
    pub fn authorization_url(&self, e: &Endpoints, flow: &Flow) -> String {
        let mut u = e.authorization.clone();
        {
            let mut q = u.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.cfg.client_id)
                .append_pair("redirect_uri", &self.redirect_uri)
                .append_pair("scope", &self.cfg.scope)
                .append_pair("state", &flow.state)
                .append_pair("nonce", &flow.nonce);
            if let Some(v) = &flow.pkce_verifier {
                q.append_pair("code_challenge", &pkce_challenge(v))
                    .append_pair("code_challenge_method", "S256");
            }
            for (k, v) in &self.cfg.extra_params {
                q.append_pair(k, v);
            }
        }
        u.into()
    }

    /// Exchange the authorization code.
    pub async fn exchange_code(
        &self,
        e: &Endpoints,
        code: &str,
        verifier: Option<&str>,
    ) -> Result<TokenResponse, SignInError> {
        let configured = self.cfg.token_endpoint_auth_method;
        let remembered = self.state.lock().unwrap().auth_method;
        let first = configured
            .or(remembered)
            .unwrap_or(TokenAuthMethod::ClientSecretPost);
        let grant = [("grant_type", "authorization_code"), ("code", code)];
        match self.token_request(e, &grant, verifier, first).await {
            Err(SignInError::TokenEndpoint { error, .. })
                if error == "invalid_client"
                    && configured.is_none()
                    && first == TokenAuthMethod::ClientSecretPost =>
            {
                tracing::info!(
                    "the IdP refused client_secret_post; retrying once with client_secret_basic"
                );
                let r = self
                    .token_request(e, &grant, verifier, TokenAuthMethod::ClientSecretBasic)
                    .await;
                if r.is_ok() {
                    self.state.lock().unwrap().auth_method =
                        Some(TokenAuthMethod::ClientSecretBasic);
                }
                r
            }
            Ok(t) => {
                if configured.is_none() {
                    self.state.lock().unwrap().auth_method = Some(first);
                }
                Ok(t)
            }
            Err(err) => Err(err),
        }
    }

    /// Use a refresh token (the method that worked for the code exchange, or the configured one).
    pub async fn refresh(
        &self,
        e: &Endpoints,
        refresh_token: &str,
    ) -> Result<TokenResponse, SignInError> {
        let method = self
            .cfg
            .token_endpoint_auth_method
            .or(self.state.lock().unwrap().auth_method)
            .unwrap_or(TokenAuthMethod::ClientSecretPost);
        self.token_request(
            e,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
            None,
            method,
        )
        .await
    }

    async fn token_request(
        &self,
        e: &Endpoints,
        grant: &[(&str, &str)],
        verifier: Option<&str>,
        method: TokenAuthMethod,
    ) -> Result<TokenResponse, SignInError> {
        // Built in a block: the serializer is not Send and must not live across the await below.
        let (body, basic) = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in grant {
                form.append_pair(k, v);
            }
            if grant.iter().any(|(k, _)| *k == "code") {
                form.append_pair("redirect_uri", &self.redirect_uri);
            }
            if let Some(v) = verifier {
                form.append_pair("code_verifier", v);
            }
            let secret = self
                .cfg
                .client_secret
                .as_ref()
                .map(|s| s.expose())
                .unwrap_or("");
            let mut basic = None;
            match (method, self.cfg.client_secret.is_some()) {
                (_, false) => {
                    form.append_pair("client_id", &self.cfg.client_id);
                }
                (TokenAuthMethod::ClientSecretPost, true) => {
                    form.append_pair("client_id", &self.cfg.client_id)
                        .append_pair("client_secret", secret);
                }
                (TokenAuthMethod::ClientSecretBasic, true) => {
                    // RFC 6749 2.3.1: both parts form-urlencoded before base64.
                    let enc = |s: &str| {
                        url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                    };
                    let pair = format!("{}:{}", enc(&self.cfg.client_id), enc(secret));
                    basic = Some(format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(pair)
                    ));
                }
            }
            (form.finish(), basic)
        };
        let mut headers = vec![
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept", "application/json"),
        ];
        if let Some(b) = &basic {
            headers.push(("authorization", b.as_str()));
        }
        let r = self
            .http
            .post(e.token.as_str(), &headers, body.into(), TIMEOUT)
            .await
            .map_err(SignInError::TokenTransport)?;
        if !r.status.is_success() {
            #[derive(Deserialize, Default)]
            struct Err {
                error: Option<String>,
                error_description: Option<String>,
            }
            let err: Err = serde_json::from_slice(&r.body).unwrap_or_default();
            return Err(SignInError::TokenEndpoint {
                status: r.status.as_u16(),
                error: clean(err.error.as_deref().unwrap_or("")),
                description: clean(err.error_description.as_deref().unwrap_or("")),
                redirect_uri: self.redirect_uri.clone(),
            });
        }
        serde_json::from_slice(&r.body).map_err(|e| {
            SignInError::InvalidIdToken(format!("the token endpoint's answer is not JSON ({e})"))
        })
    }

    async fn jwks(&self, e: &Endpoints, force: bool) -> Result<Arc<Jwks>, SignInError> {
        {
            let st = self.state.lock().unwrap();
            if let Some(j) = &st.jwks
                && j.fetched.elapsed() < JWKS_TTL
                && (!force || j.fetched.elapsed() < JWKS_REFETCH_MIN)
            {
                return Ok(j.clone());
            }
        }
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<Value>,
        }
        let r = self
            .http
            .get(e.jwks.as_str(), &[("accept", "application/json")], TIMEOUT)
            .await
            .map_err(|err| {
                SignInError::Jwks(format!("{err} (oidc.jwks_uri / discovery jwks_uri)"))
            })?;
        if !r.status.is_success() {
            return Err(SignInError::Jwks(format!(
                "{} answered HTTP {}",
                e.jwks,
                r.status.as_u16()
            )));
        }
        let set: Set = serde_json::from_slice(&r.body)
            .map_err(|err| SignInError::Jwks(format!("{} is not a JWK set ({err})", e.jwks)))?;
        let j = Arc::new(Jwks {
            keys: set.keys,
            fetched: Instant::now(),
        });
        self.state.lock().unwrap().jwks = Some(j.clone());
        Ok(j)
    }

    /// Check a compact JWS from the IdP and return its claims: at most 64 KiB, never unsigned or HMAC, signed
    /// by the key of the IdP's JWKS that it names (the JWKS refetched once, rate-limited, for an unknown
    /// `kid`), with the algorithm that key is for. No claim is checked here.
    async fn verify_signature(
        &self,
        e: &Endpoints,
        token: &str,
    ) -> Result<(jsonwebtoken::Header, Map<String, Value>), SignInError> {
        let bad = |m: &str| SignInError::InvalidIdToken(m.to_string());
        if token.len() > 64 * 1024 {
            return Err(bad("it is larger than 64 KiB"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|err| {
            bad(&format!(
                "its header is not a signed JWT header ({err}); unsigned tokens are refused"
            ))
        })?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(bad(
                "it is HMAC-signed; only the IdP's public keys are accepted",
            ));
        }
        let jwks = self.jwks(e, false).await?;
        let jwk = match find_key(&jwks.keys, header.kid.as_deref(), header.alg) {
            Some(k) => k,
            None => {
                let fresh = self.jwks(e, true).await?;
                find_key(&fresh.keys, header.kid.as_deref(), header.alg).ok_or_else(|| {
                    bad(&format!(
                        "no key in the IdP's JWKS matches kid {:?}",
                        header.kid.as_deref().unwrap_or("")
                    ))
                })?
            }
        };
        let alg = algorithm_for(&jwk, header.alg, &e.signing_algs).map_err(|m| bad(&m))?;
        let key = decoding_key(&jwk).map_err(|m| bad(&m))?;
        let mut v = Validation::new(alg);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v)
            .map_err(|err| bad(&format!("its signature does not verify ({err})")))?;
        Ok((header, data.claims))
    }

    /// `iss` is exactly `oidc.issuer` and `aud` contains `oidc.client_id`.
    fn check_iss_aud(&self, c: &Map<String, Value>) -> Result<(), String> {
        if c.get("iss").and_then(Value::as_str) != Some(self.cfg.issuer.as_str()) {
            return Err(format!(
                "iss {:?} is not oidc.issuer {:?}",
                c.get("iss").and_then(Value::as_str).unwrap_or(""),
                self.cfg.issuer
            ));
        }
        if !audiences(c).contains(&self.cfg.client_id.as_str()) {
            return Err("aud does not contain oidc.client_id".into());
        }
        Ok(())
    }

    /// Verify an ID token: signature with the IdP's key, algorithm pinned by the key, `iss`, `aud`/`azp`,
    /// `exp`/`iat`/`nbf` with skew, `nonce`. Returns its claims.
    pub async fn verify_id_token(
        &self,
        e: &Endpoints,
        token: &str,
        nonce: Option<&str>,
        now: i64,
    ) -> Result<Map<String, Value>, SignInError> {
        let bad = |m: &str| SignInError::InvalidIdToken(m.to_string());
        let (_, c) = self.verify_signature(e, token).await?;
        // iss: exactly the configured issuer; aud contains client_id; with several audiences, azp must be
        // client_id.
        self.check_iss_aud(&c).map_err(|m| bad(&m))?;
        let auds = audiences(&c);
        let azp = c.get("azp").and_then(Value::as_str);
        if (auds.len() > 1 && azp != Some(self.cfg.client_id.as_str()))
            || azp.is_some_and(|a| a != self.cfg.client_id)
        {
            return Err(bad("azp is not oidc.client_id"));
        }
        let num = |k: &str| c.get(k).and_then(Value::as_i64);
        let exp = num("exp").ok_or_else(|| bad("it has no exp"))?;
        if now > exp + SKEW_SECS {
            return Err(bad(
                "it has expired (check the clocks of headgate and the IdP)",
            ));
        }
        let iat = num("iat").ok_or_else(|| bad("it has no iat"))?;
        if iat > now + SKEW_SECS {
            return Err(bad(
                "it was issued in the future (check the clocks of headgate and the IdP)",
            ));
        }
        if let Some(nbf) = num("nbf")
            && nbf > now + SKEW_SECS
        {
            return Err(bad("it is not valid yet (nbf)"));
        }
        // A refreshed ID token carries no fresh nonce (`nonce` None); a sign-in's must match exactly.
        if let Some(nonce) = nonce {
            match c.get("nonce").and_then(Value::as_str) {
                Some(n) if crypto::ct_eq(n.as_bytes(), nonce.as_bytes()) => {}
                Some(_) => return Err(bad("its nonce is not the one this sign-in sent")),
                None => return Err(bad("it has no nonce")),
            }
        }
        Ok(c)
    }

    /// Verify a back-channel logout token (`oidc::backchannel`): the ID token's signature checks, `iss`,
    /// `aud`, then the logout token's own claims. The error is a description for the IdP and the log.
    pub async fn verify_logout_token(
        &self,
        e: &Endpoints,
        token: &str,
        now: i64,
    ) -> Result<super::backchannel::LogoutRequest, String> {
        let (header, c) = self
            .verify_signature(e, token)
            .await
            .map_err(|err| match err {
                SignInError::InvalidIdToken(m) => format!("the logout token was refused: {m}"),
                other => other.to_string(),
            })?;
        self.check_iss_aud(&c)
            .map_err(|m| format!("the logout token was refused: {m}"))?;
        super::backchannel::check_claims(header.typ.as_deref(), &c, now)
            .map_err(|m| format!("the logout token was refused: {m}"))
    }

    /// Userinfo claims (Bearer access token). Errors are for the log only: a userinfo failure is not fatal.
    pub async fn userinfo(
        &self,
        e: &Endpoints,
        access_token: &str,
    ) -> Result<Map<String, Value>, String> {
        let Some(u) = &e.userinfo else {
            return Err("the IdP has no userinfo endpoint".into());
        };
        let auth = format!("Bearer {access_token}");
        let r = self
            .http
            .get(
                u.as_str(),
                &[
                    ("authorization", auth.as_str()),
                    ("accept", "application/json"),
                ],
                TIMEOUT,
            )
            .await
            .map_err(|e| e.to_string())?;
        if !r.status.is_success() {
            return Err(format!("userinfo answered HTTP {}", r.status.as_u16()));
        }
        serde_json::from_slice(&r.body).map_err(|e| format!("userinfo is not a JSON object ({e})"))
    }
}

fn audiences(c: &Map<String, Value>) -> Vec<&str> {
    match c.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
}

/// Strip control characters and bound the length of IdP-provided text before it reaches a log.
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(300).collect()
}

pub fn pkce_challenge(verifier: &str) -> String {
    crypto::b64(&crypto::sha256(verifier.as_bytes()))
}

/// The key the token names (`kid`), or, without a `kid`, the only signing key of the right type.
fn find_key(keys: &[Value], kid: Option<&str>, alg: Algorithm) -> Option<Value> {
    let usable = |k: &&Value| {
        k.get("use")
            .and_then(Value::as_str)
            .is_none_or(|u| u == "sig")
    };
    match kid {
        Some(kid) => keys
            .iter()
            .filter(usable)
            .find(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
            .cloned(),
        None => {
            let fam = family(alg);
            let mut it = keys
                .iter()
                .filter(usable)
                .filter(|k| k.get("kty").and_then(Value::as_str) == Some(fam));
            let first = it.next()?;
            it.next().is_none().then(|| first.clone())
        }
    }
}

fn family(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => "EC",
        Algorithm::EdDSA => "OKP",
        _ => "RSA",
    }
}

fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

/// The algorithm this key verifies: its own `alg`, or (no `alg`, as with Entra ID) the one its type and
/// curve imply; never HMAC; within the IdP's advertised list when there is one; equal to the token's.
fn algorithm_for(
    jwk: &Value,
    token_alg: Algorithm,
    supported: &[String],
) -> Result<Algorithm, String> {
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    let allowed: Vec<Algorithm> = match jwk.get("alg").and_then(Value::as_str) {
        Some(a) => match a.parse::<Algorithm>() {
            Ok(al)
                if family(al) == kty
                    && !matches!(al, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) =>
            {
                vec![al]
            }
            _ => return Err(format!("the IdP's key has an unusable alg {a:?}")),
        },
        None => match (kty, jwk.get("crv").and_then(Value::as_str)) {
            ("RSA", _) => jsonwebtoken::AlgorithmFamily::Rsa.algorithms().to_vec(),
            ("EC", Some("P-256")) => vec![Algorithm::ES256],
            ("EC", Some("P-384")) => vec![Algorithm::ES384],
            ("OKP", Some("Ed25519")) => vec![Algorithm::EdDSA],
            _ => return Err(format!("the IdP's key type {kty:?} is not supported")),
        },
    };
    if !allowed.contains(&token_alg) {
        return Err(format!(
            "it is signed with {} but the IdP's key is for {:?}",
            alg_name(token_alg),
            allowed.iter().map(|a| alg_name(*a)).collect::<Vec<_>>()
        ));
    }
    if !supported.is_empty() && !supported.iter().any(|s| s == alg_name(token_alg)) {
        return Err(format!(
            "{} is not among the IdP's id_token_signing_alg_values_supported",
            alg_name(token_alg)
        ));
    }
    Ok(token_alg)
}

fn decoding_key(jwk: &Value) -> Result<DecodingKey, String> {
    let s = |k: &str| {
        jwk.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the IdP's key has no {k}"))
    };
    match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") => {
            let n = s("n")?;
            let bytes =
                crypto::unb64(n.trim_end_matches('=')).ok_or("the IdP's RSA key is malformed")?;
            let significant: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
            let bits = match significant.first() {
                Some(first) => (significant.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
                None => 0,
            };
            if bits < 2048 {
                return Err(format!(
                    "the IdP's RSA key has {bits} bits; at least 2048 are required"
                ));
            }
            DecodingKey::from_rsa_components(n, s("e")?)
                .map_err(|e| format!("the IdP's RSA key is unusable ({e})"))
        }
        Some("EC") => DecodingKey::from_ec_components(s("x")?, s("y")?)
            .map_err(|e| format!("the IdP's EC key is unusable ({e})")),
        Some("OKP") => DecodingKey::from_ed_components(s("x")?)
            .map_err(|e| format!("the IdP's OKP key is unusable ({e})")),
        other => Err(format!("the IdP's key type {other:?} is not supported")),
    }
}
