//! Forward-auth behind real front proxies: Debian's nginx (`auth_request` → `/_headgate/auth/nginx`,
//! `error_page 401` → the sign-in page) and Caddy (`forward_auth` → `/_headgate/auth/forward`), each run with
//! the exact example configuration from `examples/`, in front of the echo upstream (playing Headplane). And
//! the examples that cannot run here (ingress-nginx, Traefik, Envoy), checked for what every front proxy must
//! do: route headgate's own paths to headgate, ask the right endpoint, clear the client's identity headers
//! and hand on every one of headgate's.

use serde_json::Value;

use crate::harness::browser::Browser;
use crate::harness::echo::Echo;
use crate::harness::free_port;
use crate::harness::front::{FrontProxy, example};
use crate::harness::headgate::Headgate;
use crate::harness::rogue::RogueIdp;
use crate::harness::stack::{Site, oidc_section};

/// Every identity header a 200 verdict sets (DESIGN.md "Identity headers").
pub const IDENTITY_HEADERS: [&str; 9] = [
    "remote-user",
    "remote-email",
    "remote-name",
    "remote-picture",
    "x-headgate-role",
    "x-headgate-headscale-user-id",
    "x-headgate-headscale-user",
    "x-headgate-auth",
    "x-headgate-assertion",
];

/// headgate's own paths a front proxy must route to headgate (not through the verdict).
const HEADGATE_PATHS: [&str; 7] = [
    "/admin/login",
    "/admin/login.data",
    "/admin/logout",
    "/admin/logout.data",
    "/admin/oidc/start",
    "/admin/oidc/callback",
    "/_headgate/",
];

struct Env {
    front: FrontProxy,
    echo: Echo,
    rogue: RogueIdp,
    hg: Headgate,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Nginx,
    Caddy,
}

/// headgate (forward-auth only, Headplane 0.7 rows) behind the front proxy, whose address is the public one.
fn env(kind: Kind) -> Env {
    let rogue = RogueIdp::start();
    let echo = Echo::start();
    let site = Site::new();
    let front_port = free_port();
    let public = format!("http://127.0.0.1:{front_port}");
    let hg = site
        .config(None)
        .server("base_url", &format!("\"{public}\""))
        .section("[upstream]\nheadplane_login = \"proxy_auth\"")
        .section(oidc_section(rogue.issuer(), "role_claim = \"role\""))
        .start();
    let headgate = format!("127.0.0.1:{}", site.port);
    let upstream = echo.addr().to_string();
    let front = match kind {
        Kind::Nginx => FrontProxy::nginx(front_port, &headgate, &upstream),
        Kind::Caddy => FrontProxy::caddy(front_port, &headgate, &upstream),
    };
    Env {
        front,
        echo,
        rogue,
        hg,
    }
}

const SPOOFED: [(&str, &str); 6] = [
    ("Remote-User", "admin"),
    ("Remote-Email", "ceo@example.com"),
    ("X-Headgate-Role", "owner"),
    ("remote-name", "Spoofed Name"),
    ("X-Headgate-Headscale-User-Id", "1"),
    ("X-Headgate-Assertion", "eyJforged"),
];

