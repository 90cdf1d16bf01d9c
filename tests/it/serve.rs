//! `headgate serve`: listener over HTTP/1.1, cleartext HTTP/2 and TLS (h2 and HTTP/1.1 by ALPN), health,
//! graceful stop, refusal of unsafe data directories and of a store another process holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::harness::headgate::HeadgateConfig;

#[tokio::test]
async fn healthz_over_http1_and_cleartext_http2() {
    let hg = HeadgateConfig::new().start();
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let r = h1.get(hg.url("/_headgate/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["status"], "ok");

    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(hg.url("/_headgate/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert!(
        hg.process.output().contains("listening on 127.0.0.1:"),
        "{}",
        hg.process.output()
    );
}

/// GET `path` over TLS trusting `ca_der`, offering `alpn`; returns (negotiated protocol, status, body).
async fn tls_get(
    addr: std::net::SocketAddr,
    ca_der: Vec<u8>,
    alpn: &[u8],
    path: &str,
) -> (Vec<u8>, u16, String) {
    headgate::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(ca_der))
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake with headgate");
    let proto = tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec();
    let io = TokioIo::new(tls);
    let req = http::Request::builder()
        .uri(format!("https://localhost:{}{path}", addr.port()))
        .header("host", format!("localhost:{}", addr.port()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if proto == b"h2" {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = req;
        req.headers_mut().remove("host");
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (proto, status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn tls_with_h2_and_http1_by_alpn() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cfg = HeadgateConfig::new();
    let cert_path = cfg.dir.path().join("tls.crt");
    let key_path = cfg.dir.path().join("tls.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let hg = cfg
        .server("tls_cert_path", &format!("\"{}\"", cert_path.display()))
        .server("tls_key_path", &format!("\"{}\"", key_path.display()))
        .start();
    assert!(hg.process.output().contains("(TLS)"));
    let der = cert.cert.der().to_vec();
    let (proto, status, body) = tls_get(hg.addr, der.clone(), b"h2", "/_headgate/healthz").await;
    assert_eq!((proto.as_slice(), status), (&b"h2"[..], 200), "{body}");
    let (proto, status, _) = tls_get(hg.addr, der, b"http/1.1", "/_headgate/healthz").await;
    assert_eq!((proto.as_slice(), status), (&b"http/1.1"[..], 200));
    // Plain HTTP to a TLS listener gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(hg.url("/_headgate/healthz"))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP must not be served on the TLS port"
    );
}

#[test]
fn bad_tls_files_are_refused_naming_the_key() {
    let cfg = HeadgateConfig::new();
    let bogus = cfg.dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let cfg = cfg
        .server("tls_cert_path", &format!("\"{}\"", bogus.display()))
        .server("tls_key_path", &format!("\"{}\"", bogus.display()));
    let (code, _, err) = cfg.run(&["serve"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("server.tls_cert_path"), "{err}");
}

#[test]
fn sigterm_stops_it_cleanly() {
    let mut hg = HeadgateConfig::new().start();
    hg.process.signal(15);
    assert_eq!(
        hg.process.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        hg.process.output()
    );
    assert!(hg.process.output().contains("SIGTERM received"));
}

#[test]
fn invalid_configuration_lists_every_problem_and_exits_2() {
    let cfg = HeadgateConfig::new()
        .server("cookie_secret", "\"short\"")
        .server("cookie_secur", "true")
        .section("[oidc]\nclient_id = \"x\"\nclient_secret = \"y\"");
    let (code, _, err) = cfg.run(&["serve"]);
    assert_eq!(code, 2, "{err}");
    for needle in [
        "server.cookie_secret: ",
        "server.cookie_secur: unknown key: did you mean `cookie_secure`?",
        "oidc.issuer: missing",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}

#[test]
fn data_directory_is_created_private_and_unsafe_ones_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    // Created 0700 when missing.
    let mut hg = HeadgateConfig::new().start();
    let data = hg.config.data_path();
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(data.join("headgate.redb").is_file());
    hg.process.kill();

    // World-readable: refused, with the fix.
    let cfg = HeadgateConfig::new();
    std::fs::create_dir(cfg.data_path()).unwrap();
    std::fs::set_permissions(cfg.data_path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, _, err) = cfg.run(&["serve"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("server.data_path") && err.contains("chmod 700"),
        "{err}"
    );

    // A store file others can read: refused.
    let cfg = HeadgateConfig::new();
    std::fs::create_dir(cfg.data_path()).unwrap();
    std::fs::set_permissions(cfg.data_path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let store = cfg.data_path().join("headgate.redb");
    headgate::store::Store::open_redb(&store, 1 << 20).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = cfg.run(&["serve"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("headgate.redb is accessible by group or others") && err.contains("chmod 600"),
        "{err}"
    );

    // A regular file: refused.
    let cfg = HeadgateConfig::new();
    std::fs::write(cfg.data_path(), "x").unwrap();
    let (code, _, err) = cfg.run(&["serve"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not a directory"), "{err}");
}

#[test]
fn a_second_process_on_the_same_store_fails_at_once() {
    let first = HeadgateConfig::new().start();
    let started = Instant::now();
    let (code, _, err) = first.config.run(&["serve"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("another headgate process is using"), "{err}");
    assert!(err.contains("headgate.redb"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}
