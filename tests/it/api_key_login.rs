//! API-key sign-in against the fake Headscale: lifetime, every refusal message, revocation ending sessions,
//! disabled login refusing a direct post, CSRF and the failure limit.

use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::harness::browser::{Browser, Page};
use crate::harness::fake_headscale::FakeHeadscale;
use crate::harness::headgate::Headgate;
use crate::harness::stack::{Site, oidc_section};

fn start(
    hs: &FakeHeadscale,
    extra_server: &[(&str, &str)],
    oidc: Option<String>,
) -> (Site, Headgate) {
    let site = Site::new();
    let mut cfg = site.config(Some(hs));
    for (k, v) in extra_server {
        cfg = cfg.server(k, v);
    }
    if let Some(o) = oidc {
        cfg = cfg.section(o);
    }
    let hg = cfg.start();
    (site, hg)
}

/// Load the login page and submit its API-key form.
async fn submit_key(b: &Browser, site: &Site, key: &str) -> Page {
    let page = b.get(site.url("/admin/login")).await;
    assert_eq!(page.status(), 200, "{}", page.text());
    let mut form = page
        .forms()
        .into_iter()
        .find(|f| f.get("api_key").is_some() || f.password_fields.iter().any(|p| p == "api_key"))
        .unwrap_or_else(|| panic!("no API-key form on the login page: {}", page.text()));
    form.set("api_key", key);
    b.submit(&page, &form, None).await
}

async fn whoami(b: &Browser, site: &Site) -> (u16, serde_json::Value) {
    let p = b.get(site.url("/_headgate/whoami")).await;
    (p.status(), p.json())
}

fn expires_of(me: &serde_json::Value) -> i64 {
    let s = me["session_expires"].as_str().unwrap();
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp()
}

#[tokio::test]
async fn a_valid_key_signs_in_for_the_shorter_of_its_life_and_cookie_max_age() {
    let hs = FakeHeadscale::start();
    let now = OffsetDateTime::now_utc();
    let short = hs.add_api_key(Some(now + time::Duration::hours(1)));
    let long = hs.add_api_key(Some(now + time::Duration::days(30)));
    let (site, hg) = start(&hs, &[("cookie_max_age", "7200")], None);

    let b = Browser::new();
    let r = submit_key(&b, &site, &short).await;
    assert_eq!(r.status(), 303, "{}", r.text());
    let (status, me) = whoami(&b, &site).await;
    assert_eq!(status, 200, "{}", hg.process.output());
    assert_eq!(me["auth"], "api_key");
    assert!(
        (expires_of(&me) - (now + time::Duration::hours(1)).unix_timestamp()).abs() <= 5,
        "{me}"
    );
    assert!(
        !me.to_string().contains(&short[12..]),
        "the key's secret never shows: {me}"
    );

    let b = Browser::new();
    submit_key(&b, &site, &long).await;
    let (_, me) = whoami(&b, &site).await;
    assert!(
        (expires_of(&me) - (now.unix_timestamp() + 7200)).abs() <= 5,
        "{me}"
    );
    // No cookie holds the key.
    for c in b.cookies() {
        assert!(!c.value.contains(&long[10..30]), "{c:?}");
    }
    assert!(
        !hg.process.output().contains(&long[22..]),
        "the key's secret is never logged"
    );
}

#[tokio::test]
async fn each_refusal_has_its_message() {
    let hs = FakeHeadscale::start();
    let expired = hs.add_api_key(Some(OffsetDateTime::now_utc() - time::Duration::hours(1)));
    let (site, _hg) = start(&hs, &[], None);
    for (key, message) in [
        (expired.as_str(), "API key has expired"),
        (
            "hskey-api-ZZZZZZZZZZZZ-0000000000000000000000000000000000000000000000000000000000000000",
            "API key was not found",
        ),
        (
            "not a key",
            "API key is invalid (it may be incorrect or expired)",
        ),
        ("   ", "API key cannot be empty"),
    ] {
        let b = Browser::new();
        let r = submit_key(&b, &site, key).await;
        assert_eq!(r.status(), 200, "{key}");
        assert!(
            r.text().contains(message),
            "{key:?} → expected {message:?} in {}",
            r.visible_text()
        );
        assert_eq!(whoami(&b, &site).await.0, 401);
    }
}

