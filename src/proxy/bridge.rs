//! The API-key bridge (`upstream.headplane_login = "api_key"`): headgate signs in to Headplane itself with
//! `headscale.api_key`, keeps the `_hp_auth` session server-side, attaches it only to allowed requests on
//! non-public rows, and signs in again — single-flight, with backoff — when Headplane says the session is
//! gone. `_hp_auth` never reaches the browser (the response hygiene drops it) and the API key is scrubbed
//! from every bridged answer ([`Bridge::finish`]).
//!
//! # "Session gone": every signal of `spec/headplane.md` and `../shared/headplane/observed/`
//! | signal | Headplane answers | detected by |
//! |---|---|---|
//! | [`Signal::ClearedCookie`] | a page load (`302 Location: /admin/login`), a full `.data` load (`202`, single-fetch redirect to `/login`) or a document form post (0.7; 0.6.3 with a garbled cookie) for an expired, garbled, logged-out or key-revoked session: `Set-Cookie: _hp_auth=; Max-Age=86400; …; Expires=Thu, 01 Jan 1970…` (main and v063 `e1`–`e4`, `e6`, `e7`, `e8`, `e10`, `e13`, `e14`, `f2`) | the `_hp_auth` cookie set empty, or with `Max-Age<=0`, or expiring in 1970 |
//! | [`Signal::LoginRedirect`] | a redirect to Headplane's login page without the clearing cookie | `3xx` whose `Location` path is `/admin/login` (or `/login`) |
//! | [`Signal::DataLoginRedirect`] | the single-fetch redirect to `/login` without the clearing cookie | `202` + `x-remix-response` whose body redirects to `/login` |
//! | [`Signal::Unauthorized`] | `401` | the status |
//! | [`Signal::HeadscaleRefusedKey`] | Headscale refused the session's key: `502` with `"statusCode",401` inside (leaf-only `.data` loads and `.data` posts: v063 `e9`, `e11`, `e15`, `x6`, `x9`, main `e9`, and 0.7 leaf-only loads with a cold cache) or 0.6.3's HTML error page for a document post (v063 `e10`) | `502` whose body names status code `401` |
//! | [`Signal::SessionProbeSaysGone`] | `500` "SanitizedError" on a `.data` request with an ended or garbled session (leaf-only loads and `.data` posts: main `e5`, `e15`, `x6`, `x8`, v063 `e5`, `x8`) | ambiguous (any loader error looks the same), so headgate asks Headplane: `GET /admin/login` with the session answers `302` while it lives and the login page (`200`) once it is gone |
//!
//! Not detectable from an answer: Headplane 0.7 serving cached data to a leaf-only `.data` load after the
//! key was revoked at Headscale (`200`, main `e11`, `x9`). For that the server re-checks `headscale.api_key`
//! at Headscale every `server.api_key_recheck_interval` and drops the session ([`Bridge::reset`]).
//!
//! After a signal the session is dropped and a GET/HEAD is sent once more with a new session; any other
//! method is never replayed (S10): the bridge renews at once and the person gets a 409 page asking them to
//! submit again. A new session that Headplane ends before it served one request counts as a failed sign-in,
//! so a Headplane that keeps refusing headgate is met with backoff and a 502/503 page, never a loop.
//!
//! No lock is held across an `.await`: the state is a std mutex touched only between awaits; waiters for a
//! sign-in in progress wait on a `watch` channel.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::watch;

use super::forward::{self, Upstream};
use crate::app::Body;
use crate::config::Secret;
use crate::respond;

/// How long a sign-in to Headplane may take.
const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the "is the session alive" probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff after a failed sign-in: doubles from 1 s up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Largest bridged response body headgate reads (to check it for "session gone" and scrub the API key).
const MAX_CHECKED_BYTES: usize = 32 * 1024 * 1024;
/// Headplane's login page.
const LOGIN_PATH: &str = "/admin/login";
/// What replaces the API key in bridged answers.
const HIDDEN: &[u8] = b"[api key hidden by headgate]";

#[derive(Debug, Clone, thiserror::Error)]
pub enum BridgeError {
    #[error(
        "Headplane refused headscale.api_key at POST /admin/login (is the key valid and unexpired? `headscale apikeys list`)"
    )]
    Refused,
    #[error("Headplane could not be reached for the bridge sign-in: {0}")]
    Unreachable(String),
    #[error("the bridge sign-in is backing off after a failure ({0} s left)")]
    BackingOff(u64),
}

