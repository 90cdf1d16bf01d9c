//! The signed identity assertion (S15): `X-Headgate-Assertion`, a short-lived ES256 JWT that tells the upstream
//! who is there, so it need not trust a bare header. Also its signing keys, the JWKS at `/_headgate/jwks.json`,
//! `headgate keys list|rotate|revoke`, and [`verify`], the reference verifier (`examples/verify_assertion.rs`).
//!
//! Keys. P-256 keys, kid = the RFC 7638 thumbprint of the public key. Private keys are stored encrypted
//! (ChaCha20-Poly1305 under the `KeyEncryption` key derived from `server.cookie_secret`, bound to the kid);
//! a key that only `cookie_secret_previous` opens is re-encrypted under the current secret when loaded, so
//! dropping the previous secret later loses nothing. A key's life: `Next` (in the JWKS, not signing) →
//! `Current` (the one signing key) → `Retired` (in the JWKS until every token it signed has expired, then
//! deleted); `Revoked` at any time (out of the JWKS at once, private key erased, never signs again).
//!
//! Publish before sign. `keys rotate` stores a `Next` key. A running headgate publishes it at its next reload
//! and records when (`published`); it starts signing with it only [`PUBLISH_DELAY`] later, which is longer
//! than verifiers may cache the JWKS ([`JWKS_MAX_AGE`]). The delay counts from the first time a running
//! headgate served the key, not from `keys rotate`: a key created while headgate was stopped was seen by
//! nobody. Exceptions, where there is no key to keep signing with: the very first key, and the takeover after
//! the current key is revoked (or can no longer be decrypted).
//!
//! Every headgate reloads the keys from the store every [`RELOAD_EVERY`] seconds, so changes made by the CLI or
//! another replica take effect without a restart. The private key is decrypted once per load and kept in
//! memory; minting never touches the store.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::{HeaderValue, Response, StatusCode, header};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey as EcKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::app::{Body, full};
use crate::config::Config;
use crate::crypto::{Keys, Purpose, Random};
use crate::session::VerifiedSession;
use crate::store::{
    Link, LinkState, SessionKey, SessionSubject, SigningKey, SigningKeyState, Store, StoreError,
};

/// The header the upstream receives the assertion in.
pub const HEADER: &str = "x-headgate-assertion";
/// Where the public keys are served.
pub const JWKS_PATH: &str = "/_headgate/jwks.json";
/// The only algorithm headgate signs with and [`verify`] accepts.
pub const ALG: &str = "ES256";
/// The only JOSE `typ` [`verify`] accepts.
pub const TYP: &str = "JWT";
/// How long verifiers (and caches) may keep the JWKS: its `Cache-Control: max-age`.
pub const JWKS_MAX_AGE: i64 = 300;
/// How long a new key is published before it signs: twice the JWKS cache lifetime, so a verifier that
/// fetched the JWKS just before the key appeared has fetched it again, with the key, before the key signs.
pub const PUBLISH_DELAY: i64 = 2 * JWKS_MAX_AGE;
/// The longest `headers.assertion_lifetime`.
pub const MAX_LIFETIME: i64 = 300;
/// Clock skew [`verify`] tolerates on `exp`, `nbf` and `iat`.
pub const LEEWAY: i64 = 30;
/// How often a running headgate reloads the keys from the store (seconds).
pub const RELOAD_EVERY: i64 = 30;
/// How long a retired key stays in the JWKS: another replica may sign with it until its next reload, the token
/// lives up to [`MAX_LIFETIME`], and verifiers allow some skew (a minute, to be generous).
pub const RETIRED_RETENTION: i64 = RELOAD_EVERY + MAX_LIFETIME + 60;
/// How long a minted assertion is reused for the same session, audience and claims.
pub const MINT_CACHE_SECS: i64 = 5;
/// At most this many cached assertions.
pub const MINT_CACHE_MAX: usize = 4096;
/// Longest token [`verify`] looks at.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

// ----- claims -----

/// How the person signed in (the `amr` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    Oidc,
    ApiKey,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Oidc => "oidc",
            AuthMethod::ApiKey => "api_key",
        }
    }
}

/// Who is there, as the caller knows it; [`Assertions::mint`] adds `iss`, `aud`, the times, `jti` and `sid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionClaims {
    /// The session (its store key; the token carries only a hash of it, `sid`).
    pub session: SessionKey,
    pub sub: String,
    /// Verified emails only.
    pub email: Option<String>,
    pub name: Option<String>,
    /// The headgate role (`None` for an API-key session, which has every capability but no role).
    pub role: Option<String>,
    /// Capability names.
    pub caps: Vec<&'static str>,
    pub hs_user_id: Option<String>,
    pub hs_user: Option<String>,
    pub amr: AuthMethod,
}

