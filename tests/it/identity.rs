//! Identity and roles: linking to Headscale users (S3), owner bootstrap (S2), roles from the IdP (S13),
//! session refresh.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::browser::Browser;
use crate::harness::fake_headscale::FakeHeadscale;
use crate::harness::headgate::Headgate;
use crate::harness::idp::{TestIdp, UserSpec};
use crate::harness::rogue::RogueIdp;
use crate::harness::stack::{Site, landing, oidc_section, sign_in};

/// headgate with the rogue IdP and a fake Headscale.
fn rogue_site(
    hs: &FakeHeadscale,
    oidc_extra: &str,
    server: &[(&str, &str)],
) -> (Site, RogueIdp, Headgate) {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let mut cfg = site
        .config(Some(hs))
        .section(oidc_section(rogue.issuer(), oidc_extra));
    for (k, v) in server {
        cfg = cfg.server(k, v);
    }
    let hg = cfg.start();
    (site, rogue, hg)
}

/// Sign `sub` in through the rogue IdP (with `email`, verified or not) in a fresh browser.
async fn rogue_person(
    site: &Site,
    rogue: &RogueIdp,
    sub: &str,
    email: Option<(&str, bool)>,
) -> Browser {
    rogue.set_subject(sub);
    match email {
        Some((e, v)) => {
            rogue.set_claim("email", e);
            rogue.set_claim("email_verified", v);
        }
        None => {
            rogue.remove_claim("email");
            rogue.remove_claim("email_verified");
        }
    }
    let b = Browser::new();
    let to_idp = b.get(site.url("/admin/oidc/start")).await;
    let back = b.get(to_idp.location().unwrap().as_str()).await;
    let done = b.get(back.location().unwrap().as_str()).await;
    assert_eq!(done.status(), 302, "{}", done.text());
    b
}

async fn me(b: &Browser, site: &Site) -> serde_json::Value {
    let p = b.get(site.url("/_headgate/whoami")).await;
    assert_eq!(p.status(), 200, "{}", p.text());
    p.json()
}

#[tokio::test]
async fn subject_match_links_and_checks_the_issuer() {
    let hs = FakeHeadscale::start();
    let (site, rogue, _hg) = rogue_site(&hs, "", &[]);
    let alice = hs.add_oidc_user("alice", rogue.issuer(), "alice-sub", "");
    // Same last segment, another issuer: never a match.
    hs.add_oidc_user("bob-elsewhere", "https://other-idp.example", "bob-sub", "");
    let auth0 = hs.add_oidc_user("carol", rogue.issuer(), "auth0|carol", "");

    let b = rogue_person(&site, &rogue, "alice-sub", None).await;
    let m = me(&b, &site).await;
    assert_eq!(
        (m["link"].as_str(), m["headscale_user_id"].as_str()),
        (Some("linked"), Some(alice.to_string().as_str())),
        "{m}"
    );
    assert_eq!(m["headscale_user"], "alice");

    let b = rogue_person(&site, &rogue, "bob-sub", None).await;
    assert_eq!(me(&b, &site).await["link"], "none");

    // `auth0|carol` is stored as auth0%7Ccarol and still matches.
    let b = rogue_person(&site, &rogue, "auth0|carol", None).await;
    assert_eq!(me(&b, &site).await["headscale_user_id"], auth0.to_string());
}

#[tokio::test]
async fn verified_email_fallback_links_exactly_one_candidate() {
    let hs = FakeHeadscale::start();
    let (site, rogue, hg) = rogue_site(&hs, "", &[]);
    // Entra-style: Headscale's user came from another client, so its providerId names another subject.
    let dora = hs.add_oidc_user(
        "dora",
        rogue.issuer(),
        "other-client-sub",
        "dora@example.com",
    );
    hs.add_user("erin-1", "erin@example.com");
    hs.add_user("erin-2", "ERIN@example.com");

    let b = rogue_person(&site, &rogue, "dora-sub", Some(("Dora@Example.com", true))).await;
    assert_eq!(me(&b, &site).await["headscale_user_id"], dora.to_string());

    // Unverified email: no link.
    hs.add_user("frank", "frank@example.com");
    let b = rogue_person(
        &site,
        &rogue,
        "frank-sub",
        Some(("frank@example.com", false)),
    )
    .await;
    assert_eq!(me(&b, &site).await["link"], "none");

    // Two candidates: no link, and the log says why.
    let b = rogue_person(&site, &rogue, "erin-sub", Some(("erin@example.com", true))).await;
    assert_eq!(me(&b, &site).await["link"], "none");
    assert!(
        hg.process
            .output()
            .contains("several Headscale users have the signed-in person's email")
    );
}

