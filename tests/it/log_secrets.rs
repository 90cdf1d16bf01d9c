//! S20: no log line holds a secret, at any level. headgate runs at `trace` (every crate's trace output
//! included: `server.log_level = "trace"` is the whole filter) through everything that handles secrets:
//!
//! * an OIDC sign-in at the real test IdP (authorization code, access, ID and refresh tokens, the client
//!   secret at the token endpoint),
//! * onboarding's one-hour pre-auth key, created at the fake Headscale with `headscale.api_key`,
//! * the API-key bridge to the Headplane double: a sign-in with `headscale.api_key`, then Headplane ending the
//!   session and the bridge signing in again (`_hp_auth` values),
//! * a person's own Headscale API key on the login page, and that session through the bridge,
//! * logout with RP-initiated logout (the ID token leaves in `id_token_hint`).
//!
//! Then every line of headgate's log is scanned (`harness::leaks`: raw, percent-, form-, JSON-encoded, hex,
//! base64 at each alignment) for every secret the test configured (`cookie_secret`, `client_secret`,
//! `headscale.api_key`, the person's API key), every token the IdP reports it issued (it prints each one, see
//! `TestIdp::issued_tokens`), every cookie value headgate set, every `_hp_auth` value Headplane handed out and
//! the pre-auth key; and no line may hold a control character (values are escaped). Both log formats
//! (human and JSON), and one error path: a callback carrying an already-redeemed code (`invalid_grant`).

use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::harness::browser::{Browser, Page};
use crate::harness::fake_headscale::FakeHeadscale;
use crate::harness::headgate::TEST_SECRET;
use crate::harness::headplane::{FakeHeadplane, Version};
use crate::harness::idp::{
    ALICE_EMAIL, ALICE_LOGIN, ALICE_PASSWORD, ClientSpec, DEFAULT_CLIENT_SECRET, TestIdp, UserSpec,
};
use crate::harness::leaks::Scanner;
use crate::harness::stack::{Site, oidc_section, onboarding_landing, sign_in};

