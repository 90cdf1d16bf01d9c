//! OIDC Back-Channel Logout 1.0 (`POST /_headgate/oidc/backchannel-logout`): a logout at the real test IdP ends
//! the headgate session (by `sid`, and by `sub` alone); forged, replayed, mis-addressed and ID-token-shaped
//! logout tokens are refused with 400 and end nothing; the `jti` replay cache lives in the store and is pruned.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::harness::browser::Browser;
use crate::harness::idp::{ALICE_LOGIN, ALICE_PASSWORD, ClientSpec, TestIdp, UserSpec};
use crate::harness::inproc::InProcess;
use crate::harness::rogue::{LEGIT_KID, ROGUE_SUB, RogueIdp};
use crate::harness::stack::{Site, oidc_section, sign_in};

const PATH: &str = "/_headgate/oidc/backchannel-logout";
const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn whoami(b: &Browser, url: &str) -> u16 {
    b.get(url).await.status()
}

/// Post a form body to the endpoint as an IdP would (no cookies, no Origin); returns status, Cache-Control
/// and body.
async fn post_raw(url: &str, content_type: &str, body: String) -> (u16, String, String) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let cc = r
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, cc, r.text().await.unwrap())
}

async fn post_token(url: &str, token: &str) -> (u16, String, String) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("logout_token", token)
        .finish();
    post_raw(url, "application/x-www-form-urlencoded", body).await
}

/// A real IdP whose client registers headgate's back-channel logout URI, headgate in front of it, and Alice
/// plus Bob.
fn real_stack(session_required: bool) -> (Site, TestIdp, crate::harness::headgate::Headgate) {
    let site = Site::new();
    let client = ClientSpec {
        redirect_uris: vec![site.callback()],
        backchannel_logout_uri: Some(site.url(PATH)),
        backchannel_logout_session_required: Some(session_required),
        ..ClientSpec::default()
    };
    let idp = TestIdp::builder()
        .client(client)
        .pkce_required(false)
        .user(UserSpec::alice())
        .user(
            UserSpec::new("bob", "bob-sub")
                .claim("email", "bob@example.com")
                .claim("email_verified", true),
        )
        .start();
    let hg = site
        .config(None)
        .section(oidc_section(idp.issuer(), ""))
        .start();
    (site, idp, hg)
}

async fn idp_sign_out(idp: &TestIdp, b: &Browser) {
    b.idp_logout(&idp.end_session_endpoint()).await;
}

#[tokio::test]
async fn a_logout_at_the_idp_ends_the_headgate_session_by_sid() {
    let (site, mut idp, hg) = real_stack(true);
    let me = site.url("/_headgate/whoami");
    // Alice signs in twice, in two browsers (two IdP sessions, two sids); Bob once.
    let (a1, a2, bob) = (Browser::new(), Browser::new(), Browser::new());
    for (b, login, pw) in [
        (&a1, ALICE_LOGIN, ALICE_PASSWORD),
        (&a2, ALICE_LOGIN, ALICE_PASSWORD),
        (&bob, "bob", "bob-password"),
    ] {
        sign_in(b, &site, login, pw, None).await;
        assert_eq!(whoami(b, &me).await, 200, "{}", hg.process.output());
    }
    // Alice signs out at the IdP in the first browser: the IdP posts a logout token with that session's sid.
    idp_sign_out(&idp, &a1).await;
    let ev = idp.wait_for_event(Duration::from_secs(10), |e| {
        e["event"] == "backchannel.success" || e["event"] == "backchannel.error"
    });
    assert_eq!(
        ev["event"],
        "backchannel.success",
        "{ev}\n{}",
        hg.process.output()
    );
    assert_eq!(
        whoami(&a1, &me).await,
        401,
        "the IdP session's headgate session ended"
    );
    assert_eq!(
        whoami(&a2, &me).await,
        200,
        "Alice's other IdP session (another sid) is untouched"
    );
    assert_eq!(whoami(&bob, &me).await, 200, "Bob is untouched");
    // The token the IdP sent cannot be replayed.
    let (_, token) = idp
        .issued_tokens()
        .into_iter()
        .rfind(|(k, _)| k == "logout_token")
        .expect("the IdP logged the logout token");
    let (status, cc, body) = post_token(&site.url(PATH), &token).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(cc, "no-store");
    assert!(body.contains("jti was used before"), "{body}");
}

