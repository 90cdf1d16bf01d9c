//! `upstream.url = "unix:/abs/path.sock"` (or `unix:///abs/path.sock`): headgate forwards over a unix socket
//! with the client's `Host`, identity headers and an assertion whose default audience is the URL as written;
//! a missing socket is a 502 page; configuration problems name `upstream.url`.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use headgate::config::{Config, ConfigErrors};
use serde_json::Value;

use crate::harness::browser::Browser;
use crate::harness::echo::Echo;
use crate::harness::headgate::Headgate;
use crate::harness::rogue::RogueIdp;
use crate::harness::stack::{Site, oidc_section};
use crate::harness::{self, tempdir};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn parse(upstream: &str) -> Result<Config, ConfigErrors> {
    let text = format!(
        "[server]\nbase_url = \"https://hp.example.com\"\ncookie_secret = \"{SECRET}\"\n[upstream]\n{upstream}\n"
    );
    Config::parse("test.toml", &text, &HashMap::new())
}

fn url_errors(upstream: &str) -> Vec<String> {
    match parse(upstream) {
        Ok(_) => panic!("expected errors for {upstream}"),
        Err(e) => e
            .errors
            .iter()
            .map(|e| e.to_string())
            .filter(|e| e.starts_with("upstream.url: "))
            .collect(),
    }
}

/// headgate in front of `url`, signed in as the owner (rogue IdP), `extra` appended to `[upstream]`.
async fn gate(
    site: &Site,
    url: &str,
    extra: &str,
    sections: &[String],
) -> (RogueIdp, Headgate, Browser) {
    let rogue = RogueIdp::start();
    let mut cfg = site
        .config(None)
        .section(format!("[upstream]\nurl = \"{url}\"\n{extra}"))
        .section(oidc_section(rogue.issuer(), ""));
    for s in sections {
        cfg = cfg.section(s.clone());
    }
    let hg = cfg.start();
    rogue.set_subject("owner-sub");
    rogue.set_claim("email", "owner@example.com");
    rogue.set_claim("email_verified", true);
    let b = Browser::new();
    let to_idp = b.get(site.url("/admin/oidc/start")).await;
    let back = b.get(to_idp.location().unwrap().as_str()).await;
    let done = b.get(back.location().unwrap().as_str()).await;
    assert_eq!(done.status(), 302, "{}", done.text());
    (rogue, hg, b)
}

fn aud(assertion: &str) -> Value {
    let payload = assertion.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["aud"].clone()
}

#[tokio::test]
async fn identity_headers_arrive_over_a_unix_socket() {
    let dir = tempdir();
    let sock = dir.path().join("echo.sock");
    let echo = Echo::builder().start_unix(&sock);
    for url in [
        format!("unix:{}", sock.display()),
        format!("unix://{}", sock.display()),
    ] {
        let site = Site::new();
        // Header mode needs no allow_remote_header_mode for a socket: it is local (S11).
        let (_rogue, _hg, b) = gate(&site, &url, "headplane_login = \"proxy_auth\"", &[]).await;
        let p = b
            .get_with(
                site.url("/admin/machines?x=1"),
                &[("accept", "text/html"), ("remote-user", "forged")],
            )
            .await;
        assert_eq!(p.status(), 200, "{url}: {}", p.text());
        let seen = echo.last().expect("the echo got the request");
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.uri, "/admin/machines?x=1", "{url}");
        assert_eq!(seen.header_all("remote-user"), vec!["owner-sub"], "{url}");
        assert_eq!(seen.header("remote-email"), Some("owner@example.com"));
        assert_eq!(seen.header("x-headgate-role"), Some("owner"));
        assert_eq!(seen.header("x-headgate-auth"), Some("oidc"));
        // Host is the client's, not the socket's placeholder.
        assert_eq!(
            seen.header("host"),
            Some(format!("127.0.0.1:{}", site.port).as_str()),
            "{url}"
        );
        assert_eq!(
            seen.header("x-forwarded-host"),
            Some(format!("127.0.0.1:{}", site.port).as_str())
        );
        // The default audience of a unix upstream is its URL as written.
        let a = seen
            .header("x-headgate-assertion")
            .expect("an assertion")
            .to_string();
        assert_eq!(aud(&a), Value::String(url.clone()), "{url}");
        // A form post arrives re-encoded, over the same pool.
        let p = b
            .request(
                reqwest::Method::POST,
                &site.url("/admin/machines"),
                Some(vec![
                    ("action_id".into(), "rename".into()),
                    ("node_id".into(), "1".into()),
                    ("name".into(), "n1".into()),
                ]),
                &[("accept", "text/html")],
                None,
            )
            .await;
        assert_eq!(p.status(), 200, "{}", p.text());
        let seen = echo.last().unwrap();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.body_str(), "action_id=rename&node_id=1&name=n1");
    }
}

