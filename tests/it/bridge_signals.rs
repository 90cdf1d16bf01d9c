//! The API-key bridge against every "session gone" signal of `spec/headplane.md` and
//! `../shared/headplane/observed/`, on Headplane 0.7 and 0.6.3 (the double, `harness::headplane`):
//!
//! | the session ended by | page load | full `.data` | leaf-only `.data` | document post | `.data` post |
//! |---|---|---|---|---|---|
//! | 0.7 expiry, 0.7 logout, a garbled cookie (both) | 302 + clearing cookie | 202 + clearing cookie | 500 SanitizedError | 302 + clearing cookie | 500 SanitizedError |
//! | its key dying at Headscale, 0.7 (cold cache) | 302 + clearing cookie | 202 + clearing cookie | 502 `"statusCode",401` | 302 + clearing cookie | 502 `"statusCode",401` |
//! | its key dying at Headscale, 0.6.3 (= 0.6.3's expiry) | 302 + clearing cookie | 202 + clearing cookie | 502 `"statusCode",401` | 502 HTML, status code 401 | 502 `"statusCode",401` |
//!
//! For each cell: the double answered exactly that (checked from its request log), a GET was renewed and
//! sent once more (200, one new sign-in), a POST reached Headplane once and was not replayed (409, the
//! action not carried out, the session renewed so that submitting again works). Then: many concurrent
//! requests after an expiry sign in once; a Headplane that refuses the login, or ends every new session at
//! once, gets 502/503 pages with backoff, never a 2xx and never a redirect loop. Every test ends with the
//! harness's scan of everything the browser received (`harness::leaks`).

use std::time::{Duration, Instant};

use crate::harness::browser::{Browser, Page};
use crate::harness::fake_headscale::FakeHeadscale;
use crate::harness::headgate::Headgate;
use crate::harness::headplane::{FakeHeadplane, Received, Version};
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