#[tokio::test]
async fn a_logout_token_with_only_sub_ends_every_session_of_that_person() {
    let (site, mut idp, hg) = real_stack(false);
    let me = site.url("/_headgate/whoami");
    let (a1, a2, bob) = (Browser::new(), Browser::new(), Browser::new());
    for (b, login, pw) in [
        (&a1, ALICE_LOGIN, ALICE_PASSWORD),
        (&a2, ALICE_LOGIN, ALICE_PASSWORD),
        (&bob, "bob", "bob-password"),
    ] {
        sign_in(b, &site, login, pw, None).await;
        assert_eq!(whoami(b, &me).await, 200, "{}", hg.process.output());
    }
    idp_sign_out(&idp, &a1).await;
    let ev = idp.wait_for_event(Duration::from_secs(10), |e| {
        e["event"] == "backchannel.success" || e["event"] == "backchannel.error"
    });
    assert_eq!(
        ev["event"],
        "backchannel.success",
        "{ev}\n{}",
        hg.process.output()
    );
    let (_, token) = idp
        .issued_tokens()
        .into_iter()
        .rfind(|(k, _)| k == "logout_token")
        .unwrap();
    let claims = crate::harness::idp::jwt_parts(&token).1;
    assert!(claims.get("sid").is_none(), "sub-only token: {claims}");
    assert_eq!(whoami(&a1, &me).await, 401);
    assert_eq!(whoami(&a2, &me).await, 401, "every session of the sub ends");
    assert_eq!(whoami(&bob, &me).await, 200, "Bob is untouched");
}

/// headgate in process (store and clock at hand) in front of the rogue IdP, whose ID tokens carry `sid`.
struct Rogue {
    rogue: RogueIdp,
    hg: InProcess,
}

impl Rogue {
    fn start() -> Rogue {
        let rogue = RogueIdp::start();
        let hg = InProcess::start(&oidc_section(rogue.issuer(), ""));
        Rogue { rogue, hg }
    }

    async fn sign_in(&self, sub: &str, sid: &str) -> Browser {
        self.rogue.set_subject(sub);
        self.rogue.set_claim("sid", sid);
        let b = Browser::new();
        let to_idp = b.get(self.hg.url("/admin/oidc/start")).await;
        let back = b.get(to_idp.location().unwrap().as_str()).await;
        let done = b.get(back.location().unwrap().as_str()).await;
        assert_eq!(done.status(), 302, "{}", done.text());
        assert_eq!(whoami(&b, &self.me()).await, 200);
        b
    }

    fn me(&self) -> String {
        self.hg.url("/_headgate/whoami")
    }

    fn endpoint(&self) -> String {
        self.hg.url(PATH)
    }

    /// Valid logout-token claims for `sub`/`sid` (either may be `None`), fresh `jti`.
    fn claims(&self, sub: Option<&str>, sid: Option<&str>) -> Value {
        let t = now();
        let mut c = json!({
            "iss": self.rogue.issuer(), "aud": self.rogue.client_id(), "iat": t, "exp": t + 120,
            "jti": crate::harness::idp::random_token(12), "events": { EVENT: {} },
        });
        if let Some(s) = sub {
            c["sub"] = json!(s);
        }
        if let Some(s) = sid {
            c["sid"] = json!(s);
        }
        c
    }

    fn sign(&self, claims: &Value) -> String {
        self.rogue.sign_es256(
            &json!({ "alg": "ES256", "typ": "logout+jwt", "kid": LEGIT_KID }),
            claims,
        )
    }
}

