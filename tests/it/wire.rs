//! Requests to headgate exactly as written, over each protocol S9 names: raw HTTP/1.1 bytes on a TCP
//! stream (a client library would normalise a path, a header name or the framing before sending), and
//! HTTP/2 over cleartext (prior knowledge) or TLS (ALPN `h2`), each request on a fresh connection so a
//! refused stream or a GOAWAY never affects the next case.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One answer from headgate.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The protocols the spoofing, admission and canonicalisation corpora run over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2c,
    H2Tls,
}

/// An HTTP/1.1 request, byte for byte: `head_lines` are sent as given (no normalisation, no added
/// `Host`), then `Connection: close`, then the body as given (the caller writes the framing headers).
pub fn h1_bytes(method: &str, target: &[u8], head_lines: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (n, v) in head_lines {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// Send raw bytes and read the answer until the server closes. `None`: the server closed the connection
/// without an HTTP answer.
pub async fn h1_raw(addr: SocketAddr, bytes: &[u8]) -> Option<Answer> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A server that refuses early may close before everything was written; that is an answer too.
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "no answer within 20 s to {:?}",
        String::from_utf8_lossy(bytes)
    );
    parse_h1(&buf)
}

fn parse_h1(buf: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}

/// A TLS client that trusts `ca_der` and offers `h2` only.
fn tls_connector(ca_der: &[u8]) -> tokio_rustls::TlsConnector {
    headgate::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(ca_der.to_vec()))
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Where and how HTTP/2 requests go.
#[derive(Clone)]
pub struct H2Target {
    pub addr: SocketAddr,
    /// `None`: cleartext with prior knowledge; `Some(ca)`: TLS to `localhost`, trusting this certificate.
    pub tls: Option<Vec<u8>>,
}

impl H2Target {
    pub fn cleartext(addr: SocketAddr) -> H2Target {
        H2Target { addr, tls: None }
    }

    pub fn tls(addr: SocketAddr, ca_der: Vec<u8>) -> H2Target {
        H2Target {
            addr,
            tls: Some(ca_der),
        }
    }

    /// One request on a new connection. `authority` is `:authority`; `headers` are added as given (a `host`
    /// among them is sent as a regular header). `Err`: the client library cannot express the request, or
    /// the server reset the stream or the connection (never an answer).
    pub async fn send(
        &self,
        method: &str,
        authority: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let uri = http::Uri::try_from(format!("{scheme}://{authority}{path_and_query}"))
            .map_err(|e| format!("client cannot express {path_and_query:?}: {e}"))?;
        let mut b = http::Request::builder()
            .method(
                http::Method::from_bytes(method.as_bytes())
                    .map_err(|e| format!("method {method:?}: {e}"))?,
            )
            .uri(uri)
            .version(http::Version::HTTP_2);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let req = b
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| format!("client cannot express the request: {e}"))?;
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let resp = match &self.tls {
            None => {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                        .await
                        .map_err(|e| format!("h2c handshake: {e}"))?;
                tokio::spawn(conn);
                send.send_request(req).await
            }
            Some(ca) => {
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let tls = tls_connector(ca)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                assert_eq!(
                    tls.get_ref().1.alpn_protocol(),
                    Some(&b"h2"[..]),
                    "headgate did not negotiate h2 over TLS"
                );
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .map_err(|e| format!("h2 handshake: {e}"))?;
                tokio::spawn(conn);
                send.send_request(req).await
            }
        }
        .map_err(|e| format!("no answer: {e}"))?;
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
            .await
            .map_err(|_| "body timeout".to_string())?
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM, certificate DER).
pub fn localhost_cert() -> (String, String, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (
        cert.cert.pem(),
        cert.signing_key.serialize_pem(),
        cert.cert.der().to_vec(),
    )
}

/// Stop a running headgate and start it again on the same port, data directory and configuration, now
/// serving TLS (h2 and HTTP/1.1 by ALPN). Sessions live in the store, so everyone stays signed in.
/// Returns the new process and the certificate to trust.
pub fn restart_with_tls(
    hg: crate::harness::headgate::Headgate,
) -> (crate::harness::headgate::Headgate, Vec<u8>) {
    let crate::harness::headgate::Headgate {
        mut process,
        config,
        ..
    } = hg;
    process.kill();
    drop(process);
    let (cert_pem, key_pem, der) = localhost_cert();
    let cert_path = config.dir.path().join("tls.crt");
    let key_path = config.dir.path().join("tls.key");
    std::fs::write(&cert_path, cert_pem).unwrap();
    std::fs::write(&key_path, key_pem).unwrap();
    let hg = config
        .server("tls_cert_path", &format!("\"{}\"", cert_path.display()))
        .server("tls_key_path", &format!("\"{}\"", key_path.display()))
        .start();
    assert!(
        hg.process.output().contains("(TLS)"),
        "{}",
        hg.process.output()
    );
    (hg, der)
}
