//! A whole sign-in stack for a test: the real test IdP (or the rogue one), the fake Headscale, and the
//! headgate binary configured to use them, on ports chosen for this test.

use std::time::Duration;

use url::Url;

use super::browser::{Browser, Page};
use super::fake_headscale::FakeHeadscale;
use super::free_port;
use super::headgate::{Headgate, HeadgateConfig};
use super::idp::{DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, TestIdp, TestIdpBuilder};

/// headgate's address for a test, decided before it starts (the IdP needs the redirect URI).
pub struct Site {
    pub port: u16,
}

impl Site {
    pub fn new() -> Site {
        Site { port: free_port() }
    }
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn callback(&self) -> String {
        format!("{}/admin/oidc/callback", self.base())
    }
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }
    /// A headgate config listening on this site's port, with the fake Headscale's section when given.
    pub fn config(&self, hs: Option<&FakeHeadscale>) -> HeadgateConfig {
        let mut c = HeadgateConfig::new()
            .server("listen", &format!("\"127.0.0.1:{}\"", self.port))
            .server("base_url", &format!("\"{}\"", self.base()));
        if let Some(hs) = hs {
            c = c.section(format!(
                "[headscale]\nurl = \"{}\"\napi_key = \"{}\"",
                hs.url(),
                hs.admin_key()
            ));
        }
        c
    }
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}

/// `[oidc]` for an issuer with the default test client; `extra` lines are appended.
pub fn oidc_section(issuer: &str, extra: &str) -> String {
    format!(
        "[oidc]\nissuer = \"{issuer}\"\nclient_id = \"{DEFAULT_CLIENT_ID}\"\nclient_secret = \"{DEFAULT_CLIENT_SECRET}\"\n{extra}"
    )
}

pub struct Stack {
    pub site: Site,
    pub idp: TestIdp,
    pub hs: FakeHeadscale,
    pub hg: Headgate,
}

/// The real IdP (PKCE optional unless the builder says otherwise) registered for this site, the fake
/// Headscale, and headgate with `oidc_extra` lines in `[oidc]` and `server` lines added.
pub fn stack(idp: TestIdpBuilder, oidc_extra: &str, server: &[(&str, &str)]) -> Stack {
    let site = Site::new();
    let idp = idp.redirect_uri(&site.callback()).start();
    let hs = FakeHeadscale::start();
    let mut cfg = site
        .config(Some(&hs))
        .section(oidc_section(idp.issuer(), oidc_extra));
    for (k, v) in server {
        cfg = cfg.server(k, v);
    }
    let hg = cfg.start();
    Stack { site, idp, hs, hg }
}

impl Stack {
    pub fn url(&self, path: &str) -> String {
        self.site.url(path)
    }

    /// Wait until headgate's log has a line containing `needle` (logs are read by another thread).
    pub fn wait_log(&mut self, needle: &str) -> String {
        self.hg
            .process
            .wait_for_line(Duration::from_secs(5), |l| l.contains(needle))
    }
}

/// Sign in through the real IdP's pages: start (with `rd`), the IdP's login, then headgate's callback.
/// Returns the callback's response (normally a redirect to the return target).
pub async fn sign_in(
    b: &Browser,
    site: &Site,
    login: &str,
    password: &str,
    rd: Option<&str>,
) -> Page {
    let start = match rd {
        Some(rd) => site.url(&format!("/admin/oidc/start?rd={}", enc(rd))),
        None => site.url("/admin/oidc/start"),
    };
    let to_idp = b.get(&start).await;
    assert_eq!(to_idp.status(), 302, "start: {}", to_idp.text());
    let callback = b
        .idp_login(to_idp.location().unwrap().as_str(), login, password)
        .await;
    b.get(callback.as_str()).await
}

/// Where a response sends the browser, relative to the site when it stays on it.
pub fn landing(site: &Site, p: &Page) -> String {
    let loc = p
        .header("location")
        .unwrap_or_else(|| panic!("no Location ({}): {}", p.status(), p.text()));
    loc.strip_prefix(&site.base())
        .map(str::to_string)
        .unwrap_or(loc)
}

/// Where a first sign-in lands (onboarding runs until finished or skipped), handing `rd` on.
/// Where a sign-in finally sends the person, looking through the first-sign-in detour to onboarding (its
/// `rd` is the return target). For tests about return targets, not about onboarding.
pub fn final_landing(site: &Site, p: &Page) -> String {
    let to = landing(site, p);
    match to.strip_prefix("/_headgate/onboarding?rd=") {
        Some(rd) => percent_encoding::percent_decode_str(&rd.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned(),
        None => to,
    }
}

pub fn onboarding_landing(rd: &str) -> String {
    format!("/_headgate/onboarding?rd={}", enc(rd))
}

pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The `s` query value of a login redirect.
pub fn login_code(p: &Page) -> Option<String> {
    let loc = p.header("location")?;
    let u = Url::parse("http://x").unwrap().join(&loc).ok()?;
    if u.path() != "/admin/login" {
        return None;
    }
    u.query_pairs()
        .find(|(k, _)| k == "s")
        .map(|(_, v)| v.into_owned())
}

/// Start (with `rd`) → the rogue IdP's authorize (it redirects straight back) → callback; the callback's answer.
pub async fn rogue_sign_in(b: &Browser, site: &Site, rd: Option<&str>) -> Page {
    let start = match rd {
        Some(rd) => site.url(&format!("/admin/oidc/start?rd={}", enc(rd))),
        None => site.url("/admin/oidc/start"),
    };
    let to_idp = b.get(&start).await;
    assert_eq!(to_idp.status(), 302, "start: {}", to_idp.text());
    let back = b.get(to_idp.location().unwrap().as_str()).await;
    assert_eq!(back.status(), 302, "rogue authorize");
    b.get(back.location().unwrap().as_str()).await
}

/// Sign `sub` in at the rogue IdP with a verified `email` and the name "Name of <sub>"; the signed-in browser.
pub async fn rogue_person(
    site: &Site,
    rogue: &super::rogue::RogueIdp,
    sub: &str,
    email: &str,
) -> Browser {
    rogue.set_subject(sub);
    rogue.set_claim("email", email);
    rogue.set_claim("email_verified", true);
    rogue.set_claim("name", format!("Name of {sub}"));
    let b = Browser::new();
    let done = rogue_sign_in(&b, site, None).await;
    assert_eq!(done.status(), 302, "{}", done.text());
    b
}
