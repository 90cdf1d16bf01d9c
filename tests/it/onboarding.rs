//! Onboarding (`/_headgate/onboarding`) and own pre-auth keys (`/_headgate/keys`) against the real binary, the
//! rogue IdP (fast sign-ins with any subject and email) and the fake Headscale: first sign-in lands on
//! onboarding and skipping is remembered; S4 picks (only what is allowed, `approve` grants nothing until
//! approved, `allow` links at once, `off` offers nothing, crafted posts refused); the one-hour key for the
//! person's own user only; the first device noticed; the keys page never showing or expiring anyone else's
//! key; script payloads in Headscale user names rendered inert; every pick and key operation audited.

use serde_json::Value;
use time::OffsetDateTime;

use crate::harness::browser::{Browser, Form, Page};
use crate::harness::fake_headscale::FakeHeadscale;
use crate::harness::headgate::Headgate;
use crate::harness::rogue::RogueIdp;
use crate::harness::stack::{Site, enc, landing, oidc_section, onboarding_landing};

const PAYLOAD: &str = "<script>alert(1)</script>";
const IPHONE: &str =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148";
const WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0";
const LINUX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

struct T {
    site: Site,
    rogue: RogueIdp,
    hs: FakeHeadscale,
    hg: Headgate,
}

/// headgate with the rogue IdP, the fake Headscale, `[oidc]` extra lines and an `[onboarding]` section.
fn setup(oidc_extra: &str, onboarding: &str) -> T {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let hs = FakeHeadscale::start();
    let mut cfg = site
        .config(Some(&hs))
        .section(oidc_section(rogue.issuer(), oidc_extra));
    if !onboarding.is_empty() {
        cfg = cfg.section(format!("[onboarding]\n{onboarding}"));
    }
    let hg = cfg.start();
    T {
        site,
        rogue,
        hs,
        hg,
    }
}

impl T {
    fn url(&self, p: &str) -> String {
        self.site.url(p)
    }

    /// A fresh browser signed in as `sub` with a verified `email` (None: no email claim at all); returns the
    /// browser and the callback's answer.
    async fn sign_in(&self, sub: &str, email: Option<&str>) -> (Browser, Page) {
        let b = Browser::new();
        let p = self.sign_in_with(&b, sub, email, None).await;
        (b, p)
    }

    async fn sign_in_with(
        &self,
        b: &Browser,
        sub: &str,
        email: Option<&str>,
        rd: Option<&str>,
    ) -> Page {
        self.rogue.set_subject(sub);
        match email {
            Some(e) => {
                self.rogue.set_claim("email", e);
                self.rogue.set_claim("email_verified", true);
            }
            None => {
                self.rogue.remove_claim("email");
                self.rogue.remove_claim("email_verified");
            }
        }
        let start = match rd {
            Some(rd) => self.url(&format!("/admin/oidc/start?rd={}", enc(rd))),
            None => self.url("/admin/oidc/start"),
        };
        let to_idp = b.get(&start).await;
        assert_eq!(to_idp.status(), 302, "{}", to_idp.text());
        let back = b.get(to_idp.location().unwrap().as_str()).await;
        assert_eq!(back.status(), 302, "rogue authorize");
        b.get(back.location().unwrap().as_str()).await
    }

    /// The owner (the first sign-in), onboarding skipped.
    async fn owner(&self) -> Browser {
        let (b, done) = self.sign_in("owner-sub", Some("owner@example.com")).await;
        assert_eq!(
            landing(&self.site, &done),
            onboarding_landing("/admin/"),
            "{}",
            self.hg.process.output()
        );
        let me = whoami(&b, self).await;
        assert_eq!(me["role"], "owner");
        let page = onboarding(&b, self, "").await;
        let skipped = b.submit(&page, &form(&page, "skip"), None).await;
        assert_eq!(skipped.status(), 303);
        b
    }

    fn hs_url(&self) -> String {
        self.hs.url().trim_end_matches('/').to_string()
    }

    /// Stop headgate and read its audit log from the store.
    async fn audit(mut self) -> Vec<headgate::store::AuditEvent> {
        self.hg.process.kill();
        let path = self.hg.config.data_path().join("headgate.redb");
        let store = headgate::store::Store::open_redb(&path, 1 << 20).unwrap();
        store.audit(1000, None).await.unwrap()
    }
}

