//! The upstream hop: a pooled hyper client, the request rebuilt for the upstream (framing by hyper,
//! `Host` preserved, `X-Forwarded-*` set), both bodies streamed, timeouts turned into 502/504.
//!
//! The upstream is `http://host:port`, or a unix socket (`unix:/abs/path.sock` or `unix:///abs/path.sock`):
//! the same pooled client then connects through [`UnixConnector`], and the request line names
//! `http://localhost` only for the pool; `Host` is still the client's.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use url::Url;

use crate::app::Body;

/// How long the upstream may take to start answering.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting to the upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Upstream {
    client: Pool,
    /// What goes before the path in the request URI (`http://host:port`; `http://localhost` for a socket).
    scheme_authority: String,
    /// The upstream as messages name it (`http://host:port` or `unix:/path`).
    label: String,
}

#[derive(Clone)]
enum Pool {
    Tcp(Client<HttpConnector, Body>),
    Unix(Client<UnixConnector, Body>),
}

/// Connects every pooled connection to one unix socket (the URI only keys the pool).
#[derive(Clone, Debug)]
pub struct UnixConnector {
    path: Arc<PathBuf>,
}

impl UnixConnector {
    pub fn new(path: PathBuf) -> Self {
        UnixConnector {
            path: Arc::new(path),
        }
    }
}

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = self.path.clone();
        Box::pin(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(&*path))
                .await
            {
                Ok(Ok(s)) => Ok(TokioIo::new(s)),
                Ok(Err(e)) => Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", path.display()),
                )),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{}: connect timed out", path.display()),
                )),
            }
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the upstream {0} could not be reached: {1}")]
    Unreachable(String, String),
    #[error("the upstream {0} did not answer within {1} s")]
    Timeout(String, u64),
    #[error("the request could not be rebuilt for the upstream: {0}")]
    Build(String),
}

impl Upstream {
    /// An upstream for a validated `upstream.url` (`http://…` or `unix:…`).
    pub fn new(url: &Url) -> Self {
        if let Some(path) = crate::config::unix_socket_path(url) {
            let client = Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(256)
                .build(UnixConnector::new(path.clone()));
            return Upstream {
                client: Pool::Unix(client),
                scheme_authority: "http://localhost".into(),
                label: format!("unix:{}", path.display()),
            };
        }
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(http);
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let scheme_authority = format!(
            "{}://{}{}",
            url.scheme(),
            url.host_str().unwrap_or("127.0.0.1"),
            port
        );
        Upstream {
            client: Pool::Tcp(client),
            label: scheme_authority.clone(),
            scheme_authority,
        }
    }

    /// The upstream as messages name it (`http://host:port` or `unix:/path`).
    pub fn origin(&self) -> &str {
        &self.label
    }

    /// Send a request whose headers are already clean. `path_and_query` is exactly what was decided on.
    pub async fn send(
        &self,
        mut parts: http::request::Parts,
        path_and_query: &str,
        body: Body,
    ) -> Result<Response<Incoming>, ForwardError> {
        let uri: Uri = format!("{}{}", self.scheme_authority, path_and_query)
            .parse()
            .map_err(|e: http::uri::InvalidUri| ForwardError::Build(e.to_string()))?;
        parts.uri = uri;
        // The upstream hop is HTTP/1.1 whatever the client spoke; hyper rebuilds the framing.
        parts.version = http::Version::HTTP_11;
        let req = Request::from_parts(parts, body);
        let answer = match &self.client {
            Pool::Tcp(c) => c.request(req),
            Pool::Unix(c) => c.request(req),
        };
        match tokio::time::timeout(RESPONSE_TIMEOUT, answer).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                use std::error::Error;
                let mut msg = e.to_string();
                if let Some(src) = e.source() {
                    msg = format!("{msg}: {src}");
                }
                Err(ForwardError::Unreachable(self.label.clone(), msg))
            }
            Err(_) => Err(ForwardError::Timeout(
                self.label.clone(),
                RESPONSE_TIMEOUT.as_secs(),
            )),
        }
    }
}

/// `Host` for the upstream: the one the client used (Headplane's `Origin` check compares against it). For
/// HTTP/2 clients it comes from `:authority`.
pub fn preserve_host(parts: &mut http::request::Parts) {
    if parts.headers.contains_key(header::HOST) {
        return;
    }
    if let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
}

/// `X-Forwarded-For`/`-Proto`/`-Host`: appended to a trusted peer's, set fresh otherwise.
pub fn set_forwarded(
    parts: &mut http::request::Parts,
    peer: std::net::IpAddr,
    tls: bool,
    trusted_peer: bool,
) {
    let h = &mut parts.headers;
    let prior_for = if trusted_peer {
        h.get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    } else {
        None
    };
    let xff = match prior_for {
        Some(p) if !p.is_empty() => format!("{p}, {peer}"),
        _ => peer.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    let proto_known = trusted_peer && h.contains_key("x-forwarded-proto");
    if !proto_known {
        h.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
    }
    if !(trusted_peer && h.contains_key("x-forwarded-host"))
        && let Some(host) = h.get(header::HOST).cloned()
    {
        h.insert("x-forwarded-host", host);
    }
}

/// The upstream's response as headgate's response type (streamed).
/// The upstream's reason phrase is dropped (hyper writes the canonical one).
pub fn stream_back(mut r: Response<Incoming>) -> Response<Body> {
    r.extensions_mut().remove::<hyper::ext::ReasonPhrase>();
    r.map(|b| b.map_err(|e| Box::new(e) as crate::app::BoxError).boxed())
}

/// A client body as the upstream body type (streamed).
pub fn stream_body(b: Incoming) -> Body {
    b.map_err(|e| Box::new(e) as crate::app::BoxError).boxed()
}