impl AssertionClaims {
    /// The claims of a verified session: the person (their verified email, role and capabilities, the
    /// Headscale user of an approved link) or, for an API-key session, `sub = "api_key:<prefix>"` with every
    /// capability and no role.
    pub fn for_session(s: &VerifiedSession, link: Option<&Link>) -> AssertionClaims {
        let link = link.filter(|l| l.state == LinkState::Approved);
        match (s.user(), &s.record().subject) {
            (Some(u), _) => AssertionClaims {
                session: *s.key(),
                sub: u.subject.clone(),
                email: u.email.clone().filter(|_| u.email_verified),
                name: u.name.clone(),
                role: Some(u.role.as_str().to_string()),
                caps: crate::roles::caps(u.role).names(),
                hs_user_id: link.map(|l| l.headscale_user_id.clone()),
                hs_user: link
                    .map(|l| l.headscale_name.clone())
                    .filter(|n| !n.is_empty()),
                amr: AuthMethod::Oidc,
            },
            (None, subject) => {
                let prefix = match subject {
                    SessionSubject::ApiKey { prefix, .. } => prefix.as_str(),
                    SessionSubject::User(_) => "",
                };
                AssertionClaims {
                    session: *s.key(),
                    sub: format!("api_key:{prefix}"),
                    email: None,
                    name: None,
                    role: None,
                    caps: crate::roles::Caps::ALL.names(),
                    hs_user_id: None,
                    hs_user: None,
                    amr: AuthMethod::ApiKey,
                }
            }
        }
    }
}

/// The payload of an assertion, as signed and as [`verify`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub caps: Vec<String>,
    #[serde(default)]
    pub hs_user_id: Option<String>,
    #[serde(default)]
    pub hs_user: Option<String>,
    /// Hex SHA-256 of the session's store key (never the raw session id).
    pub sid: String,
    /// `["oidc"]` or `["api_key"]`.
    pub amr: Vec<String>,
}

/// The `sid` claim of a session: hex SHA-256 of its store key.
pub fn sid_of(session: &SessionKey) -> String {
    crate::crypto::sha256(session.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `iss`: `server.base_url` without its trailing slash.
pub fn issuer(config: &Config) -> String {
    config
        .server
        .base_url
        .as_str()
        .trim_end_matches('/')
        .to_string()
}

/// `aud` for the proxied upstream: `headers.audience`, else the upstream's origin (`http://host:port`; a
/// `unix:` upstream's URL as written), else — forward-auth only — `server.base_url`'s origin. Forward-auth
/// verdicts use the audience of the host they decide for.
pub fn default_audience(config: &Config) -> String {
    if let Some(a) = &config.headers.audience {
        return a.clone();
    }
    match &config.upstream.url {
        Some(u) if u.scheme() == "unix" => u.as_str().to_string(),
        Some(u) => u.origin().ascii_serialization(),
        None => config.server.base_url.origin().ascii_serialization(),
    }
}

// ----- keys -----

fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

/// The public JWK (`kty`, `crv`, `x`, `y`, `kid`, `alg`, `use`) and the kid (RFC 7638 thumbprint).
pub(crate) fn public_jwk(vk: &VerifyingKey) -> (String, Value) {
    let point = vk.to_sec1_point(false);
    let bytes = point.as_bytes();
    debug_assert_eq!(bytes.len(), 65);
    let x = b64(&bytes[1..33]);
    let y = b64(&bytes[33..65]);
    // RFC 7638: the required members in lexicographic order, no whitespace.
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = b64(&crate::crypto::sha256(canonical.as_bytes()));
    let jwk = json!({
        "kty": "EC",
        "crv": "P-256",
        "x": x,
        "y": y,
        "kid": kid,
        "alg": ALG,
        "use": "sig",
    });
    (kid, jwk)
}

fn seal_aad(kid: &str) -> Vec<u8> {
    format!("headgate signing key {kid}").into_bytes()
}

/// A new P-256 key from `random` (a scalar out of range is drawn again; that happens with probability ~2^-32).
fn generate(random: &dyn Random) -> EcKey {
    loop {
        let mut b = [0u8; 32];
        random.fill(&mut b);
        let k = EcKey::from_slice(&b);
        b.fill(0);
        if let Ok(k) = k {
            return k;
        }
    }
}

/// What decrypting a stored key gave.
enum Unsealed {
    /// Opened with the current secret.
    Current(EcKey),
    /// Opened only with `cookie_secret_previous`: to be re-encrypted.
    Previous(EcKey),
    /// Neither secret opens it (or it does not match its kid).
    No,
}

/// A key that signs: its kid and the JOSE header, ready.
struct ActiveKey {
    kid: String,
    key: EcKey,
    header_b64: String,
}

impl ActiveKey {
    fn new(kid: String, key: EcKey) -> ActiveKey {
        let header = json!({ "alg": ALG, "kid": kid, "typ": TYP });
        ActiveKey {
            header_b64: b64(header.to_string().as_bytes()),
            kid,
            key,
        }
    }
}

/// The keys as last loaded.
struct Loaded {
    signer: Option<Arc<ActiveKey>>,
    /// The JWKS document, serialised once.
    jwks: String,
    /// Whether a load ever succeeded (before that, the JWKS endpoint answers 503).
    ready: bool,
}

/// Why an assertion could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(
        "no signing key is loaded (the store could not be read at start); the assertion cannot be signed"
    )]
    NoSigningKey,
}

