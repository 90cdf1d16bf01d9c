//! What must be refused around sign-in: tampered, replayed and expired state, a callback without its flow
//! cookie, every forged ID token, tampered and doubled session cookies, open redirects; fixation, logout and
//! secret rotation.

use crate::harness::browser::Browser;
use crate::harness::headgate::{HeadgateConfig, TEST_SECRET};
use crate::harness::idp::{ALICE_LOGIN, ALICE_PASSWORD, TestIdp};
use crate::harness::rogue::{Forgery, RogueIdp};
use crate::harness::stack::{
    Site, enc, landing, login_code, oidc_section, onboarding_landing, rogue_sign_in, sign_in, stack,
};

/// headgate in front of the rogue IdP.
fn rogue_stack() -> (Site, RogueIdp, crate::harness::headgate::Headgate) {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let hg = site
        .config(None)
        .section(oidc_section(rogue.issuer(), ""))
        .start();
    (site, rogue, hg)
}

#[tokio::test]
async fn every_forged_id_token_is_refused() {
    let (site, rogue, hg) = rogue_stack();
    // The control: a valid token signs in.
    rogue.set_forgery(Forgery::Valid);
    let b = Browser::new();
    let done = rogue_sign_in(&b, &site, None).await;
    assert_eq!(landing(&site, &done), "/admin/", "{}", hg.process.output());
    for f in Forgery::forged() {
        rogue.set_forgery(f);
        let b = Browser::new();
        let done = rogue_sign_in(&b, &site, None).await;
        let want = if f == Forgery::MissingSub {
            "error_no_sub"
        } else {
            "error_auth_failed"
        };
        assert_eq!(
            login_code(&done).as_deref(),
            Some(want),
            "{f:?}: {}",
            hg.process.output()
        );
        assert_eq!(
            b.get(site.url("/_headgate/whoami")).await.status(),
            401,
            "{f:?}"
        );
    }
}

#[tokio::test]
async fn tampered_state_and_missing_flow_cookie() {
    let (site, _rogue, _hg) = rogue_stack();
    let b = Browser::new();
    let to_idp = b.get(site.url("/admin/oidc/start")).await;
    let back = b.get(to_idp.location().unwrap().as_str()).await;
    let callback = back.location().unwrap();
    // The state changed by one character.
    let mut tampered = callback.clone();
    let pairs: Vec<(String, String)> = callback.query_pairs().into_owned().collect();
    tampered.query_pairs_mut().clear();
    for (k, v) in &pairs {
        let v = if k == "state" {
            format!("{}x", &v[..v.len() - 1])
        } else {
            v.clone()
        };
        tampered.query_pairs_mut().append_pair(k, &v);
    }
    let r = b.get(tampered.as_str()).await;
    assert_eq!(login_code(&r).as_deref(), Some("error_invalid_session"));
    // Another browser (no flow cookie) with the genuine callback URL.
    let r = Browser::new().get(callback.as_str()).await;
    assert_eq!(login_code(&r).as_deref(), Some("error_no_session"));
    // No query at all.
    let r = b.get(site.url("/admin/oidc/callback")).await;
    assert_eq!(login_code(&r).as_deref(), Some("error_no_query"));
}

#[tokio::test]
async fn a_replayed_callback_is_refused() {
    let (site, _rogue, _hg) = rogue_stack();
    let b = Browser::new();
    let to_idp = b.get(site.url("/admin/oidc/start")).await;
    let back = b.get(to_idp.location().unwrap().as_str()).await;
    let callback = back.location().unwrap();
    let first = b.get(callback.as_str()).await;
    assert_eq!(landing(&site, &first), "/admin/");
    // The flow cookie was single-use.
    let again = b.get(callback.as_str()).await;
    assert!(
        matches!(
            login_code(&again).as_deref(),
            Some("error_no_session" | "error_invalid_session")
        ),
        "{:?}",
        again.header("location")
    );
}

#[tokio::test]
async fn several_tabs_sign_in_at_once() {
    let (site, _rogue, _hg) = rogue_stack();
    let b = Browser::new();
    let mut callbacks = Vec::new();
    for i in 0..3 {
        let to_idp = b
            .get(site.url(&format!("/admin/oidc/start?rd=%2Fadmin%2Ftab{i}")))
            .await;
        let back = b.get(to_idp.location().unwrap().as_str()).await;
        callbacks.push(back.location().unwrap());
    }
    // Finished in another order than started.
    for (i, cb) in callbacks.iter().enumerate().rev() {
        let done = b.get(cb.as_str()).await;
        assert_eq!(landing(&site, &done), format!("/admin/tab{i}"));
    }
}

