//! A rogue IdP, in process: discovery, a JWKS with its legitimate ES256 key, an authorization endpoint that
//! records the request and redirects straight back with a code, a token endpoint that answers with the ID token
//! the test chose (a [`Forgery`]), and userinfo. It records what the relying party sent so tests can assert on
//! client authentication and PKCE.
//!
//! It runs on its own thread with its own tokio runtime, so it works from plain and `#[tokio::test]` tests alike,
//! and stops when dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value, json};

pub const ROGUE_CLIENT_ID: &str = "headgate";
pub const ROGUE_SUB: &str = "rogue-sub";
/// The `kid` of the legitimate ES256 key in the JWKS.
pub const LEGIT_KID: &str = "rogue-es256";
/// The `kid` of the 1024-bit RSA key the JWKS also publishes (for [`Forgery::WeakRsaKey`]).
pub const WEAK_RSA_KID: &str = "rogue-rsa1024";
pub const UNKNOWN_KID: &str = "kid-not-in-jwks";

/// What the token endpoint's ID token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Forgery {
    /// A correct token: ES256 with the published key, right `iss`/`aud`/`nonce`, fresh. The control.
    Valid,
    /// ES256 signed by a key that is not in the JWKS, under the legitimate key's `kid`.
    OtherKey,
    /// `alg: none`, no signature (`header.payload.`).
    AlgNone,
    /// HS256 with the published public key's PEM (SubjectPublicKeyInfo) as the HMAC secret.
    Hs256WithPublicKeyPem,
    /// HS256 with the published public JWK's JSON text as the HMAC secret.
    Hs256WithPublicKeyJwk,
    /// `iss` is the issuer with `/other` appended (catches prefix matching).
    WrongIssuer,
    /// `aud` is another client.
    WrongAudience,
    /// `nonce` is not the one of the authorization request.
    WrongNonce,
    /// no `nonce` claim.
    MissingNonce,
    /// `exp` an hour ago (`iat` two hours ago): far beyond a 60 s skew.
    Expired,
    /// `iat` and `nbf` an hour ahead (`exp` two hours ahead).
    IssuedInFuture,
    /// no `sub` claim.
    MissingSub,
    /// a `kid` the JWKS does not have, signed by a key that is not published either.
    UnknownKid,
    /// RS256 signed by a 1024-bit RSA key that the JWKS does publish (keys under 2048 bits must be refused).
    WeakRsaKey,
}

impl Forgery {
    pub const ALL: [Forgery; 14] = [
        Forgery::Valid,
        Forgery::OtherKey,
        Forgery::AlgNone,
        Forgery::Hs256WithPublicKeyPem,
        Forgery::Hs256WithPublicKeyJwk,
        Forgery::WrongIssuer,
        Forgery::WrongAudience,
        Forgery::WrongNonce,
        Forgery::MissingNonce,
        Forgery::Expired,
        Forgery::IssuedInFuture,
        Forgery::MissingSub,
        Forgery::UnknownKid,
        Forgery::WeakRsaKey,
    ];

    /// Every variant but [`Forgery::Valid`]: tokens a relying party must refuse.
    pub fn forged() -> impl Iterator<Item = Forgery> {
        Forgery::ALL.into_iter().filter(|f| *f != Forgery::Valid)
    }
}

/// One request to the authorization endpoint.
#[derive(Clone, Debug)]
pub struct AuthRequest {
    pub query: Vec<(String, String)>,
    /// The code it redirected back with.
    pub code: String,
}

impl AuthRequest {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn state(&self) -> Option<&str> {
        self.param("state")
    }
    pub fn nonce(&self) -> Option<&str> {
        self.param("nonce")
    }
    pub fn redirect_uri(&self) -> Option<&str> {
        self.param("redirect_uri")
    }
    pub fn code_challenge(&self) -> Option<&str> {
        self.param("code_challenge")
    }
    pub fn code_challenge_method(&self) -> Option<&str> {
        self.param("code_challenge_method")
    }
    pub fn client_id(&self) -> Option<&str> {
        self.param("client_id")
    }
    pub fn scope(&self) -> Option<&str> {
        self.param("scope")
    }
}

/// One request to the token endpoint, as received.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
    pub form: Vec<(String, String)>,
}