#[tokio::test]
async fn a_recreated_headscale_user_drops_the_link() {
    let hs = FakeHeadscale::start();
    let (site, rogue, mut hg) = rogue_site(&hs, "", &[]);
    let id = hs.add_user("gina", "gina@example.com");
    let b = rogue_person(&site, &rogue, "gina-sub", Some(("gina@example.com", true))).await;
    assert_eq!(me(&b, &site).await["headscale_user_id"], id.to_string());
    // Headscale reinstalled: same id, new createdAt, and now another person's email.
    hs.recreate_user(id);
    hs.edit_user(id, |u| u.email = "someone-else@example.com".into());
    tokio::time::sleep(Duration::from_millis(10_500)).await; // the user list is cached for 10 s
    let b = rogue_person(&site, &rogue, "gina-sub", Some(("gina@example.com", true))).await;
    assert_eq!(me(&b, &site).await["link"], "none");
    hg.process
        .wait_for_line(Duration::from_secs(5), |l| l.contains("dropping a link"));
}

#[tokio::test]
async fn headscale_down_during_sign_in_links_later() {
    let hs = FakeHeadscale::start();
    let (site, rogue, hg) = rogue_site(&hs, "", &[]);
    hs.add_oidc_user("hal", rogue.issuer(), "hal-sub", "");
    hs.down(true);
    let b = rogue_person(&site, &rogue, "hal-sub", None).await;
    assert_eq!(
        me(&b, &site).await["link"],
        "none",
        "signed in although Headscale is down"
    );
    assert!(
        hg.process
            .output()
            .contains("linking skipped for this sign-in")
    );
    hs.down(false);
    let b = rogue_person(&site, &rogue, "hal-sub", None).await;
    assert_eq!(me(&b, &site).await["link"], "linked");
}

#[tokio::test]
async fn twenty_concurrent_first_sign_ins_make_exactly_one_owner() {
    let site = Site::new();
    let mut builder = TestIdp::builder()
        .pkce_required(false)
        .redirect_uri(&site.callback());
    for i in 0..20 {
        builder = builder.user(
            UserSpec::new(&format!("u{i}"), &format!("sub-{i}"))
                .claim("email", format!("u{i}@example.com"))
                .claim("email_verified", true),
        );
    }
    let idp = builder.start();
    let hg = site
        .config(None)
        .section(oidc_section(idp.issuer(), ""))
        .start();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = Site { port: site.port };
        tasks.push(tokio::spawn(async move {
            let b = Browser::new();
            let done = sign_in(&b, &s, &format!("u{i}"), &format!("u{i}-password"), None).await;
            assert_eq!(landing(&s, &done), "/admin/");
            b.get(s.url("/_headgate/whoami")).await.json()["role"]
                .as_str()
                .unwrap()
                .to_string()
        }));
    }
    let mut roles = Vec::new();
    for t in tasks {
        roles.push(t.await.unwrap());
    }
    let owners = roles.iter().filter(|r| *r == "owner").count();
    let members = roles.iter().filter(|r| *r == "member").count();
    assert_eq!(
        (owners, members),
        (1, 19),
        "{roles:?}\n{}",
        hg.process.output()
    );
}