/// Why headgate decided that Headplane no longer accepts its session (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    ClearedCookie,
    LoginRedirect,
    DataLoginRedirect,
    Unauthorized,
    HeadscaleRefusedKey,
    SessionProbeSaysGone,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::ClearedCookie => "cleared_cookie",
            Signal::LoginRedirect => "login_redirect",
            Signal::DataLoginRedirect => "data_login_redirect",
            Signal::Unauthorized => "unauthorized",
            Signal::HeadscaleRefusedKey => "headscale_refused_key",
            Signal::SessionProbeSaysGone => "server_error_session_gone",
        }
    }
}

/// What an answer says about the session it was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Alive,
    Gone(Signal),
    /// A `.data` `500`: ask Headplane whether the session lives ([`Bridge::probe`]).
    Ask,
}

struct Current {
    /// `_hp_auth=<value>`.
    pair: String,
    generation: u64,
    /// Headplane has served at least one request with it (or the liveness probe said yes).
    confirmed: bool,
}

struct State {
    cookie: Option<Current>,
    generation: u64,
    signing_in: bool,
    /// Failed sign-ins (and new sessions ended before their first use) since the last confirmed session.
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<BridgeError>,
}

pub struct Bridge {
    upstream: Upstream,
    api_key: Secret,
    /// The API key in every encoding the scrubber removes, longest first.
    needles: Vec<Vec<u8>>,
    /// The `Host` Headplane sees for the sign-in (the public one, so its `Origin` logic stays consistent).
    host: String,
    state: Mutex<State>,
    done: watch::Sender<u64>,
}

/// The session cookie to attach, and which generation it is (to invalidate exactly that one).
#[derive(Debug, Clone)]
pub struct Ticket {
    pub cookie: String,
    pub generation: u64,
}

/// A bridged request headgate answers itself (the page to send and the reason for the log line).
pub struct Refusal {
    pub response: Response<Body>,
    pub reason: &'static str,
}

/// A bridged answer read for checking: whole, or (an event stream) with its body still streaming.
struct Answer {
    parts: http::response::Parts,
    body: Held,
}

enum Held {
    Whole(Bytes),
    Stream(Incoming),
}

impl Bridge {
    pub fn new(upstream: Upstream, api_key: Secret, host: String) -> Self {
        let (done, _) = watch::channel(0);
        let needles = key_needles(api_key.expose());
        Bridge {
            upstream,
            api_key,
            needles,
            host,
            state: Mutex::new(State {
                cookie: None,
                generation: 0,
                signing_in: false,
                failures: 0,
                retry_at: None,
                last_error: None,
            }),
            done,
        }
    }

    /// The current session, signing in first when there is none (one sign-in at a time; others wait).
    pub async fn ticket(&self) -> Result<Ticket, BridgeError> {
        loop {
            let mut rx = self.done.subscribe();
            let lead = {
                let mut st = self.state.lock().unwrap();
                if let Some(c) = &st.cookie {
                    return Ok(Ticket {
                        cookie: c.pair.clone(),
                        generation: c.generation,
                    });
                }
                if let Some(at) = st.retry_at
                    && Instant::now() < at
                {
                    return Err(BridgeError::BackingOff(
                        (at - Instant::now()).as_secs().max(1),
                    ));
                }
                if st.signing_in {
                    false
                } else {
                    st.signing_in = true;
                    true
                }
            };
            if lead {
                let result = self.sign_in().await;
                let mut st = self.state.lock().unwrap();
                st.signing_in = false;
                st.generation += 1;
                let generation = st.generation;
                match result {
                    Ok(c) => {
                        st.cookie = Some(Current {
                            pair: c,
                            generation,
                            confirmed: false,
                        });
                        st.retry_at = None;
                        st.last_error = None;
                        tracing::info!("the bridge signed in to Headplane");
                    }
                    Err(e) => {
                        let backoff = fail(&mut st);
                        tracing::error!("{e}; retrying in {} s", backoff.as_secs());
                        st.last_error = Some(e.clone());
                        drop(st);
                        let _ = self.done.send(generation);
                        return Err(e);
                    }
                }
                drop(st);
                let _ = self.done.send(generation);
                continue;
            }
            // Someone else is signing in: wait for them, then look again.
            let _ = rx.changed().await;
            let st = self.state.lock().unwrap();
            if st.cookie.is_none()
                && let Some(e) = st.last_error.clone()
            {
                return Err(e);
            }
        }
    }