/// Whether [`Assertions::sync`] runs in a serving headgate (it publishes keys) or in the CLI (it does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serving,
    Offline,
}

/// A signing key as `keys list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub kid: String,
    pub state: SigningKeyState,
    pub created: i64,
    pub published: Option<i64>,
    pub activated: Option<i64>,
    pub retired: Option<i64>,
    pub revoked: Option<i64>,
    /// Whether the JWKS lists it.
    pub in_jwks: bool,
}

/// Whether the JWKS lists `k` at `now`.
fn in_jwks(k: &SigningKey, now: i64) -> bool {
    match k.state {
        SigningKeyState::Next | SigningKeyState::Current => true,
        SigningKeyState::Retired => k.retired.is_none_or(|r| now < r + RETIRED_RETENTION),
        SigningKeyState::Revoked => false,
    }
}

struct CacheEntry {
    audience: String,
    claims: AssertionClaims,
    kid: String,
    minted: i64,
    /// The token as the header value every request hands on (cloning it shares the bytes).
    token: HeaderValue,
}

/// The assertion service: keys loaded from the store, minting with a short per-session cache, the JWKS.
pub struct Assertions {
    store: Store,
    /// Current and previous secret (decrypt with either, encrypt with the current one).
    keys: Arc<Keys>,
    /// The current secret only: tells keys that need re-encryption apart.
    current_only: Keys,
    random: Arc<dyn Random>,
    issuer: String,
    lifetime: i64,
    loaded: RwLock<Arc<Loaded>>,
    /// Per session, one entry per audience (forward-auth may protect several hosts).
    cache: Mutex<HashMap<SessionKey, Vec<CacheEntry>>>,
    /// The `aud` of assertions the proxy hands its upstream ([`default_audience`]).
    audience: String,
    /// One load at a time (the periodic reload, an explicit one, the CLI).
    syncing: tokio::sync::Mutex<()>,
}

impl Assertions {
    pub fn new(config: &Config, store: Store, keys: Arc<Keys>, random: Arc<dyn Random>) -> Self {
        Assertions {
            store,
            keys,
            current_only: Keys::new(&config.server.cookie_secret, None),
            random,
            issuer: issuer(config),
            lifetime: (config.headers.assertion_lifetime as i64).clamp(1, MAX_LIFETIME),
            loaded: RwLock::new(Arc::new(Loaded {
                signer: None,
                jwks: r#"{"keys":[]}"#.into(),
                ready: false,
            })),
            cache: Mutex::new(HashMap::new()),
            audience: default_audience(config),
            syncing: tokio::sync::Mutex::new(()),
        }
    }

