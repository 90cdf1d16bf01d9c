//! The gate in front of an upstream (Headplane 0.7 `proxy_auth` mode, against the echo upstream): identity
//! headers always set and never spoofable, signed-out answers, admission refusals that never reach the
//! upstream, the role check, and forms forwarded re-encoded.

use crate::harness::browser::Browser;
use crate::harness::echo::Echo;
use crate::harness::headgate::Headgate;
use crate::harness::rogue::RogueIdp;
use crate::harness::stack::{Site, oidc_section};

struct Env {
    site: Site,
    rogue: RogueIdp,
    echo: Echo,
    _hg: Headgate,
}

fn env() -> Env {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let echo = Echo::start();
    let hg = site
        .config(None)
        .section(format!(
            "[upstream]\nurl = \"{}\"\nheadplane_login = \"proxy_auth\"",
            echo.url()
        ))
        .section(oidc_section(rogue.issuer(), ""))
        .start();
    Env {
        site,
        rogue,
        echo,
        _hg: hg,
    }
}

impl Env {
    async fn person(&self, sub: &str, email: &str) -> Browser {
        crate::harness::stack::rogue_person(&self.site, &self.rogue, sub, email).await
    }
}

#[tokio::test]
async fn identity_headers_are_set_and_client_copies_never_arrive() {
    let e = env();
    let owner = e.person("owner-sub", "owner@example.com").await;
    let spoof = [
        ("Remote-User", "admin"),
        ("remote-user", "admin2"),
        ("Remote_User", "admin3"),
        ("X-Headgate-Role", "owner"),
        ("X-Headgate-Assertion", "eyJforged"),
        ("Remote-Email", "ceo@example.com"),
        ("Connection", "remote-user, x-headgate-role"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("Cookie", "_hp_auth=stolen"),
        ("Accept", "text/html"),
    ];
    let r = owner.get_with(e.site.url("/admin/machines"), &spoof).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let seen = e.echo.last().expect("the upstream got the request");
    assert_eq!(
        seen.header_all("remote-user"),
        vec!["owner-sub"],
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.header("remote-email"), Some("owner@example.com"));
    assert_eq!(seen.header("remote-name"), Some("Name of owner-sub"));
    assert_eq!(seen.header("x-headgate-role"), Some("owner"));
    assert_eq!(seen.header("x-headgate-auth"), Some("oidc"));
    assert_eq!(seen.header("x-headgate-headscale-user-id"), Some(""));
    for (name, _) in &seen.headers {
        assert!(
            !name.eq_ignore_ascii_case("remote_user"),
            "{:?}",
            seen.headers
        );
    }
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "untrusted X-Forwarded-For replaced"
    );
    let cookies = seen.header("cookie").unwrap_or("");
    assert!(
        !cookies.contains("_hp_auth") && !cookies.contains("headgate_"),
        "{cookies}"
    );
    assert_eq!(
        seen.header("host"),
        Some(format!("127.0.0.1:{}", e.site.port).as_str()),
        "Host preserved"
    );
    // The signed assertion replaces the forged one and verifies with the served JWKS for the upstream's audience.
    let token = seen
        .header("x-headgate-assertion")
        .expect("an assertion")
        .to_string();
    assert!(token != "eyJforged" && seen.header_all("x-headgate-assertion").len() == 1);
    let jwks = owner
        .get(e.site.url("/_headgate/jwks.json"))
        .await
        .text()
        .to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = headgate::assertion::verify(&jwks, &token, &e.site.base(), &e.echo.url(), now)
        .unwrap_or_else(|err| panic!("the assertion does not verify: {err:?}"));
    let c = serde_json::to_value(&claims).unwrap();
    assert_eq!(c["sub"], "owner-sub", "{c}");
    assert_eq!(c["role"], "owner", "{c}");
    // Signed-in answers are private.
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("no-store, private")
    );
}