#[tokio::test]
async fn open_redirect_vectors_land_on_admin() {
    let (site, _rogue, hg) = rogue_stack();
    let vectors = [
        "//evil.example",
        "/\\evil.example",
        "/ /evil.example",
        "/\t/evil.example",
        "/\u{b}/evil.example",
        "/\n/evil.example",
        "/\r/evil.example",
        "/\t\t/evil.example",
        "/./\\evil.example",
        "/./../../\\evil.example",
        "https://evil.example",
        "https:\\\\evil.example",
        "https://127.0.0.1@evil.example",
        "https://127.0.0.1.evil.example",
        "https://evil127.0.0.1",
        "http://127.0.0.1:badport",
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "%2F%2Fevil.example",
        "HTTPS://EVIL.EXAMPLE",
        "/admin/?rd=https://evil.example&x=//evil.example",
    ];
    for v in vectors {
        let b = Browser::new();
        let done = rogue_sign_in(&b, &site, Some(v)).await;
        let to = landing(&site, &done);
        let ok = to == "/admin/" || (v.starts_with("/admin/?rd=") && to.starts_with("/admin/?"));
        assert!(ok, "rd {v:?} landed on {to:?}: {}", hg.process.output());
    }
    // A same-site absolute target (the ingress-nginx form, escaped once more) is honoured.
    let b = Browser::new();
    let abs = format!("{}/admin/machines?a=1", site.base());
    let done = rogue_sign_in(&b, &site, Some(&enc(&abs))).await;
    assert_eq!(landing(&site, &done), "/admin/machines?a=1");
}

#[tokio::test]
async fn session_cookie_tampering_and_duplicates() {
    let (site, _rogue, _hg) = rogue_stack();
    let b = Browser::new();
    rogue_sign_in(&b, &site, None).await;
    let name = "headgate_session";
    let good = b.cookie(&site.base(), name).expect("a session cookie");
    assert_eq!(b.get(site.url("/_headgate/whoami")).await.status(), 200);
    let whoami_with = |cookie: String| {
        let url = site.url("/_headgate/whoami");
        async move { Browser::new().get_with(url, &[("cookie", &cookie)]).await }
    };
    // One flipped character in the id, in the MAC, an unknown but well-formed id, garbage.
    let (id, mac) = good.split_once('.').unwrap();
    let flip = |s: &str| {
        let mut c: Vec<char> = s.chars().collect();
        c[3] = if c[3] == 'A' { 'B' } else { 'A' };
        c.into_iter().collect::<String>()
    };
    for bad in [
        format!("{}.{mac}", flip(id)),
        format!("{id}.{}", flip(mac)),
        "x".repeat(5000),
        "garbage".into(),
        id.to_string(),
    ] {
        let r = whoami_with(format!("{name}={bad}")).await;
        assert_eq!(r.status(), 401, "{bad:.40}");
    }
    // Two session cookies (even both valid-looking) → 401 and both cleared.
    let r = whoami_with(format!("{name}={good}; {name}={good}")).await;
    assert_eq!(r.status(), 401);
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("{name}=;")) && c.contains("Max-Age=0")),
        "{:?}",
        r.set_cookies()
    );
    // The genuine one still works on its own.
    assert_eq!(whoami_with(format!("{name}={good}")).await.status(), 200);
}