#[tokio::test]
async fn forged_replayed_and_misaddressed_logout_tokens_are_refused() {
    let r = Rogue::start();
    let victim = r.sign_in(ROGUE_SUB, "sid-victim").await;
    let good = r.claims(Some(ROGUE_SUB), Some("sid-victim"));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        c["jti"] = json!(crate::harness::idp::random_token(12));
        f(&mut c);
        c
    };
    let t = now();
    let header = json!({ "alg": "ES256", "typ": "logout+jwt", "kid": LEGIT_KID });
    let mut tampered = r.sign(&with(&|_| {}));
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    let cases: Vec<(&str, String)> = vec![
        (
            "signed by a key the IdP does not publish",
            r.rogue.sign_es256_unpublished(&header, &with(&|_| {})),
        ),
        ("unsigned (alg none)", r.rogue.unsigned(&with(&|_| {}))),
        (
            "HS256 with the public key as secret",
            r.rogue.sign_hs256_with_public_pem(&header, &with(&|_| {})),
        ),
        ("a tampered signature", tampered),
        (
            "a kid the JWKS does not have",
            r.rogue.sign_es256(
                &json!({ "alg": "ES256", "typ": "logout+jwt", "kid": "nope" }),
                &with(&|_| {}),
            ),
        ),
        (
            "wrong iss",
            r.sign(&with(&|c| {
                c["iss"] = json!(format!("{}/other", r.rogue.issuer()))
            })),
        ),
        (
            "wrong aud",
            r.sign(&with(&|c| c["aud"] = json!("some-other-client"))),
        ),
        (
            "with a nonce",
            r.sign(&with(&|c| c["nonce"] = json!("n-123"))),
        ),
        (
            "no events",
            r.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("events");
            })),
        ),
        (
            "another event",
            r.sign(&with(&|c| {
                c["events"] = json!({ "http://schemas.openid.net/event/other": {} })
            })),
        ),
        (
            "neither sid nor sub",
            r.sign(&with(&|c| {
                let o = c.as_object_mut().unwrap();
                o.remove("sid");
                o.remove("sub");
            })),
        ),
        (
            "no jti",
            r.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("jti");
            })),
        ),
        (
            "iat an hour ago",
            r.sign(&with(&|c| {
                c["iat"] = json!(t - 3600);
            })),
        ),
        (
            "iat an hour ahead",
            r.sign(&with(&|c| {
                c["iat"] = json!(t + 3600);
                c["exp"] = json!(t + 7200);
            })),
        ),
        ("expired", r.sign(&with(&|c| c["exp"] = json!(t - 600)))),
        (
            "typed as an access token",
            r.rogue.sign_es256(
                &json!({ "alg": "ES256", "typ": "at+jwt", "kid": LEGIT_KID }),
                &with(&|_| {}),
            ),
        ),
        (
            "an ID token of the same IdP",
            r.rogue
                .id_token(crate::harness::rogue::Forgery::Valid, Some("n")),
        ),
        ("not a JWT", "garbage".into()),
    ];
    for (what, token) in &cases {
        let (status, cc, body) = post_token(&r.endpoint(), token).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(cc, "no-store", "{what}");
        assert!(body.contains("invalid_request"), "{what}: {body}");
        assert_eq!(
            whoami(&victim, &r.me()).await,
            200,
            "{what}: the session survived"
        );
    }
    // Malformed requests.
    let url = r.endpoint();
    let form = "application/x-www-form-urlencoded";
    let one = r.sign(&with(&|_| {}));
    for (what, ct, body) in [
        ("an empty form", form, String::new()),
        (
            "two tokens",
            form,
            format!("logout_token={one}&logout_token={one}"),
        ),
        (
            "JSON",
            "application/json",
            format!("{{\"logout_token\":\"{one}\"}}"),
        ),
    ] {
        let (status, cc, text) = post_raw(&url, ct, body).await;
        assert_eq!(status, 400, "{what}: {text}");
        assert_eq!(cc, "no-store", "{what}");
    }
    let (status, _, _) = post_raw(&url, form, format!("logout_token={}", "a".repeat(70_000))).await;
    assert_eq!(status, 413, "an oversized body");
    assert_eq!(whoami(&victim, &r.me()).await, 200);

    // A token naming the victim's sid but another sub ends nothing.
    let (status, _, body) = post_token(
        &url,
        &r.sign(&r.claims(Some("someone-else"), Some("sid-victim"))),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(whoami(&victim, &r.me()).await, 200);

    // The control: a valid token ends the session, with 200 and no-store; the same token again is a replay.
    let valid = r.sign(&good);
    let (status, cc, body) = post_token(&url, &valid).await;
    assert_eq!((status, cc.as_str()), (200, "no-store"), "{body}");
    assert_eq!(whoami(&victim, &r.me()).await, 401);
    let again = r.sign_in(ROGUE_SUB, "sid-victim").await;
    let (status, _, body) = post_token(&url, &valid).await;
    assert_eq!(status, 400, "a replay: {body}");
    assert!(body.contains("jti was used before"), "{body}");
    assert_eq!(
        whoami(&again, &r.me()).await,
        200,
        "the replay ended nothing (the new session has the same IdP sid)"
    );
    // The replay cache is in the store and pruned once the token could no longer pass the iat check.
    let jti = good["jti"].as_str().unwrap();
    assert!(
        !r.hg
            .store
            .use_replay_id("backchannel_jti", jti, now() + 900, now())
            .await
            .unwrap(),
        "the jti is remembered in the store"
    );
    assert_eq!(r.hg.store.prune_replay(now() + 600).await.unwrap(), 0);
    assert!(r.hg.store.prune_replay(now() + 3600).await.unwrap() >= 1);
}

#[tokio::test]
async fn a_sub_only_token_ends_every_session_of_that_person_only() {
    let r = Rogue::start();
    let a1 = r.sign_in("alice", "sid-a1").await;
    let a2 = r.sign_in("alice", "sid-a2").await;
    let bob = r.sign_in("bob", "sid-b").await;
    let (status, _, body) =
        post_token(&r.endpoint(), &r.sign(&r.claims(Some("alice"), None))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(whoami(&a1, &r.me()).await, 401);
    assert_eq!(whoami(&a2, &r.me()).await, 401);
    assert_eq!(whoami(&bob, &r.me()).await, 200);
    // A sid-only token ends that IdP session's headgate sessions, whoever's they are.
    let (status, _, body) =
        post_token(&r.endpoint(), &r.sign(&r.claims(None, Some("sid-b")))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(whoami(&bob, &r.me()).await, 401);
    // A sub nobody here has: 200, nothing ended.
    let c = r.sign_in("carol", "sid-c").await;
    let (status, _, _) = post_token(&r.endpoint(), &r.sign(&r.claims(Some("nobody"), None))).await;
    assert_eq!(status, 200);
    assert_eq!(whoami(&c, &r.me()).await, 200);
}
