//! The signed assertion (S15): minted by the running service, verified with the JWKS the server serves
//! (with headgate's reference verifier and with jsonwebtoken), refused when tampered, expired, for another
//! audience, with a revoked key or a forged header; keys published before they sign, encrypted at rest,
//! re-encrypted when cookie_secret rotates; `headgate keys` on the real binary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use headgate::app::App;
use headgate::assertion::{
    self, AssertionClaims, AuthMethod, LEEWAY, PUBLISH_DELAY, RETIRED_RETENTION, VerifyError,
};
use headgate::clock::{Clock, ManualClock};
use headgate::config::{Config, Secret};
use headgate::crypto::{Keys, OsRandom, Purpose};
use headgate::http_client::HttpClient;
use headgate::server::Server;
use headgate::store::{SessionKey, SigningKey, SigningKeyState, Store, StoreError};
use p256::ecdsa::signature::Signer;
use serde_json::{Value, json};

use crate::harness::{self, headgate::Headgate, headgate::HeadgateConfig, headgate::TEST_SECRET};

const UPSTREAM: &str = "http://127.0.0.1:3000";
const SECRET_2: &str = "second-cookie-secret-0123456789abcdef012345678";
const SECRET_3: &str = "third-cookie-secret-0123456789abcdef0123456789";

/// headgate's App and server in this test's runtime, on its own port, with a manual clock.
struct Gate {
    addr: SocketAddr,
    app: Arc<App>,
    clock: Arc<ManualClock>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

fn config_text(addr: SocketAddr, data: &Path, server_extra: &str, sections: &str) -> String {
    format!(
        "[server]\nlisten = \"{addr}\"\nbase_url = \"http://{addr}\"\ncookie_secure = false\ndata_path = \"{}\"\n{server_extra}\n\n[upstream]\nurl = \"{UPSTREAM}\"\n\n{sections}\n",
        data.display()
    )
}

impl Gate {
    /// Start on `data` (the store file survives a restart) with `cookie_secret` lines in `server_extra`.
    async fn start(
        data: &Path,
        clock: Arc<ManualClock>,
        server_extra: &str,
        sections: &str,
    ) -> Gate {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let text = config_text(addr, data, server_extra, sections);
        let config = Config::parse("assertion-test", &text, &HashMap::new())
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(data).unwrap();
        let store = Store::open_redb(&config.store_path(), 4 << 20).unwrap();
        let (app, _bg) = App::new(
            Arc::new(config),
            store,
            HttpClient::new(),
            clock.clone(),
            Arc::new(OsRandom),
        );
        let app = Arc::new(app);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = Server::from_listener(
            app.clone(),
            tokio::net::TcpListener::from_std(listener).unwrap(),
        )
        .unwrap();
        let task = tokio::spawn(async move {
            server
                .run(
                    async move {
                        let _ = stop_rx.await;
                    },
                    Duration::from_secs(1),
                )
                .await;
        });
        Gate {
            addr,
            app,
            clock,
            stop: Some(stop_tx),
            server: Some(task),
        }
    }