    /// The `aud` of the assertions the reverse proxy hands its upstream (`headers.audience`, else the
    /// upstream's origin), computed once.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The first load, run to completion before the server accepts requests, so the first request already has
    /// a key (and the JWKS lists it). Blocks: runs the load on its own thread and runtime, so it may be called
    /// from inside a runtime, too. A failure is logged; the periodic reload tries again.
    pub fn load_blocking(&self, now: i64) {
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(self.refresh(now)).map_err(|e| e.to_string())
            })
            .join()
        });
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(
                "cannot load the assertion signing keys: {e}; upstreams get no X-Headgate-Assertion until it works"
            ),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Reload the keys from the store and do what is due: re-encrypt keys under the current secret, publish
    /// `Next` keys, promote one after [`PUBLISH_DELAY`], make a key when none can sign, delete retired keys
    /// whose tokens have all expired. Safe to call at any time (the periodic reload does every
    /// [`RELOAD_EVERY`] seconds).
    pub async fn refresh(&self, now: i64) -> Result<(), StoreError> {
        let _one = self.syncing.lock().await;
        let (keys, usable) = self.sync(now, Mode::Serving).await?;
        let signer = keys
            .iter()
            .filter(|k| k.state == SigningKeyState::Current)
            .filter_map(|k| usable.get(&k.kid).map(|key| (k, key)))
            .max_by_key(|(k, _)| k.activated)
            .map(|(k, key)| Arc::new(ActiveKey::new(k.kid.clone(), key.clone())));
        let mut published: Vec<&SigningKey> = keys.iter().filter(|k| in_jwks(k, now)).collect();
        // The signing key first, then the next one, then retired keys, newest first.
        published.sort_by_key(|k| {
            let rank = match k.state {
                SigningKeyState::Current => 0,
                SigningKeyState::Next => 1,
                _ => 2,
            };
            (rank, -k.created)
        });
        let mut list = Vec::new();
        for k in published {
            match serde_json::from_str::<Value>(&k.public_jwk) {
                Ok(v) => list.push(v),
                Err(e) => {
                    tracing::error!(kid = %k.kid, "signing key's public JWK does not parse: {e}")
                }
            }
        }
        let jwks = json!({ "keys": list }).to_string();
        let signing_kid = signer.as_ref().map(|s| s.kid.clone());
        let old = {
            let mut l = self.loaded.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(
                &mut *l,
                Arc::new(Loaded {
                    signer,
                    jwks,
                    ready: true,
                }),
            )
        };
        let old_kid = old.signer.as_ref().map(|s| s.kid.clone());
        if old_kid != signing_kid {
            match &signing_kid {
                Some(k) => tracing::info!(kid = %k, "assertions are now signed with this key"),
                None => tracing::error!("no assertion signing key can be used"),
            }
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.retain(|_, list| {
                list.retain(|e| Some(&e.kid) == signing_kid.as_ref());
                !list.is_empty()
            });
        }
        Ok(())
    }

    /// Load, maintain and, where none can sign, make a current key. Returns the keys as stored afterwards and
    /// the private keys that decrypt.
    async fn sync(
        &self,
        now: i64,
        mode: Mode,
    ) -> Result<(Vec<SigningKey>, HashMap<String, EcKey>), StoreError> {
        use SigningKeyState as S;
        let stored = self.store.signing_keys().await?;
        let mut usable: HashMap<String, EcKey> = HashMap::new();
        let mut wrote = false;
        for k in &stored {
            match k.state {
                S::Revoked => continue,
                S::Retired => {
                    if k.retired.is_some_and(|r| now >= r + RETIRED_RETENTION) {
                        self.store.delete_signing_key(&k.kid).await?;
                        wrote = true;
                        tracing::info!(kid = %k.kid, "deleted a retired signing key: every token it signed has expired");
                        continue;
                    }
                }
                S::Next | S::Current => {}
            }
            match self.unseal(k) {
                Unsealed::Current(key) => {
                    usable.insert(k.kid.clone(), key);
                }
                Unsealed::Previous(key) => {
                    let sealed = self.keys.seal(
                        Purpose::KeyEncryption,
                        &*self.random,
                        &seal_aad(&k.kid),
                        key.to_bytes().as_slice(),
                    );
                    self.store.reseal_signing_key(&k.kid, sealed).await?;
                    wrote = true;
                    tracing::info!(kid = %k.kid, "re-encrypted a signing key under the current server.cookie_secret");
                    usable.insert(k.kid.clone(), key);
                }
                Unsealed::No => {
                    if matches!(k.state, S::Next | S::Current) {
                        tracing::warn!(
                            kid = %k.kid,
                            "neither server.cookie_secret nor server.cookie_secret_previous decrypts this signing key \
                             (was cookie_secret changed without keeping the old one as cookie_secret_previous?): \
                             retiring it"
                        );
                        self.store
                            .set_signing_key_state(&k.kid, S::Retired, now)
                            .await?;
                        wrote = true;
                    }
                }
            }
        }
        let stored = if wrote {
            self.store.signing_keys().await?
        } else {
            stored
        };
        let current = stored
            .iter()
            .find(|k| k.state == S::Current && usable.contains_key(&k.kid));
        let mut nexts: Vec<&SigningKey> = stored
            .iter()
            .filter(|k| k.state == S::Next && usable.contains_key(&k.kid))
            .collect();
        nexts.sort_by_key(|k| (k.published.unwrap_or(i64::MAX), k.created));
        let mut wrote = false;
        if mode == Mode::Serving {
            for n in &nexts {
                if n.published.is_none() {
                    self.store.mark_signing_key_published(&n.kid, now).await?;
                    wrote = true;
                    tracing::info!(
                        kid = %n.kid,
                        "published the next signing key in {JWKS_PATH}; it signs in {PUBLISH_DELAY} s"
                    );
                }
            }
        }
        let promote = nexts
            .first()
            .filter(|n| current.is_none() || n.published.is_some_and(|p| now >= p + PUBLISH_DELAY));
        let have_current = if let Some(n) = promote {
            self.store
                .set_signing_key_state(&n.kid, S::Current, now)
                .await?;
            wrote = true;
            if current.is_some() {
                tracing::info!(kid = %n.kid, "rotated the assertion signing key");
            } else {
                tracing::warn!(
                    kid = %n.kid,
                    "no current signing key: the next key signs at once (verifiers that cached the JWKS refetch it \
                     for the new kid)"
                );
            }
            true
        } else {
            current.is_some()
        };
        if !have_current {
            let (record, key) = self.new_key(now);
            let kid = record.kid.clone();
            self.store.put_signing_key(record).await?;
            self.store
                .set_signing_key_state(&kid, S::Current, now)
                .await?;
            wrote = true;
            if stored.is_empty() {
                tracing::info!(kid = %kid, "created the assertion signing key");
            } else {
                tracing::warn!(kid = %kid, "no usable signing key: created a new one, signing at once");
            }
            usable.insert(kid, key);
        }
        let stored = if wrote {
            let again = self.store.signing_keys().await?;
            // Replicas on a shared store may have added keys meanwhile (two starting at once each make one,
            // the later one retiring the other): those are usable here too.
            for k in &again {
                if matches!(k.state, S::Next | S::Current | S::Retired)
                    && !usable.contains_key(&k.kid)
                    && let Unsealed::Current(key) | Unsealed::Previous(key) = self.unseal(k)
                {
                    usable.insert(k.kid.clone(), key);
                }
            }
            again
        } else {
            stored
        };
        Ok((stored, usable))
    }

    fn unseal(&self, k: &SigningKey) -> Unsealed {
        let aad = seal_aad(&k.kid);
        let (plain, previous) =
            match self
                .current_only
                .open(Purpose::KeyEncryption, &aad, &k.private_enc)
            {
                Some(p) => (p, false),
                None => match self.keys.open(Purpose::KeyEncryption, &aad, &k.private_enc) {
                    Some(p) => (p, true),
                    None => return Unsealed::No,
                },
            };
        let Ok(key) = EcKey::from_slice(&plain) else {
            tracing::error!(kid = %k.kid, "a stored signing key does not decode");
            return Unsealed::No;
        };
        if public_jwk(key.verifying_key()).0 != k.kid {
            tracing::error!(kid = %k.kid, "a stored signing key does not match its kid");
            return Unsealed::No;
        }
        if previous {
            Unsealed::Previous(key)
        } else {
            Unsealed::Current(key)
        }
    }

    /// A new key, encrypted, as a `Next` record (not stored yet).
    fn new_key(&self, now: i64) -> (SigningKey, EcKey) {
        let key = generate(&*self.random);
        let (kid, jwk) = public_jwk(key.verifying_key());
        let private_enc = self.keys.seal(
            Purpose::KeyEncryption,
            &*self.random,
            &seal_aad(&kid),
            key.to_bytes().as_slice(),
        );
        let record = SigningKey {
            kid,
            created: now,
            state: SigningKeyState::Next,
            public_jwk: jwk.to_string(),
            private_enc,
            published: None,
            activated: None,
            retired: None,
            revoked: None,
        };
        (record, key)
    }

    /// Create a `Next` key (`headgate keys rotate`): in the JWKS as soon as a running headgate loads it, signing
    /// [`PUBLISH_DELAY`] after that. When a next key is already waiting, nothing changes: `Err` names it.
    pub async fn rotate(&self, now: i64) -> Result<Result<String, String>, StoreError> {
        let _one = self.syncing.lock().await;
        let stored = self.store.signing_keys().await?;
        if let Some(n) = stored.iter().find(|k| k.state == SigningKeyState::Next) {
            return Ok(Err(n.kid.clone()));
        }
        let (record, _) = self.new_key(now);
        let kid = record.kid.clone();
        self.store.put_signing_key(record).await?;
        Ok(Ok(kid))
    }

    /// Revoke a key (`headgate keys revoke`): out of the JWKS and never signing again, its private key erased.
    /// When it was the current key, the next key (or a new one) takes over at once. Returns the key that signs
    /// now, if the revoked one did.
    pub async fn revoke(&self, kid: &str, now: i64) -> Result<Option<String>, StoreError> {
        let _one = self.syncing.lock().await;
        let before = self.store.signing_keys().await?;
        let Some(k) = before.iter().find(|k| k.kid == kid) else {
            return Err(StoreError::NotFound(format!(
                "signing key {kid} (`headgate keys list` shows the kids)"
            )));
        };
        let was_current = k.state == SigningKeyState::Current;
        self.store
            .set_signing_key_state(kid, SigningKeyState::Revoked, now)
            .await?;
        if !was_current {
            return Ok(None);
        }
        let (keys, _) = self.sync(now, Mode::Offline).await?;
        Ok(keys
            .iter()
            .find(|k| k.state == SigningKeyState::Current)
            .map(|k| k.kid.clone()))
    }

    /// Every stored key (`headgate keys list`), oldest first.
    pub async fn list(&self, now: i64) -> Result<Vec<KeyInfo>, StoreError> {
        let mut keys = self.store.signing_keys().await?;
        keys.sort_by_key(|k| (k.created, k.kid.clone()));
        Ok(keys
            .into_iter()
            .map(|k| KeyInfo {
                in_jwks: in_jwks(&k, now),
                kid: k.kid,
                state: k.state,
                created: k.created,
                published: k.published,
                activated: k.activated,
                retired: k.retired,
                revoked: k.revoked,
            })
            .collect())
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The kid that signs now, if any.
    pub fn signing_kid(&self) -> Option<String> {
        self.current().signer.as_ref().map(|s| s.kid.clone())
    }

    /// The JWKS document as served.
    pub fn jwks(&self) -> String {
        self.current().jwks.clone()
    }

    /// The lifetime of a minted assertion, in seconds.
    pub fn lifetime(&self) -> i64 {
        self.lifetime
    }

    fn cache_secs(&self) -> i64 {
        MINT_CACHE_SECS.min(self.lifetime / 4)
    }

    /// The assertion for `claims` and `audience` at `now`: reused for the same session, audience and claims for
    /// up to [`MINT_CACHE_SECS`] (while the same key signs), else freshly signed. Never blocks on I/O.
    pub fn mint(
        &self,
        claims: &AssertionClaims,
        audience: &str,
        now: i64,
    ) -> Result<String, MintError> {
        self.mint_header(claims, audience, now).map(|v| {
            v.to_str()
                .expect("a compact JWS is visible ASCII")
                .to_string()
        })
    }

    /// [`Assertions::mint`] as the `X-Headgate-Assertion` header value (what the request path uses: a cache
    /// hit costs no copy of the token).
    pub fn mint_header(
        &self,
        claims: &AssertionClaims,
        audience: &str,
        now: i64,
    ) -> Result<HeaderValue, MintError> {
        let loaded = self.current();
        let signer = loaded.signer.as_ref().ok_or(MintError::NoSigningKey)?;
        let ttl = self.cache_secs();
        let fresh = |e: &CacheEntry| now >= e.minted && now < e.minted + ttl;
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = cache
                .get(&claims.session)
                .and_then(|list| list.iter().find(|e| e.audience == audience))
                && e.kid == signer.kid
                && fresh(e)
                && e.claims == *claims
            {
                return Ok(e.token.clone());
            }
        }
        let token = HeaderValue::from_str(&self.sign(signer, claims, audience, now))
            .expect("a compact JWS is a valid header value");
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MINT_CACHE_MAX && !cache.contains_key(&claims.session) {
            cache.retain(|_, list| {
                list.retain(fresh);
                !list.is_empty()
            });
            if cache.len() >= MINT_CACHE_MAX
                && let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, list)| list.iter().map(|e| e.minted).max())
                    .map(|(k, _)| *k)
            {
                cache.remove(&oldest);
            }
        }
        let list = cache.entry(claims.session).or_default();
        list.retain(|e| e.audience != audience && fresh(e));
        list.push(CacheEntry {
            audience: audience.to_string(),
            claims: claims.clone(),
            kid: signer.kid.clone(),
            minted: now,
            token: token.clone(),
        });
        Ok(token)
    }

    fn sign(&self, signer: &ActiveKey, c: &AssertionClaims, audience: &str, now: i64) -> String {
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: audience.to_string(),
            iat: now,
            nbf: now,
            exp: now + self.lifetime,
            jti: crate::crypto::random_b64(&*self.random, 16),
            sub: c.sub.clone(),
            email: c.email.clone(),
            name: c.name.clone(),
            role: c.role.clone(),
            caps: c.caps.iter().map(|c| c.to_string()).collect(),
            hs_user_id: c.hs_user_id.clone(),
            hs_user: c.hs_user.clone(),
            sid: sid_of(&c.session),
            amr: vec![c.amr.as_str().to_string()],
        };
        let payload = serde_json::to_vec(&claims).expect("claims always serialise");
        let input = format!("{}.{}", signer.header_b64, b64(&payload));
        let sig: Signature = signer.key.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig.to_bytes()))
    }

    /// `GET /_headgate/jwks.json`.
    pub fn jwks_response(&self) -> Response<Body> {
        let loaded = self.current();
        if !loaded.ready {
            return Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CACHE_CONTROL, "no-store")
                .header(header::RETRY_AFTER, RELOAD_EVERY.to_string())
                .body(full(r#"{"error":"keys_unavailable"}"#))
                .expect("static response parts are valid");
        }
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::CACHE_CONTROL,
                format!("public, max-age={JWKS_MAX_AGE}"),
            )
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .body(full(loaded.jwks.clone()))
            .expect("static response parts are valid")
    }
}

