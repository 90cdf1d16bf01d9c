//! Outages, each with the IdP, Headscale and the upstream headgate really talks to: the IdP down or hanging
//! (the login page says SSO is unavailable within seconds, existing sessions and API-key sign-in keep working,
//! SSO comes back without a restart), the IdP rotating its signing key (the new `kid` is fetched), Headscale
//! down or slow (signed-in people are unaffected, API-key sign-in says why), the upstream down (a 502 page,
//! readiness false), and a corrupt store file (`serve` refuses to start, names the file, leaves it untouched).
//! (Also covered elsewhere: an IdP unreachable from the start, `login_page.rs`; readiness following the
//! upstream, store and IdP, `operations.rs`; Headscale down during a sign-in's linking, `identity.rs`.)

use std::time::{Duration, Instant};

use crate::gated::{self, Gated};
use crate::harness::browser::{Browser, Page};
use crate::harness::rogue::Outage;
use crate::harness::stack::{Site, oidc_section};

fn says_sso_unavailable(p: &Page) -> bool {
    p.visible_text()
        .to_ascii_lowercase()
        .contains("single sign-on is unavailable")
}

fn offers_sso(p: &Page) -> bool {
    p.text().contains("/admin/oidc/start")
}

/// Poll the login page (a fresh browser each time) until `pred` holds; returns how long it took.
async fn login_page_until(e: &Gated, what: &str, pred: impl Fn(&Page) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let p = Browser::new().get(e.url("/admin/login")).await;
        assert_eq!(p.status(), 200, "{}", p.text());
        if pred(&p) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: the login page still shows {}",
            p.visible_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn still_signed_in(e: &Gated, owner: &gated::Principal, what: &str) {
    let started = Instant::now();
    let me = owner.browser.get(e.url("/_headgate/whoami")).await;
    assert_eq!(me.status(), 200, "{what}: {}", me.text());
    let p = owner
        .browser
        .get_with(e.url("/admin/machines"), &[("accept", "text/html")])
        .await;
    assert_eq!(p.status(), 200, "{what}: {}", p.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{what}: signed-in requests took {:?}",
        started.elapsed()
    );
}

async fn idp_outage(outage: Outage) {
    let e = gated::start("api_key");
    let owner = e.person("owner", "p-owner", None, "owner", false).await;
    let p = Browser::new().get(e.url("/admin/login")).await;
    assert!(offers_sso(&p) && !says_sso_unavailable(&p), "{}", p.text());

    e.rogue.set_outage(outage);
    let took = login_page_until(&e, "IdP out", says_sso_unavailable).await;
    assert!(took < Duration::from_secs(12), "noticed after {took:?}");
    // Every login page answers quickly, also while the IdP hangs.
    let started = Instant::now();
    let p = Browser::new().get(e.url("/admin/login")).await;
    assert!(says_sso_unavailable(&p) && !offers_sso(&p), "{}", p.text());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the login page took {:?}",
        started.elapsed()
    );
    still_signed_in(&e, &owner, "during the outage").await;
    let api = e.api_key_session().await;
    assert_eq!(
        api.browser.get(e.url("/_headgate/whoami")).await.status(),
        200,
        "API-key sign-in works during the outage"
    );

    // Back: SSO is offered again within seconds, without a restart, and signing in works.
    e.rogue.set_outage(Outage::None);
    let took = login_page_until(&e, "IdP back", |p| {
        offers_sso(p) && !says_sso_unavailable(p)
    })
    .await;
    assert!(took < Duration::from_secs(6), "recovered after {took:?}");
    let again = e.person("again", "p-owner", None, "owner", false).await;
    still_signed_in(&e, &again, "after the outage").await;
    still_signed_in(&e, &owner, "after the outage").await;
}

#[tokio::test]
async fn idp_down_sso_is_unavailable_sessions_keep_working_and_it_recovers() {
    idp_outage(Outage::Down).await;
}

#[tokio::test]
async fn idp_hanging_never_holds_the_login_page_or_signed_in_requests() {
    idp_outage(Outage::Hang).await;
}

