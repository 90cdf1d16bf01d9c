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

/// Send a request head announcing `len` body bytes, then trickle the body a byte every 300 ms; returns what
/// headgate answered and how long until it closed the connection (None: still open after 15 s).
async fn trickle_body(site: &Site, path: &str, len: usize) -> (String, Option<Duration>) {
    let mut s = tokio::net::TcpStream::connect(addr(site)).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nOrigin: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {len}\r\n\r\na",
        site.port,
        site.base()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let reader = async {
        let mut buf = Vec::new();
        let _ = rd.read_to_end(&mut buf).await;
        (buf, started.elapsed())
    };
    let trickle = async {
        for _ in 1..len {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if wr.write_all(b"a").await.is_err() {
                break;
            }
        }
        // Never finish: wait for the reader.
        std::future::pending::<()>().await;
    };
    let got = tokio::time::timeout(Duration::from_secs(15), async {
        tokio::select! {
            r = reader => r,
            _ = trickle => unreachable!(),
        }
    })
    .await;
    match got {
        Ok((buf, took)) => (String::from_utf8_lossy(&buf).into_owned(), Some(took)),
        Err(_) => (String::new(), None),
    }
}

#[tokio::test]
async fn a_trickled_form_body_is_408_and_closed_within_server_body_read_timeout_secs() {
    let site = Site::new();
    let hs = FakeHeadscale::start();
    let rogue = crate::harness::rogue::RogueIdp::start();
    let _hg = site
        .config(Some(&hs))
        .server("body_read_timeout_secs", "2")
        .section(crate::harness::stack::oidc_section(rogue.issuer(), ""))
        .start();
    for path in ["/admin/login", "/_headgate/oidc/backchannel-logout"] {
        let (answer, took) = trickle_body(&site, path, 1000).await;
        let took =
            took.unwrap_or_else(|| panic!("{path}: the connection is still open after 15 s"));
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
            "{path}: closed after {took:?}"
        );
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{path}: {answer}"
        );
        if path == "/admin/login" {
            assert!(
                answer.contains("server.body_read_timeout_secs"),
                "{path}: {answer}"
            );
        }
    }
    // A body that arrives in time is read as before (a wrong-key refusal, not a timeout).
    let (answer, _) = {
        let host = format!("127.0.0.1:{}", site.port);
        let base = site.base();
        let a = wire::h1_raw(
            addr(&site),
            &wire::h1_bytes(
                "POST",
                b"/admin/login",
                &[
                    ("Host", host.as_str()),
                    ("Origin", base.as_str()),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    ("Content-Length", "9"),
                ],
                b"api_key=x",
            ),
        )
        .await
        .expect("an answer");
        (a.status, ())
    };
    assert_ne!(answer, 408);
    healthy(&site).await;
}

#[test]
fn body_read_timeout_secs_is_validated() {
    for bad in ["0", "301", "\"ten\""] {
        let cfg =
            crate::harness::headgate::HeadgateConfig::new().server("body_read_timeout_secs", bad);
        let (code, out, err) = cfg.run(&["check-config"]);
        assert_eq!(code, 2, "{bad}: {out}{err}");
        assert!(
            format!("{out}{err}").contains("server.body_read_timeout_secs"),
            "{bad}: {out}{err}"
        );
    }
}