// ----- verifying (the reference verifier, S15) -----

/// Why [`verify`] refused a token. The messages say what was wrong, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the JWKS is not usable: {0}")]
    Jwks(String),
    #[error("not a compact JWS (header.payload.signature in base64url): {0}")]
    Malformed(String),
    #[error("algorithm {0:?} is not accepted: only ES256")]
    Algorithm(String),
    #[error("typ {0:?} is not accepted: only \"JWT\"")]
    Type(String),
    #[error("the header has \"crit\" members, which this verifier does not understand")]
    Critical,
    #[error("the header names no kid")]
    NoKid,
    #[error("key {0:?} is not in the JWKS (unknown, retired long ago or revoked)")]
    UnknownKey(String),
    #[error("the signature does not verify")]
    Signature,
    #[error("issuer {found:?} is not the expected {expected:?}")]
    Issuer { found: String, expected: String },
    #[error("audience {found} does not include {expected:?}")]
    Audience { found: String, expected: String },
    #[error("the token expired at {exp} (now {now})")]
    Expired { exp: i64, now: i64 },
    #[error("the token is not valid before {nbf} (now {now})")]
    NotYetValid { nbf: i64, now: i64 },
    #[error("the claims are incomplete: {0}")]
    Claims(String),
}

fn unb64(part: &str, what: &str) -> Result<Vec<u8>, VerifyError> {
    B64.decode(part)
        .map_err(|_| VerifyError::Malformed(format!("the {what} is not base64url")))
}