impl TokenRequest {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn code_verifier(&self) -> Option<&str> {
        self.field("code_verifier")
    }
    /// (client_id, client_secret) from `Authorization: Basic` (form-urldecoded as RFC 6749 2.3.1 says).
    pub fn basic_credentials(&self) -> Option<(String, String)> {
        let (id, secret) = self.basic_credentials_raw()?;
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        Some((dec(&id), dec(&secret)))
    }
    /// (client_id, client_secret) from `Authorization: Basic` exactly as sent (not urldecoded).
    pub fn basic_credentials_raw(&self) -> Option<(String, String)> {
        let a = self.authorization.as_deref()?;
        let (scheme, b64) = a.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
        let (id, secret) = raw.split_once(':')?;
        Some((id.to_string(), secret.to_string()))
    }
    /// (client_id, client_secret) from the form body (`client_secret_post`).
    pub fn post_credentials(&self) -> Option<(String, String)> {
        Some((
            self.field("client_id")?.to_string(),
            self.field("client_secret")?.to_string(),
        ))
    }
}

/// One request to the userinfo endpoint.
#[derive(Clone, Debug)]
pub struct UserinfoRequest {
    pub method: String,
    pub authorization: Option<String>,
}

struct Keys {
    legit_pkcs8: Vec<u8>,
    legit_jwk: Value,
    legit_pem: String,
    other_pkcs8: Vec<u8>,
    weak_rsa_der: Vec<u8>,
    weak_rsa_jwk: Value,
}

/// An outage the rogue IdP plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outage {
    /// Answers normally.
    None,
    /// Every request is answered 503.
    Down,
    /// Every request is held for two minutes (a hanging IdP).
    Hang,
}

struct State {
    outage: Outage,
    issuer: String,
    client_id: String,
    subject: String,
    claims: Map<String, Value>,
    userinfo: Option<Value>,
    forgery: Forgery,
    id_token_override: Option<String>,
    token_response_override: Option<(u16, Value)>,
    discovery_extra: Map<String, Value>,
    auth_requests: Vec<AuthRequest>,
    token_requests: Vec<TokenRequest>,
    userinfo_requests: Vec<UserinfoRequest>,
    keys: Arc<Keys>,
}

