//! headgate in its default mode (the API-key bridge, where `spec/policy.md` is the only gate) in front of
//! the echo upstream, with the rogue IdP handing out roles through a role claim and the fake Headscale for
//! links, ownership questions and API-key sign-in. Shared by the policy-matrix, admission, own-rights and
//! proxy-corpora tests.

#![allow(dead_code)]

use crate::harness::browser::Browser;
use crate::harness::echo::{Echo, EchoRequest, Reply};
use crate::harness::fake_headscale::FakeHeadscale;
use crate::harness::headgate::Headgate;
use crate::harness::rogue::RogueIdp;
use crate::harness::stack::{Site, oidc_section};

/// The value of the bridge's Headplane session (the echo hands it out at `POST /admin/login`).
pub const BRIDGE_SESSION: &str = "_hp_auth=bridge-session-value";

pub struct Gated {
    pub site: Site,
    pub rogue: RogueIdp,
    pub hs: FakeHeadscale,
    pub echo: Echo,
    pub hg: Option<Headgate>,
}

/// Start the stack; `headplane_login` is `api_key` (the bridge) or `proxy_auth`.
pub fn start(headplane_login: &str) -> Gated {
    start_with(headplane_login, &[])
}

/// [`start`] with extra `[server]` lines.
pub fn start_with(headplane_login: &str, server: &[(&str, &str)]) -> Gated {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let hs = FakeHeadscale::start();
    let echo = Echo::builder()
        .reply(
            "/admin/login",
            Reply::status(302)
                .header("Location", "/admin/machines")
                .set_cookie(&format!("{BRIDGE_SESSION}; Path=/admin; SameSite=Lax")),
        )
        .start();
    let mut cfg = site.config(Some(&hs));
    for (k, v) in server {
        cfg = cfg.server(k, v);
    }
    let hg = cfg
        .section(format!(
            "[upstream]\nurl = \"{}\"\nheadplane_login = \"{headplane_login}\"",
            echo.url()
        ))
        .section(oidc_section(rogue.issuer(), "role_claim = \"role\"\n"))
        .start();
    Gated {
        site,
        rogue,
        hs,
        echo,
        hg: Some(hg),
    }
}

/// A signed-in principal: a person's browser or an API-key session's.
pub struct Principal {
    pub label: &'static str,
    pub browser: Browser,
    /// The session cookie pair (`headgate_session=…`), for raw requests.
    pub cookie: String,
    /// The Headscale user the person is linked to (by subject), when asked for.
    pub hs_user: Option<u64>,
}