    /// Forget the session of `generation` (Headplane said it is gone); a newer one is kept. A session that
    /// never served a request counts as a failed sign-in (backoff), so a Headplane that ends every new
    /// session at once cannot make headgate sign in on every request.
    pub fn invalidate(&self, generation: u64) {
        let mut st = self.state.lock().unwrap();
        let Some(c) = &st.cookie else { return };
        if c.generation != generation {
            return;
        }
        let confirmed = c.confirmed;
        st.cookie = None;
        if confirmed {
            tracing::info!(
                "Headplane ended the bridge session; signing in again on the next request"
            );
        } else {
            let backoff = fail(&mut st);
            tracing::error!(
                "Headplane ended the bridge session before it served a request (do all Headplane replicas share \
                 one server.cookie_secret? is its clock right?); signing in again in {} s",
                backoff.as_secs()
            );
        }
    }

    /// The session of `generation` served a request: sign-ins are healthy again.
    pub fn confirm(&self, generation: u64) {
        let mut st = self.state.lock().unwrap();
        if let Some(c) = st.cookie.as_mut()
            && c.generation == generation
            && !c.confirmed
        {
            c.confirmed = true;
            st.failures = 0;
        }
    }

    /// Forget any session (the key changed or was re-checked as invalid).
    pub fn reset(&self) {
        self.state.lock().unwrap().cookie = None;
    }