async fn front_proxy_flow(kind: Kind) {
    let e = env(kind);
    let name = e.front.name;
    let nav = [("accept", "text/html")];

    // Signed out: a browser is sent to the sign-in page (nginx: headgate's 401 + Location, turned into a
    // redirect by error_page 401; Caddy: headgate's 302 passed on), spoofed identity headers or not.
    let b = Browser::new();
    let mut with_spoof: Vec<(&str, &str)> = SPOOFED.to_vec();
    with_spoof.push(("accept", "text/html"));
    let r = b
        .get_with(e.front.url("/admin/machines?x=1"), &with_spoof)
        .await;
    assert_eq!(r.status(), 302, "{name}: {}", r.text());
    assert_eq!(
        r.header("location").as_deref(),
        Some(
            format!(
                "{}/admin/login?rd=%2Fadmin%2Fmachines%3Fx%3D1",
                e.front.base()
            )
            .as_str()
        ),
        "{name}"
    );
    // An API call and a data fetch get a bare 401.
    let r = b
        .get_with(
            e.front.url("/admin/machines"),
            &[("accept", "application/json")],
        )
        .await;
    assert_eq!(r.status(), 401, "{name}");
    assert_eq!(r.header("location"), None, "{name}");
    let r = b.get(e.front.url("/admin/machines.data")).await;
    assert_eq!(r.status(), 401, "{name}");
    // The verdict endpoints are the front proxy's, not the client's.
    let r = b.get(e.front.url("/_headgate/auth/forward")).await;
    assert_eq!(r.status(), 404, "{name}");
    assert_eq!(
        e.echo.count(),
        0,
        "{name}: the upstream saw a signed-out request"
    );

    // Sign in through the front proxy (login page → OIDC start → IdP → callback), landing on the page.
    e.rogue.set_subject("admin-sub");
    e.rogue.set_claim("email", "admin@example.com");
    e.rogue.set_claim("email_verified", true);
    e.rogue.set_claim("name", "Ada Admin");
    e.rogue.set_claim("role", "admin");
    // From here on the browser navigates (as a browser does, with Accept: text/html).
    b.set_default_header("accept", "text/html");
    let landed = b.navigate(e.front.url("/admin/machines?x=1")).await;
    assert_eq!(landed.status(), 200, "{name}: {}", landed.text());
    assert_eq!(
        landed.url.as_str(),
        e.front.url("/admin/machines?x=1"),
        "{name}: back on the original page"
    );
    let seen = e.echo.last().expect("the upstream was reached");
    assert_eq!(seen.uri, "/admin/machines?x=1");
    assert_eq!(seen.header("remote-user"), Some("admin-sub"), "{name}");
    assert_eq!(seen.header("remote-email"), Some("admin@example.com"));
    assert_eq!(seen.header("remote-name"), Some("Ada Admin"));
    assert_eq!(
        seen.header("x-headgate-role"),
        Some("owner"),
        "the first person is the owner"
    );
    assert_eq!(seen.header("x-headgate-auth"), Some("oidc"));

    // Client-sent identity headers never reach the upstream: headgate's replace them, and the ones headgate
    // left empty are gone (Caddy and nginx spell an empty value differently; neither passes the client's).
    let mut spoof: Vec<(&str, &str)> = SPOOFED.to_vec();
    spoof.extend([
        ("accept", "text/html"),
        ("X-Original-URI", "/admin/assets/x.js"),
    ]);
    let r = b.get_with(e.front.url("/admin/machines"), &spoof).await;
    assert_eq!(r.status(), 200, "{name}: {}", r.text());
    let seen = e.echo.last().unwrap();
    assert_eq!(
        seen.header_all("remote-user"),
        vec!["admin-sub"],
        "{name}: {:?}",
        seen.headers
    );
    assert_eq!(seen.header_all("remote-email"), vec!["admin@example.com"]);
    assert_eq!(seen.header_all("x-headgate-role"), vec!["owner"]);
    assert_eq!(seen.header_all("remote-name"), vec!["Ada Admin"]);
    for empty in ["x-headgate-headscale-user-id", "remote-picture"] {
        assert!(
            seen.header_all(empty).iter().all(|v| v.is_empty()),
            "{name}: {empty}: {:?}",
            seen.headers
        );
    }
    // The assertion is headgate's, for the public origin.
    let token = seen.header("x-headgate-assertion").expect("an assertion");
    assert_ne!(token, "eyJforged");
    let jwks = b.get(e.front.url("/_headgate/jwks.json")).await;
    assert_eq!(
        jwks.status(),
        200,
        "{name}: headgate's pages are routed to it"
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims =
        headgate::assertion::verify(jwks.text(), token, &e.front.base(), &e.front.base(), now)
            .unwrap_or_else(|err| panic!("{name}: the assertion does not verify: {err:?}"));
    assert_eq!(serde_json::to_value(&claims).unwrap()["sub"], "admin-sub");

    // A form post is decided without its body (the union of the page's actions) and reaches the upstream
    // with its body intact.
    let r = b
        .post_form(
            e.front.url("/admin/dns"),
            &[("action_id", "add_ns"), ("ns", "1.1.1.1")],
        )
        .await;
    assert_eq!(r.status(), 200, "{name}: {}", r.text());
    let seen = e.echo.last().unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str()),
        ("POST", "/admin/dns")
    );
    assert_eq!(seen.body_str(), "action_id=add_ns&ns=1.1.1.1", "{name}");
    assert_eq!(seen.header("remote-user"), Some("admin-sub"));

    // Forbidden: a signed-in member without read_machines gets 403 and the upstream sees nothing.
    e.rogue.set_subject("member-sub");
    e.rogue.set_claim("email", "member@example.com");
    e.rogue.set_claim("role", "member");
    let m = Browser::new();
    let to_idp = m.get(e.front.url("/admin/oidc/start")).await;
    let back = m.get(to_idp.location().unwrap().as_str()).await;
    let done = m.get(back.location().unwrap().as_str()).await;
    assert_eq!(done.status(), 302, "{name}: {}", done.text());
    let before = e.echo.count();
    let r = m.get_with(e.front.url("/admin/machines"), &nav).await;
    assert_eq!(r.status(), 403, "{name}: {}", r.text());
    let r = m
        .get_with(e.front.url("/admin/machines"), &with_spoof)
        .await;
    assert_eq!(r.status(), 403, "{name}: spoofed headers change nothing");
    let r = m
        .post_form(
            e.front.url("/admin/dns"),
            &[("action_id", "add_ns"), ("ns", "1.1.1.1")],
        )
        .await;
    assert_eq!(r.status(), 403, "{name}: {}", r.text());
    assert_eq!(
        e.echo.count(),
        before,
        "{name}: a forbidden request reached the upstream"
    );

    // Signing out through the front proxy ends it.
    let r = b.post_form(e.front.url("/admin/logout"), &[]).await;
    assert!(
        r.status() < 400,
        "{name}: logout: {} {}",
        r.status(),
        r.text()
    );
    let r = b.get_with(e.front.url("/admin/machines"), &nav).await;
    assert_eq!(r.status(), 302, "{name}: signed out again");
    let _ = &e.hg;
}

