//! The user administration page `/_headgate/users` against the real binary: who may read and write, role
//! changes applying at the next request, the owner rules (no `owner` by a role change, the owner never
//! demoted, transfer by the owner only), IdP-owned roles, links, session revocation, the audit log, CSRF
//! (S8) and script payloads rendering inert (S18).

use reqwest::Method;
use serde_json::Value;
use time::OffsetDateTime;

use headgate::config::Secret;
use headgate::crypto::{Keys, unb64};
use headgate::csrf::session_token;
use headgate::store::SessionKey;

use crate::harness::browser::{Browser, Form, Page};
use crate::harness::fake_headscale::FakeHeadscale;
use crate::harness::headgate::{Headgate, TEST_SECRET};
use crate::harness::rogue::RogueIdp;
use crate::harness::stack::{Site, enc, final_landing, oidc_section};

const USERS: &str = "/_headgate/users";

struct Env {
    site: Site,
    rogue: RogueIdp,
    hs: FakeHeadscale,
    hg: Headgate,
}

/// headgate in front of the rogue IdP (fast sign-ins) and the fake Headscale; `oidc_extra` goes in `[oidc]`.
fn env(oidc_extra: &str) -> Env {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let hs = FakeHeadscale::start();
    let hg = site
        .config(Some(&hs))
        .section(oidc_section(rogue.issuer(), oidc_extra))
        .start();
    Env {
        site,
        rogue,
        hs,
        hg,
    }
}

impl Env {
    fn url(&self, p: &str) -> String {
        self.site.url(p)
    }

    /// Sign a new person in (in their own browser) as `sub`, with `name` and a verified `email`.
    async fn person(&self, sub: &str, name: &str, email: &str) -> Browser {
        self.rogue.set_subject(sub);
        self.rogue.set_claim("name", name);
        self.rogue.set_claim("email", email);
        let b = Browser::new();
        let to_idp = b.get(self.url("/admin/oidc/start")).await;
        assert_eq!(to_idp.status(), 302, "{}", to_idp.text());
        let back = b.get(to_idp.location().unwrap().as_str()).await;
        assert_eq!(back.status(), 302, "rogue authorize");
        let done = b.get(back.location().unwrap().as_str()).await;
        assert_eq!(
            final_landing(&self.site, &done),
            "/admin/",
            "sign-in of {sub}: {}",
            self.hg.process.output()
        );
        b
    }

    async fn whoami(&self, b: &Browser) -> (u16, Value) {
        let p = b.get(self.url("/_headgate/whoami")).await;
        (p.status(), p.json())
    }

    async fn role(&self, b: &Browser) -> String {
        let (st, me) = self.whoami(b).await;
        assert_eq!(st, 200, "{me}");
        me["role"].as_str().unwrap_or("none").to_string()
    }

    async fn page(&self, b: &Browser) -> Page {
        let p = b.get(self.url(USERS)).await;
        assert_eq!(p.status(), 200, "{}", p.text());
        p
    }

    /// The valid form token of `b`'s session, computed the way headgate does (for crafted posts).
    fn token(&self, b: &Browser) -> String {
        let cookie = b
            .cookie(&self.url("/"), "headgate_session")
            .expect("a session cookie");
        let (id, _) = cookie.split_once('.').unwrap();
        let key = SessionKey::from_raw_id(&unb64(id).unwrap());
        session_token(&Keys::new(&Secret::new(TEST_SECRET), None), &key)
    }

    /// A crafted same-origin post with `b`'s own valid token.
    async fn craft(&self, b: &Browser, fields: &[(&str, &str)]) -> Page {
        let t = self.token(b);
        let mut f: Vec<(&str, &str)> = fields.to_vec();
        f.push(("csrf", &t));
        b.post_form(self.url(USERS), &f).await
    }
}

/// The page's form with `action` (and `user_id`, when given).
fn form(p: &Page, action: &str, user_id: Option<&str>) -> Option<Form> {
    p.forms().into_iter().find(|f| {
        f.get("action") == Some(action) && user_id.is_none_or(|u| f.get("user_id") == Some(u))
    })
}

