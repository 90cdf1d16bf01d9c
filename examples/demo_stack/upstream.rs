//! The demo's two stand-ins as a library, shared by `main.rs` (the `demo_stack` example that `deploy/demo/run`
//! starts) and the browser test (`tests/it/browser_e2e.rs`, which includes this file through
//! `tests/it/harness/mod.rs`): the seeded Headscale stand-in and the demo upstream page.
//!
//! Wherever it is included, the including module must also have a `fake_headscale` module (the tests' fake
//! Headscale, `tests/it/harness/fake_headscale.rs`) beside it.

use std::convert::Infallible;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::fake_headscale::FakeHeadscale;

/// The identity headers headgate sets (default names), in the order the page lists them.
const IDENTITY_HEADERS: &[&str] = &[
    "Remote-User",
    "Remote-Email",
    "Remote-Name",
    "Remote-Picture",
    "X-Headgate-Role",
    "X-Headgate-Headscale-User",
    "X-Headgate-Headscale-User-Id",
    "X-Headgate-Auth",
    "X-Headgate-Assertion",
];

/// Headscale with the demo's people (their emails match the test IdP's users, so headgate links them by
/// verified email) and a few nodes.
pub fn headscale_stand_in() -> FakeHeadscale {
    let hs = FakeHeadscale::builder().random_spaces(false).start();
    let alice = hs.add_user("alice", "alice@example.com");
    let bob = hs.add_user("bob", "bob@example.com");
    let ops = hs.add_user("ops", "");
    hs.add_node(alice, "alice-laptop");
    hs.add_node(alice, "alice-phone");
    hs.add_node(bob, "bob-desktop");
    hs.add_node(ops, "build-runner");
    hs.add_tagged_node("office-router", &["tag:router"]);
    hs
}

/// Serve the demo upstream page on `listener` until the task is dropped (every path, every method).
pub async fn serve(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_connection(stream));
    }
}

/// Serve the demo upstream page on one accepted connection.
pub async fn serve_connection(stream: tokio::net::TcpStream) {
    let svc = hyper::service::service_fn(|req| async move { Ok::<_, Infallible>(page(&req)) });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn page<B>(req: &Request<B>) -> Response<Full<Bytes>> {
    let h = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    let or = |v: String, fallback: &str| {
        if v.is_empty() {
            fallback.to_string()
        } else {
            v
        }
    };
    let who = or(h("remote-name"), &or(h("remote-email"), &h("remote-user")));
    let hs_user = match (
        h("x-headgate-headscale-user"),
        h("x-headgate-headscale-user-id"),
    ) {
        (name, _) if name.is_empty() => "not linked yet".to_string(),
        (name, id) => format!("{name} (id {id})"),
    };
    let auth = h("x-headgate-auth");

    let mut rows = String::new();
    for name in IDENTITY_HEADERS {
        let value = h(name);
        let shown = if name.eq_ignore_ascii_case("x-headgate-assertion") && value.len() > 40 {
            format!("{}… ({} bytes; claims below)", &value[..40], value.len())
        } else {
            value
        };
        rows.push_str(&format!(
            "<tr><th>{}</th><td><code>{}</code></td></tr>\n",
            esc(name),
            esc(&shown)
        ));
    }
    let claims = assertion_claims(&h("x-headgate-assertion"));
    let mut all = String::new();
    for (name, value) in req.headers() {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        let v = if name == "cookie" {
            format!("({} bytes, not shown)", value.len())
        } else if name == "x-headgate-assertion" && v.len() > 40 {
            format!("{}… ({} bytes)", &v[..40], v.len())
        } else {
            v
        };
        all.push_str(&format!(
            "<tr><th>{}</th><td><code>{}</code></td></tr>\n",
            esc(name.as_str()),
            esc(&v)
        ));
    }

    let body = format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>headgate demo upstream</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }}
.who {{ font-size: 1.25rem; padding: 1rem; border: 1px solid #8884; border-radius: .5rem; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; vertical-align: top; padding: .25rem .5rem; border-bottom: 1px solid #8883; }}
th {{ white-space: nowrap; font-weight: 600; }}
td code, pre {{ word-break: break-all; white-space: pre-wrap; }}
form {{ display: inline; }}
</style>
</head>
<body>
<h1>headgate demo upstream</h1>
<p class="who">Signed in as <b id="who">{who}</b>, role <b id="role">{role}</b>, Headscale user <b id="hs-user">{hs_user}</b>{via}</p>
<p>This page is the app behind headgate (in production: Headplane). It trusts what headgate tells it and shows
it: <b>{method} {path}</b> arrived with these identity headers.</p>
<p><a href="/_headgate/users">People and roles</a> · <a href="/_headgate/whoami">/_headgate/whoami</a> ·
<a href="/_headgate/jwks.json">assertion keys</a> ·
<form method="post" action="/admin/logout"><button type="submit">Sign out</button></form></p>
<h2>Identity headers</h2>
<table>
{rows}</table>
<h2>Signed assertion (X-Headgate-Assertion claims)</h2>
<pre>{claims}</pre>
<h2>Every request header</h2>
<table>
{all}</table>
</body>
</html>
"#,
        who = esc(&or(who, "(nobody)")),
        role = esc(&or(h("x-headgate-role"), "(none)")),
        hs_user = esc(&hs_user),
        via = if auth.is_empty() {
            String::new()
        } else {
            format!(" (via {})", esc(&auth))
        },
        method = esc(req.method().as_str()),
        path = esc(req.uri().path()),
        claims = esc(&claims),
    );
    Response::builder()
        .header("content-type", "text/html; charset=utf-8")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// The claims of the signed assertion, pretty-printed (decoded only, not verified: see
/// `examples/verify_assertion.rs` for verifying it).
fn assertion_claims(jwt: &str) -> String {
    let Some(payload) = jwt.split('.').nth(1) else {
        return "(none)".into();
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| "(not a JWT)".into())
}