impl Gated {
    pub fn url(&self, p: &str) -> String {
        self.site.url(p)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.site.port).into()
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.site.port)
    }

    pub fn hg(&self) -> &Headgate {
        self.hg.as_ref().expect("headgate running")
    }

    /// Requests the upstream received, without the bridge's own sign-ins.
    pub fn forwarded(&self) -> Vec<EchoRequest> {
        self.echo
            .requests()
            .into_iter()
            .filter(|r| r.path() != "/admin/login")
            .collect()
    }

    pub fn forwarded_count(&self) -> usize {
        self.forwarded().len()
    }

    /// The Headscale OIDC user `hs-<sub>` that a sign-in as `sub` links to, created when missing. headgate
    /// reuses Headscale's user list for 10 s, so create every user a test links before the first sign-in
    /// ([`Gated::prepare_links`]).
    pub fn headscale_user(&self, sub: &str) -> u64 {
        let name = format!("hs-{sub}");
        match self.hs.users().into_iter().find(|u| u.name == name) {
            Some(u) => u.id,
            None => self.hs.add_oidc_user(
                &name,
                self.rogue.issuer(),
                sub,
                &format!("{sub}@example.com"),
            ),
        }
    }

    pub fn prepare_links(&self, subs: &[&str]) {
        for s in subs {
            self.headscale_user(s);
        }
    }

    /// Sign a person in through the rogue IdP as `sub` with role claim `role` (`None`: no claim — the first
    /// sign-in becomes the owner). `link`: a Headscale OIDC user with this subject exists first, so the
    /// sign-in links to it. Checks the role headgate gave.
    pub async fn person(
        &self,
        label: &'static str,
        sub: &str,
        role: Option<&str>,
        expect_role: &str,
        link: bool,
    ) -> Principal {
        let email = format!("{sub}@example.com");
        let hs_user = link.then(|| self.headscale_user(sub));
        self.rogue.set_subject(sub);
        self.rogue.set_claim("email", email.as_str());
        self.rogue.set_claim("email_verified", true);
        self.rogue.set_claim("name", format!("Name of {sub}"));
        match role {
            Some(r) => self.rogue.set_claim("role", r),
            None => self.rogue.remove_claim("role"),
        }
        let b = Browser::new();
        let to_idp = b.get(self.url("/admin/oidc/start")).await;
        assert_eq!(to_idp.status(), 302, "{}", to_idp.text());
        let back = b.get(to_idp.location().unwrap().as_str()).await;
        let done = b.get(back.location().unwrap().as_str()).await;
        assert_eq!(done.status(), 302, "sign-in of {sub}: {}", done.text());
        let me = b.get(self.url("/_headgate/whoami")).await;
        assert_eq!(me.status(), 200, "{}", me.text());
        let me = me.json();
        assert_eq!(me["role"], expect_role, "{label}: {me}");
        if link {
            assert_eq!(
                me["headscale_user_id"].as_str().map(str::to_string),
                hs_user.map(|u| u.to_string()),
                "{label} linked: {me}"
            );
        }
        let cookie = format!(
            "headgate_session={}",
            b.cookie(&self.site.base(), "headgate_session")
                .expect("a session cookie")
        );
        Principal {
            label,
            browser: b,
            cookie,
            hs_user,
        }
    }

    /// An API-key session: the login page's API-key form with a key the fake Headscale lists.
    pub async fn api_key_session(&self) -> Principal {
        let key = self.hs.add_api_key(Some(
            time::OffsetDateTime::now_utc() + time::Duration::days(1),
        ));
        let b = Browser::new();
        let page = b.get(self.url("/admin/login")).await;
        assert_eq!(page.status(), 200, "{}", page.text());
        let mut form = page
            .forms()
            .into_iter()
            .find(|f| {
                f.get("api_key").is_some() || f.password_fields.iter().any(|p| p == "api_key")
            })
            .unwrap_or_else(|| panic!("no API-key form: {}", page.text()));
        form.set("api_key", &key);
        let r = b.submit(&page, &form, None).await;
        assert_eq!(r.status(), 303, "{}", r.text());
        let me = b.get(self.url("/_headgate/whoami")).await.json();
        assert_eq!(me["auth"], "api_key", "{me}");
        let cookie = format!(
            "headgate_session={}",
            b.cookie(&self.site.base(), "headgate_session")
                .expect("a session cookie")
        );
        Principal {
            label: "api_key",
            browser: b,
            cookie,
            hs_user: None,
        }
    }

    /// The seven roles (each linked to its own Headscale user) and an API-key session, in the column order
    /// of the policy tables: owner, admin, network_admin, it_admin, auditor, viewer, member, API key.
    pub async fn everyone(&self) -> Vec<Principal> {
        self.prepare_links(&[
            "p-owner",
            "p-admin",
            "p-network_admin",
            "p-it_admin",
            "p-auditor",
            "p-viewer",
            "p-member",
        ]);
        let mut v = vec![self.person("owner", "p-owner", None, "owner", true).await];
        for (label, role) in [
            ("admin", "admin"),
            ("network_admin", "network_admin"),
            ("it_admin", "it_admin"),
            ("auditor", "auditor"),
            ("viewer", "viewer"),
            ("member", "member"),
        ] {
            v.push(
                self.person(label, &format!("p-{label}"), Some(role), role, true)
                    .await,
            );
        }
        v.push(self.api_key_session().await);
        v
    }
}