fn done_code(p: &Page) -> Option<String> {
    assert_eq!(p.status(), 303, "{}", p.text());
    let loc = p.location()?;
    assert_eq!(loc.path(), USERS);
    loc.query_pairs()
        .find(|(k, _)| k == "done")
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn roles_and_ownership_through_the_page() {
    let e = env("");
    let owner = e
        .person("owner-sub", "Olivia Owner", "olivia@example.com")
        .await;
    let member = e
        .person("member-sub", "Max Member", "max@example.com")
        .await;
    assert_eq!(e.role(&owner).await, "owner");
    assert_eq!(e.role(&member).await, "member");

    // A member may not read the page: 403 naming the capability.
    let p = member.get(e.url(USERS)).await;
    assert_eq!(p.status(), 403);
    assert!(p.text().contains("read_users"), "{}", p.text());
    assert_eq!(
        p.header("content-security-policy").as_deref(),
        Some("default-src 'self'; img-src 'self' https:; frame-ancestors 'none'")
    );
    assert!(p.header("access-control-allow-origin").is_none());

    // The owner's page: rows for both, no role form on the owner's row, `owner` never offered.
    let p = e.page(&owner).await;
    assert!(p.header("access-control-allow-origin").is_none());
    assert_eq!(p.header("cache-control").as_deref(), Some("no-store"));
    assert!(p.text().contains("Olivia Owner") && p.text().contains("Max Member"));
    assert!(form(&p, "set_role", Some("1")).is_none());
    assert!(!p.text().contains("value=\"owner\""));
    assert!(form(&p, "transfer_ownership", None).is_some());

    // Owner changes the member to viewer through the form: the very next request sees it.
    let mut f = form(&p, "set_role", Some("2")).expect("a role form for the member");
    f.set("role", "viewer");
    let r = owner.submit(&p, &f, None).await;
    assert_eq!(done_code(&r).as_deref(), Some("role_changed"));
    let shown = owner.follow(r).await;
    assert!(shown.text().contains("The role was changed"));
    assert_eq!(e.role(&member).await, "viewer");

    // A viewer reads (no forms) but may not write, even with a valid token.
    let p = e.page(&member).await;
    assert!(p.forms().is_empty(), "a reader sees no forms");
    let r = e
        .craft(
            &member,
            &[("action", "set_role"), ("user_id", "2"), ("role", "admin")],
        )
        .await;
    assert_eq!(r.status(), 403);
    assert!(r.text().contains("write_users"), "{}", r.text());
    assert_eq!(e.role(&member).await, "viewer");

    // A crafted post assigning `owner` is refused and changes nothing.
    let r = e
        .craft(
            &owner,
            &[("action", "set_role"), ("user_id", "2"), ("role", "owner")],
        )
        .await;
    assert_eq!(r.status(), 409, "{}", r.text());
    assert_eq!(e.role(&member).await, "viewer");
    assert_eq!(e.role(&owner).await, "owner");
    // An unknown role is a bad request.
    let r = e
        .craft(
            &owner,
            &[("action", "set_role"), ("user_id", "2"), ("role", "root")],
        )
        .await;
    assert_eq!(r.status(), 400);
    // An unknown user: 404.
    let r = e
        .craft(
            &owner,
            &[
                ("action", "set_role"),
                ("user_id", "99"),
                ("role", "viewer"),
            ],
        )
        .await;
    assert_eq!(r.status(), 404);

    // Make them admin; the admin cannot demote the owner, nor transfer ownership.
    let r = e
        .craft(
            &owner,
            &[("action", "set_role"), ("user_id", "2"), ("role", "admin")],
        )
        .await;
    assert_eq!(done_code(&r).as_deref(), Some("role_changed"));
    let admin = member;
    assert_eq!(e.role(&admin).await, "admin");
    let p = e.page(&admin).await;
    assert!(form(&p, "set_role", Some("1")).is_none());
    assert!(
        form(&p, "transfer_ownership", None).is_none(),
        "only the owner sees the transfer form"
    );
    let r = e
        .craft(
            &admin,
            &[("action", "set_role"), ("user_id", "1"), ("role", "member")],
        )
        .await;
    assert_eq!(r.status(), 409, "{}", r.text());
    assert_eq!(e.role(&owner).await, "owner");
    let r = e
        .craft(
            &admin,
            &[("action", "transfer_ownership"), ("user_id", "2")],
        )
        .await;
    assert_eq!(r.status(), 403, "{}", r.text());
    assert_eq!(e.role(&owner).await, "owner");
    assert_eq!(e.role(&admin).await, "admin");

    // The owner transfers through the form: the old owner becomes admin at once.
    let p = e.page(&owner).await;
    let mut f = form(&p, "transfer_ownership", None).unwrap();
    f.set("user_id", "2");
    let r = owner.submit(&p, &f, None).await;
    assert_eq!(done_code(&r).as_deref(), Some("ownership_transferred"));
    assert_eq!(e.role(&admin).await, "owner");
    assert_eq!(e.role(&owner).await, "admin");
    // The new owner's row has no role form; the old owner's has.
    let p = e.page(&owner).await;
    assert!(form(&p, "set_role", Some("2")).is_none());
    assert!(form(&p, "transfer_ownership", None).is_none());

    // The audit log, newest first, naming who did it.
    let p = e.page(&admin).await;
    let text = p.visible_text();
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the audit log: {text}"))
    };
    assert!(at("from user 1") < at("viewer → admin"), "{text}");
    assert!(at("viewer → admin") < at("member → viewer"), "{text}");
    assert!(text.contains("user 1 (olivia@example.com)"), "{text}");
    // Refused changes were not recorded as changes.
    assert!(!text.contains("→ owner"), "{text}");

    // Only the owner ends the owner's sessions: the old owner (now admin) is refused…
    let p = e.page(&owner).await;
    let f = form(&p, "revoke_sessions", Some("2")).expect("a revoke form");
    let r = owner.submit(&p, &f, None).await;
    assert_eq!(r.status(), 403, "{}", r.text());
    assert_eq!(e.whoami(&admin).await.0, 200);
    // …while the new owner ends the old owner's, who is signed out at the next request.
    let p = e.page(&admin).await;
    let f = form(&p, "revoke_sessions", Some("1")).expect("a revoke form");
    let r = admin.submit(&p, &f, None).await;
    assert_eq!(done_code(&r).as_deref(), Some("sessions_revoked"));
    assert_eq!(e.whoami(&owner).await.0, 401);
    let p = e.page(&admin).await;
    let text = p.visible_text();
    assert!(
        text.find("revoke_sessions").unwrap() < text.find("from user 1").unwrap(),
        "{text}"
    );
}