fn json_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, VerifyError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(VerifyError::Malformed(format!(
            "the {what} is not a JSON object"
        ))),
    }
}

/// The verifying key for `kid` in `jwks_json`: an EC P-256 key (`alg`, when present, ES256; `use`, when
/// present, `sig`).
fn key_for(jwks_json: &str, kid: &str) -> Result<VerifyingKey, VerifyError> {
    let jwks: Value = serde_json::from_str(jwks_json)
        .map_err(|e| VerifyError::Jwks(format!("not JSON ({e})")))?;
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| VerifyError::Jwks("no \"keys\" array".into()))?;
    let s = |k: &Value, m: &str| k.get(m).and_then(Value::as_str).map(str::to_string);
    for k in keys {
        if s(k, "kid").as_deref() != Some(kid)
            || s(k, "kty").as_deref() != Some("EC")
            || s(k, "crv").as_deref() != Some("P-256")
            || s(k, "alg").is_some_and(|a| a != ALG)
            || s(k, "use").is_some_and(|u| u != "sig")
        {
            continue;
        }
        let coord = |m: &str| {
            s(k, m)
                .and_then(|v| B64.decode(v).ok())
                .filter(|b| b.len() == 32)
                .ok_or_else(|| VerifyError::Jwks(format!("key {kid:?} has no valid {m:?}")))
        };
        let mut sec1 = vec![4u8];
        sec1.extend(coord("x")?);
        sec1.extend(coord("y")?);
        return VerifyingKey::from_sec1_bytes(&sec1)
            .map_err(|_| VerifyError::Jwks(format!("key {kid:?} is not a P-256 point")));
    }
    Err(VerifyError::UnknownKey(kid.to_string()))
}