    async fn sign_in(&self) -> Result<String, BridgeError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("api_key", self.api_key.expose())
            .finish();
        let req = Request::builder()
            .method(Method::POST)
            .header(header::HOST, self.host_value())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::CONTENT_LENGTH, body.len())
            .body(())
            .map_err(|e| BridgeError::Unreachable(e.to_string()))?;
        let (parts, ()) = req.into_parts();
        let resp = tokio::time::timeout(
            SIGN_IN_TIMEOUT,
            self.upstream
                .send(parts, LOGIN_PATH, crate::app::full(body)),
        )
        .await
        .map_err(|_| {
            BridgeError::Unreachable(format!("no answer within {} s", SIGN_IN_TIMEOUT.as_secs()))
        })?
        .map_err(|e| BridgeError::Unreachable(e.to_string()))?;
        let cookie = resp
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter(|c| !clears_hp_auth(c))
            .filter_map(|c| c.split(';').next())
            .map(str::trim)
            .find(|c| c.starts_with("_hp_auth=") && c.len() > "_hp_auth=".len())
            .map(str::to_string);
        match (resp.status(), cookie) {
            (s, Some(c)) if s.is_redirection() || s == StatusCode::ACCEPTED => Ok(c),
            _ => Err(BridgeError::Refused),
        }
    }

    fn host_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.host).unwrap_or(HeaderValue::from_static("localhost"))
    }

    /// Whether Headplane still accepts the session: `GET /admin/login` answers a redirect into the app while
    /// it lives and the login page once it is gone (`spec/headplane.md`; it does not re-check the key at
    /// Headscale). `None`: no usable answer.
    pub async fn probe(&self, t: &Ticket) -> Option<bool> {
        let mut b = Request::builder()
            .method(Method::GET)
            .header(header::HOST, self.host_value())
            .header(header::ACCEPT, "text/html");
        if let Ok(v) = HeaderValue::from_str(&t.cookie) {
            b = b.header(header::COOKIE, v);
        }
        let (parts, ()) = b.body(()).ok()?.into_parts();
        let resp = tokio::time::timeout(
            PROBE_TIMEOUT,
            self.upstream.send(parts, LOGIN_PATH, crate::app::full("")),
        )
        .await
        .ok()?
        .ok()?;
        let (parts, body) = resp.into_parts();
        // Drain (small) so the connection can be reused.
        let _ = tokio::time::timeout(PROBE_TIMEOUT, Limited::new(body, 1 << 20).collect()).await;
        if cleared_cookie(&parts.headers) {
            return Some(false);
        }
        if parts.status.is_redirection() {
            return Some(!location_is_login(&parts.headers));
        }
        if parts.status == StatusCode::OK {
            return Some(false);
        }
        None
    }

    /// Finish a bridged request whose answer is `resp`: check it for "session gone" (renewing, and sending
    /// a GET/HEAD once more — `retry` holds its method and headers; `None` never replays), scrub the API key
    /// from what goes back, and drop the upstream's reason phrase. `Err` is a page headgate answers itself.
    pub async fn finish(
        &self,
        path_and_query: &str,
        ticket: Ticket,
        resp: Response<Incoming>,
        retry: Option<(Method, HeaderMap)>,
    ) -> Result<Response<Body>, Refusal> {
        let answer = self.read(resp).await?;
        let Some(signal) = self.gone(&answer, &ticket).await else {
            self.confirm(ticket.generation);
            return Ok(self.scrubbed(answer));
        };
        tracing::info!(
            signal = signal.as_str(),
            "Headplane no longer accepts the bridge session"
        );
        self.invalidate(ticket.generation);
        let Some((method, mut headers)) = retry else {
            // Never replay a state-changing request: renew now, so the person's second submit goes through.
            let t2 = self.ticket().await.map_err(|e| unavailable(&e))?;
            if self.probe(&t2).await != Some(true) {
                self.invalidate(t2.generation);
                return Err(ended_at_once());
            }
            self.confirm(t2.generation);
            return Err(Refusal {
                response: private(respond::error_page(
                    StatusCode::CONFLICT,
                    "Please try again",
                    "headgate had to renew its session with Headplane, so your change was not made.",
                    Some("Go back and submit it again."),
                )),
                reason: "bridge_session_renewed",
            });
        };
        let t2 = self.ticket().await.map_err(|e| unavailable(&e))?;
        super::hygiene::strip_cookies(&mut headers, |n| n == "_hp_auth");
        attach(&mut headers, &t2);
        let mut b = Request::builder().method(method);
        if let Some(h) = b.headers_mut() {
            *h = headers;
        }
        let (parts, ()) = b.body(()).expect("a request from valid parts").into_parts();
        let resp = match self
            .upstream
            .send(parts, path_and_query, crate::app::full(""))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                return Err(Refusal {
                    response: private(upstream_unavailable()),
                    reason: "upstream",
                });
            }
        };
        let answer = self.read(resp).await?;
        if let Some(again) = self.gone(&answer, &t2).await {
            tracing::error!(
                signal = again.as_str(),
                "Headplane refused the bridge's new session at once"
            );
            self.invalidate(t2.generation);
            return Err(ended_at_once());
        }
        self.confirm(t2.generation);
        Ok(self.scrubbed(answer))
    }

    /// Read a bridged answer whole (event streams: headers only), refusing what cannot be checked.
    async fn read(&self, resp: Response<Incoming>) -> Result<Answer, Refusal> {
        let (parts, body) = resp.into_parts();
        let encoded = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
        if encoded {
            tracing::error!(
                "Headplane compressed a bridged answer although headgate asked for none; refusing it"
            );
            return Err(unchecked());
        }
        let is_stream = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.trim_start().starts_with("text/event-stream"));
        if is_stream {
            return Ok(Answer {
                parts,
                body: Held::Stream(body),
            });
        }
        match tokio::time::timeout(
            forward::RESPONSE_TIMEOUT,
            Limited::new(body, MAX_CHECKED_BYTES).collect(),
        )
        .await
        {
            Ok(Ok(b)) => Ok(Answer {
                parts,
                body: Held::Whole(b.to_bytes()),
            }),
            _ => {
                tracing::error!(
                    "a bridged response body could not be read whole (too large, broken or too slow)"
                );
                Err(unchecked())
            }
        }
    }

    /// The "session gone" signal in `a`, asking Headplane when the answer alone cannot tell.
    async fn gone(&self, a: &Answer, t: &Ticket) -> Option<Signal> {
        let body = match &a.body {
            Held::Whole(b) => Some(b.as_ref()),
            Held::Stream(_) => None,
        };
        match classify(a.parts.status, &a.parts.headers, body) {
            Verdict::Alive => None,
            Verdict::Gone(s) => Some(s),
            Verdict::Ask => match self.probe(t).await {
                Some(false) => Some(Signal::SessionProbeSaysGone),
                _ => None,
            },
        }
    }

    /// The answer for the browser: the API key replaced in the body and header values, the upstream's
    /// reason phrase dropped (hyper writes the canonical one).
    fn scrubbed(&self, a: Answer) -> Response<Body> {
        let Answer { mut parts, body } = a;
        parts.extensions.remove::<hyper::ext::ReasonPhrase>();
        let names: Vec<HeaderName> = parts.headers.keys().cloned().collect();
        for name in names {
            let values: Vec<HeaderValue> = parts.headers.get_all(&name).iter().cloned().collect();
            if !values
                .iter()
                .any(|v| find_any(v.as_bytes(), &self.needles).is_some())
            {
                continue;
            }
            parts.headers.remove(&name);
            for v in values {
                let clean = replace_needles(v.as_bytes(), &self.needles, HIDDEN);
                if let Ok(v) = HeaderValue::from_bytes(&clean) {
                    parts.headers.append(&name, v);
                }
            }
        }
        match body {
            Held::Stream(b) => {
                // An open event stream cannot be read whole: each form of the key is replaced as it flows.
                parts.headers.remove(header::CONTENT_LENGTH);
                let mut body = forward::stream_body(b);
                for needle in self.needles.iter().filter(|n| !n.is_empty()) {
                    body =
                        crate::proxy::scrub::ScrubBody::new(body, needle.clone(), HIDDEN).boxed();
                }
                Response::from_parts(parts, body)
            }
            Held::Whole(bytes) => {
                let out = if find_any(&bytes, &self.needles).is_some() {
                    Bytes::from(replace_needles(&bytes, &self.needles, HIDDEN))
                } else {
                    bytes
                };
                parts.headers.remove(header::TRANSFER_ENCODING);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
                Response::from_parts(
                    parts,
                    Full::new(out).map_err(|never| match never {}).boxed(),
                )
            }
        }
    }
}

