//! The forward-auth verdict endpoints, dialect by dialect (`spec/forward-auth.md`, `spec/policy.md` section 4,
//! S12): `/_headgate/auth/nginx`, `/_headgate/auth/forward` and `/_headgate/auth/envoy/<path>`, against
//! headgate in-process (so a test can make its store fail) with Headplane 0.7's rows and an echo upstream for
//! the proxy-mode comparisons. The test client plays the front proxy (loopback, trusted by default).

use reqwest::Method;

use crate::front_proxies::IDENTITY_HEADERS;
use crate::harness::browser::Browser;
use crate::harness::echo::Echo;
use crate::harness::inproc::InProcess;
use crate::harness::rogue::RogueIdp;
use crate::harness::stack::{enc, oidc_section};

const APP: &str = "app.example.com";

struct Env {
    hg: InProcess,
    rogue: RogueIdp,
    echo: Echo,
}

fn env_with(forward_auth: &str) -> Env {
    let rogue = RogueIdp::start();
    let echo = Echo::start();
    let hg = InProcess::start(&format!(
        "[upstream]\nurl = \"{}\"\nheadplane_login = \"proxy_auth\"\n\n[forward_auth]\nhosts = [\"{APP}\"]\n{forward_auth}\n\n{}",
        echo.url(),
        oidc_section(rogue.issuer(), "role_claim = \"role\"")
    ));
    Env { hg, rogue, echo }
}

fn env() -> Env {
    env_with("")
}

/// Which endpoint, and how it is told about the original request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum D {
    Nginx,
    Forward,
    Envoy,
}

const ALL: [D; 3] = [D::Nginx, D::Forward, D::Envoy];

impl Env {
    /// Sign in (the first person becomes owner; `role` is the IdP's role claim).
    async fn person(&self, sub: &str, role: &str) -> Browser {
        self.rogue.set_subject(sub);
        self.rogue.set_claim("email", format!("{sub}@example.com"));
        self.rogue.set_claim("email_verified", true);
        self.rogue.set_claim("name", format!("Name of {sub}"));
        self.rogue.set_claim("role", role);
        let b = Browser::new();
        let to_idp = b.get(self.hg.url("/admin/oidc/start")).await;
        let back = b.get(to_idp.location().unwrap().as_str()).await;
        let done = b.get(back.location().unwrap().as_str()).await;
        assert_eq!(done.status(), 302, "{}", done.text());
        b
    }

    /// Ask dialect `d` about `method target` on `host` (https, or http for headgate's own address), with
    /// the browser's cookies and `extra` headers. Sent byte for byte (an HTTP client library would normalise
    /// some of the targets Envoy's dialect carries in the request's own path).
    async fn ask(
        &self,
        b: &Browser,
        d: D,
        method: &str,
        target: &str,
        host: &str,
        extra: &[(&str, &str)],
    ) -> Answer {
        let scheme = if host.starts_with("127.0.0.1") {
            "http"
        } else {
            "https"
        };
        let mut h: Vec<(&str, &str)> = Vec::new();
        let url_header = format!("{scheme}://{host}{target}");
        let (verdict_method, path) = match d {
            D::Nginx => {
                h.extend([
                    ("x-original-uri", target),
                    ("x-original-url", url_header.as_str()),
                    ("x-original-method", method),
                ]);
                ("GET", "/_headgate/auth/nginx".to_string())
            }
            D::Forward => {
                h.extend([
                    ("x-forwarded-method", method),
                    ("x-forwarded-uri", target),
                    ("x-forwarded-host", host),
                    ("x-forwarded-proto", scheme),
                ]);
                ("GET", "/_headgate/auth/forward".to_string())
            }
            D::Envoy => {
                h.extend([("x-forwarded-host", host), ("x-forwarded-proto", scheme)]);
                (method, format!("/_headgate/auth/envoy{target}"))
            }
        };
        h.extend_from_slice(extra);
        raw(b, &self.hg, verdict_method, &path, &h).await
    }
}

/// A verdict's answer.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn status(&self) -> u16 {
        self.status
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers_all(name).into_iter().next()
    }
    fn headers_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
    fn text(&self) -> &str {
        &self.body
    }
}

