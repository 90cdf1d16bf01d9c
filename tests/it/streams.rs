//! Long-lived responses through the gate (S9, S19): a websocket echo on a rule that allows it and nowhere
//! else, handshakes checked, and event streams and websockets closed when their session is revoked, the
//! person's role changes, or the session expires.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::browser::Browser;
use crate::harness::echo::{Echo, read_ws_frame, websocket_accept, ws_frame};
use crate::harness::headgate::Headgate;
use crate::harness::rogue::RogueIdp;
use crate::harness::stack::{Site, oidc_section};

const RULES: &str = r#"
[[policy.rule]]
path = "/ws"
methods = ["GET"]
capabilities = ["ui_access"]
websocket = true

[[policy.rule]]
path = "/sse"
methods = ["GET"]
capabilities = ["ui_access"]
"#;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

struct Env {
    site: Site,
    rogue: RogueIdp,
    echo: Echo,
    hg: Headgate,
}

fn env() -> Env {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let echo = Echo::start();
    let hg = site
        .config(None)
        .section(format!(
            "[upstream]\nurl = \"{}\"\nheadplane_login = \"proxy_auth\"\n\n{RULES}",
            echo.url()
        ))
        .section(oidc_section(rogue.issuer(), ""))
        .start();
    Env {
        site,
        rogue,
        echo,
        hg,
    }
}

impl Env {
    /// Sign `sub` in; returns the session cookie pair (`headgate_session=…`).
    async fn person(&self, sub: &str) -> (Browser, String) {
        let email = format!("{sub}@example.com");
        let b = crate::harness::stack::rogue_person(&self.site, &self.rogue, sub, &email).await;
        let cookie = format!(
            "headgate_session={}",
            b.cookie(&self.site.base(), "headgate_session").unwrap()
        );
        (b, cookie)
    }

    fn cli(&self, args: &[&str]) -> String {
        let (code, out, err) = self.hg.config.run(args);
        assert_eq!(code, 0, "headgate {args:?}: {out}{err}");
        out
    }
}

/// Send a websocket handshake for `path` (extra header lines included verbatim); returns the response head
/// and the connection.
async fn handshake(port: u16, path: &str, extra: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("a response head within 10 s")
            .unwrap();
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), s)
}

fn ws_headers(cookie: &str) -> String {
    format!(
        "Upgrade: websocket\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n"
    )
}

fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Whether the connection is closed (EOF or reset) within `within`, reading and discarding anything else.
async fn closes_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_websocket_echo_works_on_its_rule_and_closes_when_the_session_ends() {
    let e = env();
    let (b, cookie) = e.person("owner-sub").await;
    let (head, mut s) = handshake(
        e.site.port,
        "/ws",
        &format!("{}Remote-User: spoofed\r\n", ws_headers(&cookie)),
    )
    .await;
    assert_eq!(status_of(&head), 101, "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(
        lower.contains(&format!(
            "sec-websocket-accept: {}",
            websocket_accept(KEY.as_bytes()).to_ascii_lowercase()
        )),
        "{head}"
    );
    // The upstream got the handshake with headgate's identity, not the client's.
    let seen = e.echo.last().expect("the upstream saw the handshake");
    assert_eq!(seen.uri, "/ws");
    assert_eq!(seen.header_all("remote-user"), vec!["owner-sub"]);
    assert!(seen.header("x-headgate-assertion").is_some());
    // Frames go both ways.
    for msg in ["hello", "second message"] {
        s.write_all(&ws_frame(0x81, msg.as_bytes(), Some([1, 2, 3, 4])))
            .await
            .unwrap();
        let (b0, payload) = tokio::time::timeout(Duration::from_secs(5), read_ws_frame(&mut s))
            .await
            .expect("an echo within 5 s")
            .unwrap();
        assert_eq!((b0, payload.as_slice()), (0x81, msg.as_bytes()));
    }
    assert_eq!(e.echo.ws_open(), 1);
    // Signing out ends the session: the tunnel is cut at once (this process made the change).
    let r = b
        .request(
            reqwest::Method::POST,
            &e.site.url("/admin/logout"),
            None,
            &[("origin", &e.site.base())],
            None,
        )
        .await;
    assert!((300..400).contains(&r.status()), "{}", r.status());
    assert!(
        closes_within(&mut s, Duration::from_secs(5)).await,
        "the websocket stayed open after sign-out"
    );
    eventually("the upstream's websocket closed", || e.echo.ws_open() == 0).await;
}

#[tokio::test]
async fn websocket_upgrades_are_refused_everywhere_else() {
    let e = env();
    let (_b, cookie) = e.person("owner-sub").await;
    let ws = ws_headers(&cookie);
    let cases: Vec<(&str, String, &str)> = vec![
        ("/admin/machines", ws.clone(), "a built-in Headplane row"),
        ("/sse", ws.clone(), "a rule without websocket = true"),
        (
            "/ws",
            format!("Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nCookie: {cookie}\r\n"),
            "an h2c upgrade",
        ),
        (
            "/ws",
            format!(
                "Upgrade: websocket, h2c\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n"
            ),
            "two protocols",
        ),
        (
            "/ws",
            format!("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n"),
            "no key",
        ),
        (
            "/ws",
            format!(
                "Upgrade: websocket\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n"
            ),
            "a key that is not 16 bytes",
        ),
        (
            "/ws",
            format!(
                "Upgrade: websocket\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 8\r\nCookie: {cookie}\r\n"
            ),
            "an old protocol version",
        ),
    ];
    for (path, headers, what) in cases {
        let (head, _) = handshake(e.site.port, path, &headers).await;
        assert_eq!(status_of(&head), 400, "{what}: {head}");
    }
    // Signed out: the sign-in answer, never a tunnel.
    let (head, _) = handshake(
        e.site.port,
        "/ws",
        &format!("Upgrade: websocket\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"),
    )
    .await;
    assert_eq!(status_of(&head), 401, "{head}");
    assert_eq!(e.echo.count(), 0, "the upstream saw a refused upgrade");
}

