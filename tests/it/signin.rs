//! Sign-in with the real test IdP: discovery and manual endpoints, client authentication methods, PKCE,
//! userinfo-only claims, RS256/ES256 and JWKS without `alg`; the failures an operator meets, with the log
//! naming the key to change.

use serde_json::Value;

use crate::harness::browser::Browser;
use crate::harness::idp::{
    ALICE_EMAIL, ALICE_LOGIN, ALICE_PASSWORD, ALICE_SUB, AuthMethod, ClientSpec, TestIdp, UserSpec,
};
use crate::harness::stack::{Stack, landing, login_code, onboarding_landing, sign_in, stack};

async fn whoami(b: &Browser, s: &Stack) -> (u16, Value) {
    let p = b.get(s.url("/_headgate/whoami")).await;
    (p.status(), p.json())
}

async fn assert_signed_in_as_alice(b: &Browser, s: &Stack) {
    let (status, me) = whoami(b, s).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["auth"], "oidc");
    assert_eq!(me["subject"], ALICE_SUB);
    assert_eq!(me["email"], ALICE_EMAIL);
    assert_eq!(me["name"], "Alice Example");
    let text = me.to_string();
    assert!(
        !text.contains("eyJ"),
        "whoami must never show a token: {text}"
    );
}

fn client(method: AuthMethod, alg: &str) -> ClientSpec {
    ClientSpec {
        token_endpoint_auth_method: method,
        id_token_signed_response_alg: alg.into(),
        ..ClientSpec::default()
    }
}

#[tokio::test]
async fn discovery_and_basic_only_client_with_method_unset() {
    // The default client accepts only client_secret_basic; headgate tries post first, then basic, and
    // remembers it.
    let mut s = stack(TestIdp::builder().pkce_required(false), "", &[]);
    let b = Browser::new();
    let done = sign_in(
        &b,
        &s.site,
        ALICE_LOGIN,
        ALICE_PASSWORD,
        Some("/admin/machines"),
    )
    .await;
    assert_eq!(
        (done.status(), landing(&s.site, &done)),
        (302, onboarding_landing("/admin/machines")),
        "{}",
        s.hg.process.output()
    );
    assert_signed_in_as_alice(&b, &s).await;
    s.wait_log("retrying once with client_secret_basic");
    // Second sign-in: basic straight away (the IdP sees one token request, no invalid_client).
    let before = s.idp.events_named("grant.error").len() + s.idp.events_named("server_error").len();
    let b2 = Browser::new();
    let done = sign_in(&b2, &s.site, ALICE_LOGIN, ALICE_PASSWORD, None).await;
    assert_eq!(landing(&s.site, &done), onboarding_landing("/admin/"));
    let retries =
        s.hg.process
            .output()
            .matches("retrying once with client_secret_basic")
            .count();
    assert_eq!(retries, 1, "the working method is remembered");
    let _ = before;
}

#[tokio::test]
async fn post_only_client_with_method_unset() {
    let s = stack(
        TestIdp::builder()
            .pkce_required(false)
            .client(client(AuthMethod::ClientSecretPost, "RS256")),
        "",
        &[],
    );
    let b = Browser::new();
    let done = sign_in(&b, &s.site, ALICE_LOGIN, ALICE_PASSWORD, None).await;
    assert_eq!(
        landing(&s.site, &done),
        onboarding_landing("/admin/"),
        "{}",
        s.hg.process.output()
    );
    assert_signed_in_as_alice(&b, &s).await;
}

#[tokio::test]
async fn configured_basic_and_post_methods() {
    for (method, name) in [
        (AuthMethod::ClientSecretBasic, "client_secret_basic"),
        (AuthMethod::ClientSecretPost, "client_secret_post"),
    ] {
        let s = stack(
            TestIdp::builder()
                .pkce_required(false)
                .client(client(method, "RS256")),
            &format!("token_endpoint_auth_method = \"{name}\""),
            &[],
        );
        let b = Browser::new();
        let done = sign_in(&b, &s.site, ALICE_LOGIN, ALICE_PASSWORD, None).await;
        assert_eq!(
            landing(&s.site, &done),
            onboarding_landing("/admin/"),
            "{name}: {}",
            s.hg.process.output()
        );
        assert!(!s.hg.process.output().contains("retrying once"), "{name}");
    }
}