#[tokio::test]
async fn signed_out_answers_and_nothing_reaches_the_upstream() {
    let e = env();
    let b = Browser::new();
    let nav = b
        .get_with(
            e.site.url("/admin/machines?x=1"),
            &[("accept", "text/html")],
        )
        .await;
    assert_eq!(nav.status(), 302);
    assert_eq!(
        nav.header("location").as_deref(),
        Some("/admin/login?rd=%2Fadmin%2Fmachines%3Fx%3D1")
    );
    let data = b.get(e.site.url("/admin/machines.data")).await;
    assert_eq!(data.status(), 202);
    assert_eq!(data.header("x-remix-response").as_deref(), Some("yes"));
    assert!(
        data.text().contains("SingleFetchRedirect"),
        "{}",
        data.text()
    );
    let api = b
        .get_with(
            e.site.url("/admin/machines"),
            &[("accept", "application/json")],
        )
        .await;
    assert_eq!(api.status(), 401);
    // A spoofed identity does not sign anyone in.
    let spoofed = b
        .get_with(
            e.site.url("/admin/machines"),
            &[("remote-user", "owner-sub"), ("accept", "text/html")],
        )
        .await;
    assert_eq!(spoofed.status(), 302);
    assert_eq!(e.echo.count(), 0, "the upstream saw a signed-out request");
}

#[tokio::test]
async fn admission_refusals_never_reach_the_upstream() {
    let e = env();
    let owner = e.person("owner-sub", "owner@example.com").await;
    // Sent byte for byte (an HTTP client library would normalise some of these before sending).
    let cookie = format!(
        "headgate_session={}",
        owner.cookie(&e.site.base(), "headgate_session").unwrap()
    );
    for path in [
        "/admin/USERS",
        "/admin/users/",
        "/admin/%2e%2e/users",
        "/admin/./users",
        "/admin/../admin/users",
        "/admin/assets\\..\\users",
        "/admin/assets%5C..%5Cusers",
        "/admin//users",
        "/admin/users;x=1",
        "/admin/us%65rs",
    ] {
        let status = raw_get(e.site.port, path, &cookie).await;
        assert_eq!(status, 400, "{path}");
    }
    let r = owner
        .request(
            reqwest::Method::PUT,
            &e.site.url("/admin/users"),
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(r.status(), 405);
    let r = owner
        .get_with(e.site.url("/admin/users"), &[("host", "evil.example")])
        .await;
    assert_eq!(r.status(), 421);
    assert_eq!(e.echo.count(), 0);
}

#[tokio::test]
async fn roles_are_enforced_and_forms_arrive_re_encoded() {
    let e = env();
    let owner = e.person("owner-sub", "owner@example.com").await;
    let member = e.person("member-sub", "member@example.com").await;
    let r = member
        .get_with(e.site.url("/admin/machines"), &[("accept", "text/html")])
        .await;
    assert_eq!(r.status(), 403);
    assert!(
        r.text().contains("read_machines") && r.text().contains("member"),
        "{}",
        r.text()
    );
    assert_eq!(e.echo.count(), 0);
    // The owner's form post arrives as exactly the fields decided on, urlencoded, in order.
    let r = owner
        .request(
            reqwest::Method::POST,
            &e.site.url("/admin/users"),
            Some(vec![
                ("action_id".into(), "create_user".into()),
                ("username".into(), "new user".into()),
            ]),
            &[("origin", &e.site.base())],
            None,
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let seen = e.echo.last().unwrap();
    assert_eq!(
        seen.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(seen.body_str(), "action_id=create_user&username=new+user");
    // A duplicated action_id is refused before the upstream.
    let before = e.echo.count();
    let r = owner
        .request(
            reqwest::Method::POST,
            &e.site.url("/admin/users"),
            Some(vec![
                ("action_id".into(), "create_user".into()),
                ("action_id".into(), "delete_user".into()),
            ]),
            &[("origin", &e.site.base())],
            None,
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(e.echo.count(), before);
    // An allowed state-changing request is audited (batched off the request path, within about a second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (code, out, err) = e._hg.config.run(&["audit", "--json"]);
        assert_eq!(code, 0, "{err}");
        if out.contains("POST /admin/users create_user") {
            assert!(out.contains("upstream 200"), "{out}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit record: {out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let _ = member;
}

#[tokio::test]
async fn identity_over_cleartext_http2() {
    let e = env();
    let owner = e.person("owner-sub", "owner@example.com").await;
    let cookie = owner.cookie(&e.site.base(), "headgate_session").unwrap();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(e.site.url("/admin/machines"))
        .header("cookie", format!("headgate_session={cookie}"))
        .header("remote-user", "spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let seen = e.echo.last().unwrap();
    assert_eq!(seen.header_all("remote-user"), vec!["owner-sub"]);
    assert_eq!(
        seen.header("host"),
        Some(format!("127.0.0.1:{}", e.site.port).as_str())
    );
}

/// A GET with the request target exactly as given; returns the status code.
async fn raw_get(port: u16, target: &str, cookie: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
