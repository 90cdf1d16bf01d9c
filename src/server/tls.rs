//! TLS for the listener: certificate chain and key from PEM files, ALPN for h2 and HTTP/1.1.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls_cert_path {path}: {detail}")]
    Cert { path: String, detail: String },
    #[error("server.tls_key_path {path}: {detail}")]
    Key { path: String, detail: String },
    #[error("server.tls_cert_path and server.tls_key_path do not form a usable pair: {0}")]
    Pair(String),
}

pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    crate::install_crypto_provider();
    let cert_path = files.cert_path.display().to_string();
    let key_path = files.key_path.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_path)
        .map_err(|e| TlsError::Cert {
            path: cert_path.clone(),
            detail: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert_path.clone(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert_path,
            detail: "no CERTIFICATE block in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_path).map_err(|e| TlsError::Key {
        path: key_path,
        detail: e.to_string(),
    })?;
    let mut cfg = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Pair(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