/// The IdP's tokens once it has reported all four kinds.
async fn issued_tokens(idp: &TestIdp) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = idp.issued_tokens();
        let has = |k: &str| t.iter().any(|(kind, v)| kind == k && !v.is_empty());
        if [
            "authorization_code",
            "access_token",
            "id_token",
            "refresh_token",
        ]
        .iter()
        .all(|k| has(k))
        {
            return t;
        }
        assert!(Instant::now() < deadline, "the IdP reported only {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every non-empty cookie value headgate's origin set in `b` (from the `Set-Cookie` headers it received, so
/// flow cookies that are already gone count too).
fn cookie_values_set(b: &Browser, origin: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in b.history() {
        if p.url.origin().ascii_serialization() != origin {
            continue;
        }
        for sc in p.set_cookies() {
            let pair = sc.split(';').next().unwrap_or("");
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (name, value) = (name.trim(), value.trim());
            if value.len() >= 8 && !out.iter().any(|(_, v)| v == value) {
                out.push((name.to_string(), value.to_string()));
            }
        }
    }
    out
}

fn form_with_action(page: &Page, action: &str) -> crate::harness::browser::Form {
    page.forms()
        .into_iter()
        .find(|f| f.get("action") == Some(action))
        .unwrap_or_else(|| panic!("no {action:?} form on {}: {}", page.url, page.text()))
}

#[tokio::test]
async fn no_secret_reaches_any_log_line_at_trace_level() {
    for format in ["human", "json"] {
        run(format).await;
    }
}

async fn run(format: &str) {
    let site = Site::new();
    let idp = TestIdp::builder()
        .client(ClientSpec {
            redirect_uris: vec![site.callback()],
            post_logout_redirect_uris: vec![site.url("/admin/login?s=logout")],
            ..ClientSpec::default()
        })
        .user(UserSpec::alice())
        .start();
    let hs = FakeHeadscale::start();
    // Alice's Headscale user: linked by her verified email, so onboarding offers her a key at once.
    let alice_hs = hs.add_user("alice", ALICE_EMAIL);
    let hp = FakeHeadplane::builder(&hs.url())
        .version(Version::V07)
        .stale_data(false)
        .start();
    let mut hg = site
        .config(Some(&hs))
        .server("log_level", "\"trace\"")
        .server("log_format", &format!("\"{format}\""))
        .section(format!("[upstream]\nurl = \"{}\"", hp.url()))
        .section(oidc_section(
            idp.issuer(),
            "use_pkce = true\nuse_end_session = true",
        ))
        .start();
    let origin = site.base();

    // 1. OIDC sign-in (the first person: owner), landing on onboarding.
    let b = Browser::new();
    let done = sign_in(&b, &site, ALICE_LOGIN, ALICE_PASSWORD, None).await;
    assert_eq!(
        done.header("location").as_deref(),
        Some(onboarding_landing("/admin/").as_str()),
        "{}",
        hg.process.output()
    );
    let me = b.get(site.url("/_headgate/whoami")).await;
    assert_eq!(me.status(), 200, "{}", me.text());
    assert_eq!(
        me.json()["headscale_user_id"],
        alice_hs.to_string(),
        "{}",
        me.text()
    );

    // 2. Onboarding: the one-hour pre-auth key, created at Headscale with headscale.api_key.
    let device = b.get(site.url("/_headgate/onboarding?step=device")).await;
    assert_eq!(device.status(), 200, "{}", device.text());
    let made = b
        .submit(&device, &form_with_action(&device, "create_key"), None)
        .await;
    assert_eq!(made.status(), 200, "{}", made.text());
    let keys = hs.preauth_keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let preauth = keys[0].key.clone();
    assert!(made.text().contains(&preauth), "the key is shown once");

    // 3. The bridge: a page through Headplane (headgate signs in with headscale.api_key), then Headplane
    //    ends that session and the next page makes the bridge sign in again.
    let html = [("accept", "text/html")];
    let p = b.get_with(site.url("/admin/machines"), &html).await;
    assert_eq!(p.status(), 200, "{}", p.text());
    assert_eq!(hp.logins(), 1);
    hp.expire_all_sessions();
    let p = b.get_with(site.url("/admin/machines"), &html).await;
    assert_eq!(p.status(), 200, "{}", p.text());
    assert_eq!(hp.logins(), 2, "the bridge signed in again");

    // 4. A person's own API key on the login page, and that session through the bridge.
    let person_key = hs.add_api_key(Some(OffsetDateTime::now_utc() + time::Duration::days(1)));
    let b2 = Browser::new();
    let login = b2.get(site.url("/admin/login")).await;
    let mut form = login
        .forms()
        .into_iter()
        .find(|f| f.password_fields.iter().any(|n| n == "api_key") || f.get("api_key").is_some())
        .unwrap_or_else(|| panic!("no API-key form: {}", login.text()));
    form.set("api_key", &person_key);
    let signed = b2.submit(&login, &form, None).await;
    assert_eq!(signed.status(), 303, "{}", signed.text());
    let me2 = b2.get(site.url("/_headgate/whoami")).await;
    assert_eq!(me2.json()["auth"], "api_key", "{}", me2.text());
    let p = b2.get_with(site.url("/admin/users"), &html).await;
    assert_eq!(p.status(), 200, "{}", p.text());

    // 5. Logout, RP-initiated: the ID token leaves in the redirect's id_token_hint.
    let out = b
        .request(
            reqwest::Method::POST,
            &site.url("/admin/logout"),
            None,
            &[("origin", &origin)],
            None,
        )
        .await;
    assert_eq!(out.status(), 303, "{}", out.text());
    let to = out.location().unwrap();
    assert!(to.query_pairs().any(|(k, _)| k == "id_token_hint"), "{to}");

    // 6. A failing token exchange: a fresh sign-in whose callback carries the code the IdP already redeemed
    //    (the IdP refuses it: invalid_grant).
    let redeemed = issued_tokens(&idp)
        .await
        .into_iter()
        .find(|(k, _)| k == "authorization_code")
        .unwrap()
        .1;
    let to_idp = b.get(site.url("/admin/oidc/start")).await;
    assert_eq!(to_idp.status(), 302, "{}", to_idp.text());
    let mut callback = b
        .idp_login(
            to_idp.location().unwrap().as_str(),
            ALICE_LOGIN,
            ALICE_PASSWORD,
        )
        .await;
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "code" {
                redeemed.clone()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    callback.query_pairs_mut().clear().extend_pairs(pairs);
    let refused = b.get(callback.as_str()).await;
    assert_eq!(
        refused.header("location").as_deref(),
        Some("/admin/login?s=error_auth_failed"),
        "{}",
        refused.text()
    );

    // What to look for.
    let tokens = issued_tokens(&idp).await;
    let mut scanner = Scanner::new()
        .secret("server.cookie_secret", TEST_SECRET.as_bytes())
        .secret("oidc.client_secret", DEFAULT_CLIENT_SECRET.as_bytes())
        .api_key(&hs.admin_key())
        .secret("the person's API key", person_key.as_bytes())
        .secret("the onboarding pre-auth key", preauth.as_bytes())
        .hp_session_values(&hp);
    if let Some(secret) = person_key.rsplit('-').next().filter(|s| s.len() >= 12) {
        scanner = scanner.secret("the person's API key's secret part", secret.as_bytes());
    }
    for (kind, value) in &tokens {
        scanner = scanner.secret(&format!("the IdP's {kind}"), value.as_bytes());
        // A JWT's signature alone (a token cut at its last dot is still a leak of the signature).
        if let Some(sig) = value
            .rsplit('.')
            .next()
            .filter(|s| s.len() >= 16 && *s != value)
        {
            scanner = scanner.secret(&format!("the IdP's {kind} signature"), sig.as_bytes());
        }
    }
    let mut cookies = cookie_values_set(&b, &origin);
    cookies.extend(cookie_values_set(&b2, &origin));
    assert!(
        cookies.iter().any(|(n, _)| n.contains("headgate_session")),
        "the browsers got session cookies: {cookies:?}"
    );
    for (name, value) in &cookies {
        scanner = scanner.secret(&format!("the {name} cookie's value"), value.as_bytes());
    }
    let hp_values = hp.sessions().len();
    assert!(hp_values >= 2, "Headplane handed out {hp_values} sessions");

    // Let the log readers catch up, then scan every line.
    tokio::time::sleep(Duration::from_millis(300)).await;
    hg.process.signal(15);
    hg.process.wait_exit(Duration::from_secs(10));
    let log = hg.process.output();
    let lines = log.lines().count();
    assert!(
        log.contains("TRACE") && lines > 100,
        "headgate logged at trace level ({lines} {format} lines)"
    );
    let found = scanner.scan_log(&log);
    assert!(
        found.is_empty(),
        "secrets in headgate's {format} log ({} findings):\n{}",
        found.len(),
        found.join("\n")
    );
    let control: Vec<&str> = log
        .lines()
        .filter(|l| l.chars().any(|c| c.is_control() && c != '\t'))
        .collect();
    assert!(
        control.is_empty(),
        "log lines with control characters:\n{}",
        control.join("\n")
    );
    eprintln!(
        "scanned {lines} {format} log lines for {} tokens, {} cookie values, {hp_values} _hp_auth values and 6 \
         configured secrets",
        tokens.len(),
        cookies.len()
    );
}