#[tokio::test]
async fn headers_audience_overrides_the_socket_default() {
    let dir = tempdir();
    let sock = dir.path().join("echo.sock");
    let echo = Echo::builder().start_unix(&sock);
    let site = Site::new();
    let (_rogue, _hg, b) = gate(
        &site,
        &format!("unix:{}", sock.display()),
        "headplane_login = \"none\"",
        &["[headers]\naudience = \"https://headplane.internal\"".to_string()],
    )
    .await;
    let p = b
        .get_with(site.url("/admin/"), &[("accept", "text/html")])
        .await;
    assert_eq!(p.status(), 200, "{}", p.text());
    let a = echo
        .last()
        .unwrap()
        .header("x-headgate-assertion")
        .unwrap()
        .to_string();
    assert_eq!(aud(&a), Value::String("https://headplane.internal".into()));
}

#[tokio::test]
async fn a_missing_socket_is_a_502_page() {
    let dir = tempdir();
    let sock = dir.path().join("nobody-listens.sock");
    let site = Site::new();
    let (_rogue, _hg, b) = gate(
        &site,
        &format!("unix:{}", sock.display()),
        "headplane_login = \"none\"",
        &[],
    )
    .await;
    let p = b
        .get_with(site.url("/admin/machines"), &[("accept", "text/html")])
        .await;
    assert_eq!(p.status(), 502, "{}", p.text());
    assert!(
        p.header("content-type")
            .unwrap_or_default()
            .starts_with("text/html"),
        "{:?}",
        p.headers
    );
    assert!(p.text().contains("unavailable"), "{}", p.text());
    // The socket appears: requests go through; it goes away again: 502 again.
    let echo = Echo::builder().start_unix(&sock);
    let p = b
        .get_with(site.url("/admin/machines"), &[("accept", "text/html")])
        .await;
    assert_eq!(p.status(), 200, "{}", p.text());
    assert_eq!(echo.count(), 1);
    drop(echo);
    let p = b
        .get_with(site.url("/admin/machines"), &[("accept", "text/html")])
        .await;
    assert_eq!(p.status(), 502, "{}", p.text());
}

#[test]
fn unix_urls_are_validated_and_problems_name_upstream_url() {
    let dir = tempdir();
    let d = dir.path().display();
    // Both spellings load; the socket need not exist yet; header mode is allowed (a socket is local).
    for ok in [
        format!("url = \"unix:{d}/hp.sock\""),
        format!("url = \"unix://{d}/hp.sock\""),
        format!("url = \"unix:{d}/hp.sock\"\nheadplane_login = \"proxy_auth\""),
    ] {
        let c = parse(&ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(
            headgate::config::unix_socket_path(c.upstream.url.as_ref().unwrap()).unwrap(),
            dir.path().join("hp.sock")
        );
    }
    // Percent-encoded paths are decoded.
    std::fs::create_dir(dir.path().join("my dir")).unwrap();
    let c = parse(&format!("url = \"unix:{d}/my%20dir/hp.sock\"")).unwrap();
    assert_eq!(
        headgate::config::unix_socket_path(c.upstream.url.as_ref().unwrap()).unwrap(),
        dir.path().join("my dir/hp.sock")
    );
    let cases: Vec<(String, &str)> = vec![
        ("url = \"unix:run/hp.sock\"".into(), "must be absolute"),
        ("url = \"unix:./hp.sock\"".into(), "must be absolute"),
        (
            format!("url = \"unix:{d}/missing-dir/hp.sock\""),
            "does not exist",
        ),
        (format!("url = \"unix://host{d}/hp.sock\""), "names no host"),
        (format!("url = \"unix:{d}/hp.sock?x=1\""), "only a path"),
        (format!("url = \"unix:{d}\""), "is not a unix socket"),
        ("url = \"ftp://x/y\"".into(), "unix:/absolute/path.sock"),
    ];
    for (text, needle) in cases {
        let errs = url_errors(&text);
        assert!(errs.iter().any(|e| e.contains(needle)), "{text}: {errs:#?}");
    }
    // A regular file where the socket should be.
    std::fs::write(dir.path().join("file.sock"), b"").unwrap();
    let errs = url_errors(&format!("url = \"unix:{d}/file.sock\""));
    assert!(
        errs.iter().any(|e| e.contains("is not a unix socket")),
        "{errs:#?}"
    );
    // The example documents the syntax.
    let example =
        std::fs::read_to_string(harness::root().join("config/headgate.example.toml")).unwrap();
    assert!(
        example.contains("unix:/"),
        "the example does not document unix sockets"
    );
}
