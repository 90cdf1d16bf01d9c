//! The running application: configuration, store, clients, keys, time and randomness, and the one place a
//! request is routed, answered and logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use crate::assertion::Assertions;
use crate::clock::Clock;
use crate::config::Config;
use crate::cookies::CookieSettings;
use crate::crypto::{Keys, Random};
use crate::headscale::Headscale;
use crate::http_client::HttpClient;
use crate::oidc::rp::RelyingParty;
use crate::rate_limit::RateLimiter;
use crate::redirect::RedirectPolicy;
use crate::respond;
use crate::session::Sessions;
use crate::store::Store;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body headgate sends: fixed bytes or a stream from the upstream.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// The start path of the sign-in flow (fixed: Headplane's).
pub const START_PATH: &str = "/admin/oidc/start";
pub const LOGIN_PATH: &str = "/admin/login";

pub struct App {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Store,
    #[allow(dead_code)] // the gate (proxy) and Headscale calls of later issues use it
    pub(crate) http: HttpClient,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) random: Arc<dyn Random>,
    /// `X-Request-Id` values.
    pub(crate) request_ids: RequestIds,
    pub(crate) keys: Arc<Keys>,
    pub(crate) cookies: CookieSettings,
    pub(crate) sessions: Sessions,
    pub(crate) rp: Option<RelyingParty>,
    pub(crate) headscale: Option<Headscale>,
    pub(crate) redirects: RedirectPolicy,
    pub(crate) start_limiter: RateLimiter,
    /// The signed assertion: keys, minting, the JWKS.
    pub(crate) assertions: Assertions,
    /// The upstream the gate forwards to (None: no `upstream.url`, or a mode the gate does not serve yet).
    pub(crate) upstream: Option<crate::proxy::forward::Upstream>,
    pub(crate) bridge: Option<crate::proxy::bridge::Bridge>,
    pub(crate) policy: crate::policy::Policy,
    pub(crate) identity_names: crate::proxy::hygiene::IdentityNames,
    /// Open event streams and websocket tunnels, per session (S19).
    pub(crate) streams: Arc<crate::streams::Streams>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    pub(crate) health: crate::health::HealthInfo,
    /// When this configuration was loaded (RFC 3339), for `readyz`.
    loaded_at: String,
    /// Background tasks that hold this App (stopped when a reload replaces it).
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    /// The hosts the forward-auth verdicts protect: `server.base_url`'s and `forward_auth.hosts`.
    pub(crate) forward_auth_hosts: crate::policy::HostAllowlist,
    audit_tx: mpsc::Sender<crate::store::NewAuditEvent>,
}

/// What the caller must run next to the server (batching, pruning, re-checks).
pub struct Background {
    audit_rx: mpsc::Receiver<crate::store::NewAuditEvent>,
    touch_rx: mpsc::Receiver<(crate::store::SessionKey, i64)>,
    refresh_rx: mpsc::Receiver<crate::store::SessionKey>,
}

/// Everything a request handler needs to know about the connection.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub peer: SocketAddr,
    pub tls: bool,
}