#[tokio::test]
async fn a_rotated_idp_signing_key_is_fetched_without_a_restart() {
    let e = gated::start("api_key");
    let first = Instant::now();
    let owner = e.person("owner", "p-owner", None, "owner", false).await;
    e.rogue.rotate_key("rogue-es256-rotated");
    // headgate refetches the JWKS for an unknown kid at most every 5 s (forged kids cannot hammer the IdP).
    if let Some(left) = Duration::from_millis(5500).checked_sub(first.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let again = e
        .person("admin", "p-admin", Some("admin"), "admin", false)
        .await;
    still_signed_in(&e, &again, "signed in with the new key").await;
    still_signed_in(&e, &owner, "a session from before the rotation").await;
    let log = e.hg().process.output();
    assert!(!log.contains("no key in the IdP's JWKS matches"), "{log}");
}

#[tokio::test]
async fn headscale_down_or_slow_leaves_signed_in_people_alone_and_api_key_login_says_why() {
    let e = gated::start("api_key");
    let owner = e.person("owner", "p-owner", None, "owner", false).await;
    // Slow: signed-in requests do not wait for Headscale.
    e.hs.delay(Duration::from_secs(3));
    still_signed_in(&e, &owner, "Headscale slow").await;
    e.hs.delay(Duration::ZERO);

    e.hs.down(true);
    still_signed_in(&e, &owner, "Headscale down").await;
    // API-key sign-in says what is wrong (not "invalid key").
    let key =
        "hskey-api-AAAAAAAAAAAA-0000000000000000000000000000000000000000000000000000000000000000";
    let b = Browser::new();
    let page = b.get(e.url("/admin/login")).await;
    let mut form = page
        .forms()
        .into_iter()
        .find(|f| f.password_fields.iter().any(|p| p == "api_key"))
        .expect("an API-key form");
    form.set("api_key", key);
    let r = b.submit(&page, &form, None).await;
    assert_eq!(r.status(), 503, "{}", r.visible_text());
    assert!(
        r.visible_text()
            .contains("Headscale could not be reached to check the API key"),
        "{}",
        r.visible_text()
    );
    // Linking (onboarding) says Headscale is unavailable, once the user list headgate reuses for 10 s is
    // stale.
    let started = Instant::now();
    loop {
        let p = owner.browser.get(e.url("/_headgate/onboarding")).await;
        let text = p.visible_text().to_ascii_lowercase();
        if text.contains("headscale")
            && (text.contains("unavailable") || text.contains("could not"))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{}: {text}",
            p.status()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Back: API-key sign-in works again.
    e.hs.down(false);
    let api = e.api_key_session().await;
    assert_eq!(
        api.browser.get(e.url("/_headgate/whoami")).await.status(),
        200
    );
}

#[tokio::test]
async fn an_upstream_that_is_down_is_a_502_page_and_readiness_false() {
    let site = Site::new();
    let rogue = crate::harness::rogue::RogueIdp::start();
    let nothing = crate::harness::free_port();
    let _hg = site
        .config(None)
        .section(format!(
            "[upstream]\nurl = \"http://127.0.0.1:{nothing}\"\nheadplane_login = \"none\""
        ))
        .section(oidc_section(rogue.issuer(), ""))
        .start();
    let b = Browser::new();
    let to_idp = b.get(site.url("/admin/oidc/start")).await;
    let back = b.get(to_idp.location().unwrap().as_str()).await;
    b.get(back.location().unwrap().as_str()).await;
    let p = b
        .get_with(site.url("/admin/machines"), &[("accept", "text/html")])
        .await;
    assert_eq!(p.status(), 502, "{}", p.text());
    assert!(
        p.text().contains("<html")
            || p.text().contains("<!doctype")
            || p.text().contains("<!DOCTYPE"),
        "a page: {}",
        p.text()
    );
    let r = reqwest::get(site.url("/_headgate/readyz")).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["checks"]["upstream"]["ok"], false, "{body}");
}

#[test]
fn a_corrupt_store_file_refuses_to_start_names_the_file_and_is_left_untouched() {
    use std::os::unix::fs::PermissionsExt;
    // Text, and a file that starts like a redb file but is damaged after its header.
    let real = {
        let dir = crate::harness::tempdir();
        let p = dir.path().join("x.redb");
        drop(headgate::store::Store::open_redb(&p, 1 << 20).unwrap());
        let mut b = std::fs::read(&p).unwrap();
        b.truncate(b.len().min(512));
        b.extend(std::iter::repeat_n(0xa5u8, 4096));
        b
    };
    for (what, bytes) in [
        (
            "text",
            b"this is not a redb file at all, just text".to_vec(),
        ),
        ("a damaged redb file", real),
    ] {
        let cfg = crate::harness::headgate::HeadgateConfig::new();
        std::fs::create_dir(cfg.data_path()).unwrap();
        std::fs::set_permissions(cfg.data_path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let store = cfg.data_path().join("headgate.redb");
        std::fs::write(&store, &bytes).unwrap();
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut child = cfg
            .command(&["serve"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                panic!("{what}: headgate serve kept running on a corrupt store");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!status.success(), "{what}: {text}");
        assert!(
            text.contains(&store.display().to_string()),
            "{what}: the message names the file: {text}"
        );
        assert_eq!(
            std::fs::read(&store).unwrap(),
            bytes,
            "{what}: the file was changed"
        );
    }
}

#[tokio::test]
async fn a_store_that_cannot_write_refuses_sign_ins_clearly_and_keeps_reading_sessions() {
    let rogue = crate::harness::rogue::RogueIdp::start();
    let hg = crate::harness::inproc::InProcess::start(&oidc_section(rogue.issuer(), ""));
    let sign_in = async |sub: &str| {
        rogue.set_subject(sub);
        let b = Browser::new();
        let to_idp = b.get(hg.url("/admin/oidc/start")).await;
        let back = b.get(to_idp.location().unwrap().as_str()).await;
        let done = b.get(back.location().unwrap().as_str()).await;
        (b, done)
    };
    let (alice, _) = sign_in("alice").await;
    assert_eq!(alice.get(hg.url("/_headgate/whoami")).await.status(), 200);

    // The disk is full (or read-only): every write fails, reads work.
    hg.store.fail_writes_for_test(true);
    assert_eq!(
        alice.get(hg.url("/_headgate/whoami")).await.status(),
        200,
        "an existing session is still read"
    );
    let (_, done) = sign_in("bob").await;
    assert_eq!(done.status(), 503, "{}", done.text());
    let text = done.visible_text();
    assert!(
        text.contains("Sign-in is unavailable")
            && text.contains("could not read or write its store")
            && text.contains("server.data_path"),
        "{text}"
    );
    assert!(
        done.set_cookies()
            .iter()
            .all(|c| !c.starts_with("headgate_session=") || c.starts_with("headgate_session=;")),
        "no session cookie: {:?}",
        done.set_cookies()
    );

    // Writable again: Bob signs in, without a restart.
    hg.store.fail_writes_for_test(false);
    let (bob, _) = sign_in("bob").await;
    assert_eq!(bob.get(hg.url("/_headgate/whoami")).await.status(), 200);
    assert_eq!(alice.get(hg.url("/_headgate/whoami")).await.status(), 200);
}

/// `/admin/oidc/start` while the IdP does not answer: the login page with a 503 that says so and names the
/// issuer and the config key, never a redirect to the dead IdP (whose discovery document is still cached).
async fn start_refuses_while_idp_is_out(outage: Outage) {
    let e = gated::start("api_key");
    let _owner = e.person("owner", "p-owner", None, "owner", false).await;
    e.rogue.set_outage(outage);
    // The IdP's last answer counts for a few seconds (as on the login page); then start stops redirecting.
    let out_since = Instant::now();
    let p = loop {
        let started = Instant::now();
        let p = Browser::new()
            .get(e.url("/admin/oidc/start?rd=/admin/machines"))
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "start took {:?}",
            started.elapsed()
        );
        if p.status() != 302 {
            break p;
        }
        assert!(
            out_since.elapsed() < Duration::from_secs(12),
            "start still redirects to the IdP: {:?}",
            p.location()
        );
        // Not faster: starts are limited to 30 a minute per client.
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(p.status(), 503, "{:?}: {}", p.header("location"), p.text());
    assert!(p.header("location").is_none());
    let text = p.visible_text();
    assert!(says_sso_unavailable(&p), "{text}");
    assert!(
        text.contains(&format!(
            "the identity provider at {} did not answer",
            e.rogue.issuer()
        )),
        "{text}"
    );
    assert!(text.contains("oidc.issuer"), "{text}");
    assert!(!offers_sso(&p), "{}", p.text());
    // The page still offers the API-key form, which works.
    assert!(
        p.forms()
            .iter()
            .any(|f| f.password_fields.iter().any(|n| n == "api_key")),
        "{}",
        p.text()
    );
    let api = e.api_key_session().await;
    assert_eq!(
        api.browser.get(e.url("/_headgate/whoami")).await.status(),
        200
    );

    // Back: start redirects to the IdP again without a restart.
    e.rogue.set_outage(Outage::None);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = Browser::new().get(e.url("/admin/oidc/start")).await;
        if p.status() == 302 {
            assert!(
                p.location().unwrap().as_str().starts_with(e.rogue.issuer()),
                "{:?}",
                p.location()
            );
            break;
        }
        assert!(Instant::now() < deadline, "start still says {}", p.status());
        // Not faster: starts are limited to 30 a minute per client.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let again = e.person("again", "p-owner", None, "owner", false).await;
    still_signed_in(&e, &again, "after the outage").await;
}

#[tokio::test]
async fn oidc_start_while_the_idp_is_down_is_a_503_login_page_not_a_redirect() {
    start_refuses_while_idp_is_out(Outage::Down).await;
}

#[tokio::test]
async fn oidc_start_while_the_idp_hangs_is_a_503_login_page_within_seconds() {
    start_refuses_while_idp_is_out(Outage::Hang).await;
}

/// A Headscale outage is not a wrong guess: more API-key attempts than the failure limit (10 in 10 minutes
/// per client) all get the outage message, never 429, and once Headscale is back a correct key signs in.
#[tokio::test]
async fn api_key_attempts_during_a_headscale_outage_do_not_count_toward_the_failure_limit() {
    let e = gated::start("api_key");
    let key = e.hs.add_api_key(Some(
        time::OffsetDateTime::now_utc() + time::Duration::days(1),
    ));
    e.hs.down(true);
    let limit = headgate::auth::api_key::MAX_FAILURES as usize;
    for attempt in 0..limit + 5 {
        let b = Browser::new();
        let page = b.get(e.url("/admin/login")).await;
        let mut form = page
            .forms()
            .into_iter()
            .find(|f| f.password_fields.iter().any(|p| p == "api_key"))
            .expect("an API-key form");
        // The right key and wrong-looking ones alike: Headscale cannot say which.
        form.set(
            "api_key",
            if attempt % 2 == 0 {
                &key
            } else {
                "hskey-api-AAAAAAAAAAAA-0000000000000000000000000000000000000000000000000000000000000000"
            },
        );
        let r = b.submit(&page, &form, None).await;
        let text = r.visible_text();
        assert_eq!(r.status(), 503, "attempt {attempt}: {text}");
        assert!(
            text.contains("Headscale could not be reached to check the API key")
                && text.contains("headscale.url"),
            "attempt {attempt}: {text}"
        );
    }
    e.hs.down(false);
    let b = Browser::new();
    let page = b.get(e.url("/admin/login")).await;
    let mut form = page
        .forms()
        .into_iter()
        .find(|f| f.password_fields.iter().any(|p| p == "api_key"))
        .expect("an API-key form");
    form.set("api_key", &key);
    let r = b.submit(&page, &form, None).await;
    assert_eq!(r.status(), 303, "{}", r.visible_text());
    let me = b.get(e.url("/_headgate/whoami")).await;
    assert_eq!(me.status(), 200, "{}", me.text());
    assert_eq!(me.json()["auth"], "api_key");
}