pub struct RogueIdp {
    addr: SocketAddr,
    issuer: String,
    state: Arc<Mutex<State>>,
    keys: Arc<Keys>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RogueIdp {
    /// Start for client `headgate`, subject `rogue-sub`, forgery [`Forgery::Valid`].
    pub fn start() -> RogueIdp {
        RogueIdp::start_for(ROGUE_CLIENT_ID)
    }

    /// Start for `client_id` (the `aud` of its valid tokens).
    pub fn start_for(client_id: &str) -> RogueIdp {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind rogue IdP");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = format!("http://{addr}");
        let keys = Arc::new(make_keys());
        let mut claims = Map::new();
        claims.insert("email".into(), json!("mallory@example.com"));
        claims.insert("email_verified".into(), json!(true));
        claims.insert("name".into(), json!("Mallory Rogue"));
        let state = Arc::new(Mutex::new(State {
            outage: Outage::None,
            issuer: issuer.clone(),
            client_id: client_id.to_string(),
            subject: ROGUE_SUB.to_string(),
            claims,
            userinfo: None,
            forgery: Forgery::Valid,
            id_token_override: None,
            token_response_override: None,
            discovery_extra: Map::new(),
            auth_requests: Vec::new(),
            token_requests: Vec::new(),
            userinfo_requests: Vec::new(),
            keys: keys.clone(),
        }));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("rogue-idp".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    loop {
                        tokio::select! {
                            _ = &mut rx => break,
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else { continue };
                                let st = st.clone();
                                tokio::spawn(async move {
                                    let svc = hyper::service::service_fn(move |req| {
                                        let st = st.clone();
                                        async move { Ok::<_, std::convert::Infallible>(handle(st, req).await) }
                                    });
                                    let _ = hyper::server::conn::http1::Builder::new()
                                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                        .await;
                                });
                            }
                        }
                    }
                });
            })
            .unwrap();
        RogueIdp {
            addr,
            issuer,
            state,
            keys,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    pub fn client_id(&self) -> String {
        self.state.lock().unwrap().client_id.clone()
    }
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }
    pub fn authorization_endpoint(&self) -> String {
        format!("{}/authorize", self.issuer)
    }
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }
    pub fn userinfo_endpoint(&self) -> String {
        format!("{}/userinfo", self.issuer)
    }
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }
    pub fn end_session_endpoint(&self) -> String {
        format!("{}/logout", self.issuer)
    }

    /// What the token endpoint's ID token will be from now on.
    pub fn set_forgery(&self, f: Forgery) {
        self.state.lock().unwrap().forgery = f;
    }
    pub fn forgery(&self) -> Forgery {
        self.state.lock().unwrap().forgery
    }
    /// The `sub` of its tokens and userinfo.
    pub fn set_subject(&self, sub: &str) {
        self.state.lock().unwrap().subject = sub.to_string();
    }
    /// An extra claim in its ID tokens and default userinfo (default: `email` mallory@example.com, verified,
    /// `name` "Mallory Rogue").
    pub fn set_claim(&self, name: &str, value: impl Into<Value>) {
        self.state
            .lock()
            .unwrap()
            .claims
            .insert(name.to_string(), value.into());
    }
    pub fn remove_claim(&self, name: &str) {
        self.state.lock().unwrap().claims.remove(name);
    }
    /// Answer userinfo with exactly this JSON (default: `sub` and the extra claims).
    pub fn set_userinfo(&self, v: Option<Value>) {
        self.state.lock().unwrap().userinfo = v;
    }
    /// Answer the token endpoint with this ID token as is (None: build it from the forgery).
    pub fn set_id_token(&self, token: Option<String>) {
        self.state.lock().unwrap().id_token_override = token;
    }
    /// Answer the token endpoint with this status and JSON instead (e.g. `400 {"error":"invalid_client"}`).
    pub fn set_token_response(&self, r: Option<(u16, Value)>) {
        self.state.lock().unwrap().token_response_override = r;
    }
    /// Add or replace a member of the discovery document (e.g. a different `issuer`).
    pub fn set_discovery_field(&self, name: &str, value: Value) {
        self.state
            .lock()
            .unwrap()
            .discovery_extra
            .insert(name.to_string(), value);
    }

    pub fn auth_requests(&self) -> Vec<AuthRequest> {
        self.state.lock().unwrap().auth_requests.clone()
    }
    pub fn last_auth_request(&self) -> Option<AuthRequest> {
        self.state.lock().unwrap().auth_requests.last().cloned()
    }
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state.lock().unwrap().token_requests.clone()
    }
    pub fn last_token_request(&self) -> Option<TokenRequest> {
        self.state.lock().unwrap().token_requests.last().cloned()
    }
    pub fn userinfo_requests(&self) -> Vec<UserinfoRequest> {
        self.state.lock().unwrap().userinfo_requests.clone()
    }

    /// The ID token `forgery` would give for an authorization request with `nonce`.
    pub fn id_token(&self, forgery: Forgery, nonce: Option<&str>) -> String {
        let st = self.state.lock().unwrap();
        build_id_token(&st, forgery, nonce)
    }

    /// Sign any header and claims with the legitimate key (ES256; the header is used as given).
    pub fn sign_es256(&self, header: &Value, claims: &Value) -> String {
        sign_with(header, claims, Signer::Es256(&self.keys.legit_pkcs8))
    }

    /// Play an outage (or stop playing one).
    pub fn set_outage(&self, o: Outage) {
        self.state.lock().unwrap().outage = o;
    }

    /// Rotate the signing key: a new ES256 key under the new `kid` signs the ID tokens from now on, and the JWKS
    /// publishes only it (the old key is withdrawn).
    pub fn rotate_key(&self, kid: &str) {
        let keys = make_keys_with_kid(kid);
        self.state.lock().unwrap().keys = Arc::new(keys);
    }

    /// Sign any header and claims with the ES256 key that is *not* published (a forgery; header as given).
    pub fn sign_es256_unpublished(&self, header: &Value, claims: &Value) -> String {
        sign_with(header, claims, Signer::Es256(&self.keys.other_pkcs8))
    }

    /// HS256 over header and claims with the published public key's PEM as the secret (key confusion).
    pub fn sign_hs256_with_public_pem(&self, header: &Value, claims: &Value) -> String {
        let mut h = header.clone();
        h["alg"] = json!("HS256");
        sign_with(&h, claims, Signer::Hs256(self.keys.legit_pem.as_bytes()))
    }

    /// An unsigned token (`alg: none`, empty signature).
    pub fn unsigned(&self, claims: &Value) -> String {
        sign_with(
            &json!({ "alg": "none", "typ": "JWT", "kid": LEGIT_KID }),
            claims,
            Signer::None,
        )
    }

    /// The legitimate public key as a JWK (kid [`LEGIT_KID`], alg ES256).
    pub fn public_jwk(&self) -> Value {
        self.keys.legit_jwk.clone()
    }

    /// The legitimate public key as PEM (SubjectPublicKeyInfo).
    pub fn public_key_pem(&self) -> String {
        self.keys.legit_pem.clone()
    }

    /// The JWKS it publishes.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.keys.legit_jwk, self.keys.weak_rsa_jwk] })
    }
}