impl App {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        http: HttpClient,
        clock: Arc<dyn Clock>,
        random: Arc<dyn Random>,
    ) -> (App, Background) {
        let keys = Arc::new(Keys::new(
            &config.server.cookie_secret,
            config.server.cookie_secret_previous.as_ref(),
        ));
        let cookies = CookieSettings {
            secure: config.server.cookie_secure,
            domain: config.server.cookie_domain.clone(),
        };
        let (touch_tx, touch_rx) = mpsc::channel(4096);
        let (refresh_tx, refresh_rx) = mpsc::channel(1024);
        let (audit_tx, audit_rx) = mpsc::channel(8192);
        let upstream = config
            .upstream
            .url
            .as_ref()
            .map(crate::proxy::forward::Upstream::new);
        let bridge = match (
            &upstream,
            config.upstream.headplane_login,
            &config.headscale,
        ) {
            (Some(u), crate::config::HeadplaneLogin::ApiKey, Some(h)) => {
                let host = config
                    .server
                    .base_url
                    .host_str()
                    .unwrap_or("localhost")
                    .to_string();
                let host = match config.server.base_url.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                };
                Some(crate::proxy::bridge::Bridge::new(
                    u.clone(),
                    h.api_key.clone(),
                    host,
                ))
            }
            _ => None,
        };
        let policy = crate::policy::Policy::from_config(&config);
        let mut sessions = Sessions::new(
            keys.clone(),
            cookies.clone(),
            store.clone(),
            random.clone(),
            touch_tx,
        );
        if let Some(o) = &config.oidc {
            sessions = sessions.with_refresh(refresh_tx, o.refresh_interval as i64);
        }
        let rp = config
            .oidc
            .as_ref()
            .map(|o| RelyingParty::new(Arc::new(o.clone()), http.clone(), &config.server.base_url));
        let headscale = config
            .headscale
            .as_ref()
            .map(|h| Headscale::new(http.clone(), h.url.clone(), h.api_key.clone()));
        // Hosts protected by forward-auth are return targets too (sign-in sends the person back to them).
        let mut redirect_domains = config.server.allowed_redirect_domains.clone();
        redirect_domains.extend(
            config
                .forward_auth
                .hosts
                .iter()
                .filter_map(|h| crate::policy::parse_host_port(h).ok())
                .map(|(h, _)| h),
        );
        let redirects = RedirectPolicy::new(&config.server.base_url, &redirect_domains);
        let forward_auth_hosts =
            crate::policy::HostAllowlist::new(&config.server.base_url, &config.forward_auth.hosts);
        let assertions = Assertions::new(&config, store.clone(), keys.clone(), random.clone());
        assertions.load_blocking(clock.now());
        let identity_names = crate::proxy::hygiene::IdentityNames::from_config(&config.headers);
        let request_ids = RequestIds::new(random.as_ref());
        let app = App {
            config,
            store,
            http,
            clock,
            random,
            request_ids,
            keys,
            cookies,
            sessions,
            rp,
            headscale,
            redirects,
            start_limiter: RateLimiter::new(30, 600, Duration::from_secs(60)),
            assertions,
            upstream,
            bridge,
            policy,
            identity_names,
            streams: Arc::default(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            health: crate::health::HealthInfo::default(),
            loaded_at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            tasks: std::sync::Mutex::default(),
            forward_auth_hosts,
            audit_tx,
        };
        (
            app,
            Background {
                audit_rx,
                touch_rx,
                refresh_rx,
            },
        )
    }

    /// Record an audit event off the request path (batched into one store write per second). A full queue
    /// is logged, never blocks a request.
    pub fn audit(&self, ev: crate::store::NewAuditEvent) {
        if self.audit_tx.try_send(ev).is_err() {
            tracing::warn!("audit queue full: an audit record was dropped");
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The signed-assertion service (`X-Headgate-Assertion`, the JWKS).
    pub fn assertions(&self) -> &Assertions {
        &self.assertions
    }

    /// An App for a reloaded configuration: the store, HTTP client, clock, randomness, open streams and
    /// metrics are this one's (sessions, streams and counters carry over); everything derived from the
    /// configuration is new.
    pub fn reloaded(&self, config: Arc<Config>) -> (App, Background) {
        let (mut app, bg) = App::new(
            config,
            self.store.clone(),
            self.http.clone(),
            self.clock.clone(),
            self.random.clone(),
        );
        app.streams = self.streams.clone();
        app.metrics = self.metrics.clone();
        (app, bg)
    }

    fn track(&self, h: tokio::task::JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(h.abort_handle());
    }

    /// Stop the background tasks that hold this App (after a reload replaced it).
    pub fn stop_background(&self) {
        for h in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }

    /// When this configuration was loaded.
    pub fn loaded_at(&self) -> &str {
        &self.loaded_at
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Open event streams and websocket tunnels (S19).
    pub fn streams(&self) -> &crate::streams::Streams {
        &self.streams
    }

    /// Start the background work: last-seen batching, pruning expired sessions, API-key re-checks.
    pub fn spawn_background(self: &Arc<Self>, bg: Background) {
        // The last-seen and audit batchers end on their own (flushing) once this App is dropped; the rest
        // hold the App and are stopped by `stop_background` when a reload replaces it.
        tokio::spawn(crate::session::run_touch_batcher(
            self.store.clone(),
            bg.touch_rx,
            Duration::from_secs(30),
        ));
        self.track(tokio::spawn(crate::refresh::run(
            self.clone(),
            bg.refresh_rx,
        )));
        tokio::spawn(run_audit_batcher(self.store.clone(), bg.audit_rx));
        self.track(tokio::spawn(self.streams.clone().run(
            self.store.clone(),
            self.clock.clone(),
            Duration::from_secs(self.config.server.stream_recheck_secs),
            self.store.changes(),
        )));
        let app = self.clone();
        self.track(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(300));
            loop {
                tick.tick().await;
                if let Err(e) = app
                    .store
                    .prune_rate_limits(app.now(), crate::auth::api_key::FAILURE_WINDOW_SECS)
                    .await
                {
                    tracing::warn!(error = %e, "could not prune rate-limit counters");
                }
                if let Err(e) = app.store.prune_replay(app.now()).await {
                    tracing::warn!(error = %e, "could not prune the replay cache");
                }
                match app.store.prune_expired(app.now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(count = n, "pruned expired sessions"),
                    Err(e) => tracing::warn!(error = %e, "could not prune expired sessions"),
                }
            }
        }));
        let app = self.clone();
        self.track(tokio::spawn(async move {
            // Gauges and the API key's expiry: read off the request path, once a minute.
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let now = app.now();
                // Counted on the expiry index: with 100,000 sessions, loading them all here would cost
                // hundreds of MiB for a moment, once a minute.
                if let Ok(active) = app.store.count_live_sessions(now).await {
                    app.metrics.set_sessions_active(active as i64);
                }
                crate::health::refresh_api_key_expiry(&app, now).await;
            }
        }));
        let app = self.clone();
        self.track(tokio::spawn(async move {
            // Keys changed by the CLI or another replica take effect; rotations and pruning happen when due.
            let every = Duration::from_secs(crate::assertion::RELOAD_EVERY as u64);
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = app.assertions.refresh(app.now()).await {
                    tracing::warn!(error = %e, "could not reload the assertion signing keys");
                }
            }
        }));
        let app = self.clone();
        self.track(tokio::spawn(async move {
            let every = Duration::from_secs(app.config.server.api_key_recheck_interval);
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                crate::auth::api_key::recheck_sessions(&app).await;
                // Headplane 0.7 can keep serving stale data after headgate's key is revoked: check the key
                // itself and drop the bridge session when Headscale no longer accepts it.
                if let (Some(bridge), Some(hs)) = (&app.bridge, &app.headscale)
                    && let Err(crate::headscale::HeadscaleError::InvalidKey) = hs.check_key().await
                {
                    tracing::error!(
                        "headscale.api_key is no longer accepted by Headscale: the bridge session is dropped; \
                         create a new key with `headscale apikeys create --expiration 90d`"
                    );
                    bridge.reset();
                }
            }
        }));
        if self.rp.is_some() {
            // Warm the discovery cache so the first login page offers SSO at once.
            let app = self.clone();
            self.track(tokio::spawn(async move {
                if let Some(rp) = &app.rp
                    && let Err(e) = rp.endpoints().await
                {
                    tracing::warn!("{e}");
                }
            }));
        }
    }

    /// Route, answer, log one line. Never leaks a query string into the log.
    pub async fn handle(&self, req: Request<Incoming>, conn: Conn) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let version = req.version();
        let request_id = self.request_ids.next();
        let (mut resp, route) = self.route(req, conn).await;
        let status = resp.status().as_u16();
        let (verdict, reason) = match resp.extensions().get::<crate::gate::Outcome>() {
            Some(o) => (crate::metrics::Verdict::from_word(o.verdict), o.reason),
            None => (crate::metrics::Verdict::from_status(status), route),
        };
        let class = route_class(route);
        self.metrics.request(class, verdict);
        if let Some(method) = sign_in_method(route) {
            let ok = sets_session(&resp, &self.sessions.cookie_name());
            self.metrics.sign_in(method, ok);
        }
        if let Ok(v) = http::HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        tracing::info!(
            target: "headgate::request",
            request_id = %request_id,
            peer = %conn.peer,
            method = %method,
            path = %crate::logging::escape(&path),
            version = %version_str(version),
            status,
            // Display, not the default Debug of a `&str` (quoted and escaped): these are fixed words.
            route = %route,
            verdict = %verdict.as_str(),
            reason = %reason,
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
        resp
    }

    /// The Prometheus text.
    pub fn metrics_response(&self) -> Response<Body> {
        let open = (
            self.streams.count(crate::streams::Kind::EventStream),
            self.streams.count(crate::streams::Kind::WebSocket),
        );
        Response::builder()
            .status(StatusCode::OK)
            .header(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .header(header::CACHE_CONTROL, "no-store")
            .body(full(self.metrics.render(open)))
            .expect("static response parts are valid")
    }

    async fn route(&self, req: Request<Incoming>, conn: Conn) -> (Response<Body>, &'static str) {
        let callback = self
            .config
            .oidc
            .as_ref()
            .map(|o| o.callback_path.as_str())
            .unwrap_or("/admin/oidc/callback");
        if req
            .extensions()
            .get::<crate::server::framing::FramingConflict>()
            .is_some()
        {
            // policy.md section 1: conflicting Content-Length/Transfer-Encoding (hyper resolved it out of
            // sight; see `server::framing`).
            return (
                respond::error_page(
                    StatusCode::BAD_REQUEST,
                    "Request refused",
                    "headgate refused this request (content_length_and_transfer_encoding).",
                    None,
                ),
                "content_length_and_transfer_encoding",
            );
        }
        let path = req.uri().path();
        let m = req.method().clone();
        use crate::auth;
        match (&m, path) {
            (_, "/_headgate/healthz") => (crate::health::healthz(), "healthz"),
            (&Method::GET | &Method::HEAD, "/_headgate/readyz") => {
                (crate::health::readyz(self).await, "readyz")
            }
            (&Method::GET | &Method::HEAD, "/_headgate/metrics")
                if self.config.server.metrics_listen.is_none() =>
            {
                (self.metrics_response(), "metrics")
            }
            (&Method::GET | &Method::HEAD, crate::assertion::JWKS_PATH) => {
                (self.assertions.jwks_response(), "jwks")
            }
            (&Method::GET | &Method::HEAD, crate::pages::STYLESHEET_PATH) => {
                (stylesheet(), "static")
            }
            (&Method::GET | &Method::HEAD, "/_headgate/users") => (
                crate::admin::users_page::get(self, &req).await,
                "users_page",
            ),
            (&Method::POST, "/_headgate/users") => (
                crate::admin::users_page::post(self, req).await,
                "users_action",
            ),
            (_, p) if p.starts_with(crate::forward_auth::PREFIX) => {
                let started = Instant::now();
                let (mut r, reason) = crate::forward_auth::verdict(self, req, conn).await;
                self.metrics.forward_auth_latency(started.elapsed());
                let verdict = match r.status().as_u16() {
                    200 => "allow",
                    401 | 302 | 303 => "login",
                    500.. => "error",
                    _ => "deny",
                };
                r.extensions_mut()
                    .insert(crate::gate::Outcome { verdict, reason });
                (r, "forward_auth")
            }
            (&Method::POST, crate::oidc::backchannel::PATH) => (
                crate::oidc::backchannel::handle(self, req).await,
                "backchannel_logout",
            ),
            (&Method::GET | &Method::HEAD, "/_headgate/whoami") => {
                (auth::whoami(self, &req).await, "whoami")
            }
            (&Method::GET | &Method::HEAD, "/admin/login" | "/admin/login.data") => {
                (auth::login_page(self, &req, conn).await, "login_page")
            }
            (&Method::POST, "/admin/login" | "/admin/login.data") => {
                (auth::api_key::login(self, req, conn).await, "api_key_login")
            }
            (&Method::GET | &Method::HEAD, START_PATH) => {
                (auth::oidc_start(self, &req, conn).await, "oidc_start")
            }
            (&Method::GET | &Method::HEAD, p) if p == callback => {
                (auth::oidc_callback(self, &req).await, "oidc_callback")
            }
            (&Method::POST, "/admin/logout" | "/admin/logout.data") => {
                (auth::logout(self, &req).await, "logout")
            }
            (&Method::GET | &Method::HEAD, "/admin/logout" | "/admin/logout.data") => (
                respond::redirect(StatusCode::FOUND, "/admin/"),
                "logout_get",
            ),
            (&Method::GET | &Method::HEAD, crate::onboarding::ONBOARDING_PATH) => {
                (crate::onboarding::page(self, &req).await, "onboarding")
            }
            (&Method::POST, crate::onboarding::ONBOARDING_PATH) => {
                (crate::onboarding::post(self, req).await, "onboarding_post")
            }
            (&Method::GET | &Method::HEAD, crate::onboarding::STATUS_PATH) => (
                crate::onboarding::status(self, &req).await,
                "onboarding_status",
            ),
            (&Method::GET | &Method::HEAD, crate::onboarding::KEYS_PATH) => {
                (crate::onboarding::keys_page(self, &req).await, "own_keys")
            }
            (&Method::POST, crate::onboarding::KEYS_PATH) => (
                crate::onboarding::keys_post(self, req).await,
                "own_keys_post",
            ),
            (&Method::GET | &Method::HEAD, "/" | "/admin") => {
                (respond::redirect(StatusCode::FOUND, "/admin/"), "root")
            }
            (&Method::GET | &Method::HEAD, "/admin/") if self.config.upstream.url.is_none() => {
                (auth::signed_in_page(self, &req).await, "signed_in")
            }
            _ if self.upstream.is_some() => {
                let (mut r, o) = crate::gate::handle(self, req, conn).await;
                r.extensions_mut().insert(o);
                (r, "proxy")
            }
            _ => (not_found(), "not_found"),
        }
    }
}