/// Headplane `v` (0.7 with a cold cache: leaf-only loads report Headscale's 401 instead of stale data).
fn env(v: Version) -> Env {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let hs = FakeHeadscale::start();
    let hp = FakeHeadplane::builder(&hs.url())
        .version(v)
        .stale_data(false)
        .start();
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

    /// The scan every test ends with.
    fn clean(&self, b: &Browser) {
        assert_bridge_clean(b, &self.hs.admin_key(), &self.hp, &self.site.base());
    }

    fn since(&self, mark: usize) -> Vec<Received> {
        self.hp.requests().split_off(mark)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ending {
    /// 0.7: the session's lifetime (its key's expiry) passed.
    Expired,
    /// 0.7: the session was logged out.
    LoggedOut,
    /// The cookie no longer decodes (a `cookie_secret` change).
    Garbled,
    /// The key the session acts with no longer works at Headscale (revoked or expired; on 0.6.3 this is
    /// also what a session's expiry looks like).
    KeyDead,
}

impl Ending {
    fn apply(self, hp: &FakeHeadplane) {
        match self {
            Ending::Expired => hp.expire_all_sessions(),
            Ending::LoggedOut => hp.log_out_all_sessions(),
            Ending::Garbled => hp.garble_all_sessions(),
            Ending::KeyDead => hp.kill_session_keys(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Page,
    FullData,
    LeafData,
    PostForm,
    PostData,
}

impl Kind {
    fn is_post(self) -> bool {
        matches!(self, Kind::PostForm | Kind::PostData)
    }
    /// The path Headplane sees.
    fn path(self) -> &'static str {
        match self {
            Kind::Page => "/admin/machines",
            Kind::FullData | Kind::LeafData => "/admin/machines.data",
            Kind::PostForm => "/admin/users",
            Kind::PostData => "/admin/users.data",
        }
    }
    async fn send(self, e: &Env, b: &Browser, user: &str) -> Page {
        let form = Some(vec![
            ("action_id".to_string(), "create_user".to_string()),
            ("username".to_string(), user.to_string()),
        ]);
        let origin = e.site.base();
        match self {
            Kind::Page => {
                b.get_with(e.site.url(self.path()), &[("accept", "text/html")])
                    .await
            }
            Kind::FullData => b.get(e.site.url(self.path())).await,
            Kind::LeafData => {
                b.get(
                    e.site
                        .url("/admin/machines.data?_routes=routes%2Fmachines%2Foverview"),
                )
                .await
            }
            Kind::PostForm => {
                b.request(
                    reqwest::Method::POST,
                    &e.site.url(self.path()),
                    form,
                    &[("origin", &origin), ("accept", "text/html")],
                    None,
                )
                .await
            }
            Kind::PostData => {
                b.request(
                    reqwest::Method::POST,
                    &e.site.url(self.path()),
                    form,
                    &[("origin", &origin)],
                    None,
                )
                .await
            }
        }
    }
}

/// What Headplane answers a request of `kind` whose session ended by `ending` (the module's table):
/// status, and whether it clears `_hp_auth`.
fn expected(v: Version, ending: Ending, kind: Kind) -> (u16, bool) {
    let key_dead = ending == Ending::KeyDead;
    match kind {
        Kind::PostForm if key_dead && v == Version::V063 => (502, false),
        Kind::Page | Kind::PostForm => (302, true),
        Kind::FullData => (202, true),
        Kind::LeafData | Kind::PostData if key_dead => (502, false),
        Kind::LeafData | Kind::PostData => (500, false),
    }
}

fn clears(r: &Received) -> bool {
    r.set_cookies().iter().any(|c| c.starts_with("_hp_auth=;"))
}

/// One cell of the table: end the session, send the request, check what Headplane answered and what the
/// bridge made of it.
async fn cell(e: &Env, b: &Browser, ending: Ending, kind: Kind, n: usize) {
    let v = e.hp.version();
    let what = format!("{v:?} {ending:?} {kind:?}");
    let user = format!("user{n}");
    let logins = e.hp.logins();
    let actions_ok = e.hp.actions().iter().filter(|a| a.ok).count();
    let mark = e.hp.requests().len();
    ending.apply(&e.hp);
    let p = kind.send(e, b, &user).await;
    let seen = e.since(mark);
    let method = if kind.is_post() { "POST" } else { "GET" };
    let to_path: Vec<&Received> = seen
        .iter()
        .filter(|r| r.method == method && r.path == kind.path())
        .collect();
    assert!(!to_path.is_empty(), "{what}: Headplane saw nothing");
    // Headplane answered the ended session as observed.
    let (status, clearing) = expected(v, ending, kind);
    assert_eq!(
        (to_path[0].status, clears(to_path[0])),
        (status, clearing),
        "{what}: Headplane's first answer: {}",
        to_path[0]
    );
    // The ambiguous 500 made headgate ask whether its session lives.
    if status == 500 {
        assert!(
            seen.iter()
                .any(|r| r.method == "GET" && r.path == "/admin/login"),
            "{what}: no liveness probe"
        );
    }
    assert_eq!(e.hp.logins(), logins + 1, "{what}: exactly one new sign-in");
    if kind.is_post() {
        assert_eq!(p.status(), 409, "{what}: {}", p.text());
        assert!(p.text().contains("submit it again"), "{what}: {}", p.text());
        assert_eq!(to_path.len(), 1, "{what}: the POST was replayed");
        assert_eq!(
            e.hp.actions().iter().filter(|a| a.ok).count(),
            actions_ok,
            "{what}: the action was carried out"
        );
        // Submitting again goes through with the renewed session, without another sign-in.
        let p = kind.send(e, b, &user).await;
        assert_eq!(p.status(), 200, "{what} again: {}", p.text());
        assert_eq!(e.hp.logins(), logins + 1, "{what}");
        assert_eq!(
            e.hp.actions().iter().filter(|a| a.ok).count(),
            actions_ok + 1,
            "{what}"
        );
    } else {
        assert_eq!(p.status(), 200, "{what}: {}", p.text());
        assert_eq!(to_path.len(), 2, "{what}: sent once more, exactly once");
        assert_eq!(to_path[1].status, 200, "{what}: {}", to_path[1]);
        assert_ne!(
            to_path[0].cookie("_hp_auth"),
            to_path[1].cookie("_hp_auth"),
            "{what}: the retry carried the new session"
        );
    }
    assert!(p.set_cookies().iter().all(|c| !c.contains("_hp_auth")));
}

async fn every_signal(v: Version, endings: &[Ending]) {
    let e = env(v);
    let b = e.owner().await;
    let p = b
        .get_with(e.site.url("/admin/machines"), &[("accept", "text/html")])
        .await;
    assert_eq!(p.status(), 200, "{}", p.text());
    assert_eq!(e.hp.logins(), 1);
    let mut n = 0;
    for ending in endings {
        for kind in [
            Kind::Page,
            Kind::FullData,
            Kind::LeafData,
            Kind::PostForm,
            Kind::PostData,
        ] {
            n += 1;
            cell(&e, &b, *ending, kind, n).await;
        }
    }
    e.clean(&b);
}

#[tokio::test]
async fn every_session_gone_signal_of_headplane_07() {
    every_signal(
        Version::V07,
        &[
            Ending::Expired,
            Ending::LoggedOut,
            Ending::Garbled,
            Ending::KeyDead,
        ],
    )
    .await;
}

#[tokio::test]
async fn every_session_gone_signal_of_headplane_063() {
    every_signal(Version::V063, &[Ending::Garbled, Ending::KeyDead]).await;
}

#[tokio::test]
async fn concurrent_requests_after_an_expiry_sign_in_once() {
    for (v, ending) in [
        (Version::V07, Ending::Expired),
        (Version::V063, Ending::Garbled),
    ] {
        let e = env(v);
        let b = std::sync::Arc::new(e.owner().await);
        assert_eq!(
            b.get_with(e.site.url("/admin/machines"), &[("accept", "text/html")])
                .await
                .status(),
            200
        );
        ending.apply(&e.hp);
        let mark = e.hp.requests().len();
        let mut tasks = Vec::new();
        for i in 0..24 {
            let b = b.clone();
            let url = match i % 3 {
                0 => e.site.url("/admin/machines"),
                1 => e.site.url("/admin/machines.data"),
                _ => e
                    .site
                    .url("/admin/users.data?_routes=routes%2Fusers%2Foverview"),
            };
            tasks.push(tokio::spawn(async move {
                b.get_with(url, &[("accept", "text/html")]).await.status()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200, "{v:?}");
        }
        assert_eq!(
            e.hp.logins(),
            2,
            "{v:?}: 24 concurrent requests after the expiry, one new sign-in"
        );
        let sign_ins = e
            .since(mark)
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/admin/login")
            .count();
        assert_eq!(sign_ins, 1, "{v:?}");
        e.clean(&b);
    }
}

/// Most sign-in attempts a backoff of 1 s, 2 s, 4 s … allows within `elapsed`.
fn backoff_bound(elapsed: Duration) -> usize {
    let mut at = 0.0;
    let mut step = 1.0;
    let mut n = 1;
    while at + step <= elapsed.as_secs_f64() {
        at += step;
        step *= 2.0;
        n += 1;
    }
    n
}

fn refused(p: &Page) -> bool {
    matches!(p.status(), 502 | 503) && p.header("location").is_none()
}

#[tokio::test]
async fn a_headplane_that_refuses_the_login_gets_an_error_page_with_backoff() {
    let e = env(Version::V07);
    let b = e.owner().await;
    assert_eq!(
        b.get_with(e.site.url("/admin/machines"), &[("accept", "text/html")])
            .await
            .status(),
        200
    );
    // The key is revoked at Headscale: the session ends and Headplane refuses every new sign-in.
    e.hs.revoke_api_key(&e.hs.admin_key());
    let attempts = e.hp.login_attempts();
    let started = Instant::now();
    let first = b
        .get_with(e.site.url("/admin/machines"), &[("accept", "text/html")])
        .await;
    assert_eq!(first.status(), 502, "{}", first.text());
    assert!(first.text().contains("could not sign in to Headplane"));
    let mut statuses = vec![first.status()];
    for i in 0..20 {
        let p = match i % 4 {
            0 => b.get(e.site.url("/admin/machines.data")).await,
            1 => {
                b.request(
                    reqwest::Method::POST,
                    &e.site.url("/admin/users"),
                    Some(vec![
                        ("action_id".into(), "create_user".into()),
                        ("username".into(), format!("u{i}")),
                    ]),
                    &[("accept", "text/html")],
                    None,
                )
                .await
            }
            _ => {
                b.get_with(e.site.url("/admin/machines"), &[("accept", "text/html")])
                    .await
            }
        };
        assert!(
            refused(&p),
            "{i}: {} {:?} {}",
            p.status(),
            p.headers,
            p.text()
        );
        if p.status() == 503 {
            let after: u64 = p.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=60).contains(&after));
        }
        statuses.push(p.status());
    }
    let tried = e.hp.login_attempts() - attempts;
    assert!(
        tried >= 1 && tried <= backoff_bound(started.elapsed()),
        "{tried} sign-in attempts in {:?}",
        started.elapsed()
    );
    assert!(statuses.contains(&503), "backoff answers 503: {statuses:?}");
    // No POST reached Headplane without a session.
    assert!(
        e.hp.requests()
            .iter()
            .all(|r| !(r.method == "POST" && r.path == "/admin/users"))
    );
    e.clean(&b);
}

#[tokio::test]
async fn a_headplane_refusing_the_key_from_the_start_gets_a_502() {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let hs = FakeHeadscale::start();
    let hp = FakeHeadplane::start(Version::V063, &hs.url());
    // headgate's configured key is one Headscale does not know.
    let _hg = site
        .config(None)
        .section(format!(
            "[headscale]\nurl = \"{}\"\napi_key = \"hskey-api-notknown0000-{}\"",
            hs.url(),
            "z".repeat(64)
        ))
        .section(format!("[upstream]\nurl = \"{}\"", hp.url()))
        .section(oidc_section(rogue.issuer(), ""))
        .start();
    rogue.set_subject("owner-sub");
    let b = Browser::new();
    let to_idp = b.get(site.url("/admin/oidc/start")).await;
    let back = b.get(to_idp.location().unwrap().as_str()).await;
    b.get(back.location().unwrap().as_str()).await;
    let p = b
        .get_with(site.url("/admin/machines"), &[("accept", "text/html")])
        .await;
    assert_eq!(p.status(), 502, "{}", p.text());
    let p = b.get(site.url("/admin/machines.data")).await;
    assert!(refused(&p), "{} {}", p.status(), p.text());
    assert_eq!(hp.logins(), 0);
    assert!(hp.login_attempts() <= 2);
    assert_bridge_clean(
        &b,
        &format!("hskey-api-notknown0000-{}", "z".repeat(64)),
        &hp,
        &site.base(),
    );
}

#[tokio::test]
async fn a_headplane_that_ends_every_new_session_at_once_is_not_looped_on() {
    let e = env(Version::V07);
    e.hp.garble_new_sessions(true);
    let b = e.owner().await;
    let started = Instant::now();
    let mut statuses = Vec::new();
    for i in 0..12 {
        let p = if i % 2 == 0 {
            b.get_with(e.site.url("/admin/machines"), &[("accept", "text/html")])
                .await
        } else {
            b.get(e.site.url("/admin/machines.data")).await
        };
        assert!(refused(&p), "{i}: {} {}", p.status(), p.text());
        statuses.push(p.status());
    }
    let logins = e.hp.logins();
    assert!(
        logins >= 1 && logins <= backoff_bound(started.elapsed()),
        "{logins} sign-ins in {:?}: {statuses:?}",
        started.elapsed()
    );
    // Headplane heals: after the backoff the bridge signs in and serves again.
    e.hp.garble_new_sessions(false);
    let deadline = Instant::now() + Duration::from_secs(70);
    loop {
        let p = b
            .get_with(e.site.url("/admin/machines"), &[("accept", "text/html")])
            .await;
        if p.status() == 200 {
            break;
        }
        assert!(refused(&p), "{} {}", p.status(), p.text());
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    e.clean(&b);
}