/// Verify an assertion the S15 way: `alg` pinned to ES256 and `typ` to JWT (`none`, HS256 and every other
/// algorithm are refused before any key is looked at), `crit` refused, `jku`/`jwk`/`x5u`/`x5c` ignored (keys
/// come only from `jwks_json`), the ECDSA signature checked with the JWKS key named by `kid`, then `iss` equal
/// to `issuer`, `aud` equal to (or, as a list, containing) `audience`, `exp` and `nbf` against `now` with
/// [`LEEWAY`] seconds of skew.
pub fn verify(
    jwks_json: &str,
    token: &str,
    issuer: &str,
    audience: &str,
    now: i64,
) -> Result<Claims, VerifyError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(VerifyError::Malformed("too long".into()));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed("not three parts".into()));
    };
    let header = json_object(&unb64(h, "header")?, "header")?;
    match header.get("alg") {
        Some(Value::String(a)) if a == ALG => {}
        Some(Value::String(a)) => return Err(VerifyError::Algorithm(a.clone())),
        other => {
            return Err(VerifyError::Algorithm(
                other
                    .map(Value::to_string)
                    .unwrap_or_else(|| "(missing)".into()),
            ));
        }
    }
    match header.get("typ") {
        Some(Value::String(t)) if t == TYP => {}
        Some(Value::String(t)) => return Err(VerifyError::Type(t.clone())),
        _ => return Err(VerifyError::Type(String::new())),
    }
    if header.contains_key("crit") {
        return Err(VerifyError::Critical);
    }
    let Some(Value::String(kid)) = header.get("kid") else {
        return Err(VerifyError::NoKid);
    };
    let key = key_for(jwks_json, kid)?;
    let sig = unb64(sig, "signature")?;
    let sig = Signature::from_slice(&sig).map_err(|_| VerifyError::Signature)?;
    let input = &token[..h.len() + 1 + p.len()];
    key.verify(input.as_bytes(), &sig)
        .map_err(|_| VerifyError::Signature)?;

    // Signed by a key we trust: now the claims.
    let payload = json_object(&unb64(p, "payload")?, "payload")?;
    let iss = payload.get("iss").and_then(Value::as_str).unwrap_or("");
    if iss != issuer {
        return Err(VerifyError::Issuer {
            found: iss.to_string(),
            expected: issuer.to_string(),
        });
    }
    let aud_ok = match payload.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(VerifyError::Audience {
            found: payload
                .get("aud")
                .map(Value::to_string)
                .unwrap_or_else(|| "(none)".into()),
            expected: audience.to_string(),
        });
    }
    let int = |m: &str| payload.get(m).and_then(Value::as_i64);
    let exp = int("exp").ok_or_else(|| VerifyError::Claims("no numeric exp".into()))?;
    if now >= exp.saturating_add(LEEWAY) {
        return Err(VerifyError::Expired { exp, now });
    }
    if let Some(nbf) = int("nbf")
        && now.saturating_add(LEEWAY) < nbf
    {
        return Err(VerifyError::NotYetValid { nbf, now });
    }
    if let Some(iat) = int("iat")
        && now.saturating_add(LEEWAY) < iat
    {
        return Err(VerifyError::NotYetValid { nbf: iat, now });
    }
    serde_json::from_value(Value::Object(payload)).map_err(|e| VerifyError::Claims(e.to_string()))
}

// ----- the command line: headgate keys … -----

/// `headgate keys …`: the assertion's signing keys. Works on a stopped headgate's store.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum KeysCmd {
    /// List the signing keys: state, times, whether the JWKS lists them.
    List,
    /// Create a new signing key: published in /_headgate/jwks.json first, signing 10 minutes later.
    Rotate,
    /// Withdraw a key at once: out of the JWKS, never signs again (a current key is replaced at once).
    Revoke {
        /// The key id (`headgate keys list` shows them).
        kid: String,
    },
}