#[tokio::test]
async fn manual_endpoints_without_discovery() {
    let site = crate::harness::stack::Site::new();
    let idp = TestIdp::builder()
        .pkce_required(false)
        .redirect_uri(&site.callback())
        .start();
    let extra = format!(
        "authorization_endpoint = \"{}\"\ntoken_endpoint = \"{}\"\njwks_uri = \"{}\"\nuserinfo_endpoint = \"{}\"",
        idp.authorization_endpoint(),
        idp.token_endpoint(),
        idp.jwks_uri(),
        idp.userinfo_endpoint()
    );
    let hg = site
        .config(None)
        .section(crate::harness::stack::oidc_section(idp.issuer(), &extra))
        .start();
    let b = Browser::new();
    let done = sign_in(&b, &site, ALICE_LOGIN, ALICE_PASSWORD, None).await;
    assert_eq!(landing(&site, &done), "/admin/", "{}", hg.process.output());
    let me = b.get(site.url("/_headgate/whoami")).await.json();
    assert_eq!(me["subject"], ALICE_SUB);
    let discovery_hits = idp
        .events_named("request")
        .iter()
        .filter(|e| {
            e["path"]
                .as_str()
                .is_some_and(|p| p.contains("openid-configuration"))
        })
        .count();
    assert_eq!(discovery_hits, 0, "no discovery document was fetched");
}

#[tokio::test]
async fn pkce_required_by_the_idp_and_enabled() {
    let s = stack(
        TestIdp::builder().pkce_required(true),
        "use_pkce = true",
        &[],
    );
    let b = Browser::new();
    let to_idp = b.get(s.url("/admin/oidc/start")).await;
    let auth = to_idp.location().unwrap();
    assert!(
        auth.query_pairs()
            .any(|(k, v)| k == "code_challenge_method" && v == "S256"),
        "{auth}"
    );
    let callback = b
        .idp_login(auth.as_str(), ALICE_LOGIN, ALICE_PASSWORD)
        .await;
    let done = b.get(callback.as_str()).await;
    assert_eq!(
        landing(&s.site, &done),
        onboarding_landing("/admin/"),
        "{}",
        s.hg.process.output()
    );
    assert_signed_in_as_alice(&b, &s).await;
}

#[tokio::test]
async fn pkce_required_by_the_idp_but_disabled_names_use_pkce() {
    let mut s = stack(TestIdp::builder().pkce_required(true), "", &[]);
    let b = Browser::new();
    let to_idp = b.get(s.url("/admin/oidc/start")).await;
    // The IdP refuses the authorization request and sends the browser back with error=.
    let back = b.get(to_idp.location().unwrap().as_str()).await;
    let back = b.follow(back).await;
    let _ = back;
    let p = b.get(s.url("/_headgate/whoami")).await;
    assert_eq!(p.status(), 401);
    let line = s.wait_log("sign-in failed");
    assert!(line.contains("oidc.use_pkce"), "{line}");
}

#[tokio::test]
async fn claims_only_in_userinfo() {
    let s = stack(
        TestIdp::builder()
            .pkce_required(false)
            .claims_in_id_token(false),
        "",
        &[],
    );
    let b = Browser::new();
    let done = sign_in(&b, &s.site, ALICE_LOGIN, ALICE_PASSWORD, None).await;
    assert_eq!(
        landing(&s.site, &done),
        onboarding_landing("/admin/"),
        "{}",
        s.hg.process.output()
    );
    assert_signed_in_as_alice(&b, &s).await;
}