/// Count a failure and set the backoff: 1 s, 2 s, 4 s … up to [`MAX_BACKOFF`].
fn fail(st: &mut State) -> Duration {
    st.failures = st.failures.saturating_add(1);
    let backoff = Duration::from_secs(1u64 << (st.failures - 1).min(6)).min(MAX_BACKOFF);
    st.retry_at = Some(Instant::now() + backoff);
    backoff
}

/// Add the bridge's session to a request's `Cookie` (after the client's `_hp_auth` was removed).
pub fn attach(h: &mut HeaderMap, t: &Ticket) {
    let merged = match h.get(header::COOKIE).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing}; {}", t.cookie),
        _ => t.cookie.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&merged) {
        h.insert(header::COOKIE, v);
    }
}

/// S10: what headgate itself answers to a signed-in person is private too.
fn private(mut r: Response<Body>) -> Response<Body> {
    super::hygiene::mark_private(r.headers_mut());
    r
}

/// The page for a bridge that has no session to offer: 503 while backing off (with `Retry-After`), else 502.
pub fn unavailable(e: &BridgeError) -> Refusal {
    tracing::error!("{e}");
    let (status, retry_after) = match e {
        BridgeError::BackingOff(s) => (StatusCode::SERVICE_UNAVAILABLE, Some(*s)),
        _ => (StatusCode::BAD_GATEWAY, None),
    };
    let mut r = respond::error_page(
        status,
        "Headplane is unavailable",
        "headgate could not sign in to Headplane.",
        Some(
            "Operators: check headscale.api_key and that Headplane is running (see headgate's log).",
        ),
    );
    if let Some(s) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    Refusal {
        response: private(r),
        reason: "bridge_login",
    }
}

fn ended_at_once() -> Refusal {
    Refusal {
        response: private(respond::error_page(
            StatusCode::BAD_GATEWAY,
            "Headplane is unavailable",
            "Headplane ended headgate's new session at once.",
            Some(
                "Operators: see headgate's log (several Headplane replicas with different cookie secrets?).",
            ),
        )),
        reason: "bridge_session_refused",
    }
}

fn upstream_unavailable() -> Response<Body> {
    respond::error_page(
        StatusCode::BAD_GATEWAY,
        "The application is unavailable",
        "headgate could not get an answer from the application behind it.",
        Some("Try again in a moment."),
    )
}