#[tokio::test]
async fn an_upstream_that_fakes_the_handshake_is_not_tunnelled() {
    let e = env();
    let (_b, cookie) = e.person("owner-sub").await;
    e.echo.set_reply(
        "/ws",
        crate::harness::echo::Reply::status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", "d3JvbmcgYWNjZXB0IHZhbHVlIQ=="),
    );
    let (head, _) = handshake(e.site.port, "/ws", &ws_headers(&cookie)).await;
    assert_eq!(status_of(&head), 502, "{head}");
}

/// Open `/sse` with `cookie`; returns the response after its first event arrived.
async fn open_events(e: &Env, cookie: &str) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .get(e.site.url("/sse"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let first = tokio::time::timeout(Duration::from_secs(5), r.chunk())
        .await
        .expect("a first event")
        .unwrap()
        .expect("the stream is open");
    assert!(String::from_utf8_lossy(&first).contains("event: tick"));
    r
}

/// Whether the stream ends (cleanly or not) within `within`.
async fn ends_within(r: &mut reqwest::Response, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, r.chunk()).await {
            Err(_) => return false,
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) | Ok(Err(_)) => return true,
        }
    }
}

#[tokio::test]
async fn an_event_stream_is_closed_when_its_session_is_revoked() {
    let e = env();
    let (_b, cookie) = e.person("owner-sub").await;
    let (_b2, viewer) = e.person("viewer-sub").await;
    e.cli(&["users", "set-role", "viewer-sub@example.com", "viewer"]);
    let mut owner_stream = open_events(&e, &cookie).await;
    let mut viewer_stream = open_events(&e, &viewer).await;
    // Still flowing after a while (nothing closes a valid session's stream).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!ends_within(&mut viewer_stream, Duration::from_millis(300)).await);
    e.cli(&["sessions", "revoke", "viewer-sub@example.com"]);
    assert!(
        ends_within(&mut viewer_stream, Duration::from_secs(5)).await,
        "the revoked session's stream stayed open"
    );
    // The other person's stream is untouched.
    assert!(!ends_within(&mut owner_stream, Duration::from_millis(500)).await);
    // The stream's reconnect meets the sign-in.
    let again = reqwest::Client::new()
        .get(e.site.url("/sse"))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 401);
}

#[tokio::test]
async fn streams_are_closed_when_the_role_changes() {
    let e = env();
    let (_b, _owner) = e.person("owner-sub").await;
    let (_b2, viewer) = e.person("viewer-sub").await;
    e.cli(&["users", "set-role", "viewer-sub@example.com", "viewer"]);
    let mut stream = open_events(&e, &viewer).await;
    let (head, mut ws) = handshake(e.site.port, "/ws", &ws_headers(&viewer)).await;
    assert_eq!(status_of(&head), 101, "{head}");
    // A promotion changes the role too: the streams were decided on the old one.
    e.cli(&["users", "set-role", "viewer-sub@example.com", "auditor"]);
    assert!(
        ends_within(&mut stream, Duration::from_secs(5)).await,
        "the event stream outlived the role change"
    );
    assert!(
        closes_within(&mut ws, Duration::from_secs(5)).await,
        "the websocket outlived the role change"
    );
}

#[tokio::test]
async fn an_event_stream_is_closed_when_its_session_expires() {
    let rogue = RogueIdp::start();
    let echo = Echo::start();
    let hg = crate::harness::inproc::InProcess::start_with(
        "stream_recheck_secs = 1",
        &format!(
            "[upstream]\nurl = \"{}\"\nheadplane_login = \"proxy_auth\"\n\n{RULES}\n{}",
            echo.url(),
            oidc_section(rogue.issuer(), "")
        ),
    );
    let b = Browser::new();
    let to_idp = b.get(hg.url("/admin/oidc/start")).await;
    let back = b.get(to_idp.location().unwrap().as_str()).await;
    b.get(back.location().unwrap().as_str()).await;
    let cookie = format!(
        "headgate_session={}",
        b.cookie(&hg.base(), "headgate_session").unwrap()
    );
    let mut r = reqwest::Client::new()
        .get(hg.url("/sse"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A few re-checks pass while the session is valid.
    assert!(!ends_within(&mut r, Duration::from_millis(2500)).await);
    hg.clock.advance(86400 + 1);
    assert!(
        ends_within(&mut r, Duration::from_secs(5)).await,
        "the stream outlived its session"
    );
    eventually("the upstream's stream closed", || echo.sse_open() == 0).await;
}