/// The metrics' route class of a route name.
/// Request ids: unique within a process (a counter), unpredictable across processes (a random key), and
/// made without a system call on the request path (unlike reading the OS's randomness each time).
pub(crate) struct RequestIds {
    key: u64,
    next: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    pub(crate) fn new(random: &dyn Random) -> RequestIds {
        let mut key = [0u8; 8];
        random.fill(&mut key);
        RequestIds {
            key: u64::from_be_bytes(key),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// 16 hex digits. SplitMix64's finalizer is a bijection of `u64`, and so is `key + n × odd`: distinct
    /// `n` give distinct ids.
    pub(crate) fn next(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut z = self.key.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        format!("{z:016x}")
    }
}

/// The log's name for an HTTP version.
fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

fn route_class(route: &str) -> crate::metrics::RouteClass {
    use crate::metrics::RouteClass as C;
    match route {
        "proxy" => C::Proxy,
        r if r.starts_with("forward_auth") => C::ForwardAuth,
        "healthz" | "readyz" | "metrics" | "jwks" | "static" => C::Internal,
        "login_page" | "api_key_login" | "oidc_start" | "oidc_callback" | "logout"
        | "logout_get" | "backchannel_logout" => C::Auth,
        _ => C::Headgate,
    }
}

fn sign_in_method(route: &str) -> Option<crate::metrics::SignIn> {
    match route {
        "oidc_callback" => Some(crate::metrics::SignIn::Oidc),
        "api_key_login" => Some(crate::metrics::SignIn::ApiKey),
        _ => None,
    }
}

/// Whether a response starts a session (sets the session cookie to a value).
fn sets_session(r: &Response<Body>, cookie: &str) -> bool {
    r.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|c| {
            c.strip_prefix(cookie)
                .and_then(|rest| rest.strip_prefix('='))
                .is_some_and(|v| !v.is_empty() && !v.starts_with(';'))
        })
}

async fn run_audit_batcher(store: Store, mut rx: mpsc::Receiver<crate::store::NewAuditEvent>) {
    let mut batch = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(e) => batch.push(e),
                None => break,
            },
            _ = tick.tick() => {
                if !batch.is_empty()
                    && let Err(e) = store.append_audit(std::mem::take(&mut batch)).await
                {
                    tracing::error!(error = %e, "could not write audit records");
                }
            }
        }
    }
    if !batch.is_empty() {
        let _ = store.append_audit(batch).await;
    }
}

fn not_found() -> Response<Body> {
    respond::json(
        StatusCode::NOT_FOUND,
        serde_json::json!({ "error": "not_found" }),
    )
}

fn stylesheet() -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/css; charset=utf-8")
        .header(header::CACHE_CONTROL, "public, max-age=3600")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(full(crate::pages::STYLESHEET))
        .expect("static response parts are valid")
}