impl Drop for RogueIdp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn make_keys() -> Keys {
    make_keys_with_kid(LEGIT_KID)
}

fn make_keys_with_kid(kid: &str) -> Keys {
    let legit = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = legit.public_key_raw(); // 0x04 || x || y
    assert_eq!(raw.len(), 65, "uncompressed P-256 point");
    let legit_jwk = json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
    });
    let weak_rsa_jwk = json!({
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": WEAK_RSA_KID, "e": "AQAB", "n": WEAK_RSA_N,
    });
    Keys {
        legit_pkcs8: legit.serialize_der(),
        legit_jwk,
        legit_pem: legit.public_key_pem(),
        other_pkcs8: other.serialize_der(),
        weak_rsa_der: STANDARD.decode(WEAK_RSA_PKCS1_DER_B64).unwrap(),
        weak_rsa_jwk,
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn random(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).unwrap();
    URL_SAFE_NO_PAD.encode(b)
}

enum Signer<'a> {
    Es256(&'a [u8]),
    Rs256(&'a [u8]),
    Hs256(&'a [u8]),
    None,
}

fn sign_with(header: &Value, claims: &Value, signer: Signer) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    );
    let sig = match signer {
        Signer::Es256(der) => jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_ec_der(der),
            Algorithm::ES256,
        ),
        Signer::Rs256(der) => jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_rsa_der(der),
            Algorithm::RS256,
        ),
        Signer::Hs256(secret) => jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_secret(secret).unwrap(),
            Algorithm::HS256,
        ),
        Signer::None => Ok(String::new()),
    }
    .expect("sign rogue token");
    format!("{input}.{sig}")
}

fn build_id_token(st: &State, forgery: Forgery, nonce: Option<&str>) -> String {
    let t = now();
    let mut c = Map::new();
    c.insert("iss".into(), json!(st.issuer));
    c.insert("sub".into(), json!(st.subject));
    c.insert("aud".into(), json!(st.client_id));
    c.insert("iat".into(), json!(t));
    c.insert("exp".into(), json!(t + 300));
    c.insert("auth_time".into(), json!(t));
    if let Some(n) = nonce {
        c.insert("nonce".into(), json!(n));
    }
    for (k, v) in &st.claims {
        c.insert(k.clone(), v.clone());
    }
    let kid = st.keys.legit_jwk["kid"].clone();
    let mut header = json!({ "alg": "ES256", "typ": "JWT", "kid": kid });
    let keys = &st.keys;
    let mut signer = Signer::Es256(&keys.legit_pkcs8);
    let hs_jwk_secret;
    match forgery {
        Forgery::Valid => {}
        Forgery::OtherKey => signer = Signer::Es256(&keys.other_pkcs8),
        Forgery::AlgNone => {
            header = json!({ "alg": "none", "typ": "JWT", "kid": LEGIT_KID });
            signer = Signer::None;
        }
        Forgery::Hs256WithPublicKeyPem => {
            header["alg"] = json!("HS256");
            signer = Signer::Hs256(keys.legit_pem.as_bytes());
        }
        Forgery::Hs256WithPublicKeyJwk => {
            header["alg"] = json!("HS256");
            hs_jwk_secret = serde_json::to_string(&keys.legit_jwk).unwrap();
            signer = Signer::Hs256(hs_jwk_secret.as_bytes());
        }
        Forgery::WrongIssuer => {
            c.insert("iss".into(), json!(format!("{}/other", st.issuer)));
        }
        Forgery::WrongAudience => {
            c.insert("aud".into(), json!("some-other-client"));
        }
        Forgery::WrongNonce => {
            c.insert("nonce".into(), json!(format!("forged-{}", random(16))));
        }
        Forgery::MissingNonce => {
            c.remove("nonce");
        }
        Forgery::Expired => {
            c.insert("iat".into(), json!(t - 7200));
            c.insert("auth_time".into(), json!(t - 7200));
            c.insert("exp".into(), json!(t - 3600));
        }
        Forgery::IssuedInFuture => {
            c.insert("iat".into(), json!(t + 3600));
            c.insert("nbf".into(), json!(t + 3600));
            c.insert("auth_time".into(), json!(t + 3600));
            c.insert("exp".into(), json!(t + 7200));
        }
        Forgery::MissingSub => {
            c.remove("sub");
        }
        Forgery::UnknownKid => {
            header["kid"] = json!(UNKNOWN_KID);
            signer = Signer::Es256(&keys.other_pkcs8);
        }
        Forgery::WeakRsaKey => {
            header = json!({ "alg": "RS256", "typ": "JWT", "kid": WEAK_RSA_KID });
            signer = Signer::Rs256(&keys.weak_rsa_der);
        }
    }
    sign_with(&header, &Value::Object(c), signer)
}

fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(body.into()))
        .unwrap()
}

fn json_response(status: u16, v: &Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", serde_json::to_vec(v).unwrap())
}

async fn handle(st: Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let outage = st.lock().unwrap().outage;
    match outage {
        Outage::None => {}
        Outage::Down => return json_response(503, &json!({ "error": "down" })),
        Outage::Hang => {
            tokio::time::sleep(std::time::Duration::from_secs(120)).await;
            return json_response(503, &json!({ "error": "hung" }));
        }
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    match (parts.method.as_str(), parts.uri.path()) {
        ("GET", "/.well-known/openid-configuration") => {
            let s = st.lock().unwrap();
            let i = &s.issuer;
            let mut d = json!({
                "issuer": i,
                "authorization_endpoint": format!("{i}/authorize"),
                "token_endpoint": format!("{i}/token"),
                "userinfo_endpoint": format!("{i}/userinfo"),
                "jwks_uri": format!("{i}/jwks"),
                "end_session_endpoint": format!("{i}/logout"),
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256", "RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "code_challenge_methods_supported": ["S256"],
                "scopes_supported": ["openid", "email", "profile"],
            });
            for (k, v) in &s.discovery_extra {
                d[k] = v.clone();
            }
            json_response(200, &d)
        }
        ("GET", "/jwks") => {
            let s = st.lock().unwrap();
            json_response(
                200,
                &json!({ "keys": [s.keys.legit_jwk, s.keys.weak_rsa_jwk] }),
            )
        }
        ("GET", "/authorize") => {
            let code = random(24);
            let redirect = query
                .iter()
                .find(|(n, _)| n == "redirect_uri")
                .map(|(_, v)| v.clone());
            let state = query
                .iter()
                .find(|(n, _)| n == "state")
                .map(|(_, v)| v.clone());
            st.lock().unwrap().auth_requests.push(AuthRequest {
                query: query.clone(),
                code: code.clone(),
            });
            let Some(redirect) = redirect.and_then(|r| url::Url::parse(&r).ok()) else {
                return respond(400, "text/plain", "rogue IdP: missing or bad redirect_uri");
            };
            let mut target = redirect;
            {
                let mut q = target.query_pairs_mut();
                q.append_pair("code", &code);
                if let Some(s) = &state {
                    q.append_pair("state", s);
                }
            }
            Response::builder()
                .status(302)
                .header("location", target.as_str())
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
        ("POST", "/token") => {
            let form: Vec<(String, String)> =
                url::form_urlencoded::parse(&body).into_owned().collect();
            let mut s = st.lock().unwrap();
            s.token_requests.push(TokenRequest {
                authorization: header("authorization"),
                content_type: header("content-type"),
                body: String::from_utf8_lossy(&body).into_owned(),
                form: form.clone(),
            });
            if let Some((status, v)) = &s.token_response_override {
                return json_response(*status, v);
            }
            let code = form
                .iter()
                .find(|(n, _)| n == "code")
                .map(|(_, v)| v.as_str());
            let auth = s
                .auth_requests
                .iter()
                .rev()
                .find(|a| Some(a.code.as_str()) == code)
                .or(s.auth_requests.last())
                .cloned();
            let nonce = auth.as_ref().and_then(|a| a.nonce().map(str::to_string));
            let id_token = match &s.id_token_override {
                Some(t) => t.clone(),
                None => build_id_token(&s, s.forgery, nonce.as_deref()),
            };
            json_response(
                200,
                &json!({
                    "access_token": format!("rogue-at-{}", random(16)),
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "refresh_token": format!("rogue-rt-{}", random(16)),
                    "id_token": id_token,
                    "scope": auth.as_ref().and_then(|a| a.scope().map(str::to_string)).unwrap_or_else(|| "openid".into()),
                }),
            )
        }
        (m @ ("GET" | "POST"), "/userinfo") => {
            let mut s = st.lock().unwrap();
            s.userinfo_requests.push(UserinfoRequest {
                method: m.to_string(),
                authorization: header("authorization"),
            });
            let v = match &s.userinfo {
                Some(v) => v.clone(),
                None => {
                    let mut m = s.claims.clone();
                    m.insert("sub".into(), json!(s.subject));
                    Value::Object(m)
                }
            };
            json_response(200, &v)
        }
        ("GET", "/logout") => match query.iter().find(|(n, _)| n == "post_logout_redirect_uri") {
            Some((_, r)) => Response::builder()
                .status(302)
                .header("location", r.as_str())
                .body(Full::new(Bytes::new()))
                .unwrap(),
            None => respond(200, "text/html", "<p>signed out</p>"),
        },
        _ => respond(404, "text/plain", "rogue IdP: not found"),
    }
}

/// The modulus of the 1024-bit test key below (base64url).
const WEAK_RSA_N: &str = "wTVRQKWg9hwQALkeIoAGFZajq8-X3-hpb5L4Ib7_Djuwl38fYY2YoaczPTiQEQgxra229x-aEdzCsoB8x9NcgpksHc3fOgoOxm5Ry3NA-zHhzzI9NVVSla7ne1mT-IYIszlrkGvW-ezSTmwjZvCcO4uElBWOGaw6mXzG39vuNZs";

/// A throwaway 1024-bit RSA private key (PKCS#1 DER, base64) made for these tests only: too small on purpose, so
/// a relying party must refuse what it signs. Not a secret.
const WEAK_RSA_PKCS1_DER_B64: &str = concat!(
    "MIICXAIBAAKBgQDBNVFApaD2HBAAuR4igAYVlqOrz5ff6Glvkvghvv8OO7CXfx9hjZihpzM9OJARCDGtrbb3H5oR3MKygHzH01yC",
    "mSwdzd86Cg7GblHLc0D7MeHPMj01VVKVrud7WZP4hgizOWuQa9b57NJObCNm8Jw7i4SUFY4ZrDqZfMbf2+41mwIDAQABAoGAHLed",
    "DRvRMeN36XOabAxVWy4Zw7bGXyx/R2sz4GgwJuBuXgYyFuDh990PO6FFoJJ0N9ljIZYb413Jvphkc5sR28FPChtchv9oBdMLkxEG",
    "mu2Gx/pqi2IaDp1sxn7xDtai/TxBviWT1o6BGpVyFBW/qTGV3Jx2juI2/BLAFTmdE4kCQQDqMsw6cj/9Qy512TMtX+X0DMKw7kJd",
    "64/wlQ/RMOFENddm5TVZHljVc4MXwMfv50QWYhJcA6I+8LKqgHAlDds3AkEA0zGuBU83tMfhyoxa3ZRzI48nwMMxmkCOEywGrMwq",
    "r8Ke3vuBHn7O6nBz2mY1JhWuVphe0MS/d9tiRMaiVsKSvQJAB+7olCJCoKWh8UQGQ8c31uiHv86SWPQd0Bx8iK2LM/BO96FUCUzJ",
    "3ZEoI6nYG/xNhiSUUqGc4Vzt8HChW9/4SQJBAMUyCQQKIMCbNjfS7/EfcJbOT1cMqx8VkdNS83SbOmxcc81O1xQrYXbDw1k0wAGs",
    "ktlmcnnKi+EVJl+DfQc3rJ0CQHyKlFtbusYacXoiOYwoOfTBIFPPDoX+Oip1TLbwiS0WE07m0EUcnvjA5SWyT297o1JU9u5D+OyO",
    "upnfR0f3AoU=",
);
