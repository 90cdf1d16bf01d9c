//! The running application: configuration, store and clients, and the one place a request is routed,
//! answered and logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;

use crate::config::Config;
use crate::http_client::HttpClient;
use crate::store::Store;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body headgate sends: fixed bytes or a stream from the upstream.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub struct App {
    config: Arc<Config>,
    store: Store,
    http: HttpClient,
}

impl App {
    pub fn new(config: Arc<Config>, store: Store, http: HttpClient) -> Self {
        App {
            config,
            store,
            http,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// Route, answer, log one line. Never panics outward, never leaks a query string into the log.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let version = req.version();
        let (resp, route) = match path.as_str() {
            "/_headgate/healthz" => (healthz(), "healthz"),
            _ => (not_found(), "not_found"),
        };
        tracing::info!(
            target: "headgate::request",
            %peer,
            method = %method,
            path = %crate::logging::escape(&path),
            ?version,
            status = resp.status().as_u16(),
            route,
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
        resp
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(body.to_string()))
        .expect("static response parts are valid")
}

/// Liveness: the process answers. No dependency is consulted.
fn healthz() -> Response<Body> {
    json(StatusCode::OK, serde_json::json!({ "status": "ok" }))
}

fn not_found() -> Response<Body> {
    json(
        StatusCode::NOT_FOUND,
        serde_json::json!({ "error": "not_found" }),
    )
}