#[tokio::test]
async fn forms_need_same_origin_and_the_session_token() {
    let e = env("");
    let owner = e
        .person("owner-sub", "Olivia Owner", "olivia@example.com")
        .await;
    let other = e
        .person("member-sub", "Max Member", "max@example.com")
        .await;
    let t = e.token(&owner);
    let fields = [
        ("action", "set_role"),
        ("user_id", "2"),
        ("role", "admin"),
        ("csrf", t.as_str()),
    ];
    let owned = |f: &[(&str, &str)]| -> Vec<(String, String)> {
        f.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };

    // Cross-site: refused whatever the token.
    let r = owner
        .request(
            Method::POST,
            &e.url(USERS),
            Some(owned(&fields)),
            &[("origin", "http://evil.example")],
            None,
        )
        .await;
    assert_eq!(r.status(), 403, "{}", r.text());
    // An opaque Origin: refused too.
    let r = owner
        .request(
            Method::POST,
            &e.url(USERS),
            Some(owned(&fields)),
            &[("origin", "null")],
            None,
        )
        .await;
    assert_eq!(r.status(), 403);

    // Missing token, wrong token, another session's token.
    let r = owner.post_form(e.url(USERS), &fields[..3]).await;
    assert_eq!(r.status(), 403);
    let mut wrong = fields;
    wrong[3].1 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert_eq!(owner.post_form(e.url(USERS), &wrong).await.status(), 403);
    let theirs = e.token(&other);
    let mut foreign = fields;
    foreign[3].1 = &theirs;
    assert_eq!(owner.post_form(e.url(USERS), &foreign).await.status(), 403);
    assert_eq!(e.role(&other).await, "member");

    // A repeated field and an unknown field: 400.
    let mut rep = fields.to_vec();
    rep.push(("role", "owner"));
    assert_eq!(owner.post_form(e.url(USERS), &rep).await.status(), 400);
    let mut unk = fields.to_vec();
    unk.push(("extra", "1"));
    assert_eq!(owner.post_form(e.url(USERS), &unk).await.status(), 400);
    assert_eq!(e.role(&other).await, "member");

    // Not a urlencoded form: 415; too large: 413.
    let cookie = format!(
        "headgate_session={}",
        owner.cookie(&e.url("/"), "headgate_session").unwrap()
    );
    let raw = reqwest::Client::new();
    let r = raw
        .post(e.url(USERS))
        .header("origin", e.site.base())
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .body(r#"{"action":"set_role","user_id":"2","role":"admin"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let big = format!(
        "action=set_role&user_id=2&role=admin&csrf={}",
        "A".repeat(17 * 1024)
    );
    let r = raw
        .post(e.url(USERS))
        .header("origin", e.site.base())
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // No Origin, a foreign Referer: refused.
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields.iter())
        .finish();
    let r = raw
        .post(e.url(USERS))
        .header("referer", "http://evil.example/x")
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // Signed out: GET and POST go to the sign-in page.
    let anon = Browser::new();
    let r = anon.get(e.url(USERS)).await;
    assert_eq!(r.status(), 302);
    assert!(
        r.header("location")
            .unwrap()
            .starts_with(&format!("/admin/login?rd={}", enc(USERS)))
    );
    let r = anon.post_form(e.url(USERS), &fields).await;
    assert_eq!(r.status(), 303);

    // The control: the same post with everything right works.
    let r = owner.post_form(e.url(USERS), &fields).await;
    assert_eq!(done_code(&r).as_deref(), Some("role_changed"));
    assert_eq!(e.role(&other).await, "admin");
    // Flash codes come from a fixed list: anything else shows nothing.
    let p = owner
        .get(e.url(&format!(
            "{USERS}?done={}",
            enc("<script>alert(1)</script>")
        )))
        .await;
    assert_eq!(p.status(), 200);
    assert!(!p.text().contains("<script"));
    assert!(!p.text().contains("alert(1)"));
}