fn unchecked() -> Refusal {
    Refusal {
        response: private(respond::error_page(
            StatusCode::BAD_GATEWAY,
            "The application's answer could not be checked",
            "headgate refuses to pass on an answer it could not check.",
            None,
        )),
        reason: "upstream_body",
    }
}

// ----- recognising "session gone" -----

/// What an answer says about the bridge session (see the module's table). `body` is `None` for a stream.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: Option<&[u8]>) -> Verdict {
    if cleared_cookie(headers) {
        return Verdict::Gone(Signal::ClearedCookie);
    }
    if status.is_redirection() && location_is_login(headers) {
        return Verdict::Gone(Signal::LoginRedirect);
    }
    if status == StatusCode::UNAUTHORIZED {
        return Verdict::Gone(Signal::Unauthorized);
    }
    let remix = headers
        .get("x-remix-response")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"yes"));
    let body = body.unwrap_or_default();
    if status == StatusCode::ACCEPTED && remix && redirects_to_login(body) {
        return Verdict::Gone(Signal::DataLoginRedirect);
    }
    if status == StatusCode::BAD_GATEWAY && names_status_401(body) {
        return Verdict::Gone(Signal::HeadscaleRefusedKey);
    }
    if status == StatusCode::INTERNAL_SERVER_ERROR && remix {
        return Verdict::Ask;
    }
    Verdict::Alive
}

/// Whether a `Set-Cookie` value clears `_hp_auth` (empty value, `Max-Age<=0`, or an `Expires` in 1970).
fn clears_hp_auth(set_cookie: &str) -> bool {
    let mut attrs = set_cookie.split(';');
    let Some((name, value)) = attrs.next().and_then(|p| p.split_once('=')) else {
        return false;
    };
    if name.trim() != "_hp_auth" {
        return false;
    }
    let value = value.trim();
    if value.is_empty() || value == "\"\"" {
        return true;
    }
    attrs.any(|a| {
        let (k, v) = a.split_once('=').unwrap_or((a, ""));
        let (k, v) = (k.trim(), v.trim());
        (k.eq_ignore_ascii_case("max-age") && v.parse::<i64>().is_ok_and(|n| n <= 0))
            || (k.eq_ignore_ascii_case("expires") && v.contains("1970"))
    })
}

fn cleared_cookie(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(clears_hp_auth)
}