/// One HTTP/1.1 request to headgate exactly as given, with the browser's headgate cookies.
async fn raw(
    b: &Browser,
    hg: &InProcess,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cookie = b
        .cookies()
        .iter()
        .map(|c| format!("{}={}", c.name, c.value))
        .collect::<Vec<_>>()
        .join("; ");
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        hg.addr
    );
    if !cookie.is_empty() {
        req.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = tokio::net::TcpStream::connect(hg.addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

fn nav() -> [(&'static str, &'static str); 1] {
    [("accept", "text/html")]
}

fn assert_no_2xx_unless_allowed(p: &Answer, what: &str) {
    assert!(
        !(200..300).contains(&p.status()) || p.status() == 200,
        "{what}: a {} is never an answer",
        p.status()
    );
}

#[tokio::test]
async fn allow_is_200_with_every_identity_header_and_the_hosts_assertion() {
    let e = env();
    let owner = e.person("owner-sub", "admin").await;
    let jwks = owner.get(e.hg.url("/_headgate/jwks.json")).await;
    for d in ALL {
        let r = e
            .ask(&owner, d, "GET", "/admin/machines?x=1", APP, &nav())
            .await;
        assert_eq!(r.status(), 200, "{d:?}: {}", r.text());
        for h in IDENTITY_HEADERS {
            assert_eq!(r.headers_all(h).len(), 1, "{d:?}: {h} set exactly once");
        }
        assert_eq!(r.header("remote-user").as_deref(), Some("owner-sub"));
        assert_eq!(
            r.header("remote-email").as_deref(),
            Some("owner-sub@example.com")
        );
        assert_eq!(r.header("x-headgate-role").as_deref(), Some("owner"));
        assert_eq!(r.header("x-headgate-auth").as_deref(), Some("oidc"));
        assert_eq!(
            r.header("x-headgate-headscale-user-id").as_deref(),
            Some("")
        );
        assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
        // The assertion's audience is the original host's origin, not headgate's or the upstream's.
        let token = r.header("x-headgate-assertion").unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = headgate::assertion::verify(
            jwks.text(),
            &token,
            &e.hg.base(),
            &format!("https://{APP}"),
            now,
        )
        .unwrap_or_else(|err| panic!("{d:?}: {err:?}"));
        assert_eq!(serde_json::to_value(&claims).unwrap()["sub"], "owner-sub");
        assert!(
            headgate::assertion::verify(jwks.text(), &token, &e.hg.base(), &e.echo.url(), now)
                .is_err()
        );
    }
    // A public row, signed out: 200 with every identity header present and empty.
    let anon = Browser::new();
    for d in ALL {
        let r = e
            .ask(&anon, d, "GET", "/admin/assets/index-1.js", APP, &[])
            .await;
        assert_eq!(r.status(), 200, "{d:?}");
        for h in IDENTITY_HEADERS {
            assert_eq!(r.headers_all(h), vec![String::new()], "{d:?}: {h}");
        }
    }
    // `/` is decided like `/admin/` (the application redirects it itself); headgate's own paths are not a
    // verdict's to give (the front proxy routes them to headgate).
    for d in ALL {
        assert_eq!(
            e.ask(&owner, d, "GET", "/", APP, &nav()).await.status(),
            200
        );
        let r = e.ask(&anon, d, "GET", "/admin/login", APP, &nav()).await;
        assert_eq!(r.status(), 403, "{d:?}");
    }
    assert_eq!(e.echo.count(), 0, "a verdict never forwards anything");
}

#[tokio::test]
async fn signed_out_answers_in_each_dialects_codes() {
    let e = env();
    let b = Browser::new();
    let login_for = |rd: &str| format!("{}/admin/login?rd={}", e.hg.base(), enc(rd));
    for d in ALL {
        // A navigation is sent to the sign-in page: nginx 401 + Location (a 3xx would be nginx's 500),
        // the others 302, or 303 after a form post.
        let r = e
            .ask(&b, d, "GET", "/admin/machines?x=1", APP, &nav())
            .await;
        let want = if d == D::Nginx { 401 } else { 302 };
        assert_eq!(r.status(), want, "{d:?}: {}", r.text());
        assert_eq!(
            r.header("location"),
            Some(login_for(&format!("https://{APP}/admin/machines?x=1"))),
            "{d:?}: back to the original host after sign-in"
        );
        let r = e.ask(&b, d, "POST", "/admin/users", APP, &nav()).await;
        let want = if d == D::Nginx { 401 } else { 303 };
        assert_eq!(r.status(), want, "{d:?}");
        assert!(r.header("location").is_some(), "{d:?}");
        // On headgate's own host the return target is a path.
        let own = e.hg.addr.to_string();
        let r = e.ask(&b, d, "GET", "/admin/dns", &own, &nav()).await;
        assert_eq!(r.header("location"), Some(login_for("/admin/dns")), "{d:?}");
        // API calls and Headplane's data fetches: 401, never the proxy's 202 single-fetch redirect.
        for (target, headers) in [
            ("/admin/machines", vec![("accept", "application/json")]),
            (
                "/admin/machines",
                vec![("x-requested-with", "XMLHttpRequest")],
            ),
            ("/admin/machines.data", vec![("accept", "text/html")]),
            ("/admin/_root.data", vec![]),
        ] {
            let r = e.ask(&b, d, "GET", target, APP, &headers).await;
            assert_eq!(r.status(), 401, "{d:?} {target} {headers:?}");
            assert_eq!(r.header("location"), None, "{d:?} {target}");
            assert_no_2xx_unless_allowed(&r, target);
        }
    }
    // The proxy answers the same data fetch with Headplane's 202: a verdict must not.
    let r = b.get(e.hg.url("/admin/machines.data")).await;
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn forbidden_is_403_for_every_dialect() {
    let e = env();
    let _owner = e.person("owner-sub", "admin").await;
    let member = e.person("member-sub", "member").await;
    let viewer = e.person("viewer-sub", "viewer").await;
    for d in ALL {
        for (who, target) in [
            (&member, "/admin/machines"),
            (&member, "/admin/"),
            (&member, "/admin/machines.data"),
            // The proxy redirects own-key people to headgate's key page; a verdict never redirects.
            (&viewer, "/admin/settings/auth-keys"),
            (&viewer, "/admin/api/info"),
        ] {
            let r = e.ask(who, d, "GET", target, APP, &nav()).await;
            assert_eq!(r.status(), 403, "{d:?} {target}: {}", r.text());
            assert_eq!(
                r.header("remote-user"),
                None,
                "{d:?}: no identity on a deny"
            );
        }
        // Admission refusals are 403 here (400/405/421 on the proxy).
        for (method, target) in [("DELETE", "/admin/users"), ("OPTIONS", "/admin/")] {
            let r = e.ask(&viewer, d, method, target, APP, &nav()).await;
            assert_eq!(r.status(), 403, "{d:?} {method} {target}");
        }
    }
}

#[tokio::test]
async fn a_failing_store_is_a_5xx_never_an_allow() {
    let e = env();
    let owner = e.person("owner-sub", "admin").await;
    for d in ALL {
        assert_eq!(
            e.ask(&owner, d, "GET", "/admin/machines", APP, &nav())
                .await
                .status(),
            200
        );
    }
    e.hg.store.fail_reads_for_test(true);
    for d in ALL {
        for target in ["/admin/machines", "/admin/machines.data", "/admin/"] {
            let r = e.ask(&owner, d, "GET", target, APP, &nav()).await;
            assert!(
                (500..600).contains(&r.status()),
                "{d:?} {target}: {} (fail closed)",
                r.status()
            );
            assert_eq!(r.header("remote-user"), None);
        }
    }
    e.hg.store.fail_reads_for_test(false);
    let r = e
        .ask(&owner, D::Forward, "GET", "/admin/machines", APP, &nav())
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn an_untrusted_peer_is_refused_whatever_it_says() {
    // Only 10.0.0.0/8 may ask: the test client (loopback) is not a front proxy here.
    let e = env_with("trusted_proxies = [\"10.0.0.0/8\"]");
    let b = Browser::new();
    for d in ALL {
        // A public row would be a 200 for a trusted proxy: the spoofed description is never believed.
        let r = e
            .ask(&b, d, "GET", "/admin/assets/index-1.js", APP, &[])
            .await;
        assert_eq!(r.status(), 403, "{d:?}: {}", r.text());
        assert_eq!(r.header("remote-user"), None);
    }
    // The default (loopback) trusts the same request.
    let e = env();
    let r = e
        .ask(&b, D::Forward, "GET", "/admin/assets/index-1.js", APP, &[])
        .await;
    assert_eq!(r.status(), 200);
}

type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16);

#[tokio::test]
async fn a_missing_original_request_is_500_and_contradictions_are_403() {
    let e = env();
    let owner = e.person("owner-sub", "admin").await;
    let host = ("x-forwarded-host", APP);
    // (endpoint, method, headers, status)
    let cases: Vec<Case> = vec![
        // A trusted proxy that does not say what it asks about: its configuration is broken.
        (
            "/_headgate/auth/nginx",
            "GET",
            vec![("x-original-method", "GET"), host],
            500,
        ),
        (
            "/_headgate/auth/nginx",
            "GET",
            vec![("x-original-uri", "/admin/machines"), host],
            500,
        ),
        (
            "/_headgate/auth/forward",
            "GET",
            vec![("x-forwarded-method", "GET"), host],
            500,
        ),
        (
            "/_headgate/auth/forward",
            "GET",
            vec![("x-forwarded-uri", "/admin/machines"), host],
            500,
        ),
        ("/_headgate/auth/envoy", "GET", vec![host], 500),
        // X-Original-URI and X-Original-URL disagreeing: 403, whichever would allow.
        (
            "/_headgate/auth/nginx",
            "GET",
            vec![
                ("x-original-method", "GET"),
                ("x-original-uri", "/admin/assets/index-1.js"),
                ("x-original-url", "https://app.example.com/admin/machines"),
            ],
            403,
        ),
        (
            "/_headgate/auth/nginx",
            "GET",
            vec![
                ("x-original-method", "GET"),
                ("x-original-uri", "/admin/machines"),
                (
                    "x-original-url",
                    "https://app.example.com/admin/machines?x=1",
                ),
            ],
            403,
        ),
        // Agreeing: decided.
        (
            "/_headgate/auth/nginx",
            "GET",
            vec![
                ("x-original-method", "GET"),
                ("x-original-uri", "/admin/machines?x=1"),
                (
                    "x-original-url",
                    "https://app.example.com/admin/machines?x=1",
                ),
            ],
            200,
        ),
        // ingress-nginx sends only X-Original-URL.
        (
            "/_headgate/auth/nginx",
            "GET",
            vec![
                ("x-original-method", "GET"),
                ("x-original-url", "https://app.example.com/admin/machines"),
            ],
            200,
        ),
        // A repeated description is refused, never one of them picked.
        (
            "/_headgate/auth/forward",
            "GET",
            vec![
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/admin/assets/index-1.js"),
                ("x-forwarded-uri", "/admin/machines"),
                host,
            ],
            403,
        ),
    ];
    for (path, method, headers, want) in cases {
        let r = raw(&owner, &e.hg, method, path, &headers).await;
        assert_eq!(r.status(), want, "{path} {headers:?}: {}", r.text());
    }
}

#[tokio::test]
async fn only_listed_hosts_are_protected() {
    let e = env();
    let owner = e.person("owner-sub", "admin").await;
    let own = e.hg.addr.to_string();
    for d in ALL {
        for (host, want) in [
            (APP, 200),
            ("APP.Example.COM", 200),
            ("app.example.com:80", 200),
            (own.as_str(), 200),
            ("evil.example", 403),
            ("app.example.com:8443", 403),
            ("app.example.com.", 403),
            ("app.example.com.evil.example", 403),
            ("evil.example@app.example.com", 403),
        ] {
            let r = e
                .ask(&owner, d, "GET", "/admin/machines", host, &nav())
                .await;
            assert_eq!(r.status(), want, "{d:?} {host}");
        }
    }
}

#[tokio::test]
async fn a_post_to_an_action_row_needs_the_union_of_its_write_capabilities() {
    let e = env();
    let owner = e.person("owner-sub", "admin").await;
    let admin = e.person("admin-sub", "admin").await;
    // it_admin has write_machines and write_users but not use_tags: enough for most machine actions on the
    // proxy (which reads the form), not for the union forward-auth must require without a body.
    let it = e.person("it-sub", "it_admin").await;
    let net = e.person("net-sub", "network_admin").await;
    for d in ALL {
        for (who, name, target, want) in [
            (&admin, "admin", "/admin/machines", 200),
            (&it, "it_admin", "/admin/machines", 403),
            (&it, "it_admin", "/admin/machines/7", 403),
            (&net, "network_admin", "/admin/dns", 200),
            (&it, "it_admin", "/admin/dns", 403),
            // In proxy_auth mode the users row's actions include transfer_ownership: only the owner has the
            // union.
            (&owner, "owner", "/admin/users", 200),
            (&admin, "admin", "/admin/users", 403),
            (&it, "it_admin", "/admin/users", 403),
            (&owner, "owner", "/admin/users?index", 200),
            // On a form post only `index` and `_routes` may be in the query.
            (&owner, "owner", "/admin/users?x=1", 403),
            (&owner, "owner", "/admin/api/info", 403),
        ] {
            let r = e.ask(who, d, "POST", target, APP, &nav()).await;
            assert_eq!(r.status(), want, "{d:?} {name} POST {target}: {}", r.text());
        }
    }
    // On the proxy, the form tells: it_admin may rename a machine (write_machines).
    let r = it
        .request(
            Method::POST,
            &e.hg.url("/admin/machines"),
            Some(vec![
                ("action_id".into(), "rename".into()),
                ("node_id".into(), "7".into()),
                ("name".into(), "x".into()),
            ]),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text());
}

/// The raw status of `GET target` on the proxy (sent byte for byte).
async fn proxy_status(e: &Env, target: &str, cookie: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(e.hg.addr).await.unwrap();
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nAccept: text/html\r\nConnection: close\r\n\r\n",
        e.hg.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn canonicalisation_is_decided_as_on_the_proxy() {
    let e = env();
    let owner = e.person("owner-sub", "admin").await;
    let cookie = format!(
        "headgate_session={}",
        owner.cookie(&e.hg.base(), "headgate_session").unwrap()
    );
    let own = e.hg.addr.to_string();
    // Every spelling that is not the canonical one is refused on the proxy (4xx) and by every verdict
    // (403), so no spelling decides differently from the bytes the upstream would serve.
    for target in [
        "/admin/USERS",
        "/admin/users/",
        "/admin/%2e%2e/users",
        "/admin/%2E%2E/users",
        "/admin/./users",
        "/admin/../admin/users",
        "/admin/assets/../users",
        "/admin/assets\\..\\users",
        "/admin/assets%5C..%5Cusers",
        "/admin//users",
        "//admin/users",
        "/admin%2Fusers",
        "/admin/users%2F",
        "/admin/users.",
        "/admin/users;x=1",
        "/admin/users%23x",
        "/admin/us%65rs",
        "/admin/assets/x/%2e%2e/%2e%2e/users",
    ] {
        let p = proxy_status(&e, target, &cookie).await;
        assert!((400..500).contains(&p), "proxy {target}: {p}");
        for d in ALL {
            let r = e.ask(&owner, d, "GET", target, &own, &nav()).await;
            assert_eq!(r.status(), 403, "{d:?} {target}");
        }
    }
    // A raw `#`: the proxy's HTTP parser drops the fragment, so it decides and forwards `/admin/users`
    // exactly, and so does Envoy's dialect (the original path is the verdict request's own, parsed alike;
    // Envoy never forwards a fragment). A URI in a header (nginx, forward) could reach an upstream with the
    // `#` in it: refused.
    assert_eq!(proxy_status(&e, "/admin/users#x", &cookie).await, 200);
    assert_eq!(e.echo.last().unwrap().uri, "/admin/users");
    for d in ALL {
        let r = e
            .ask(&owner, d, "GET", "/admin/users#x", &own, &nav())
            .await;
        let want = if d == D::Envoy { 200 } else { 403 };
        assert_eq!(r.status(), want, "{d:?}");
    }
    // The query is not part of the path that decides; the canonical spelling is decided alike.
    let anon = Browser::new();
    for target in [
        "/admin/assets/index-1.js?x=/../../users",
        "/admin/assets/A.js",
    ] {
        assert_eq!(proxy_status(&e, target, "").await, 200, "proxy {target}");
        for d in ALL {
            let r = e.ask(&anon, d, "GET", target, &own, &[]).await;
            assert_eq!(r.status(), 200, "{d:?} {target}");
        }
    }
    for target in ["/admin/users?x=/../../assets/a.js", "/admin/users"] {
        assert_eq!(proxy_status(&e, target, "").await, 302, "proxy {target}");
        for d in ALL {
            let r = e.ask(&anon, d, "GET", target, &own, &nav()).await;
            assert!(
                matches!(r.status(), 401 | 302),
                "{d:?} {target}: {}",
                r.status()
            );
        }
    }
}

/// ingress-nginx's sign-in URL: `auth-signin` + `?rd=<scheme>://<host><escaped request URI>` (nginx's
/// `set_escape_uri`: everything but unreserved characters escaped).
fn ingress_rd(scheme_host: &str, request_uri: &str) -> String {
    let escaped: String = request_uri
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{scheme_host}{escaped}")
}

#[tokio::test]
async fn ingress_nginx_rd_round_trips_and_open_redirects_are_refused() {
    let e = env();
    let _owner = e.person("owner-sub", "admin").await;
    e.rogue.set_subject("ada");
    e.rogue.set_claim("role", "admin");
    // The original page on headgate's own host, and on a protected host.
    for (scheme_host, uri, landing) in [
        (
            e.hg.base(),
            "/admin/machines?x=1&y=%2F",
            "/admin/machines?x=1&y=%2F".to_string(),
        ),
        (
            format!("https://{APP}"),
            "/admin/users",
            format!("https://{APP}/admin/users"),
        ),
    ] {
        let b = Browser::new();
        let login = e.hg.url(&format!(
            "/admin/login?rd={}",
            ingress_rd(&scheme_host, uri)
        ));
        let to_start = b.get(&login).await;
        assert_eq!(to_start.status(), 302, "{}", to_start.text());
        let to_idp = b.follow_once(&to_start).await;
        let back = b.get(to_idp.location().unwrap().as_str()).await;
        let done = b.get(back.location().unwrap().as_str()).await;
        assert_eq!(done.status(), 302);
        let to = done.header("location").unwrap();
        assert_eq!(to, landing, "after sign-in, back on the original page");
    }
    // Class 1: every open-redirect vector sent the ingress way (and fully escaped) falls back to /admin/.
    let b = Browser::new();
    let to_default = "/admin/oidc/start?rd=%2Fadmin%2F";
    let vectors = [
        "//evil.example",
        "/\\evil.example",
        "/ /evil.example",
        "/\t/evil.example",
        "/\x0b/evil.example",
        "/\n/evil.example",
        "/\r/evil.example",
        "/\t\t /evil.example",
        "/./\\evil.example",
        "/./../../\\evil.example",
        "https://evil.example",
        "https:\\\\evil.example",
        "https://app.example.com@evil.example",
        "https://app.example.com.evil.example",
        "https://evilapp.example.com",
        "https://app.example.com:badport",
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "%2F%2Fevil.example",
        "HTTPS://EVIL.EXAMPLE",
        "/admin/oidc/start?rd=//evil.example",
        "/admin/login?rd=%2Fadmin%2Flogin%3Frd%3Dhttps%3A%2F%2Fevil.example",
    ];
    for v in vectors {
        // The ingress way: scheme and host as they are, the rest escaped.
        let ingress = match v.find("://") {
            Some(i) => {
                let end = v[i + 3..].find('/').map(|j| i + 3 + j).unwrap_or(v.len());
                ingress_rd(&v[..end], &v[end..])
            }
            None => ingress_rd("", v),
        };
        for rd in [ingress, enc(v)] {
            let r = b.get(e.hg.url(&format!("/admin/login?rd={rd}"))).await;
            assert_eq!(r.status(), 302, "{v:?} ({rd}): {}", r.text());
            assert_eq!(
                r.header("location").as_deref(),
                Some(to_default),
                "{v:?} sent as rd={rd}"
            );
        }
    }
}