#[tokio::test]
async fn a_role_claim_makes_roles_read_only() {
    let e = env("role_claim = \"role\"");
    let owner = e
        .person("owner-sub", "Olivia Owner", "olivia@example.com")
        .await;
    e.rogue.set_claim("role", "viewer");
    let viewer = e
        .person("viewer-sub", "Vera Viewer", "vera@example.com")
        .await;
    assert_eq!(e.role(&owner).await, "owner");
    assert_eq!(e.role(&viewer).await, "viewer");
    let p = e.page(&owner).await;
    assert!(
        p.text()
            .contains("<select name=\"role\" aria-label=\"Role\" disabled=\"\">"),
        "{}",
        p.text()
    );
    assert!(p.text().contains("oidc.role_claim"));
    let r = e
        .craft(
            &owner,
            &[("action", "set_role"), ("user_id", "2"), ("role", "admin")],
        )
        .await;
    assert_eq!(r.status(), 409, "{}", r.text());
    assert!(r.text().contains("identity provider"), "{}", r.text());
    assert_eq!(e.role(&viewer).await, "viewer");
    // Everything else still works: e.g. revoking sessions.
    let r = e
        .craft(&owner, &[("action", "revoke_sessions"), ("user_id", "2")])
        .await;
    assert_eq!(done_code(&r).as_deref(), Some("sessions_revoked"));
    assert_eq!(e.whoami(&viewer).await.0, 401);
}