async fn whoami(b: &Browser, t: &T) -> Value {
    let p = b.get(t.url("/_headgate/whoami")).await;
    assert_eq!(p.status(), 200, "{}", p.text());
    p.json()
}

async fn status(b: &Browser, t: &T) -> Value {
    let p = b.get(t.url("/_headgate/onboarding/status")).await;
    assert_eq!(p.status(), 200, "{}", p.text());
    p.json()
}

/// `GET /_headgate/onboarding<query>` (200 expected).
async fn onboarding(b: &Browser, t: &T, query: &str) -> Page {
    onboarding_ua(b, t, query, LINUX).await
}

async fn onboarding_ua(b: &Browser, t: &T, query: &str, ua: &str) -> Page {
    let p = b
        .get_with(
            t.url(&format!("/_headgate/onboarding{query}")),
            &[("user-agent", ua)],
        )
        .await;
    assert_eq!(p.status(), 200, "{}", p.text());
    p
}

/// The form on `page` whose hidden `action` is `action`.
fn form(page: &Page, action: &str) -> Form {
    page.forms()
        .into_iter()
        .find(|f| f.get("action") == Some(action))
        .unwrap_or_else(|| panic!("no {action:?} form on {}: {}", page.url, page.text()))
}

fn has_form(page: &Page, action: &str) -> bool {
    page.forms().iter().any(|f| f.get("action") == Some(action))
}

fn token(page: &Page) -> String {
    page.forms()
        .iter()
        .find_map(|f| f.get("csrf").map(str::to_string))
        .expect("a form with the session token")
}