#[tokio::test]
async fn real_nginx_with_the_example_config() {
    front_proxy_flow(Kind::Nginx).await;
}

#[tokio::test]
async fn real_caddy_with_the_example_config() {
    front_proxy_flow(Kind::Caddy).await;
}

// ---- the examples that cannot run here ------------------------------------------------------------------------

fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = example(rel);
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc)
            .unwrap_or_else(|e| panic!("examples/{rel} is not valid YAML: {e}"));
        if !v.is_null() {
            out.push(v);
        }
    }
    assert!(!out.is_empty(), "examples/{rel} is empty");
    out
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        Value::String(s) => s.split(',').map(|x| x.trim().to_string()).collect(),
        _ => Vec::new(),
    }
}

fn lower(v: Vec<String>) -> Vec<String> {
    v.into_iter().map(|s| s.to_ascii_lowercase()).collect()
}

fn assert_every_identity_header(listed: &[String], what: &str) {
    for h in IDENTITY_HEADERS {
        assert!(
            listed.iter().any(|l| l.eq_ignore_ascii_case(h)),
            "{what} does not hand on {h}: {listed:?}"
        );
    }
}

/// Traefik rule text routes every one of headgate's paths and keeps the verdict endpoints out.
fn assert_routes_headgate_paths(rule: &str, what: &str) {
    for p in HEADGATE_PATHS {
        let call = if p.ends_with('/') {
            format!("PathPrefix(`{p}`)")
        } else {
            format!("Path(`{p}`)")
        };
        assert!(
            rule.contains(&call),
            "{what}: {p} is not routed to headgate: {rule}"
        );
    }
    assert!(
        rule.contains("!PathPrefix(`/_headgate/auth/`)"),
        "{what}: the verdict endpoints must not be routed to headgate from outside: {rule}"
    );
}