#[tokio::test]
async fn links_and_script_payloads_render_inert() {
    let e = env("");
    let evil_hs = "\"><img src=x onerror=alert(1)>";
    let hs_id = e.hs.add_user(evil_hs, "");
    e.hs.add_user("alice-hs", "alice@example.com");
    let owner = e
        .person("owner-sub", "Olivia Owner", "olivia@example.com")
        .await;
    let evil_name = "<script>alert(1)</script>";
    let _evil = e.person("evil-sub", evil_name, "eve@example.com").await;
    // Alice's email matches a local Headscale user: linked at sign-in, so not offered in the picker.
    let _alice = e.person("alice-sub", "Alice", "alice@example.com").await;

    let p = e.page(&owner).await;
    let html = p.text();
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"));
    // The picker offers the unclaimed Headscale user only.
    let f = form(&p, "link", Some("2")).expect("a link form for the unlinked person");
    assert!(html.contains(&format!(
        "<option value=\"{hs_id}\">&quot;&gt;&lt;img src=x onerror=alert(1)&gt; #{hs_id}</option>"
    )));
    assert!(
        !html.contains("alice-hs &lt;alice@example.com&gt;"),
        "a claimed Headscale user is offered: {html}"
    );
    // Alice's row: linked, with an unlink form and no link form.
    assert!(form(&p, "unlink", Some("3")).is_some());
    assert!(form(&p, "link", Some("3")).is_none());

    // Link through the form; the linked name renders escaped.
    let mut f = f;
    f.set("headscale_user_id", &hs_id.to_string());
    let r = owner.submit(&p, &f, None).await;
    assert_eq!(done_code(&r).as_deref(), Some("linked"));
    let p = e.page(&owner).await;
    assert!(!p.text().contains("<img"));
    assert!(form(&p, "unlink", Some("2")).is_some());
    // Linking the same Headscale user to someone else: refused.
    let hs_id_s = hs_id.to_string();
    let r = e
        .craft(
            &owner,
            &[
                ("action", "link"),
                ("user_id", "1"),
                ("headscale_user_id", &hs_id_s),
            ],
        )
        .await;
    assert_eq!(r.status(), 409, "{}", r.text());
    // An unknown Headscale user: 404.
    let r = e
        .craft(
            &owner,
            &[
                ("action", "link"),
                ("user_id", "1"),
                ("headscale_user_id", "4242"),
            ],
        )
        .await;
    assert_eq!(r.status(), 404);
    // Approving or refusing a link that is not pending: refused.
    for a in ["approve_link", "refuse_link"] {
        let r = e.craft(&owner, &[("action", a), ("user_id", "2")]).await;
        assert_eq!(r.status(), 409, "{a}: {}", r.text());
    }
    // Unlink.
    let r = e
        .craft(&owner, &[("action", "unlink"), ("user_id", "2")])
        .await;
    assert_eq!(done_code(&r).as_deref(), Some("unlinked"));
    let p = e.page(&owner).await;
    assert!(form(&p, "link", Some("2")).is_some());
    let r = e
        .craft(&owner, &[("action", "unlink"), ("user_id", "2")])
        .await;
    assert_eq!(r.status(), 404);
    // The audit log holds the unlink, then the link, then the automatic link at sign-in (newest first).
    let html = p.text();
    let unlink = html.find("<code>unlink</code>").expect("unlink audited");
    let link = html.find("<code>link</code>").expect("link audited");
    assert!(unlink < link, "{html}");
    assert!(html[link..].contains("automatic"), "{html}");
}

#[tokio::test]
async fn api_key_sessions_administer_but_never_transfer() {
    let e = env("");
    let owner = e
        .person("owner-sub", "Olivia Owner", "olivia@example.com")
        .await;
    let member = e
        .person("member-sub", "Max Member", "max@example.com")
        .await;
    let key =
        e.hs.add_api_key(Some(OffsetDateTime::now_utc() + time::Duration::hours(2)));
    let b = Browser::new();
    let login = b.get(e.url("/admin/login")).await;
    let mut f = login
        .forms()
        .into_iter()
        .find(|f| f.password_fields.iter().any(|p| p == "api_key") || f.get("api_key").is_some())
        .expect("the API-key form");
    f.set("api_key", &key);
    let r = b.submit(&login, &f, None).await;
    assert!(r.is_redirect(), "{} {}", r.status(), r.text());
    let (st, me) = e.whoami(&b).await;
    assert_eq!((st, me["auth"].as_str()), (200, Some("api_key")));

    let p = e.page(&b).await;
    assert!(form(&p, "transfer_ownership", None).is_none());
    let mut f = form(&p, "set_role", Some("2")).unwrap();
    f.set("role", "auditor");
    let r = b.submit(&p, &f, None).await;
    assert_eq!(done_code(&r).as_deref(), Some("role_changed"));
    assert_eq!(e.role(&member).await, "auditor");
    let r = e
        .craft(&b, &[("action", "transfer_ownership"), ("user_id", "2")])
        .await;
    assert_eq!(r.status(), 403, "{}", r.text());
    let r = e
        .craft(
            &b,
            &[("action", "set_role"), ("user_id", "1"), ("role", "member")],
        )
        .await;
    assert_eq!(r.status(), 409);
    assert_eq!(e.role(&owner).await, "owner");
    // The audit log names the key by its public prefix, never the key.
    let p = e.page(&owner).await;
    let prefix = me["api_key_prefix"].as_str().unwrap();
    assert!(
        p.text().contains(&format!("api key {prefix}")),
        "{}",
        p.text()
    );
    assert!(!p.text().contains(&key));
}

