//! The API-key bridge against the Headplane test double (0.7 and 0.6.3): headgate signs in with its own key,
//! keeps `_hp_auth` to itself, re-signs in after the session ends (retrying a GET once, never a POST), and
//! neither the key nor `_hp_auth` ever reaches the browser.

use crate::harness::browser::Browser;
use crate::harness::fake_headscale::FakeHeadscale;
use crate::harness::headgate::Headgate;
use crate::harness::headplane::{FakeHeadplane, Version};
use crate::harness::leaks::assert_bridge_clean;
use crate::harness::rogue::RogueIdp;
use crate::harness::stack::{Site, oidc_section};

struct Env {
    site: Site,
    rogue: RogueIdp,
    hs: FakeHeadscale,
    hp: FakeHeadplane,
    _hg: Headgate,
}

fn env(v: Version) -> Env {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let hs = FakeHeadscale::start();
    let hp = FakeHeadplane::builder(&hs.url()).version(v).start();
    let hg = site
        .config(Some(&hs))
        .section(format!("[upstream]\nurl = \"{}\"", hp.url()))
        .section(oidc_section(rogue.issuer(), ""))
        .start();
    Env {
        site,
        rogue,
        hs,
        hp,
        _hg: hg,
    }
}

impl Env {
    async fn owner(&self) -> Browser {
        self.rogue.set_subject("owner-sub");
        let b = Browser::new();
        let to_idp = b.get(self.site.url("/admin/oidc/start")).await;
        let back = b.get(to_idp.location().unwrap().as_str()).await;
        b.get(back.location().unwrap().as_str()).await;
        b
    }

    /// The scan every test ends with: nothing the browser ever received holds the API key (any encoding)
    /// or Headplane's session, and S10 holds (`harness::leaks`).
    fn clean(&self, b: &Browser) {
        assert_bridge_clean(b, &self.hs.admin_key(), &self.hp, &self.site.base());
    }
}

#[tokio::test]
async fn the_bridge_signs_in_and_keeps_the_session_to_itself() {
    for v in [Version::V07, Version::V063] {
        let e = env(v);
        let b = e.owner().await;
        let p = b
            .get_with(e.site.url("/admin/machines"), &[("accept", "text/html")])
            .await;
        assert_eq!(p.status(), 200, "{v:?}: {}", p.text());
        assert_eq!(e.hp.logins(), 1, "{v:?}");
        // Headplane saw headgate's session, never a browser cookie of ours.
        let seen =
            e.hp.requests()
                .into_iter()
                .rfind(|r| r.path == "/admin/machines")
                .unwrap();
        let cookie = seen
            .headers
            .iter()
            .find(|(n, _)| n == "cookie")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        assert!(
            cookie.contains("_hp_auth=") && !cookie.contains("headgate_"),
            "{cookie}"
        );
        // A client-sent _hp_auth is replaced, not passed on.
        let p = b
            .get_with(
                e.site.url("/admin/machines"),
                &[
                    ("cookie", "_hp_auth=client-forged"),
                    ("accept", "text/html"),
                ],
            )
            .await;
        assert_eq!(p.status(), 200);
        assert!(!e.hp.saw_cookie_value("client-forged"), "{v:?}");
        assert_eq!(e.hp.logins(), 1, "one sign-in serves every request");
        e.clean(&b);
    }
}

#[tokio::test]
async fn an_ended_session_is_renewed_and_a_get_retried_once() {
    let e = env(Version::V07);
    let b = e.owner().await;
    assert_eq!(
        b.get_with(e.site.url("/admin/machines"), &[("accept", "text/html")])
            .await
            .status(),
        200
    );
    e.hp.expire_all_sessions();
    let p = b
        .get_with(e.site.url("/admin/machines"), &[("accept", "text/html")])
        .await;
    assert_eq!(p.status(), 200, "{}", p.text());
    assert_eq!(e.hp.logins(), 2);
    // The same for a data request.
    e.hp.expire_all_sessions();
    let p = b.get(e.site.url("/admin/machines.data")).await;
    assert_eq!(p.status(), 200, "{}", p.text());
    assert_eq!(e.hp.logins(), 3);
    e.clean(&b);
}

#[tokio::test]
async fn a_post_is_never_replayed_after_renewal() {
    let e = env(Version::V07);
    let b = e.owner().await;
    assert_eq!(
        b.get_with(e.site.url("/admin/users"), &[("accept", "text/html")])
            .await
            .status(),
        200
    );
    e.hp.expire_all_sessions();
    let form = Some(vec![
        ("action_id".to_string(), "create_user".to_string()),
        ("username".to_string(), "x".to_string()),
    ]);
    let posts_before =
        e.hp.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/admin/users")
            .count();
    let p = b
        .request(
            reqwest::Method::POST,
            &e.site.url("/admin/users"),
            form.clone(),
            &[("origin", &e.site.base()), ("accept", "text/html")],
            None,
        )
        .await;
    assert_eq!(p.status(), 409, "{}", p.text());
    assert!(
        p.text().contains("try again") || p.text().contains("Try again"),
        "{}",
        p.text()
    );
    let posts_after =
        e.hp.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/admin/users")
            .count();
    assert_eq!(
        posts_after - posts_before,
        1,
        "the POST reached Headplane once and was not replayed"
    );
    // Submitting again works with the renewed session.
    let p = b
        .request(
            reqwest::Method::POST,
            &e.site.url("/admin/users"),
            form,
            &[("origin", &e.site.base()), ("accept", "text/html")],
            None,
        )
        .await;
    assert_eq!(p.status(), 200, "{}", p.text());
    assert_eq!(e.hp.logins(), 2);
    e.clean(&b);
}

#[tokio::test]
async fn a_revoked_bridge_key_fails_closed_even_when_headplane_serves_stale_data() {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let hs = FakeHeadscale::start();
    let hp = FakeHeadplane::builder(&hs.url())
        .version(Version::V07)
        .stale_data(true)
        .start();
    let _hg = site
        .config(Some(&hs))
        .server("api_key_recheck_interval", "1")
        .section(format!("[upstream]\nurl = \"{}\"", hp.url()))
        .section(oidc_section(rogue.issuer(), ""))
        .start();
    rogue.set_subject("owner-sub");
    let b = Browser::new();
    let to_idp = b.get(site.url("/admin/oidc/start")).await;
    let back = b.get(to_idp.location().unwrap().as_str()).await;
    b.get(back.location().unwrap().as_str()).await;
    assert_eq!(
        b.get_with(site.url("/admin/machines"), &[("accept", "text/html")])
            .await
            .status(),
        200
    );
    hs.revoke_api_key(&hs.admin_key());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let p = b
            .get(site.url("/admin/machines.data?_routes=routes%2Fmachines%2Foverview"))
            .await;
        if p.status() == 502 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still served with a revoked key: {} {}",
            p.status(),
            p.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_bridge_clean(&b, &hs.admin_key(), &hp, &site.base());
}