#[test]
fn traefik_file_provider_example() {
    let docs = yaml_docs("traefik/dynamic.yaml");
    let http = &docs[0]["http"];
    let mw = &http["middlewares"];
    let fa = &mw["headgate"]["forwardAuth"];
    let address = fa["address"].as_str().expect("forwardAuth.address");
    assert!(address.ends_with("/_headgate/auth/forward"), "{address}");
    // Never trust the client's X-Forwarded-* (the one thing people get wrong besides authResponseHeaders).
    assert!(
        fa.get("trustForwardHeader")
            .is_none_or(|v| v == &Value::Bool(false)),
        "{fa}"
    );
    assert_every_identity_header(&strings(&fa["authResponseHeaders"]), "authResponseHeaders");
    // Underscore spellings (which authResponseHeaders does not match) are removed before the check.
    let clear = &mw["headgate-clear-identity"]["headers"]["customRequestHeaders"];
    for h in ["Remote_User", "Remote_Email", "X_Headgate_Role"] {
        assert_eq!(clear[h], "", "{h} is cleared: {clear}");
    }
    let routers = &http["routers"];
    let app = &routers["headplane"];
    assert_eq!(
        lower(strings(&app["middlewares"])),
        vec!["headgate-clear-identity", "headgate"],
        "the app router clears, then asks headgate"
    );
    let own = &routers["headgate"];
    assert_routes_headgate_paths(own["rule"].as_str().unwrap(), "traefik/dynamic.yaml");
    assert!(
        own.get("middlewares").is_none(),
        "headgate's own paths need no verdict"
    );
    assert!(
        own["priority"].as_i64().unwrap_or(0) > app["priority"].as_i64().unwrap_or(0),
        "headgate's router must win over the app's"
    );
    let services = &http["services"];
    assert!(services["headgate"].is_object() && services["headplane"].is_object());
}

#[test]
fn traefik_kubernetes_crd_example() {
    let docs = yaml_docs("traefik/kubernetes.yaml");
    let kind = |k: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == k && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {k} {name} in traefik/kubernetes.yaml"))
            .clone()
    };
    let fa = kind("Middleware", "headgate")["spec"]["forwardAuth"].clone();
    assert!(
        fa["address"]
            .as_str()
            .unwrap()
            .ends_with("/_headgate/auth/forward")
    );
    assert!(
        fa.get("trustForwardHeader")
            .is_none_or(|v| v == &Value::Bool(false))
    );
    assert_every_identity_header(&strings(&fa["authResponseHeaders"]), "authResponseHeaders");
    let clear =
        kind("Middleware", "headgate-clear-identity")["spec"]["headers"]["customRequestHeaders"]
            .clone();
    assert_eq!(clear["Remote_User"], "");
    let route = kind("IngressRoute", "headplane");
    let routes = route["spec"]["routes"].as_array().unwrap();
    let own = routes
        .iter()
        .find(|r| r["services"][0]["name"] == "headgate")
        .expect("a route to headgate");
    assert_routes_headgate_paths(own["match"].as_str().unwrap(), "traefik/kubernetes.yaml");
    assert!(own.get("middlewares").is_none());
    let app = routes
        .iter()
        .find(|r| r["services"][0]["name"] == "headplane")
        .expect("a route to headplane");
    let mws: Vec<String> = app["middlewares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(mws, vec!["headgate-clear-identity", "headgate"]);
}

#[test]
fn ingress_nginx_example() {
    let docs = yaml_docs("ingress-nginx/ingress.yaml");
    let by_name = |n: &str| {
        docs.iter()
            .find(|d| d["kind"] == "Ingress" && d["metadata"]["name"] == n)
            .unwrap_or_else(|| panic!("no Ingress {n}"))
            .clone()
    };
    let app = by_name("headplane");
    let a = &app["metadata"]["annotations"];
    let url = a["nginx.ingress.kubernetes.io/auth-url"].as_str().unwrap();
    assert!(url.ends_with("/_headgate/auth/nginx"), "{url}");
    // ingress-nginx appends ?rd=<scheme>://<host><escaped uri> to the sign-in URL: headgate's login page takes it.
    let signin = a["nginx.ingress.kubernetes.io/auth-signin"]
        .as_str()
        .unwrap();
    assert!(
        signin.ends_with("/admin/login") && !signin.contains('?'),
        "{signin}"
    );
    // auth-response-headers become proxy_set_header lines: listing all of them replaces the client's copies.
    assert_every_identity_header(
        &strings(&a["nginx.ingress.kubernetes.io/auth-response-headers"]),
        "auth-response-headers",
    );
    // headgate's own paths, without the verdict, on the same host.
    let own = by_name("headgate");
    assert!(
        own["metadata"]["annotations"]
            .get("nginx.ingress.kubernetes.io/auth-url")
            .is_none()
    );
    let paths: Vec<(String, String, String)> = own["spec"]["rules"][0]["http"]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_string(),
                p["pathType"].as_str().unwrap().to_string(),
                p["backend"]["service"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    for want in HEADGATE_PATHS {
        let (path, kind) = match want.strip_suffix('/') {
            Some(prefix) => (prefix, "Prefix"),
            None => (want, "Exact"),
        };
        assert!(
            paths
                .iter()
                .any(|(p, k, s)| p == path && k == kind && s == "headgate"),
            "{want} is not routed to headgate: {paths:?}"
        );
    }
    assert_eq!(
        own["spec"]["rules"][0]["host"], app["spec"]["rules"][0]["host"],
        "same host"
    );
}

/// Find every object in `v` (depth first) that has key `k`.
fn find_all<'a>(v: &'a Value, k: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            if let Some(x) = m.get(k) {
                out.push(x);
            }
            for x in m.values() {
                find_all(x, k, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| find_all(x, k, out)),
        _ => {}
    }
}