    async fn with_secret(data: &Path, clock: Arc<ManualClock>) -> Gate {
        Gate::start(
            data,
            clock,
            &format!("cookie_secret = \"{TEST_SECRET}\""),
            "",
        )
        .await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn now(&self) -> i64 {
        self.clock.now()
    }

    fn mint(&self, claims: &AssertionClaims, audience: &str) -> String {
        self.app
            .assertions()
            .mint(claims, audience, self.now())
            .unwrap()
    }

    async fn refresh(&self) {
        self.app.assertions().refresh(self.now()).await.unwrap();
    }

    /// The JWKS as served over HTTP.
    async fn jwks(&self) -> String {
        let r = reqwest::get(self.url("/_headgate/jwks.json"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["cache-control"].to_str().unwrap(),
            "public, max-age=300"
        );
        assert_eq!(r.headers()["content-type"], "application/json");
        r.text().await.unwrap()
    }

    fn store(&self) -> Store {
        self.app.store().clone()
    }

    /// Stop the server and drop the App, so the store file is free again.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.take().unwrap().await.unwrap();
        let app = self.app;
        // Connection tasks let go of the App once they have finished.
        for _ in 0..100 {
            if Arc::strong_count(&app) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(Arc::strong_count(&app), 1, "someone still holds the App");
        drop(app);
    }
}

fn kids(jwks: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(jwks).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

fn kid_of(token: &str) -> String {
    let h: Value =
        serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    h["kid"].as_str().unwrap().to_string()
}

fn claims(session: &[u8]) -> AssertionClaims {
    AssertionClaims {
        session: SessionKey::from_raw_id(session),
        sub: "alice-sub".into(),
        email: Some("alice@example.com".into()),
        name: Some("Alice".into()),
        role: Some("network_admin".into()),
        caps: vec!["ui_access", "read_network"],
        hs_user_id: Some("7".into()),
        hs_user: Some("alice".into()),
        amr: AuthMethod::Oidc,
    }
}

/// `token` with its payload replaced by `f(payload)` (the signature kept).
fn with_payload(token: &str, f: impl FnOnce(&mut Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut p: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    f(&mut p);
    format!("{}.{}.{}", parts[0], B64.encode(p.to_string()), parts[2])
}

fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let d = harness::tempdir();
    let p = d.path().join("data");
    (d, p)
}

#[tokio::test]
async fn the_assertion_verifies_with_the_served_jwks_and_nothing_else_does() {
    let (_d, data) = data_dir();
    let gate = Gate::with_secret(&data, Arc::new(ManualClock::default())).await;
    let jwks = gate.jwks().await;
    let v: Value = serde_json::from_str(&jwks).unwrap();
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{jwks}");
    let k = keys[0].as_object().unwrap();
    let mut members: Vec<&str> = k.keys().map(String::as_str).collect();
    members.sort();
    assert_eq!(
        members,
        ["alg", "crv", "kid", "kty", "use", "x", "y"],
        "{jwks}"
    );
    assert_eq!(
        (&k["kty"], &k["crv"], &k["alg"], &k["use"]),
        (
            &json!("EC"),
            &json!("P-256"),
            &json!("ES256"),
            &json!("sig")
        )
    );

    let c = claims(b"session-1");
    let token = gate.mint(&c, UPSTREAM);
    let now = gate.now();
    let header: Value =
        serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(
        header,
        json!({"alg": "ES256", "kid": k["kid"], "typ": "JWT"})
    );
    let got = assertion::verify(&jwks, &token, &gate.issuer(), UPSTREAM, now).unwrap();
    assert_eq!(got.iss, gate.issuer());
    assert_eq!(got.aud, UPSTREAM);
    assert_eq!((got.iat, got.nbf, got.exp), (now, now, now + 60));
    assert_eq!(got.sub, "alice-sub");
    assert_eq!(got.email.as_deref(), Some("alice@example.com"));
    assert_eq!(got.name.as_deref(), Some("Alice"));
    assert_eq!(got.role.as_deref(), Some("network_admin"));
    assert_eq!(got.caps, ["ui_access", "read_network"]);
    assert_eq!(got.hs_user_id.as_deref(), Some("7"));
    assert_eq!(got.hs_user.as_deref(), Some("alice"));
    assert_eq!(got.amr, ["oidc"]);
    assert!(got.jti.len() >= 16);
    // sid: a hash of the session key, neither the raw id nor the store key.
    assert_eq!(got.sid, assertion::sid_of(&c.session));
    assert_ne!(got.sid, c.session.to_hex());
    assert!(!token.contains("session-1"));

    // A common JWT library agrees (signature, alg, iss, aud, exp).
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(set.find(&kid_of(&token)).unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[UPSTREAM]);
    validation.set_issuer(&[gate.issuer()]);
    let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
    assert_eq!(data.claims["sub"], "alice-sub");

    // Tampered payload (a better role), signature kept.
    let forged = with_payload(&token, |p| p["role"] = json!("owner"));
    assert_eq!(
        assertion::verify(&jwks, &forged, &gate.issuer(), UPSTREAM, now),
        Err(VerifyError::Signature)
    );
    let forged = with_payload(&token, |p| p["exp"] = json!(now + 86400));
    assert_eq!(
        assertion::verify(&jwks, &forged, &gate.issuer(), UPSTREAM, now),
        Err(VerifyError::Signature)
    );
    assert!(jsonwebtoken::decode::<Value>(&forged, &key, &validation).is_err());
    // A flipped signature bit.
    let mut sig = B64.decode(token.rsplit('.').next().unwrap()).unwrap();
    sig[10] ^= 1;
    let (input, _) = token.rsplit_once('.').unwrap();
    let bad_sig = format!("{input}.{}", B64.encode(&sig));
    assert_eq!(
        assertion::verify(&jwks, &bad_sig, &gate.issuer(), UPSTREAM, now),
        Err(VerifyError::Signature)
    );

    // Another audience: an assertion for one upstream is no good at another.
    assert!(matches!(
        assertion::verify(
            &jwks,
            &token,
            &gate.issuer(),
            "https://other.example.com",
            now
        ),
        Err(VerifyError::Audience { .. })
    ));
    let for_other = gate.mint(&c, "https://other.example.com");
    assert_ne!(for_other, token);
    assert!(matches!(
        assertion::verify(&jwks, &for_other, &gate.issuer(), UPSTREAM, now),
        Err(VerifyError::Audience { .. })
    ));
    assertion::verify(
        &jwks,
        &for_other,
        &gate.issuer(),
        "https://other.example.com",
        now,
    )
    .unwrap();

    // Another issuer.
    assert!(matches!(
        assertion::verify(&jwks, &token, "https://evil.example.com", UPSTREAM, now),
        Err(VerifyError::Issuer { .. })
    ));

    // Not yet valid (a verifier whose clock is far behind).
    assert!(matches!(
        assertion::verify(&jwks, &token, &gate.issuer(), UPSTREAM, now - LEEWAY - 5),
        Err(VerifyError::NotYetValid { .. })
    ));

    // Expiry: still good within the leeway, refused after it.
    gate.clock.advance(60 + LEEWAY - 1);
    assertion::verify(&jwks, &token, &gate.issuer(), UPSTREAM, gate.now()).unwrap();
    gate.clock.advance(1);
    assert!(matches!(
        assertion::verify(&jwks, &token, &gate.issuer(), UPSTREAM, gate.now()),
        Err(VerifyError::Expired { .. })
    ));
    // A fresh one is minted (the cached one is long gone) and verifies.
    let fresh = gate.mint(&c, UPSTREAM);
    assert_ne!(fresh, token);
    assertion::verify(&jwks, &fresh, &gate.issuer(), UPSTREAM, gate.now()).unwrap();

    // Garbage.
    assert_eq!(
        assertion::verify(&jwks, "e30.e30.", &gate.issuer(), UPSTREAM, now),
        Err(VerifyError::Algorithm("(missing)".into()))
    );
    for t in [
        "",
        "a.b",
        "a.b.c.d",
        "...",
        "!.e30.e30",
        &"x".repeat(20_000),
    ] {
        assert!(
            matches!(
                assertion::verify(&jwks, t, &gate.issuer(), UPSTREAM, now),
                Err(VerifyError::Malformed(_))
            ),
            "{t:.20}"
        );
    }
    gate.stop().await;
}

/// A header and payload signed as an attacker would: `sign` gets the signing input.
fn forge(header: Value, payload: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(payload.to_string())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig))
}

#[tokio::test]
async fn forged_headers_are_refused() {
    use hmac::{Hmac, Mac};
    let (_d, data) = data_dir();
    let gate = Gate::with_secret(&data, Arc::new(ManualClock::default())).await;
    let jwks = gate.jwks().await;
    let kid = kids(&jwks)[0].clone();
    let now = gate.now();
    let token = gate.mint(&claims(b"s"), UPSTREAM);
    let payload: Value =
        serde_json::from_slice(&B64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let mut payload = payload;
    payload["role"] = json!("owner");
    let verify = |t: &str| assertion::verify(&jwks, t, &gate.issuer(), UPSTREAM, now);

    // HS256 keyed with the public key (the classic algorithm confusion).
    let hs = forge(
        json!({"alg": "HS256", "kid": kid, "typ": "JWT"}),
        &payload,
        |input| {
            let mut m =
                <Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(jwks.as_bytes()).unwrap();
            m.update(input);
            m.finalize().into_bytes().to_vec()
        },
    );
    assert_eq!(verify(&hs), Err(VerifyError::Algorithm("HS256".into())));
    // alg none, with and without a signature part.
    let none = forge(
        json!({"alg": "none", "kid": kid, "typ": "JWT"}),
        &payload,
        |_| vec![],
    );
    assert_eq!(verify(&none), Err(VerifyError::Algorithm("none".into())));
    assert!(verify(none.trim_end_matches('.')).is_err());
    // alg missing.
    assert!(matches!(
        verify(&forge(
            json!({"kid": kid, "typ": "JWT"}),
            &payload,
            |_| vec![]
        )),
        Err(VerifyError::Algorithm(_))
    ));
    // ES256 under the attacker's own key, offered through jku / jwk / x5u, with our kid or theirs.
    let attacker = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let point = attacker.verifying_key().to_sec1_point(false);
    let their_jwk = json!({"kty": "EC", "crv": "P-256", "kid": "evil",
        "x": B64.encode(&point.as_bytes()[1..33]), "y": B64.encode(&point.as_bytes()[33..65])});
    let sign_evil = |input: &[u8]| {
        let s: p256::ecdsa::Signature = attacker.sign(input);
        s.to_bytes().to_vec()
    };
    for header in [
        json!({"alg": "ES256", "kid": kid, "typ": "JWT", "jku": "https://evil.example.com/jwks.json"}),
        json!({"alg": "ES256", "kid": kid, "typ": "JWT", "jwk": their_jwk}),
        json!({"alg": "ES256", "kid": kid, "typ": "JWT", "x5u": "https://evil.example.com/cert.pem"}),
    ] {
        assert_eq!(
            verify(&forge(header, &payload, sign_evil)),
            Err(VerifyError::Signature)
        );
    }
    for header in [
        json!({"alg": "ES256", "kid": "evil", "typ": "JWT", "jku": "https://evil.example.com/jwks.json"}),
        json!({"alg": "ES256", "kid": "evil", "typ": "JWT", "jwk": their_jwk}),
    ] {
        assert_eq!(
            verify(&forge(header, &payload, sign_evil)),
            Err(VerifyError::UnknownKey("evil".into()))
        );
    }
    // jku injected into our own token (its header changes, so our signature no longer covers it).
    let (_, rest) = token.split_once('.').unwrap();
    let injected = format!(
        "{}.{rest}",
        B64.encode(
            json!({"alg": "ES256", "kid": kid, "typ": "JWT", "jku": "https://evil.example.com/"})
                .to_string()
        )
    );
    assert_eq!(verify(&injected), Err(VerifyError::Signature));
    // typ pinned; crit refused; kid required.
    assert_eq!(
        verify(&forge(
            json!({"alg": "ES256", "kid": kid, "typ": "at+jwt"}),
            &payload,
            sign_evil
        )),
        Err(VerifyError::Type("at+jwt".into()))
    );
    assert_eq!(
        verify(&forge(
            json!({"alg": "ES256", "kid": kid}),
            &payload,
            sign_evil
        )),
        Err(VerifyError::Type(String::new()))
    );
    assert_eq!(
        verify(&forge(
            json!({"alg": "ES256", "kid": kid, "typ": "JWT", "crit": ["exp"]}),
            &payload,
            sign_evil
        )),
        Err(VerifyError::Critical)
    );
    assert_eq!(
        verify(&forge(
            json!({"alg": "ES256", "typ": "JWT"}),
            &payload,
            sign_evil
        )),
        Err(VerifyError::NoKid)
    );
    // The genuine token still verifies.
    verify(&token).unwrap();
    gate.stop().await;
}

#[tokio::test]
async fn minting_is_cached_per_session_and_audience_for_a_few_seconds() {
    let (_d, data) = data_dir();
    let gate = Gate::with_secret(&data, Arc::new(ManualClock::default())).await;
    let a = claims(b"session-a");
    let t1 = gate.mint(&a, UPSTREAM);
    assert_eq!(
        gate.mint(&a, UPSTREAM),
        t1,
        "same session, audience and claims"
    );
    gate.clock.advance(assertion::MINT_CACHE_SECS - 1);
    assert_eq!(gate.mint(&a, UPSTREAM), t1);
    assert_ne!(gate.mint(&a, "https://other.example.com"), t1);
    assert_ne!(gate.mint(&claims(b"session-b"), UPSTREAM), t1);
    let mut demoted = a.clone();
    demoted.role = Some("viewer".into());
    let t2 = gate.mint(&demoted, UPSTREAM);
    assert_ne!(t2, t1, "changed claims are never served from the cache");
    gate.clock.advance(assertion::MINT_CACHE_SECS);
    let t3 = gate.mint(&demoted, UPSTREAM);
    assert_ne!(t3, t2, "reused for at most MINT_CACHE_SECS");
    // Thousands of sessions stay bounded and still mint.
    for i in 0..(assertion::MINT_CACHE_MAX + 10) {
        gate.mint(&claims(format!("many-{i}").as_bytes()), UPSTREAM);
    }
    let jwks = gate.jwks().await;
    assertion::verify(
        &jwks,
        &gate.mint(&a, UPSTREAM),
        &gate.issuer(),
        UPSTREAM,
        gate.now(),
    )
    .unwrap();
    gate.stop().await;
}

#[tokio::test]
async fn a_rotated_key_is_in_the_jwks_before_it_signs() {
    let (_d, data) = data_dir();
    let clock = Arc::new(ManualClock::default());
    let gate = Gate::with_secret(&data, clock.clone()).await;
    let first = kids(&gate.jwks().await);
    assert_eq!(first.len(), 1);
    let k1 = first[0].clone();
    let c = claims(b"s");
    assert_eq!(kid_of(&gate.mint(&c, UPSTREAM)), k1);

    // `keys rotate` (what the CLI does): a Next key; the server publishes it at its next reload.
    let k2 = gate
        .app
        .assertions()
        .rotate(gate.now())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(k2, k1);
    // A second rotate while one waits changes nothing.
    assert_eq!(
        gate.app.assertions().rotate(gate.now()).await.unwrap(),
        Err(k2.clone())
    );
    gate.refresh().await;
    let before = gate.jwks().await;
    assert_eq!(
        kids(&before),
        [k1.clone(), k2.clone()],
        "the next key is published"
    );
    // ... but does not sign yet, for the whole publish delay.
    let mut n = 0;
    for step in [0, PUBLISH_DELAY / 2, PUBLISH_DELAY / 2 - 1] {
        clock.advance(step);
        gate.refresh().await;
        n += 1;
        let t = gate.mint(&claims(format!("s{n}").as_bytes()), UPSTREAM);
        assert_eq!(kid_of(&t), k1, "signed with the next key {step} s early");
    }
    // A token of the old key minted just before the switch.
    let old_token = gate.mint(&claims(b"old"), UPSTREAM);
    assert_eq!(kid_of(&old_token), k1);
    clock.advance(1);
    gate.refresh().await;
    let new_token = gate.mint(&claims(b"new"), UPSTREAM);
    assert_eq!(kid_of(&new_token), k2, "the next key signs after the delay");
    // The JWKS fetched before the new key ever signed already verifies its tokens.
    assertion::verify(&before, &new_token, &gate.issuer(), UPSTREAM, gate.now()).unwrap();
    // The old key stays published while its tokens live.
    let after = gate.jwks().await;
    assert_eq!(kids(&after), [k2.clone(), k1.clone()]);
    assertion::verify(&after, &old_token, &gate.issuer(), UPSTREAM, gate.now()).unwrap();
    let list = gate.app.assertions().list(gate.now()).await.unwrap();
    let state = |kid: &str| list.iter().find(|k| k.kid == kid).unwrap().state;
    assert_eq!(
        (state(&k1), state(&k2)),
        (SigningKeyState::Retired, SigningKeyState::Current)
    );
    // ... and leaves (and is deleted) once every token it signed has expired.
    clock.advance(RETIRED_RETENTION - 1);
    gate.refresh().await;
    assert_eq!(kids(&gate.jwks().await), [k2.clone(), k1.clone()]);
    clock.advance(1);
    gate.refresh().await;
    assert_eq!(kids(&gate.jwks().await), [k2.as_str()]);
    assert_eq!(gate.store().signing_keys().await.unwrap().len(), 1);

    // A key rotated while headgate is stopped: nobody could fetch it, so the delay starts when a running
    // headgate first publishes it, however old the key is.
    gate.stop().await;
    clock.advance(10 * PUBLISH_DELAY);
    {
        let store = Store::open_redb(&data.join("headgate.redb"), 1 << 20).unwrap();
        let text = config_text(
            "127.0.0.1:1".parse().unwrap(),
            &data,
            &format!("cookie_secret = \"{TEST_SECRET}\""),
            "",
        );
        let config = Config::parse("t", &text, &HashMap::new()).unwrap();
        let keys = Arc::new(Keys::new(&config.server.cookie_secret, None));
        let offline = assertion::Assertions::new(&config, store, keys, Arc::new(OsRandom));
        offline
            .rotate(clock.now() - 5 * PUBLISH_DELAY)
            .await
            .unwrap()
            .unwrap();
    }
    clock.advance(1);
    let gate = Gate::with_secret(&data, clock.clone()).await;
    let jwks = gate.jwks().await;
    let published = kids(&jwks);
    assert_eq!(published.len(), 2);
    assert_eq!(published[0], k2);
    let k3 = published[1].clone();
    assert_eq!(
        kid_of(&gate.mint(&c, UPSTREAM)),
        k2,
        "not before the publish delay"
    );
    clock.advance(PUBLISH_DELAY);
    gate.refresh().await;
    let t = gate.mint(&c, UPSTREAM);
    assert_eq!(kid_of(&t), k3);
    assertion::verify(&jwks, &t, &gate.issuer(), UPSTREAM, gate.now()).unwrap();
    gate.stop().await;
}

#[tokio::test]
async fn a_revoked_key_leaves_the_jwks_at_once_and_never_signs_again() {
    let (_d, data) = data_dir();
    let gate = Gate::with_secret(&data, Arc::new(ManualClock::default())).await;
    let c = claims(b"s");
    let token = gate.mint(&c, UPSTREAM);
    let k1 = kid_of(&token);
    let jwks = gate.jwks().await;
    assertion::verify(&jwks, &token, &gate.issuer(), UPSTREAM, gate.now()).unwrap();

    // Revoking the current key: another takes over at once.
    let k2 = gate
        .app
        .assertions()
        .revoke(&k1, gate.now())
        .await
        .unwrap()
        .expect("a new key signs");
    assert_ne!(k2, k1);
    gate.refresh().await;
    let jwks = gate.jwks().await;
    assert_eq!(kids(&jwks), [k2.as_str()]);
    assert_eq!(
        assertion::verify(&jwks, &token, &gate.issuer(), UPSTREAM, gate.now()),
        Err(VerifyError::UnknownKey(k1.clone()))
    );
    // Within the mint cache's window for the same session: still never the revoked key's token.
    let t2 = gate.mint(&c, UPSTREAM);
    assert_ne!(t2, token);
    assert_eq!(kid_of(&t2), k2);
    assertion::verify(&jwks, &t2, &gate.issuer(), UPSTREAM, gate.now()).unwrap();
    // Its private key is gone from the store; it cannot come back.
    let stored = gate.store().signing_keys().await.unwrap();
    let r1 = stored.iter().find(|k| k.kid == k1).unwrap();
    assert_eq!(r1.state, SigningKeyState::Revoked);
    assert!(r1.private_enc.is_empty());
    assert!(matches!(
        gate.store()
            .set_signing_key_state(&k1, SigningKeyState::Current, gate.now())
            .await,
        Err(StoreError::Conflict(_))
    ));

    // Revoking a waiting key: out of the JWKS, and it never takes over.
    let k3 = gate
        .app
        .assertions()
        .rotate(gate.now())
        .await
        .unwrap()
        .unwrap();
    gate.refresh().await;
    assert_eq!(kids(&gate.jwks().await), [k2.clone(), k3.clone()]);
    assert_eq!(
        gate.app.assertions().revoke(&k3, gate.now()).await.unwrap(),
        None
    );
    gate.refresh().await;
    assert_eq!(kids(&gate.jwks().await), [k2.as_str()]);
    gate.clock.advance(PUBLISH_DELAY + 1);
    gate.refresh().await;
    assert_eq!(kid_of(&gate.mint(&claims(b"later"), UPSTREAM)), k2);

    // Revoking the current key while a next one waits: the next one takes over.
    let k4 = gate
        .app
        .assertions()
        .rotate(gate.now())
        .await
        .unwrap()
        .unwrap();
    gate.refresh().await;
    assert_eq!(
        gate.app.assertions().revoke(&k2, gate.now()).await.unwrap(),
        Some(k4.clone())
    );
    gate.refresh().await;
    assert_eq!(kids(&gate.jwks().await), [k4.as_str()]);
    assert_eq!(kid_of(&gate.mint(&c, UPSTREAM)), k4);

    // An unknown kid.
    assert!(matches!(
        gate.app
            .assertions()
            .revoke("no-such-kid", gate.now())
            .await,
        Err(StoreError::NotFound(_))
    ));
    gate.stop().await;
}

/// Every encoding of `secret` a careless store might have written.
fn encodings(secret: &[u8]) -> Vec<Vec<u8>> {
    vec![
        secret.to_vec(),
        B64.encode(secret).into_bytes(),
        STANDARD.encode(secret).into_bytes(),
        secret
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into_bytes(),
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn private_keys_are_encrypted_at_rest() {
    let (_d, data) = data_dir();
    let gate = Gate::with_secret(&data, Arc::new(ManualClock::default())).await;
    let kid = gate
        .app
        .assertions()
        .rotate(gate.now())
        .await
        .unwrap()
        .unwrap();
    let stored = gate.store().signing_keys().await.unwrap();
    assert_eq!(stored.len(), 2);
    gate.stop().await;
    let file = std::fs::read(data.join("headgate.redb")).unwrap();
    let keys = Keys::new(&Secret::new(TEST_SECRET), None);
    for k in &stored {
        // The private scalar (the JWK `d`), recovered with the key-encryption key: in no encoding in the file.
        let d = keys
            .open(
                Purpose::KeyEncryption,
                format!("headgate signing key {}", k.kid).as_bytes(),
                &k.private_enc,
            )
            .expect("sealed under the cookie_secret key, bound to its kid");
        assert_eq!(d.len(), 32);
        let sk = p256::ecdsa::SigningKey::from_slice(&d).unwrap();
        let point = sk.verifying_key().to_sec1_point(false);
        let jwk: Value = serde_json::from_str(&k.public_jwk).unwrap();
        assert_eq!(jwk["x"], B64.encode(&point.as_bytes()[1..33]));
        assert!(jwk.get("d").is_none());
        for enc in encodings(&d) {
            assert!(
                !contains(&file, &enc),
                "the private key of {} is in the file",
                k.kid
            );
        }
        // Bound to its kid: the ciphertext does not open as another key's.
        assert!(
            keys.open(
                Purpose::KeyEncryption,
                format!("headgate signing key {kid}x").as_bytes(),
                &k.private_enc
            )
            .is_none()
        );
        // The public half is there (sanity check of the scan).
        assert!(contains(&file, jwk["x"].as_str().unwrap().as_bytes()));
    }
}

#[tokio::test]
async fn keys_are_reencrypted_when_cookie_secret_rotates() {
    let (_d, data) = data_dir();
    let clock = Arc::new(ManualClock::default());
    let gate = Gate::with_secret(&data, clock.clone()).await;
    let k1 = kid_of(&gate.mint(&claims(b"s"), UPSTREAM));
    gate.stop().await;

    // Rotate cookie_secret, the old one as cookie_secret_previous: same key, now sealed under the new secret.
    let gate = Gate::start(
        &data,
        clock.clone(),
        &format!("cookie_secret = \"{SECRET_2}\"\ncookie_secret_previous = \"{TEST_SECRET}\""),
        "",
    )
    .await;
    assert_eq!(kid_of(&gate.mint(&claims(b"s"), UPSTREAM)), k1);
    let stored: Vec<SigningKey> = gate.store().signing_keys().await.unwrap();
    let only_new = Keys::new(&Secret::new(SECRET_2), None);
    let aad = format!("headgate signing key {k1}");
    assert!(
        only_new
            .open(
                Purpose::KeyEncryption,
                aad.as_bytes(),
                &stored[0].private_enc
            )
            .is_some()
    );
    gate.stop().await;

    // Drop the previous secret: nothing is lost.
    let gate = Gate::start(
        &data,
        clock.clone(),
        &format!("cookie_secret = \"{SECRET_2}\""),
        "",
    )
    .await;
    let t = gate.mint(&claims(b"s"), UPSTREAM);
    assert_eq!(kid_of(&t), k1);
    assertion::verify(&gate.jwks().await, &t, &gate.issuer(), UPSTREAM, gate.now()).unwrap();
    gate.stop().await;

    // A secret that opens nothing: the old key is retired (still published for its tokens), a new one signs.
    let gate = Gate::start(
        &data,
        clock.clone(),
        &format!("cookie_secret = \"{SECRET_3}\""),
        "",
    )
    .await;
    let t = gate.mint(&claims(b"s"), UPSTREAM);
    let k2 = kid_of(&t);
    assert_ne!(k2, k1);
    let jwks = gate.jwks().await;
    assert_eq!(kids(&jwks), [k2, k1]);
    assertion::verify(&jwks, &t, &gate.issuer(), UPSTREAM, gate.now()).unwrap();
    gate.stop().await;
}

#[tokio::test]
async fn audience_and_lifetime_come_from_the_headers_section() {
    let (_d, data) = data_dir();
    let gate = Gate::start(
        &data,
        Arc::new(ManualClock::default()),
        &format!("cookie_secret = \"{TEST_SECRET}\""),
        "[headers]\naudience = \"urn:headplane\"\nassertion_lifetime = 300",
    )
    .await;
    assert_eq!(
        assertion::default_audience(gate.app.config()),
        "urn:headplane"
    );
    let t = gate.mint(&claims(b"s"), "urn:headplane");
    let c = assertion::verify(
        &gate.jwks().await,
        &t,
        &gate.issuer(),
        "urn:headplane",
        gate.now(),
    )
    .unwrap();
    assert_eq!(c.exp - c.iat, 300);
    gate.stop().await;

    let parse = |extra: &str, env: &[(&str, &str)]| {
        let text = format!(
            "[server]\nbase_url = \"https://hp.example.com\"\ncookie_secret = \"{TEST_SECRET}\"\n{extra}"
        );
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse("t", &text, &env)
    };
    // Defaults: 60 s; the upstream's origin, else base_url's.
    let c = parse("", &[]).unwrap();
    assert_eq!(c.headers.assertion_lifetime, 60);
    assert_eq!(assertion::default_audience(&c), "https://hp.example.com");
    let c = parse("[upstream]\nurl = \"http://headplane:3000/admin\"", &[]).unwrap();
    assert_eq!(assertion::default_audience(&c), "http://headplane:3000");
    let c = parse("", &[("HEADGATE_HEADERS__ASSERTION_LIFETIME", "120")]).unwrap();
    assert_eq!(c.headers.assertion_lifetime, 120);
    // At most five minutes; an empty audience is a mistake.
    let e = parse("[headers]\nassertion_lifetime = 301", &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("headers.assertion_lifetime") && e.contains("300"),
        "{e}"
    );
    let e = parse("[headers]\naudience = \"\"", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("headers.audience"), "{e}");
    let e = parse("[headers]\naudiense = \"x\"", &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("headers.audiense") && e.contains("audience"),
        "{e}"
    );
}

#[tokio::test]
async fn the_store_keeps_signing_key_transitions_consistent() {
    let (_d, data) = data_dir();
    std::fs::create_dir_all(&data).unwrap();
    let store = Store::open_redb(&data.join("headgate.redb"), 1 << 20).unwrap();
    let key = |kid: &str| SigningKey {
        kid: kid.into(),
        created: 100,
        state: SigningKeyState::Next,
        public_jwk: "{}".into(),
        private_enc: vec![1, 2, 3],
        published: None,
        activated: None,
        retired: None,
        revoked: None,
    };
    store.put_signing_key(key("a")).await.unwrap();
    assert!(matches!(
        store.put_signing_key(key("a")).await,
        Err(StoreError::Conflict(_))
    ));
    let a = store
        .set_signing_key_state("a", SigningKeyState::Current, 110)
        .await
        .unwrap();
    assert_eq!((a.activated, a.published), (Some(110), Some(110)));
    store.put_signing_key(key("b")).await.unwrap();
    let b = store.mark_signing_key_published("b", 120).await.unwrap();
    assert_eq!(b.published, Some(120));
    assert_eq!(
        store
            .mark_signing_key_published("b", 130)
            .await
            .unwrap()
            .published,
        Some(120)
    );
    // Making b current retires a, in the same transaction.
    store
        .set_signing_key_state("b", SigningKeyState::Current, 140)
        .await
        .unwrap();
    let all = store.signing_keys().await.unwrap();
    let get = |kid: &str| all.iter().find(|k| k.kid == kid).unwrap().clone();
    assert_eq!(
        (get("a").state, get("a").retired),
        (SigningKeyState::Retired, Some(140))
    );
    assert_eq!(get("b").state, SigningKeyState::Current);
    assert_eq!(
        all.iter()
            .filter(|k| k.state == SigningKeyState::Current)
            .count(),
        1
    );
    // Refused moves write nothing.
    for (kid, to) in [
        ("a", SigningKeyState::Current),
        ("a", SigningKeyState::Next),
        ("b", SigningKeyState::Next),
    ] {
        assert!(
            matches!(
                store.set_signing_key_state(kid, to, 150).await,
                Err(StoreError::Conflict(_))
            ),
            "{kid} → {to}"
        );
    }
    assert_eq!(store.signing_keys().await.unwrap(), all);
    // Revoking erases the private key; a revoked key stays revoked and takes no private key back.
    let r = store
        .set_signing_key_state("a", SigningKeyState::Revoked, 160)
        .await
        .unwrap();
    assert!(r.private_enc.is_empty() && r.revoked == Some(160));
    assert!(format!("{:?}", get("b")).contains("<redacted>"));
    assert!(matches!(
        store.reseal_signing_key("a", vec![9]).await,
        Err(StoreError::Conflict(_))
    ));
    store.reseal_signing_key("b", vec![9, 9]).await.unwrap();
    assert!(matches!(
        store
            .set_signing_key_state("a", SigningKeyState::Retired, 170)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .set_signing_key_state("zz", SigningKeyState::Retired, 170)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.delete_signing_key("a").await.unwrap());
    assert!(!store.delete_signing_key("a").await.unwrap());
    let left = store.signing_keys().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].private_enc, vec![9, 9]);
    drop(store);
    // Reopening keeps them.
    let store = Store::open_redb(&data.join("headgate.redb"), 1 << 20).unwrap();
    assert_eq!(store.signing_keys().await.unwrap(), left);
}

#[test]
fn the_keys_command_rotates_lists_and_revokes_on_a_stopped_store() {
    let cfg = HeadgateConfig::new();
    // Nothing yet.
    let (code, out, err) = cfg.run(&["keys", "list"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no store"), "{out}");

    // While serve runs, the store is locked: a clear message.
    let hg = cfg.start();
    let jwks: Value = get_json(&hg.url("/_headgate/jwks.json"));
    let k1 = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    let (code, out, err) = hg.config.run(&["keys", "rotate"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("stop headgate serve or use the admin socket"),
        "{err}"
    );
    let Headgate {
        mut process,
        config: cfg,
        ..
    } = hg;
    process.signal(15);
    assert_eq!(process.wait_exit(Duration::from_secs(20)), Some(0));

    let (code, out, err) = cfg.run(&["keys", "rotate"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created signing key"), "{out}");
    let (code, out, _) = cfg.run(&["keys", "list"]);
    assert_eq!(code, 0);
    let line = |kid: &str| {
        out.lines()
            .find(|l| l.starts_with(kid))
            .unwrap_or_else(|| panic!("{out}"))
            .to_string()
    };
    assert!(line(&k1).contains("current"), "{out}");
    let k2 = out
        .lines()
        .find(|l| l.contains(" next "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    assert!(line(&k2).contains(" yes "), "{out}");

    let (code, out, err) = cfg.run(&["keys", "revoke", &k1]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("revoked signing key {k1}"))
            && out.contains(&format!("{k2} signs from now on")),
        "{out}"
    );
    let (_, out, _) = cfg.run(&["keys", "list"]);
    let line = |kid: &str| {
        out.lines()
            .find(|l| l.starts_with(kid))
            .unwrap_or_else(|| panic!("{out}"))
            .to_string()
    };
    assert!(
        line(&k1).contains("revoked") && line(&k1).contains(" no "),
        "{out}"
    );
    assert!(line(&k2).contains("current"), "{out}");

    let (code, _, err) = cfg.run(&["keys", "revoke", "nope"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("signing key nope") && err.contains("keys list"),
        "{err}"
    );

    // The server starts with the new key and publishes only it.
    let hg = cfg.start();
    let jwks: Value = get_json(&hg.url("/_headgate/jwks.json"));
    let published: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(published, [k2.as_str()]);
}

/// A GET of JSON from a plain (non-async) test.
fn get_json(url: &str) -> Value {
    let url = url.to_string();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { reqwest::get(url).await.unwrap().json().await.unwrap() })
    })
    .join()
    .unwrap()
}
