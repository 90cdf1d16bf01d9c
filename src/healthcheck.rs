//! `headgate healthcheck`: one GET of the running server's readiness endpoint, over plain HTTP or TLS, with
//! no certificate check (it talks to its own listener, usually on loopback, only to learn whether it answers
//! ready).

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::Config;

const TIMEOUT: Duration = Duration::from_secs(5);

/// `http(s)://<listen>/_headgate/readyz`, with a wildcard listen address replaced by loopback.
pub fn default_url(config: &Config, live: bool) -> String {
    let addr = config.server.listen;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v) if v.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(v) if v.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(v) => format!("[{v}]"),
        ip => ip.to_string(),
    };
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let path = if live { "healthz" } else { "readyz" };
    format!("{scheme}://{ip}:{}/_headgate/{path}", addr.port())
}

/// GET `url`; (exit code, one line for the operator).
pub async fn probe(url: &str) -> (u8, String) {
    match tokio::time::timeout(TIMEOUT, get_status(url)).await {
        Ok(Ok(200)) => (0, format!("ready: {url} answered 200")),
        Ok(Ok(status)) => (1, format!("not ready: {url} answered {status}")),
        Ok(Err(e)) => (1, format!("not ready: {url}: {e}")),
        Err(_) => (
            1,
            format!(
                "not ready: {url} did not answer within {} s",
                TIMEOUT.as_secs()
            ),
        ),
    }
}

async fn get_status(url: &str) -> Result<u16, String> {
    let u = url::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    let host = u.host_str().ok_or("no host")?.to_string();
    let port = u.port_or_known_default().ok_or("no port")?;
    let target = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    };
    let connect_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = tokio::net::TcpStream::connect((connect_host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect ({e})"))?;
    let authority = match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    match u.scheme() {
        "http" => exchange(tcp, &authority, &target).await,
        "https" => {
            crate::install_crypto_provider();
            let config = rustls::ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert))
                .with_no_client_auth();
            let name = ServerName::try_from(connect_host).map_err(|e| format!("bad host ({e})"))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake failed ({e})"))?;
            exchange(tls, &authority, &target).await
        }
        other => Err(format!("unsupported scheme {other:?}")),
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    authority: &str,
    target: &str,
) -> Result<u16, String> {
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: headgate-healthcheck\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write failed ({e})"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let m = s
            .read(&mut head[n..])
            .await
            .map_err(|e| format!("read failed ({e})"))?;
        if m == 0 {
            break;
        }
        n += m;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "the answer is not HTTP".to_string())
}

/// Accepts any certificate: the health check asks its own server, whose certificate may be for a public
/// name or self-signed; it sends nothing secret.
#[derive(Debug)]
struct AnyCert;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