#[tokio::test]
async fn a_key_revoked_at_headscale_ends_its_sessions() {
    let hs = FakeHeadscale::start();
    let key = hs.add_api_key(Some(OffsetDateTime::now_utc() + time::Duration::hours(2)));
    let (site, hg) = start(&hs, &[("api_key_recheck_interval", "1")], None);
    let b = Browser::new();
    submit_key(&b, &site, &key).await;
    assert_eq!(whoami(&b, &site).await.0, 200);
    hs.revoke_api_key(&key);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if whoami(&b, &site).await.0 == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "session still alive: {}",
            hg.process.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn disabled_api_key_login_refuses_a_direct_post() {
    let hs = FakeHeadscale::start();
    let key = hs.add_api_key(Some(OffsetDateTime::now_utc() + time::Duration::hours(2)));
    let rogue = crate::harness::rogue::RogueIdp::start();
    let (site, _hg) = start(
        &hs,
        &[],
        Some(oidc_section(rogue.issuer(), "disable_api_key_login = true")),
    );
    let b = Browser::new();
    // The login page goes straight to SSO.
    let p = b.get(site.url("/admin/login")).await;
    assert_eq!(p.status(), 302);
    assert!(
        p.header("location")
            .unwrap()
            .starts_with("/admin/oidc/start"),
        "{:?}",
        p.header("location")
    );
    let r = b
        .request(
            reqwest::Method::POST,
            &site.url("/admin/login"),
            Some(vec![("api_key".into(), key.clone())]),
            &[("origin", &site.base())],
            None,
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(whoami(&b, &site).await.0, 401);
}

#[tokio::test]
async fn cross_site_posts_and_missing_tokens_are_refused() {
    let hs = FakeHeadscale::start();
    let key = hs.add_api_key(Some(OffsetDateTime::now_utc() + time::Duration::hours(2)));
    let (site, _hg) = start(&hs, &[], None);
    let b = Browser::new();
    let form = Some(vec![("api_key".to_string(), key.clone())]);
    let r = b
        .request(
            reqwest::Method::POST,
            &site.url("/admin/login"),
            form.clone(),
            &[("origin", "https://evil.example")],
            None,
        )
        .await;
    assert_eq!(r.status(), 403);
    // Same origin but no CSRF token of ours.
    let r = b
        .request(
            reqwest::Method::POST,
            &site.url("/admin/login"),
            form,
            &[("origin", &site.base())],
            None,
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(whoami(&b, &site).await.0, 401);
}

#[tokio::test]
async fn repeated_failures_are_rate_limited() {
    let hs = FakeHeadscale::start();
    let good = hs.add_api_key(Some(OffsetDateTime::now_utc() + time::Duration::hours(2)));
    let (site, _hg) = start(&hs, &[], None);
    let b = Browser::new();
    for _ in 0..10 {
        let r = submit_key(&b, &site, "hskey-api-ZZZZZZZZZZZZ-0000000000000000000000000000000000000000000000000000000000000000").await;
        assert_eq!(r.status(), 200);
    }
    let r = submit_key(&b, &site, &good).await;
    assert_eq!(r.status(), 429, "{}", r.visible_text());
    assert!(r.text().contains("Too many failed attempts"));
    assert_eq!(whoami(&b, &site).await.0, 401);
}

#[tokio::test]
async fn parallel_failures_cannot_slip_past_the_limit() {
    let hs = FakeHeadscale::start();
    let good = hs.add_api_key(Some(OffsetDateTime::now_utc() + time::Duration::hours(2)));
    // A slow Headscale widens the window between the limit check and the key check.
    hs.delay(Duration::from_millis(300));
    let (site, _hg) = start(&hs, &[], None);
    let b = std::sync::Arc::new(Browser::new());
    let page = b.get(site.url("/admin/login")).await;
    let form = page
        .forms()
        .into_iter()
        .find(|f| f.get("csrf").is_some())
        .unwrap();
    let csrf = form.get("csrf").unwrap().to_string();
    let mut tasks = Vec::new();
    for _ in 0..25 {
        let (b2, url, csrf, origin) = (
            b.clone(),
            site.url("/admin/login"),
            csrf.clone(),
            site.base(),
        );
        tasks.push(tokio::spawn(async move {
            b2.request(
                reqwest::Method::POST,
                &url,
                Some(vec![
                    ("api_key".into(), "hskey-api-ZZZZZZZZZZZZ-0000000000000000000000000000000000000000000000000000000000000000".into()),
                    ("csrf".into(), csrf),
                ]),
                &[("origin", &origin)],
                None,
            )
            .await
            .status()
        }));
    }
    let mut refused_by_limit = 0;
    for t in tasks {
        if t.await.unwrap() == 429 {
            refused_by_limit += 1;
        }
    }
    assert!(
        refused_by_limit >= 15,
        "only {refused_by_limit} of 25 parallel bad posts hit the limit of 10"
    );
    hs.delay(Duration::from_millis(0));
    let r = submit_key(&b, &site, &good).await;
    assert_eq!(r.status(), 429, "the limit holds for the good key too");
}