fn patterns(v: &Value) -> Vec<String> {
    v["patterns"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["exact"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn envoy_example() {
    let docs = yaml_docs("envoy/envoy.yaml");
    let mut hcms = Vec::new();
    find_all(&docs[0], "http_filters", &mut hcms);
    assert_eq!(hcms.len(), 1, "one HTTP connection manager");
    let filters: Vec<&Value> = hcms[0].as_array().unwrap().iter().collect();
    let names: Vec<&str> = filters
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "envoy.filters.http.header_mutation",
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.router"
        ],
        "client identity headers are removed before the verdict, which runs before routing"
    );
    let removed: Vec<String> = filters[0]["typed_config"]["mutations"]["request_mutations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["remove"].as_str().map(str::to_string))
        .collect();
    assert_every_identity_header(&removed, "the header_mutation filter");
    let ext = &filters[1]["typed_config"];
    assert_eq!(ext["failure_mode_allow"], Value::Bool(false), "fail closed");
    let http = &ext["http_service"];
    assert_eq!(http["path_prefix"], "/_headgate/auth/envoy");
    // Envoy sends no Cookie unless allowed (the one thing people get wrong besides "200 only").
    let req = patterns(&http["authorization_request"]["allowed_headers"]);
    for h in ["cookie", "accept", "sec-fetch-mode", "x-forwarded-proto"] {
        assert!(
            req.contains(&h.to_string()),
            "{h} is not sent to headgate: {req:?}"
        );
    }
    let up = patterns(&http["authorization_response"]["allowed_upstream_headers"]);
    assert_every_identity_header(&up, "allowed_upstream_headers");
    let client = patterns(&http["authorization_response"]["allowed_client_headers"]);
    assert!(client.contains(&"location".to_string()), "{client:?}");
    // Underscore spellings are dropped at the edge.
    let mut underscores = Vec::new();
    find_all(
        &docs[0],
        "headers_with_underscores_action",
        &mut underscores,
    );
    assert!(
        underscores
            .iter()
            .any(|v| v.as_str() == Some("DROP_HEADER") || v.as_str() == Some("REJECT_REQUEST")),
        "{underscores:?}"
    );
    // Routes: headgate's own paths go to headgate without a verdict; the verdict endpoints are not public.
    let mut vhosts = Vec::new();
    find_all(&docs[0], "routes", &mut vhosts);
    let routes = vhosts[0].as_array().unwrap();
    let no_verdict = |r: &Value| {
        r["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["disabled"]
            == Value::Bool(true)
    };
    for want in HEADGATE_PATHS {
        let hit = routes.iter().find(|r| {
            let m = &r["match"];
            m["path"].as_str() == Some(want) || m["prefix"].as_str() == Some(want)
        });
        let hit = hit.unwrap_or_else(|| panic!("{want} has no route"));
        assert_eq!(hit["route"]["cluster"], "headgate", "{want}");
        assert!(no_verdict(hit), "{want} must not need a verdict");
    }
    let verdicts = routes
        .iter()
        .position(|r| r["match"]["prefix"] == "/_headgate/auth/")
        .expect("a route that keeps /_headgate/auth/ private");
    assert!(
        routes[verdicts]["direct_response"]["status"]
            .as_u64()
            .is_some()
    );
    let own = routes
        .iter()
        .position(|r| r["match"]["prefix"] == "/_headgate/")
        .unwrap();
    assert!(verdicts < own, "the private route comes first");
    let last = routes.last().unwrap();
    assert_eq!(last["match"]["prefix"], "/");
    assert_eq!(last["route"]["cluster"], "headplane");
    assert!(!no_verdict(last), "everything else needs a verdict");
}