#[tokio::test]
async fn initial_owner_decides_and_a_removed_owner_is_not_replaced() {
    let hs = FakeHeadscale::start();
    let (site, rogue, hg) = rogue_site(&hs, "", &[("initial_owner", "\"boss@example.com\"")]);
    let first = rogue_person(
        &site,
        &rogue,
        "first-sub",
        Some(("first@example.com", true)),
    )
    .await;
    assert_eq!(me(&first, &site).await["role"], "member");
    let boss = rogue_person(&site, &rogue, "boss-sub", Some(("boss@example.com", true))).await;
    assert_eq!(me(&boss, &site).await["role"], "owner");
    drop(hg);

    // The store rule: once bootstrapped, removing the owner never makes the next sign-in owner.
    let hs = FakeHeadscale::start();
    let (site, rogue, mut hg) = rogue_site(&hs, "", &[]);
    let owner = rogue_person(&site, &rogue, "o-sub", Some(("o@example.com", true))).await;
    assert_eq!(me(&owner, &site).await["role"], "owner");
    hg.process.kill();
    {
        let store = headgate::store::Store::open_redb(
            &hg.config.data_path().join("headgate.redb"),
            1 << 20,
        )
        .unwrap();
        let u = store.user_by_subject("o-sub").await.unwrap().unwrap();
        store.delete_user(u.id).await.unwrap();
    }
    let cfg = hg.config;
    let _hg = cfg.start();
    let next = rogue_person(&site, &rogue, "n-sub", Some(("n@example.com", true))).await;
    assert_eq!(me(&next, &site).await["role"], "member");
}

#[tokio::test]
async fn roles_from_the_idp_claim() {
    let hs = FakeHeadscale::start();
    let (site, rogue, _hg) = rogue_site(
        &hs,
        "role_claim = \"groups\"\ndefault_role = \"viewer\"\nrole_map = { \"hs-admins\" = \"admin\", \"hs-net\" = \"network_admin\" }",
        &[("initial_owner", "\"owner@example.com\"")],
    );
    rogue.set_claim("groups", json!(["staff", "hs-net", "hs-admins"]));
    let b = rogue_person(&site, &rogue, "a-sub", Some(("a@example.com", true))).await;
    assert_eq!(
        me(&b, &site).await["role"],
        "admin",
        "the strongest mapped value wins"
    );
    rogue.set_claim("groups", json!(["junk"]));
    let b = rogue_person(&site, &rogue, "b-sub", Some(("b@example.com", true))).await;
    assert_eq!(
        me(&b, &site).await["role"],
        "viewer",
        "unknown values give default_role"
    );
    rogue.set_claim("groups", json!("owner"));
    let b = rogue_person(&site, &rogue, "c-sub", Some(("c@example.com", true))).await;
    assert_eq!(
        me(&b, &site).await["role"],
        "viewer",
        "owner never comes from a claim"
    );
    // Re-applied at the next sign-in.
    rogue.set_claim("groups", json!(["hs-net"]));
    let b = rogue_person(&site, &rogue, "a-sub", Some(("a@example.com", true))).await;
    let m = me(&b, &site).await;
    assert_eq!(m["role"], "network_admin");
    assert_eq!(m["capability_bits"], 30015);
}

#[tokio::test]
async fn session_refresh_reapplies_the_role_and_ends_refused_sessions() {
    let rogue = RogueIdp::start();
    let hg = crate::harness::inproc::InProcess::start(&format!(
        "{}\nrole_claim = \"role\"\nrefresh_interval = 3600\n",
        oidc_section(rogue.issuer(), "")
    ));
    // Tokens the rogue issues stay valid past the clock jumps below.
    let later = time::OffsetDateTime::now_utc().unix_timestamp() + 10 * 3600;
    rogue.set_claim("exp", later);
    let sign_in = |sub: &'static str| {
        let (rogue, url) = (&rogue, hg.url("/admin/oidc/start"));
        async move {
            rogue.set_subject(sub);
            let b = Browser::new();
            let to_idp = b.get(&url).await;
            let back = b.get(to_idp.location().unwrap().as_str()).await;
            b.get(back.location().unwrap().as_str()).await;
            b
        }
    };
    let _owner = sign_in("first-is-owner").await;
    rogue.set_claim("role", "viewer");
    let b = sign_in("vic").await;
    assert_eq!(
        b.get(hg.url("/_headgate/whoami")).await.json()["role"],
        "viewer"
    );
    // At the IdP the role changes; after the refresh interval the next request triggers a refresh.
    rogue.set_claim("role", "auditor");
    hg.clock.advance(3601);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = b.get(hg.url("/_headgate/whoami")).await.json();
        if m["role"] == "auditor" {
            break;
        }
        assert!(Instant::now() < deadline, "role not refreshed: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A refresh the IdP refuses ends the session.
    rogue.set_token_response(Some((400, json!({"error": "invalid_grant"}))));
    hg.clock.advance(3601);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if b.get(hg.url("/_headgate/whoami")).await.status() == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refused refresh did not end the session"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