#[tokio::test]
async fn es256_and_rs256_and_jwks_without_alg() {
    for (alg, strip) in [("ES256", false), ("RS256", true), ("ES256", true)] {
        let s = stack(
            TestIdp::builder()
                .pkce_required(false)
                .jwks_strip_alg(strip)
                .client(client(AuthMethod::ClientSecretBasic, alg)),
            "token_endpoint_auth_method = \"client_secret_basic\"",
            &[],
        );
        let b = Browser::new();
        let done = sign_in(&b, &s.site, ALICE_LOGIN, ALICE_PASSWORD, None).await;
        assert_eq!(
            landing(&s.site, &done),
            onboarding_landing("/admin/"),
            "{alg} strip={strip}: {}",
            s.hg.process.output()
        );
        assert_signed_in_as_alice(&b, &s).await;
    }
}

#[tokio::test]
async fn wrong_client_secret_names_client_secret() {
    let site = crate::harness::stack::Site::new();
    let idp = TestIdp::builder()
        .pkce_required(false)
        .redirect_uri(&site.callback())
        .start();
    let section = crate::harness::stack::oidc_section(idp.issuer(), "")
        .replace("headgate-test-secret", "not-the-secret");
    let mut hg = site.config(None).section(section).start();
    let b = Browser::new();
    let done = sign_in(&b, &site, ALICE_LOGIN, ALICE_PASSWORD, None).await;
    assert_eq!(
        login_code(&done).as_deref(),
        Some("error_auth_failed"),
        "{}",
        hg.process.output()
    );
    let line = hg
        .process
        .wait_for_line(std::time::Duration::from_secs(5), |l| {
            l.contains("sign-in failed")
        });
    assert!(
        line.contains("invalid_client") && line.contains("oidc.client_secret"),
        "{line}"
    );
    assert!(
        !hg.process.output().contains("not-the-secret"),
        "the secret is never logged"
    );
}

#[tokio::test]
async fn a_person_outside_the_allowlist_is_refused_without_a_user_record() {
    let users = [
        UserSpec::new("bob", "bob-sub")
            .claim("email", "bob@other.example")
            .claim("email_verified", true),
        UserSpec::new("carol", "carol-sub")
            .claim("email", "carol@example.com")
            .claim("email_verified", false),
        UserSpec::alice().claim("groups", serde_json::json!(["staff"])),
    ];
    let mut builder = TestIdp::builder().pkce_required(false);
    for u in users {
        builder = builder.user(u);
    }
    let s = stack(builder, "allowed_email_domains = [\"example.com\"]", &[]);
    for (login, why) in [("bob", "other domain"), ("carol", "unverified email")] {
        let b = Browser::new();
        let done = sign_in(&b, &s.site, login, &format!("{login}-password"), None).await;
        assert_eq!(
            login_code(&done).as_deref(),
            Some("error_not_allowed"),
            "{why}: {}",
            s.hg.process.output()
        );
        assert_eq!(b.get(s.url("/_headgate/whoami")).await.status(), 401);
    }
    let b = Browser::new();
    let done = sign_in(&b, &s.site, ALICE_LOGIN, ALICE_PASSWORD, None).await;
    assert_eq!(landing(&s.site, &done), onboarding_landing("/admin/"));
}

#[tokio::test]
async fn a_person_outside_allowed_groups_is_refused() {
    let builder = TestIdp::builder()
        .pkce_required(false)
        .user(UserSpec::alice().claim("groups", serde_json::json!(["staff", "admins"])))
        .user(
            UserSpec::new("dave", "dave-sub")
                .claim("email", "dave@example.com")
                .claim("email_verified", true)
                .claim("groups", serde_json::json!(["staff"])),
        );
    let s = stack(builder, "allowed_groups = [\"admins\"]", &[]);
    let b = Browser::new();
    let done = sign_in(&b, &s.site, "dave", "dave-password", None).await;
    assert_eq!(
        login_code(&done).as_deref(),
        Some("error_not_allowed"),
        "{}",
        s.hg.process.output()
    );
    let b = Browser::new();
    let done = sign_in(&b, &s.site, ALICE_LOGIN, ALICE_PASSWORD, None).await;
    assert_eq!(
        landing(&s.site, &done),
        onboarding_landing("/admin/"),
        "{}",
        s.hg.process.output()
    );
}