/// The `createdAt` of a Headscale user exactly as the fake answers it (what a link stores).
async fn hs_created_at(hs: &FakeHeadscale, id: u64) -> String {
    let body: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/user", hs.url()))
        .bearer_auth(hs.admin_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"].as_str() == Some(&id.to_string()) || u["id"].as_u64() == Some(id))
        .and_then(|u| u["createdAt"].as_str())
        .unwrap_or_else(|| panic!("no user {id} in {body}"))
        .to_string()
}

#[tokio::test]
async fn pending_links_are_approved_or_refused() {
    use headgate::store::{Link, LinkOutcome, LinkState, NewUser, OwnerBootstrap, Role, Store};
    use std::os::unix::fs::DirBuilderExt;

    let site = Site::new();
    let rogue = RogueIdp::start();
    let hs = FakeHeadscale::start();
    let max_hs = hs.add_user("max-hs", "");
    let pat_hs = hs.add_user("pat-hs", "");
    let cfg = site
        .config(Some(&hs))
        .section(oidc_section(rogue.issuer(), ""));
    // Before headgate starts: three people, two of them with a pending self-pick (S4), as onboarding
    // leaves them.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(cfg.data_path())
        .unwrap();
    {
        let store = Store::open_redb(&cfg.data_path().join("headgate.redb"), 1 << 20).unwrap();
        let new = |sub: &str| NewUser {
            subject: sub.into(),
            email: Some(format!("{sub}@example.com")),
            email_verified: true,
            name: Some(sub.into()),
            picture: None,
            role: Role::Member,
            onboarded: false,
            created: 1,
        };
        store
            .create_user(new("owner"), OwnerBootstrap::FirstUser)
            .await
            .unwrap();
        for (sub, hs_id, name) in [("max", max_hs, "max-hs"), ("pat", pat_hs, "pat-hs")] {
            let u = store
                .create_user(new(sub), OwnerBootstrap::Never)
                .await
                .unwrap();
            let out = store
                .link_if_unclaimed(Link {
                    headscale_user_id: hs_id.to_string(),
                    user_id: u.id,
                    headscale_created_at: hs_created_at(&hs, hs_id).await,
                    provider_id: String::new(),
                    state: LinkState::Pending,
                    created: 1,
                    headscale_name: name.into(),
                })
                .await
                .unwrap();
            assert_eq!(out, LinkOutcome::Linked);
        }
    }
    let hg = cfg.start();
    let e = Env {
        site,
        rogue,
        hs,
        hg,
    };
    let owner = e.person("owner", "owner", "owner@example.com").await;
    let max = e.person("max", "max", "max@example.com").await;
    let pat = e.person("pat", "pat", "pat@example.com").await;
    assert_eq!(e.role(&owner).await, "owner");
    for b in [&max, &pat] {
        assert_eq!(e.whoami(b).await.1["link"], "pending");
    }

    let p = e.page(&owner).await;
    assert!(p.visible_text().contains("pending"));
    assert!(form(&p, "approve_link", Some("1")).is_none());
    let f = form(&p, "approve_link", Some("2")).expect("approve form for max");
    let r = owner.submit(&p, &f, None).await;
    assert_eq!(done_code(&r).as_deref(), Some("link_approved"));
    let me = e.whoami(&max).await.1;
    assert_eq!(me["link"], "linked");
    assert_eq!(me["headscale_user_id"], max_hs.to_string());

    let p = e.page(&owner).await;
    assert!(form(&p, "approve_link", Some("2")).is_none());
    assert!(form(&p, "unlink", Some("2")).is_some());
    let f = form(&p, "refuse_link", Some("3")).expect("refuse form for pat");
    let r = owner.submit(&p, &f, None).await;
    assert_eq!(done_code(&r).as_deref(), Some("link_refused"));
    assert_eq!(e.whoami(&pat).await.1["link"], "none");
    // Pat's Headscale user is unclaimed again: offered by the picker.
    let p = e.page(&owner).await;
    assert!(
        p.text().contains(&format!(
            "<option value=\"{pat_hs}\">pat-hs #{pat_hs}</option>"
        )),
        "{}",
        p.text()
    );
    let html = p.text();
    let approve = html.find("<code>approve_link</code>").expect("audited");
    let refuse = html.find("<code>unlink</code>").expect("audited");
    assert!(refuse < approve, "newest first");
}