fn when(t: Option<i64>) -> String {
    t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

/// Run `headgate keys <cmd>` against the store of `config`; the message of an `Err` is for the operator.
pub fn run_cli(config: Config, cmd: KeysCmd) -> Result<ExitCode, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let store = match &config.store {
        // PostgreSQL is shared: rotating from any replica (or a machine beside them) is fine while they run.
        crate::config::StoreConfig::Postgres(pg) => rt
            .block_on(Store::open_postgres(pg))
            .map_err(|e| e.to_string())?,
        crate::config::StoreConfig::Redb => match open_redb_for_keys(&config, &cmd)? {
            Some(s) => s,
            None => return Ok(ExitCode::SUCCESS),
        },
    };
    run_keys(&config, store, &rt, cmd)
}

/// The redb store for `headgate keys` (None: nothing to list yet).
fn open_redb_for_keys(config: &Config, cmd: &KeysCmd) -> Result<Option<Store>, String> {
    let path = config.store_path();
    if !path.exists() {
        if *cmd == KeysCmd::List {
            println!(
                "no store at {} yet: headgate creates its first signing key when it starts",
                path.display()
            );
            return Ok(None);
        }
        if !config.server.data_path.is_dir() {
            return Err(format!(
                "server.data_path {} does not exist: start headgate once (or create it, mode 700)",
                config.server.data_path.display()
            ));
        }
    }
    crate::cli::refuse_shared_file(&path).map_err(|f| f.message)?;
    let store = match Store::open_redb(&path, crate::store::DEFAULT_CACHE_BYTES) {
        Ok(s) => s,
        Err(StoreError::Locked { path }) => {
            return Err(format!(
                "{} is in use by a running headgate: stop headgate serve or use the admin socket, then run \
                 `headgate keys` again",
                path.display()
            ));
        }
        Err(e) => return Err(e.to_string()),
    };
    Ok(Some(store))
}

fn run_keys(
    config: &Config,
    store: Store,
    rt: &tokio::runtime::Runtime,
    cmd: KeysCmd,
) -> Result<ExitCode, String> {
    let keys = Arc::new(Keys::new(
        &config.server.cookie_secret,
        config.server.cookie_secret_previous.as_ref(),
    ));
    let assertions = Assertions::new(config, store, keys, Arc::new(crate::crypto::OsRandom));
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    rt.block_on(async {
        match cmd {
            KeysCmd::List => {
                let list = assertions.list(now).await.map_err(|e| e.to_string())?;
                if list.is_empty() {
                    println!("no signing keys yet: headgate creates one when it starts");
                }
                println!(
                    "{:<44} {:<8} {:<5} {:<21} {:<21} {:<21}",
                    "KID", "STATE", "JWKS", "CREATED", "SIGNS FROM", "RETIRED/REVOKED"
                );
                for k in list {
                    println!(
                        "{:<44} {:<8} {:<5} {:<21} {:<21} {:<21}",
                        k.kid,
                        k.state.as_str(),
                        if k.in_jwks { "yes" } else { "no" },
                        when(Some(k.created)),
                        when(k.activated),
                        when(k.revoked.or(k.retired)),
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            KeysCmd::Rotate => match assertions.rotate(now).await.map_err(|e| e.to_string())? {
                Ok(kid) => {
                    println!(
                        "created signing key {kid} (next): headgate publishes it in {JWKS_PATH} when it starts (or \
                         within {RELOAD_EVERY} s) and signs with it {} minutes after that; the current key stays in \
                         the JWKS until its tokens have expired",
                        PUBLISH_DELAY / 60
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(kid) => {
                    println!(
                        "signing key {kid} is already waiting to take over; nothing changed (revoke it first to \
                         replace it)"
                    );
                    Ok(ExitCode::SUCCESS)
                }
            },
            KeysCmd::Revoke { kid } => {
                let now_signing = assertions
                    .revoke(&kid, now)
                    .await
                    .map_err(|e| e.to_string())?;
                println!("revoked signing key {kid}: it is out of the JWKS and never signs again");
                if let Some(k) = now_signing {
                    println!(
                        "it was the current key; {k} signs from now on (verifiers that cached the JWKS fetch it \
                         again for the new kid)"
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kid_is_the_rfc7638_thumbprint() {
        // RFC 7638 has no P-256 example; check the construction against an independent computation.
        let k = generate(&crate::crypto::OsRandom);
        let (kid, jwk) = public_jwk(k.verifying_key());
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#,
            jwk["x"], jwk["y"]
        );
        assert_eq!(kid, b64(&crate::crypto::sha256(canonical.as_bytes())));
        assert_eq!(kid.len(), 43);
        assert_eq!(jwk["kid"], kid.as_str());
    }

    #[test]
    fn sid_is_hex_sha256_of_the_session_key() {
        let k = SessionKey([1; 32]);
        let sid = sid_of(&k);
        assert_eq!(sid.len(), 64);
        assert_ne!(sid, k.to_hex());
    }
}
