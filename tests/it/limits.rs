//! Resource limits (forward-auth.md class 10): a request head over 64 KiB is answered 431, a client that sends
//! its head too slowly (slowloris) is disconnected, and oversized form bodies are 413 on headgate's own form
//! endpoints — never a crash, and the server keeps answering. (The 1 MiB cap of proxied forms is in
//! `admission.rs`, the per-browser flow cap in `login_page.rs`, the API-key login rate limit in
//! `api_key_login.rs`.)

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::fake_headscale::FakeHeadscale;
use crate::harness::stack::Site;
use crate::wire;

fn start() -> (Site, FakeHeadscale, crate::harness::headgate::Headgate) {
    let site = Site::new();
    let hs = FakeHeadscale::start();
    let hg = site.config(Some(&hs)).start();
    (site, hs, hg)
}

fn addr(site: &Site) -> std::net::SocketAddr {
    ([127, 0, 0, 1], site.port).into()
}

async fn healthy(site: &Site) {
    let r = reqwest::get(site.url("/_headgate/healthz")).await.unwrap();
    assert_eq!(r.status(), 200, "headgate still answers");
}

#[tokio::test]
async fn a_request_head_over_64_kib_is_431() {
    let (site, _hs, _hg) = start();
    let host = format!("127.0.0.1:{}", site.port);
    let big = "a".repeat(70 * 1024);
    let cookie = format!("headgate_session={big}");
    for (what, lines) in [
        ("one huge header", vec![("X-Big", big.as_str())]),
        ("a huge cookie", vec![("Cookie", cookie.as_str())]),
    ] {
        let mut head = vec![("Host", host.as_str())];
        head.extend(lines);
        let a = wire::h1_raw(
            addr(&site),
            &wire::h1_bytes("GET", b"/admin/login", &head, b""),
        )
        .await
        .unwrap_or_else(|| panic!("{what}: closed without an answer"));
        assert_eq!(a.status, 431, "{what}");
    }
    // Many small headers adding up to more than 64 KiB.
    let many: Vec<(String, String)> = (0..2000)
        .map(|i| (format!("X-H{i}"), "v".repeat(40)))
        .collect();
    let mut head = vec![("Host", host.as_str())];
    head.extend(many.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let a = wire::h1_raw(
        addr(&site),
        &wire::h1_bytes("GET", b"/admin/login", &head, b""),
    )
    .await;
    assert!(
        a.as_ref().is_none_or(|a| a.status == 431),
        "many headers: {:?}",
        a.map(|a| a.status)
    );
    healthy(&site).await;
}

#[tokio::test]
async fn a_slowloris_client_is_disconnected() {
    let (site, _hs, _hg) = start();
    let mut s = tokio::net::TcpStream::connect(addr(&site)).await.unwrap();
    s.write_all(b"GET /admin/login HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // One header byte a second: the head never completes within the 10 s header read timeout.
    let reader = async {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        buf
    };
    let mut s2 = tokio::net::TcpStream::connect(addr(&site)).await.unwrap();
    s2.write_all(b"GET /admin/login HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let trickle = async {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if s2.write_all(b"a").await.is_err() {
                return Instant::now();
            }
        }
        Instant::now()
    };
    let (buf, trickle_ended) = tokio::time::timeout(Duration::from_secs(25), async {
        tokio::join!(reader, trickle)
    })
    .await
    .expect("headgate closes slow connections");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the silent client was dropped after {took:?}"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "no request was answered: {text}"
    );
    assert!(
        trickle_ended.duration_since(started) < Duration::from_secs(25),
        "the trickling client was dropped"
    );
    healthy(&site).await;
}

#[tokio::test]
async fn oversized_form_bodies_are_413_on_headgates_own_endpoints() {
    let (site, _hs, _hg) = start();
    let host = format!("127.0.0.1:{}", site.port);
    let base = site.base();
    let big = format!("api_key={}", "k".repeat(1024 * 1024 + 10));
    let len = big.len().to_string();
    for (what, framing) in [
        ("content-length", ("Content-Length", len.as_str())),
        ("chunked", ("Transfer-Encoding", "chunked")),
    ] {
        let body = if what == "chunked" {
            format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len())
        } else {
            big.clone()
        };
        let head = [
            ("Host", host.as_str()),
            ("Origin", base.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
            framing,
        ];
        let a = wire::h1_raw(
            addr(&site),
            &wire::h1_bytes("POST", b"/admin/login", &head, body.as_bytes()),
        )
        .await
        .unwrap_or_else(|| panic!("{what}: closed without an answer"));
        assert_eq!(a.status, 413, "{what}: {}", a.body);
    }
    healthy(&site).await;
}
