//! The one outbound HTTP client (IdP, Headscale): pooled hyper over rustls (webpki roots), every call with a
//! timeout and a cap on the response body, errors that never include credentials.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest response body headgate reads from an IdP or Headscale.
pub const MAX_RESPONSE_BODY: usize = 4 * 1024 * 1024;

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url} is not a usable URL")]
    InvalidUrl { url: String },
    #[error("cannot reach {origin}: {reason}")]
    Connect { origin: String, reason: String },
    #[error("{origin} did not answer within {secs} s")]
    Timeout { origin: String, secs: u64 },
    #[error("{origin} sent a response larger than {max} bytes")]
    TooLarge { origin: String, max: usize },
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        crate::install_crypto_provider();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(16)
            .build(https);
        HttpClient { inner }
    }

    /// Send `req`, wait at most `timeout` for the whole answer, read at most `MAX_RESPONSE_BODY` bytes.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let origin = origin_of(req.uri());
        let fut = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| HttpError::Connect {
                    origin: origin.clone(),
                    reason: describe_client_error(&e),
                })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BODY)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        HttpError::TooLarge {
                            origin: origin.clone(),
                            max: MAX_RESPONSE_BODY,
                        }
                    } else {
                        HttpError::Connect {
                            origin: origin.clone(),
                            reason: format!("the response broke off ({e})"),
                        }
                    }
                })?;
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body: body.to_bytes(),
            })
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout {
                origin,
                secs: timeout.as_secs().max(1),
            }),
        }
    }

    /// A GET with extra headers.
    pub async fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let req = build(Method::GET, url, headers, Bytes::new())?;
        self.send(req, timeout).await
    }

    /// A POST of an `application/x-www-form-urlencoded` or JSON body (set the content type in `headers`).
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let req = build(Method::POST, url, headers, body)?;
        self.send(req, timeout).await
    }
}

fn build(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Request<Full<Bytes>>, HttpError> {
    let invalid = || HttpError::InvalidUrl {
        url: strip_query(url),
    };
    let uri: http::Uri = url.parse().map_err(|_| invalid())?;
    if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
        return Err(invalid());
    }
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::USER_AGENT, "headgate");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body)).map_err(|_| invalid())
}

fn origin_of(uri: &http::Uri) -> String {
    match (uri.scheme_str(), uri.authority()) {
        (Some(s), Some(a)) => format!("{s}://{a}"),
        _ => "the server".to_string(),
    }
}

/// A URL for messages: no query (it may hold a code or a token).
pub fn strip_query(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or("").to_string()
}

fn describe_client_error(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error;
    let mut msg = String::new();
    let mut cur: Option<&dyn Error> = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !s.is_empty() && !msg.contains(&s) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&s);
        }
        cur = err.source();
    }
    if msg.is_empty() { e.to_string() } else { msg }
}