/// The Headscale user ids offered for picking.
fn offered(page: &Page) -> Vec<String> {
    let mut ids: Vec<String> = page
        .text()
        .split("name=\"headscale_user_id\" value=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn post(b: &Browser, t: &T, path: &str, fields: &[(&str, &str)]) -> Page {
    b.post_form(t.url(path), fields).await
}

fn no_store(p: &Page) {
    let cc = p.header("cache-control").unwrap_or_default();
    assert!(cc.contains("no-store"), "Cache-Control: {cc:?}");
}

fn secs_from_now(t: Option<OffsetDateTime>) -> i64 {
    (t.expect("an expiration") - OffsetDateTime::now_utc()).whole_seconds()
}

#[tokio::test]
async fn first_sign_in_lands_on_onboarding_skip_lands_on_admin_and_is_remembered() {
    let t = setup("", "");
    let (b, done) = t.sign_in("owner-sub", Some("owner@example.com")).await;
    assert_eq!(landing(&t.site, &done), onboarding_landing("/admin/"));
    let page = onboarding(&b, &t, "?rd=%2Fadmin%2F").await;
    assert_eq!(status(&b, &t).await["onboarded"], false);
    // A second sign-in before finishing still starts there, handing a deep link on.
    let again = t
        .sign_in_with(
            &b,
            "owner-sub",
            Some("owner@example.com"),
            Some("/admin/machines"),
        )
        .await;
    assert_eq!(
        landing(&t.site, &again),
        onboarding_landing("/admin/machines")
    );
    // The old page's token belonged to the old session (sign-in made a new one).
    let stale = b.submit(&page, &form(&page, "skip"), None).await;
    assert_eq!(stale.status(), 403);
    assert_eq!(status(&b, &t).await["onboarded"], false);
    // Skip: straight to /admin/, remembered.
    let page = onboarding(&b, &t, "?rd=%2Fadmin%2F").await;
    let skipped = b.submit(&page, &form(&page, "skip"), None).await;
    assert_eq!(
        (skipped.status(), landing(&t.site, &skipped)),
        (303, "/admin/".into())
    );
    assert_eq!(status(&b, &t).await["onboarded"], true);
    let b2 = Browser::new();
    let done = t
        .sign_in_with(&b2, "owner-sub", Some("owner@example.com"), None)
        .await;
    assert_eq!(landing(&t.site, &done), "/admin/");
    let done = t
        .sign_in_with(
            &b2,
            "owner-sub",
            Some("owner@example.com"),
            Some("/admin/machines"),
        )
        .await;
    assert_eq!(landing(&t.site, &done), "/admin/machines");
    // Skip honours a validated rd, never an outside one.
    let (b3, _) = t.sign_in("second-sub", Some("second@example.com")).await;
    let page = onboarding(&b3, &t, "?rd=%2Fadmin%2Fusers").await;
    let out = b3.submit(&page, &form(&page, "skip"), None).await;
    assert_eq!(landing(&t.site, &out), "/admin/users");
    let (b4, _) = t.sign_in("third-sub", Some("third@example.com")).await;
    let page = onboarding(&b4, &t, "?rd=https%3A%2F%2Fevil.example%2F").await;
    let out = b4.submit(&page, &form(&page, "skip"), None).await;
    assert_eq!(landing(&t.site, &out), "/admin/");
    // Signed out: the page sends you to sign in, the status is a 401.
    let anon = Browser::new();
    let p = anon.get(t.url("/_headgate/onboarding")).await;
    assert_eq!(p.status(), 302);
    assert!(landing(&t.site, &p).starts_with("/admin/login?rd="));
    assert_eq!(
        anon.get(t.url("/_headgate/onboarding/status"))
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn approve_picks_only_what_s4_allows_and_grants_nothing_until_approved() {
    let t = setup("default_role = \"viewer\"", "");
    let free = t.hs.add_user("free", "");
    // Two users with her email: no automatic link (S3 needs exactly one), both may be picked.
    let mine = t.hs.add_user("mine", "Mallory@Example.COM");
    let mine_too = t.hs.add_user("mine-too", "mallory@example.com");
    let payload = t.hs.add_user(PAYLOAD, "");
    let other_email = t.hs.add_user("bobs", "bob@example.com");
    let oidc =
        t.hs.add_oidc_user("oidc-user", "https://other-idp.example", "someone", "");
    let tagged = t.hs.add_user("tagged-devices", "");
    let claimed = t.hs.add_user("claimed", "");
    // The owner's own pick applies at once, even with `approve`.
    let owner = t.owner().await;
    let page = onboarding(&owner, &t, "?step=link").await;
    let mut f = form(&page, "pick");
    f.set("headscale_user_id", &claimed.to_string());
    let picked = owner.submit(&page, &f, None).await;
    assert_eq!(picked.status(), 303, "{}", picked.text());
    let me = whoami(&owner, &t).await;
    assert_eq!(me["link"], "linked");
    assert_eq!(me["headscale_user_id"], claimed.to_string());

    // Mallory: verified email mallory@example.com, no subject match → signed in, unlinked.
    let (b, done) = t.sign_in("mallory-sub", Some("mallory@example.com")).await;
    assert_eq!(landing(&t.site, &done), onboarding_landing("/admin/"));
    assert_eq!(whoami(&b, &t).await["link"], "none");
    let page = onboarding(&b, &t, "").await;
    let mut want = vec![
        free.to_string(),
        mine.to_string(),
        mine_too.to_string(),
        payload.to_string(),
    ];
    want.sort();
    assert_eq!(offered(&page), want, "{}", page.text());
    assert!(page.text().contains("An administrator approves your pick"));
    // The script payload in a Headscale user name is inert text.
    assert!(!page.text().contains(PAYLOAD));
    assert!(
        page.text()
            .contains("&lt;script&gt;alert(1)&lt;/script&gt;")
    );
    assert!(!page.text().to_ascii_lowercase().contains("<script"));
    // Crafted posts for users S4 does not allow are refused and change nothing.
    let tok = token(&page);
    for (id, why) in [
        (oidc.to_string(), "an OIDC user"),
        (claimed.to_string(), "a claimed user"),
        (tagged.to_string(), "tagged-devices"),
        ("2147455555".to_string(), "the synthetic tagged-devices id"),
        (other_email.to_string(), "a user with another email"),
        ("999".to_string(), "an unknown user"),
    ] {
        let r = post(
            &b,
            &t,
            "/_headgate/onboarding",
            &[
                ("csrf", &tok),
                ("action", "pick"),
                ("headscale_user_id", &id),
            ],
        )
        .await;
        assert_eq!(r.status(), 403, "{why}: {}", r.text());
        assert_eq!(whoami(&b, &t).await["link"], "none", "{why}");
    }
    // Form hygiene: another origin, no token, a repeated field, multipart.
    let pick = [
        ("csrf", tok.as_str()),
        ("action", "pick"),
        ("headscale_user_id", &free.to_string()),
    ];
    let r = b
        .request(
            reqwest::Method::POST,
            &t.url("/_headgate/onboarding"),
            Some(
                pick.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            &[("origin", "https://evil.example")],
            None,
        )
        .await;
    assert_eq!(r.status(), 403);
    let r = post(
        &b,
        &t,
        "/_headgate/onboarding",
        &[("action", "pick"), ("headscale_user_id", &free.to_string())],
    )
    .await;
    assert_eq!(r.status(), 403);
    let r = post(
        &b,
        &t,
        "/_headgate/onboarding",
        &[
            ("csrf", &tok),
            ("action", "pick"),
            ("headscale_user_id", &free.to_string()),
            ("headscale_user_id", &mine.to_string()),
        ],
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = b
        .request(
            reqwest::Method::POST,
            &t.url("/_headgate/onboarding"),
            None,
            &[("content-type", "multipart/form-data; boundary=x")],
            None,
        )
        .await;
    assert_eq!(r.status(), 415);
    assert_eq!(whoami(&b, &t).await["link"], "none");

    // The real pick waits for an administrator, and the page says so.
    let mut f = form(&page, "pick");
    f.set("headscale_user_id", &mine.to_string());
    let picked = b.submit(&page, &f, None).await;
    assert_eq!(picked.status(), 303, "{}", picked.text());
    let me = whoami(&b, &t).await;
    assert_eq!(me["link"], "pending");
    assert_eq!(me["headscale_user_id"], Value::Null);
    let shown = b.follow(picked).await;
    assert!(
        shown
            .visible_text()
            .contains("Waiting for an administrator"),
        "{}",
        shown.text()
    );
    // A second pick while one is pending is refused.
    let r = post(
        &b,
        &t,
        "/_headgate/onboarding",
        &[
            ("csrf", &tok),
            ("action", "pick"),
            ("headscale_user_id", &free.to_string()),
        ],
    )
    .await;
    assert_eq!(r.status(), 409);
    // Pending grants nothing: no key button, a crafted key post refused, no keys page, no device status.
    let device = onboarding(&b, &t, "?step=device").await;
    assert!(!has_form(&device, "create_key"), "{}", device.text());
    let r = post(
        &b,
        &t,
        "/_headgate/onboarding",
        &[("csrf", &tok), ("action", "create_key")],
    )
    .await;
    assert_eq!(r.status(), 403);
    let keys = b.get(t.url("/_headgate/keys")).await;
    assert_eq!(keys.status(), 200);
    assert!(keys.visible_text().contains("waiting for an administrator"));
    assert!(!keys.text().contains("value=\"create\""));
    let r = post(
        &b,
        &t,
        "/_headgate/keys",
        &[
            ("csrf", &tok),
            ("action", "create"),
            ("expiry", "1"),
            ("unit", "hours"),
        ],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert!(t.hs.preauth_keys().is_empty(), "{:?}", t.hs.preauth_keys());
    t.hs.add_node(mine, "mine-laptop");
    let st = status(&b, &t).await;
    assert_eq!(st["link"], "pending");
    assert_eq!(st["first_device"], Value::Null);
    let wait = onboarding(&b, &t, "?step=wait").await;
    assert!(!wait.text().contains("mine-laptop"));

    let audit = t.audit().await;
    let picks: Vec<_> = audit.iter().filter(|e| e.action == "self_link").collect();
    assert_eq!(picks.len(), 2, "{audit:?}");
    assert!(
        picks.iter().any(|e| e.detail.contains("pending")
            && e.target.contains(&format!("headscale user {mine}")))
    );
    assert!(
        picks.iter().any(|e| e.detail.contains("applied")
            && e.target.contains(&format!("headscale user {claimed}")))
    );
}

#[tokio::test]
async fn allow_links_at_once_then_a_one_hour_key_and_the_first_device() {
    let t = setup("default_role = \"viewer\"", "self_link = \"allow\"");
    let alice = t.hs.add_user("alice-hs", "");
    let bob = t.hs.add_user("bob-hs", "");
    let _owner = t.owner().await;
    let (b, _) = t.sign_in("alice-sub", Some("alice@example.com")).await;
    let page = onboarding(&b, &t, "").await;
    assert!(!page.text().contains("An administrator approves your pick"));
    let mut f = form(&page, "pick");
    f.set("headscale_user_id", &alice.to_string());
    let picked = b.submit(&page, &f, None).await;
    assert_eq!(picked.status(), 303, "{}", picked.text());
    let me = whoami(&b, &t).await;
    assert_eq!(me["link"], "linked");
    assert_eq!(me["headscale_user_id"], alice.to_string());
    // Step 2: the install hint for the browser's OS and the generic command; the key button.
    let device = onboarding_ua(&b, &t, "?step=device", WINDOWS).await;
    let login = format!("tailscale up --login-server {}", t.hs_url());
    assert!(device.text().contains(&login), "{}", device.text());
    assert!(device.visible_text().contains("Windows"));
    let made = b.submit(&device, &form(&device, "create_key"), None).await;
    assert_eq!(made.status(), 200, "{}", made.text());
    no_store(&made);
    let keys = t.hs.preauth_keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let k = &keys[0];
    assert_eq!(k.user_id, Some(alice));
    assert!(
        !k.reusable && !k.ephemeral && k.acl_tags.is_empty(),
        "{k:?}"
    );
    let left = secs_from_now(k.expiration);
    assert!((3500..=3660).contains(&left), "expires in {left} s");
    // Shown once, on the response to the post only.
    assert!(made.text().contains(&k.key));
    assert!(
        made.text()
            .contains(&format!("{login} --authkey {}", k.key))
    );
    let again = onboarding(&b, &t, "?step=device").await;
    assert!(!again.text().contains(&k.key));
    // Step 3 polls without script until a node of her user appears (another user's does not count).
    let wait = onboarding(&b, &t, "?step=wait").await;
    assert!(
        wait.text()
            .contains("<meta http-equiv=\"refresh\" content=\"5\">")
    );
    assert!(!wait.text().to_ascii_lowercase().contains("<script"));
    assert_eq!(status(&b, &t).await["devices"], 0);
    t.hs.add_node(bob, "bobs-phone");
    t.hs.add_tagged_node("tagged-server", &["tag:server"]);
    let wait = onboarding(&b, &t, "?step=wait").await;
    assert!(wait.text().contains("http-equiv=\"refresh\""));
    assert!(!wait.text().contains("bobs-phone"));
    t.hs.add_node(alice, "alice-laptop");
    let st = status(&b, &t).await;
    assert_eq!(
        (st["devices"].clone(), st["first_device"].clone()),
        (1.into(), "alice-laptop".into())
    );
    let wait = onboarding(&b, &t, "?step=wait").await;
    assert!(
        wait.visible_text().contains("alice-laptop"),
        "{}",
        wait.text()
    );
    assert!(!wait.text().contains("http-equiv"));
    let done = b.submit(&wait, &form(&wait, "finish"), None).await;
    assert_eq!(
        (done.status(), landing(&t.site, &done)),
        (303, "/admin/".into())
    );
    assert_eq!(status(&b, &t).await["onboarded"], true);

    let audit = t.audit().await;
    assert!(
        audit
            .iter()
            .any(|e| e.action == "self_link" && e.detail.contains("allow")),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|e| e.action == "create_own_preauth_key"
            && e.target == format!("headscale user {alice}")
            && !e.detail.contains(&k.key)),
        "{audit:?}"
    );
}

#[tokio::test]
async fn own_keys_page_never_shows_or_expires_another_users_key() {
    let t = setup("default_role = \"viewer\"", "own_key_max_expiry = 7200");
    // Alice is linked by subject (Headscale's own OIDC login created her user).
    let alice = t.hs.add_oidc_user(
        "alice-hs",
        t.rogue.issuer(),
        "alice-sub",
        "alice@example.com",
    );
    let bob = t.hs.add_user("bob-hs", "");
    let owner = t.owner().await;
    let in_a_day = Some(OffsetDateTime::now_utc() + time::Duration::days(1));
    let hers = t.hs.add_preauth_key(Some(alice), in_a_day);
    let his = t.hs.add_preauth_key(Some(bob), in_a_day);
    let tags_only = t.hs.add_preauth_key(None, in_a_day);
    t.hs.edit_preauth_key(tags_only.id, |k| k.acl_tags = vec!["tag:server".into()]);
    let (b, _) = t.sign_in("alice-sub", Some("alice@example.com")).await;
    assert_eq!(whoami(&b, &t).await["link"], "linked");
    let page = b.get(t.url("/_headgate/keys")).await;
    assert_eq!(page.status(), 200, "{}", page.text());
    assert!(page.text().contains(&hers.masked_key()), "{}", page.text());
    assert!(!page.text().contains(&his.masked_key()));
    assert!(!page.text().contains(&tags_only.masked_key()));
    for k in [&hers, &his, &tags_only] {
        assert!(!page.text().contains(&k.key), "a full key on the page");
    }
    assert!(!page.text().contains(&format!("data-key-id=\"{}\"", his.id)));
    let tok = token(&page);
    // Expiring someone else's key (or a tags-only key) is refused, whatever the form says.
    for (id, who) in [(his.id, "bob's"), (tags_only.id, "a tags-only")] {
        let r = post(
            &b,
            &t,
            "/_headgate/keys",
            &[
                ("csrf", &tok),
                ("action", "expire"),
                ("key_id", &id.to_string()),
            ],
        )
        .await;
        assert_eq!(r.status(), 403, "{who} key: {}", r.text());
        assert!(!r.text().contains(&his.masked_key()));
    }
    assert!(t.hs.preauth_keys().iter().all(|k| !k.is_expired()));
    // Her own key expires.
    let mut f = page
        .forms()
        .into_iter()
        .find(|f| {
            f.get("action") == Some("expire") && f.get("key_id") == Some(&hers.id.to_string())
        })
        .expect("an expire form for her key");
    f.set("csrf", &tok);
    let r = b.submit(&page, &f, None).await;
    assert_eq!(r.status(), 303, "{}", r.text());
    let now = t.hs.preauth_keys();
    assert!(now.iter().find(|k| k.id == hers.id).unwrap().is_expired());
    assert!(!now.iter().find(|k| k.id == his.id).unwrap().is_expired());
    // Create: 30 minutes, single use, untagged, hers; shown once.
    let page = b.get(t.url("/_headgate/keys")).await;
    let mut f = form(&page, "create");
    f.set("expiry", "30").set("unit", "minutes");
    let made = b.submit(&page, &f, None).await;
    assert_eq!(made.status(), 200, "{}", made.text());
    no_store(&made);
    let new: Vec<_> =
        t.hs.preauth_keys()
            .into_iter()
            .filter(|k| ![hers.id, his.id, tags_only.id].contains(&k.id))
            .collect();
    assert_eq!(new.len(), 1);
    let k = &new[0];
    assert_eq!(k.user_id, Some(alice));
    assert!(!k.reusable && !k.ephemeral && k.acl_tags.is_empty());
    let left = secs_from_now(k.expiration);
    assert!((1700..=1860).contains(&left), "expires in {left} s");
    assert!(made.text().contains(&k.key));
    assert!(
        !b.get(t.url("/_headgate/keys"))
            .await
            .text()
            .contains(&k.key)
    );
    // Out of bounds: over the cap (2 h here), under 5 minutes, nonsense.
    for (n, unit) in [
        ("3", "hours"),
        ("121", "minutes"),
        ("4", "minutes"),
        ("0", "hours"),
        ("1", "days"),
    ] {
        let r = post(
            &b,
            &t,
            "/_headgate/keys",
            &[
                ("csrf", &tok),
                ("action", "create"),
                ("expiry", n),
                ("unit", unit),
            ],
        )
        .await;
        assert_eq!(r.status(), 400, "{n} {unit}");
    }
    assert_eq!(t.hs.preauth_keys().len(), 4);
    // Whoever has generate_authkeys is sent to Headplane's page, and cannot use this one.
    let p = owner.get(t.url("/_headgate/keys")).await;
    assert_eq!(p.status(), 200);
    assert!(p.text().contains("/admin/settings/auth-keys"));
    assert!(!p.text().contains(&hers.masked_key()));
    let otok = token(&onboarding(&owner, &t, "?step=device").await);
    let r = post(
        &owner,
        &t,
        "/_headgate/keys",
        &[
            ("csrf", &otok),
            ("action", "expire"),
            ("key_id", &his.id.to_string()),
        ],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(t.hs.preauth_keys().len(), 4);
    // A token of another session is refused.
    let r = post(
        &b,
        &t,
        "/_headgate/keys",
        &[
            ("csrf", &otok),
            ("action", "create"),
            ("expiry", "1"),
            ("unit", "hours"),
        ],
    )
    .await;
    assert_eq!(r.status(), 403);

    let audit = t.audit().await;
    assert!(audit.iter().any(|e| e.action == "expire_own_preauth_key"
        && e.detail == format!("key {}", hers.id)));
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.action == "create_own_preauth_key")
            .count(),
        1,
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_member_is_asked_to_get_access_and_sees_the_device_instructions() {
    let t = setup("", "");
    let free = t.hs.add_user("free", "");
    let _owner = t.owner().await;
    let (b, done) = t.sign_in("member-sub", Some("member@example.com")).await;
    assert_eq!(landing(&t.site, &done), onboarding_landing("/admin/"));
    assert_eq!(whoami(&b, &t).await["role"], "member");
    let page = onboarding_ua(&b, &t, "", IPHONE).await;
    let text = page.visible_text();
    assert!(text.contains("Ask an administrator for access"), "{text}");
    assert!(text.contains("App Store"), "{text}");
    assert!(
        page.text()
            .contains(&format!("tailscale up --login-server {}", t.hs_url()))
    );
    assert_eq!(offered(&page), vec![free.to_string()]);
    // No key button without the capability, and a crafted post is refused.
    assert!(!has_form(&page, "create_key"));
    let tok = token(&page);
    let mut f = form(&page, "pick");
    f.set("headscale_user_id", &free.to_string());
    assert_eq!(b.submit(&page, &f, None).await.status(), 303);
    let r = post(
        &b,
        &t,
        "/_headgate/onboarding",
        &[("csrf", &tok), ("action", "create_key")],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert!(t.hs.preauth_keys().is_empty());
    assert_eq!(b.get(t.url("/_headgate/keys")).await.status(), 403);
    // Done is remembered.
    let page = onboarding(&b, &t, "").await;
    let out = b.submit(&page, &form(&page, "finish"), None).await;
    assert_eq!(landing(&t.site, &out), "/admin/");
    let again = t
        .sign_in_with(&b, "member-sub", Some("member@example.com"), None)
        .await;
    assert_eq!(landing(&t.site, &again), "/admin/");
}

#[tokio::test]
async fn without_email_only_users_without_email_and_off_offers_nothing() {
    let t = setup("default_role = \"viewer\"", "");
    let plain = t.hs.add_user("plain", "");
    let _with_email = t.hs.add_user("someone", "someone@example.com");
    let _owner = t.owner().await;
    // No email and no subject match: signed in, unlinked.
    let (b, done) = t.sign_in("no-email-sub", None).await;
    assert_eq!(landing(&t.site, &done), onboarding_landing("/admin/"));
    let me = whoami(&b, &t).await;
    assert_eq!(
        (me["email"].clone(), me["link"].clone()),
        (Value::Null, "none".into())
    );
    let page = onboarding(&b, &t, "").await;
    assert_eq!(offered(&page), vec![plain.to_string()]);

    // `off`: nothing offered, crafted picks refused.
    let t = setup("default_role = \"viewer\"", "self_link = \"off\"");
    let plain = t.hs.add_user("plain", "");
    let owner = t.owner().await;
    let page = onboarding(&owner, &t, "?step=link").await;
    assert!(offered(&page).is_empty());
    let (b, _) = t.sign_in("viewer-sub", Some("viewer@example.com")).await;
    let page = onboarding(&b, &t, "?step=link").await;
    assert!(offered(&page).is_empty(), "{}", page.text());
    assert!(
        page.visible_text()
            .contains("An administrator can link it for you")
    );
    let r = post(
        &b,
        &t,
        "/_headgate/onboarding",
        &[
            ("csrf", &token(&page)),
            ("action", "pick"),
            ("headscale_user_id", &plain.to_string()),
        ],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(whoami(&b, &t).await["link"], "none");
}