/// `Location` points at Headplane's login page (absolute or not, any query).
fn location_is_login(headers: &HeaderMap) -> bool {
    let Some(l) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let path = match l.find("://") {
        Some(i) => {
            let rest = &l[i + 3..];
            rest.find('/').map(|j| &rest[j..]).unwrap_or("/")
        }
        None => l,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = path.trim_end_matches('/');
    path == LOGIN_PATH || path == "/login"
}

/// A single-fetch redirect (loader or action form) to `/login`.
fn redirects_to_login(body: &[u8]) -> bool {
    let needle = br#""redirect","/login"#;
    let mut at = 0;
    while let Some(i) = find(&body[at..], needle) {
        let end = at + i + needle.len();
        if matches!(body.get(end), Some(b'"') | Some(b'?')) {
            return true;
        }
        at = end;
    }
    false
}

/// Headplane's report of a Headscale call refused with 401: `"statusCode",401` in a turbo-stream,
/// `"statusCode": 401` in the HTML error page (possibly as `&quot;`).
fn names_status_401(body: &[u8]) -> bool {
    let needle = b"statusCode";
    let mut at = 0;
    while let Some(i) = find(&body[at..], needle) {
        let mut j = at + i + needle.len();
        loop {
            let rest = &body[j..];
            if rest.starts_with(b"&quot;") {
                j += 6;
            } else if rest.starts_with(b"&#34;") {
                j += 5;
            } else if matches!(
                rest.first(),
                Some(b'"' | b'\\' | b':' | b',' | b' ' | b'\n')
            ) {
                j += 1;
            } else {
                break;
            }
        }
        if body[j..].starts_with(b"401") && !body.get(j + 3).is_some_and(u8::is_ascii_digit) {
            return true;
        }
        at = at + i + needle.len();
    }
    false
}

// ----- scrubbing the API key -----

/// The API key as it could show up in an answer: raw, percent-encoded, JSON-escaped and base64 (standard
/// and URL-safe, at each of the three byte alignments a substring can have), for the whole key and for its
/// secret part (after the prefix). Keys shorter than 8 characters are not scrubbed (too easy to confuse).
pub fn key_needles(key: &str) -> Vec<Vec<u8>> {
    let mut parts = vec![key.to_string()];
    let secret = if key.starts_with("hskey-") {
        key.rsplit('-').next().unwrap_or(key)
    } else {
        key.split_once('.').map(|(_, s)| s).unwrap_or(key)
    };
    if secret.len() >= 16 && secret != key {
        parts.push(secret.to_string());
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for p in parts.iter().filter(|p| p.len() >= 8) {
        let b = p.as_bytes();
        out.push(b.to_vec());
        let pct: String = b
            .iter()
            .map(|c| {
                if c.is_ascii_alphanumeric() || b"-._~".contains(c) {
                    (*c as char).to_string()
                } else {
                    format!("%{c:02X}")
                }
            })
            .collect();
        out.push(pct.clone().into_bytes());
        out.push(pct.to_ascii_lowercase().into_bytes());
        let json = serde_json::Value::String(p.clone()).to_string();
        let json = &json[1..json.len() - 1];
        out.push(json.as_bytes().to_vec());
        out.push(json.replace('/', "\\/").into_bytes());
        for shift in 0..3 {
            let run = &b[shift.min(b.len())..];
            let run = &run[..run.len() - run.len() % 3];
            if run.len() < 12 {
                continue;
            }
            for engine in [
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ] {
                out.push(engine.encode(run).into_bytes());
            }
        }
    }
    out.sort_by_key(|n| std::cmp::Reverse(n.len()));
    out.dedup();
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn find_any(hay: &[u8], needles: &[Vec<u8>]) -> Option<usize> {
    needles.iter().filter_map(|n| find(hay, n)).min()
}

/// Replace every occurrence of any needle (longest first at each position).
fn replace_needles(hay: &[u8], needles: &[Vec<u8>], with: &[u8]) -> Vec<u8> {
    let mut first = [false; 256];
    for n in needles {
        if let Some(b) = n.first() {
            first[*b as usize] = true;
        }
    }
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    'outer: while i < hay.len() {
        if first[hay[i] as usize] {
            for n in needles {
                if hay[i..].starts_with(n) {
                    out.extend_from_slice(with);
                    i += n.len();
                    continue 'outer;
                }
            }
        }
        out.push(hay[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    const CLEARING: &str = "_hp_auth=; Max-Age=86400; Path=/admin; Expires=Thu, 01 Jan 1970 00:00:00 GMT; SameSite=Lax";

    #[test]
    fn every_observed_signal_is_recognised() {
        let s = |n: u16| StatusCode::from_u16(n).unwrap();
        // main/e1, e13 (document): 302 to the login page with the clearing cookie.
        let doc = h(&[("location", "/admin/login"), ("set-cookie", CLEARING)]);
        assert_eq!(
            classify(s(302), &doc, Some(b"")),
            Verdict::Gone(Signal::ClearedCookie)
        );
        // main/e2, e8, e14 (full .data): 202 single-fetch redirect with the clearing cookie.
        let sfr = br#"[["SingleFetchRedirect",1],{"_2":3,"_4":5,"_6":7,"_8":9,"_10":9},"redirect","/login","status",302,"revalidate",true,"reload",false,"replace"]"#;
        let data = h(&[
            ("content-type", "text/x-script"),
            ("set-cookie", CLEARING),
            ("x-remix-response", "yes"),
        ]);
        assert_eq!(
            classify(s(202), &data, Some(sfr)),
            Verdict::Gone(Signal::ClearedCookie)
        );
        // The same without the cookie.
        let data_nc = h(&[
            ("content-type", "text/x-script"),
            ("x-remix-response", "yes"),
        ]);
        assert_eq!(
            classify(s(202), &data_nc, Some(sfr)),
            Verdict::Gone(Signal::DataLoginRedirect)
        );
        // A redirect to the login page without the cookie, absolute or with a query.
        for l in [
            "/admin/login",
            "http://hp:3000/admin/login?s=x",
            "/admin/login/",
        ] {
            assert_eq!(
                classify(s(302), &h(&[("location", l)]), Some(b"")),
                Verdict::Gone(Signal::LoginRedirect),
                "{l}"
            );
        }
        assert_eq!(
            classify(s(401), &h(&[]), Some(b"")),
            Verdict::Gone(Signal::Unauthorized)
        );
        // v063/x6, x9, e15, main/e09: 502 with Headscale's 401 inside.
        let e = br#"[{"_1":2},"routes/machines/overview",{"_3":4},"error",["ErrorResponse",5,13,14],{"_6":7,"_8":9,"_10":11,"_12":-5},"requestUrl","GET v1/node","statusCode",401,"rawData","Unauthorized","data",502,"Bad Gateway"]"#;
        assert_eq!(
            classify(s(502), &data_nc, Some(e)),
            Verdict::Gone(Signal::HeadscaleRefusedKey)
        );
        // v063/e10: the HTML error page.
        let html = b"<pre>{\n  &quot;requestUrl&quot;: &quot;POST v1/user&quot;,\n  &quot;statusCode&quot;: 401,\n</pre>";
        assert_eq!(
            classify(s(502), &h(&[("content-type", "text/html")]), Some(html)),
            Verdict::Gone(Signal::HeadscaleRefusedKey)
        );
        // A 502 for another Headscale failure is not a session signal.
        let other = br#""statusCode",4010,"x""#;
        assert_eq!(classify(s(502), &data_nc, Some(other)), Verdict::Alive);
        assert_eq!(
            classify(s(502), &data_nc, Some(br#""statusCode",500"#)),
            Verdict::Alive
        );
        // main/e5, e15, x6, x8: 500 SanitizedError on .data: ask.
        let se = br#"[{"_1":2},"routes/users/overview",{"_3":4},"error",["SanitizedError",5,6,-7],"Error","Unexpected Server Error"]"#;
        assert_eq!(classify(s(500), &data_nc, Some(se)), Verdict::Ask);
        // Live answers.
        assert_eq!(
            classify(
                s(200),
                &h(&[("content-type", "text/html")]),
                Some(b"<html>")
            ),
            Verdict::Alive
        );
        // x2: the signed-in probe of /login.data redirects into the app.
        let x2 = br#"[["SingleFetchRedirect",1],{"_2":3,"_4":5,"_6":7,"_8":7,"_9":7},"redirect","/machines","status",302,"revalidate",false,"reload","replace"]"#;
        assert_eq!(classify(s(202), &data_nc, Some(x2)), Verdict::Alive);
        assert_eq!(
            classify(s(302), &h(&[("location", "/admin/machines")]), Some(b"")),
            Verdict::Alive
        );
        // A session cookie that is set, not cleared, is no signal; neither is another cookie cleared.
        assert_eq!(
            classify(
                s(200),
                &h(&[
                    ("set-cookie", "_hp_auth=abc; Max-Age=100; Path=/admin"),
                    ("set-cookie", "other=; Max-Age=0")
                ]),
                Some(b"")
            ),
            Verdict::Alive
        );
        assert!(clears_hp_auth("_hp_auth=x; Max-Age=0"));
        assert!(clears_hp_auth("_hp_auth=\"\"; Path=/admin"));
        assert!(!clears_hp_auth("_hp_auth_x=; Path=/admin"));
    }

    #[test]
    fn the_key_is_scrubbed_in_every_encoding() {
        let key = "hskey-api-abcdefghijkl-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz01";
        let needles = key_needles(key);
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let payloads = [
            format!("name: {key}!"),
            format!("{{\"k\":\"{}\"}}", &key[22..]),
            b64(format!("{{\"api_key\":\"{key}\"}}").as_bytes()),
            b64(format!("x{{\"api_key\":\"{key}\"}}").as_bytes()),
            b64(format!("xy{{\"api_key\":\"{key}\"}}").as_bytes()),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!("..{key}..").as_bytes()),
        ];
        for p in payloads {
            let out = replace_needles(p.as_bytes(), &needles, HIDDEN);
            let out = String::from_utf8_lossy(&out);
            assert!(out.contains("[api key hidden by headgate]"), "{p} -> {out}");
            assert!(!out.contains(&key[22..]), "{out}");
        }
        // Text without the key is untouched.
        let plain = b"nothing to see: hskey-api-abcdefghijkl-***";
        assert_eq!(replace_needles(plain, &needles, HIDDEN), plain.to_vec());
        assert!(key_needles("short").len() <= 5);
    }
}