#[tokio::test]
async fn fixation_logout_and_rotation() {
    let (site, _rogue, hg) = rogue_stack();
    let b = Browser::new();
    rogue_sign_in(&b, &site, None).await;
    let first = b.cookie(&site.base(), "headgate_session").unwrap();
    // Signing in again with that cookie present gives a new one, and the old one is gone.
    rogue_sign_in(&b, &site, None).await;
    let second = b.cookie(&site.base(), "headgate_session").unwrap();
    assert_ne!(first, second);
    let old = Browser::new()
        .get_with(
            site.url("/_headgate/whoami"),
            &[("cookie", &format!("headgate_session={first}"))],
        )
        .await;
    assert_eq!(
        old.status(),
        401,
        "the session a browser brought into sign-in is ended"
    );

    // Logout (same-origin post) makes the cookie useless, even when replayed.
    let out = b
        .request(
            reqwest::Method::POST,
            &site.url("/admin/logout"),
            None,
            &[("origin", &site.base())],
            None,
        )
        .await;
    assert_eq!(out.status(), 303);
    assert_eq!(landing(&site, &out), "/admin/login?s=logout");
    let replay = Browser::new()
        .get_with(
            site.url("/_headgate/whoami"),
            &[("cookie", &format!("headgate_session={second}"))],
        )
        .await;
    assert_eq!(replay.status(), 401);

    // A cross-site logout post is refused and the session survives.
    let b = Browser::new();
    rogue_sign_in(&b, &site, None).await;
    let x = b
        .request(
            reqwest::Method::POST,
            &site.url("/admin/logout"),
            None,
            &[("origin", "https://evil.example")],
            None,
        )
        .await;
    assert_eq!(x.status(), 403);
    assert_eq!(b.get(site.url("/_headgate/whoami")).await.status(), 200);
    // GET /admin/logout just goes to /admin/.
    let g = b.get(site.url("/admin/logout")).await;
    assert_eq!(landing(&site, &g), "/admin/");
    assert_eq!(b.get(site.url("/_headgate/whoami")).await.status(), 200);

    // Rotation: restart with a new secret and the old one as previous; the session still works.
    let cookie = b.cookie(&site.base(), "headgate_session").unwrap();
    let mut hg = hg;
    hg.process.kill();
    let cfg = hg.config;
    let new_secret = "a-brand-new-cookie-secret-0123456789abcdef";
    let cfg = cfg
        .server("cookie_secret", &format!("\"{new_secret}\""))
        .server("cookie_secret_previous", &format!("\"{TEST_SECRET}\""));
    let hg2 = cfg.start();
    let r = Browser::new()
        .get_with(
            site.url("/_headgate/whoami"),
            &[("cookie", &format!("headgate_session={cookie}"))],
        )
        .await;
    assert_eq!(r.status(), 200, "{}", hg2.process.output());
    // Without the previous secret it is refused.
    let mut hg2 = hg2;
    hg2.process.kill();
    let cfg = hg2.config;
    let cfg = HeadgateConfig {
        server: cfg
            .server
            .into_iter()
            .filter(|l| !l.starts_with("cookie_secret_previous"))
            .collect(),
        ..cfg
    };
    let _hg3 = cfg.start();
    let r = Browser::new()
        .get_with(
            site.url("/_headgate/whoami"),
            &[("cookie", &format!("headgate_session={cookie}"))],
        )
        .await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn real_idp_sign_in_then_logout_with_end_session() {
    let s = stack(
        TestIdp::builder().pkce_required(false),
        "use_end_session = true",
        &[],
    );
    let b = Browser::new();
    let done = sign_in(&b, &s.site, ALICE_LOGIN, ALICE_PASSWORD, None).await;
    assert_eq!(landing(&s.site, &done), onboarding_landing("/admin/"));
    let out = b
        .request(
            reqwest::Method::POST,
            &s.url("/admin/logout"),
            None,
            &[("origin", &s.site.base())],
            None,
        )
        .await;
    assert_eq!(out.status(), 303);
    let to = out.location().unwrap();
    assert!(to.as_str().starts_with(s.idp.issuer()), "{to}");
    assert!(to.query_pairs().any(|(k, _)| k == "id_token_hint"), "{to}");
    let post = to
        .query_pairs()
        .find(|(k, _)| k == "post_logout_redirect_uri")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    assert_eq!(post, format!("{}/admin/login?s=logout", s.site.base()));
    // The local session was deleted before leaving for the IdP.
    assert_eq!(b.get(s.url("/_headgate/whoami")).await.status(), 401);
}

/// The rogue IdP must send the browser back to this in-process headgate.
fn inproc_with_rogue() -> (crate::harness::inproc::InProcess, RogueIdp) {
    let rogue = RogueIdp::start();
    let hg = crate::harness::inproc::InProcess::start(&oidc_section(rogue.issuer(), ""));
    (hg, rogue)
}

#[tokio::test]
async fn an_expired_flow_is_refused() {
    let (hg, _rogue) = inproc_with_rogue();
    let b = Browser::new();
    let to_idp = b.get(hg.url("/admin/oidc/start")).await;
    let back = b.get(to_idp.location().unwrap().as_str()).await;
    let callback = back.location().unwrap();
    hg.clock.advance(11 * 60);
    let r = b.get(callback.as_str()).await;
    assert_eq!(
        login_code(&r).as_deref(),
        Some("error_invalid_session"),
        "{:?}",
        r.header("location")
    );
    assert_eq!(b.get(hg.url("/_headgate/whoami")).await.status(), 401);
}

#[tokio::test]
async fn sessions_expire_after_cookie_max_age() {
    let (hg, _rogue) = inproc_with_rogue();
    let b = Browser::new();
    let to_idp = b.get(hg.url("/admin/oidc/start")).await;
    let back = b.get(to_idp.location().unwrap().as_str()).await;
    b.get(back.location().unwrap().as_str()).await;
    assert_eq!(b.get(hg.url("/_headgate/whoami")).await.status(), 200);
    hg.clock.advance(86400 + 1);
    assert_eq!(b.get(hg.url("/_headgate/whoami")).await.status(), 401);
}

#[tokio::test]
async fn logout_with_two_session_cookies_ends_both() {
    let (site, _rogue, _hg) = rogue_stack();
    let a = Browser::new();
    rogue_sign_in(&a, &site, None).await;
    let b = Browser::new();
    rogue_sign_in(&b, &site, None).await;
    let ca = a.cookie(&site.base(), "headgate_session").unwrap();
    let cb = b.cookie(&site.base(), "headgate_session").unwrap();
    let both = format!("headgate_session={ca}; headgate_session={cb}");
    let r = Browser::new()
        .request(
            reqwest::Method::POST,
            &site.url("/admin/logout"),
            None,
            &[("origin", &site.base()), ("cookie", &both)],
            None,
        )
        .await;
    assert_eq!(r.status(), 401);
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with("headgate_session=;")),
        "{:?}",
        r.set_cookies()
    );
    assert_eq!(a.get(site.url("/_headgate/whoami")).await.status(), 401);
    assert_eq!(b.get(site.url("/_headgate/whoami")).await.status(), 401);
}
