//! The gate: every request for the upstream, in one linear pass (DESIGN.md "The request path"):
//! admission → session → form → decision (a pure function, `policy`) → verdict → forward → one log line.
//! Nothing reaches the upstream unless the decision is an allow.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::app::{App, Body, Conn, LOGIN_PATH};
use crate::auth::enc;
use crate::policy::{self, Admission, Admitted, Decision, DenyPage, Who};
use crate::proxy::{forward, hygiene};
use crate::respond;
use crate::session::{Lookup, VerifiedSession};
use crate::store::{LinkState, NewAuditEvent, SessionSubject};

/// How long a client may take to send a form body.
const BODY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the one ownership question to Headscale may take (S5: fail closed).
const OWNERSHIP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the log line says about a request (also carried in the response's extensions to the log line).
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub verdict: &'static str,
    pub reason: &'static str,
}

pub(crate) fn wants_html(parts: &http::request::Parts) -> bool {
    let h = &parts.headers;
    h.get("sec-fetch-mode").is_some_and(|v| v == "navigate")
        || h.get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

/// The signed-out answer (DESIGN.md step 6).
fn sign_in_answer(app: &App, parts: &http::request::Parts, data: bool) -> Response<Body> {
    let here = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/admin/");
    // A data request's page is the path without `.data`.
    let here = if data {
        here.replacen(".data", "", 1)
    } else {
        here.to_string()
    };
    let rd = app.redirects.validate_or_default(Some(&here));
    let login = format!("{LOGIN_PATH}?rd={}", enc(rd.as_str()));
    if data {
        return respond::data_redirect_loader(&login);
    }
    match (&parts.method, wants_html(parts)) {
        (&Method::GET | &Method::HEAD, true) => respond::redirect(StatusCode::FOUND, &login),
        (&Method::POST, true) => respond::redirect(StatusCode::SEE_OTHER, &login),
        _ => respond::json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "not_signed_in", "login": login}),
        ),
    }
}

pub(crate) fn deny_answer(
    s: Option<&VerifiedSession>,
    page: DenyPage,
    missing: crate::roles::Caps,
    data: bool,
) -> Response<Body> {
    let role = s
        .and_then(|s| s.user())
        .map(|u| u.role.as_str())
        .unwrap_or("api key");
    let (title, message, hint) = match page {
        DenyPage::Forbidden if missing.0 != 0 => (
            "Not allowed",
            format!("This needs the {missing} capability; your role is {role}."),
            Some("Ask an administrator to change your role."),
        ),
        DenyPage::Forbidden => (
            "Not allowed",
            "This action is not allowed here.".to_string(),
            None,
        ),
        DenyPage::NoAccess => (
            "No access yet",
            format!("You are signed in, but your role ({role}) has no access to this interface."),
            Some(
                "Ask an administrator for access. You can still connect your devices: see /_headgate/onboarding.",
            ),
        ),
        DenyPage::SshNeedsHeadplaneIdentity => (
            "Browser SSH is not available here",
            "Browser SSH needs Headplane's own identity, which this deployment does not give it."
                .to_string(),
            Some(
                "An operator can use upstream.headplane_login = \"proxy_auth\" with Headplane 0.7 for browser SSH.",
            ),
        ),
        DenyPage::LinkAtHeadgate => (
            "Linking happens in headgate",
            "Linking your Headscale user is done on headgate's onboarding and users pages."
                .to_string(),
            Some("Open /_headgate/onboarding."),
        ),
    };
    if data {
        // Headplane's client shows a non-2xx data answer as an error.
        let mut r = Response::new(crate::app::full(format!("{title}: {message}")));
        *r.status_mut() = StatusCode::FORBIDDEN;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return r;
    }
    respond::error_page(StatusCode::FORBIDDEN, title, &message, hint)
}

/// Read a form body, bounded in size and time.
async fn read_body(body: Incoming) -> Result<Bytes, StatusCode> {
    match tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(body, policy::MAX_FORM_BYTES).collect(),
    )
    .await
    {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Ok(Err(_)) => Err(StatusCode::BAD_REQUEST),
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
    }
}

fn refusal(status: u16, reason: &str) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    respond::error_page(
        status,
        "Request refused",
        &format!("headgate refused this request ({reason})."),
        None,
    )
}

/// Does Headscale list node `node_id` under Headscale user `hs_user`? Any error: no (fail closed).
async fn owns_node(app: &App, node_id: &str, hs_user: &str) -> bool {
    let Some(hs) = &app.headscale else {
        return false;
    };
    match tokio::time::timeout(OWNERSHIP_TIMEOUT, hs.node(node_id)).await {
        Ok(Ok(Some(n))) => n.user.is_some_and(|u| u.id == hs_user),
        Ok(Ok(None)) => false,
        Ok(Err(e)) => {
            tracing::warn!("ownership check failed closed: {e}");
            false
        }
        Err(_) => {
            tracing::warn!("ownership check failed closed: Headscale did not answer within 5 s");
            false
        }
    }
}

/// Who is asking (DESIGN.md step 4), shared by the proxy and the forward-auth verdicts: the session of the
/// cookie, the person's approved link, and what the policy needs to know about them.
pub(crate) struct Caller {
    pub session: Option<VerifiedSession>,
    pub link: Option<crate::store::Link>,
    /// `None`: signed out.
    pub who: Option<Who>,
    /// Set when the cookie names no valid session: the answer clears it.
    pub clear_cookie: Option<String>,
}

pub(crate) enum CallerError {
    /// More than one session cookie (S6).
    SeveralSessionCookies,
    /// The store failed: fail closed (forward-auth.md class 7).
    Store(crate::store::StoreError),
}

/// The caller of a request: a read of the store, no lock, no network.
pub(crate) async fn caller(
    app: &App,
    headers: &http::HeaderMap,
    now: i64,
) -> Result<Caller, CallerError> {
    let mut clear_cookie = None;
    let session = match app.sessions.lookup(headers, now).await {
        Ok(Lookup::Valid(s)) => Some(*s),
        Ok(Lookup::None) => None,
        Ok(Lookup::Invalid) => {
            clear_cookie = Some(app.sessions.clear_cookie());
            None
        }
        Ok(Lookup::Ambiguous) => return Err(CallerError::SeveralSessionCookies),
        Err(e) => {
            tracing::error!(error = %e, "store failure: failing closed");
            return Err(CallerError::Store(e));
        }
    };
    // Read with the session, in the same transaction.
    let link = session
        .as_ref()
        .filter(|s| s.user().is_some())
        .and_then(|s| s.link())
        .filter(|l| l.state == LinkState::Approved)
        .cloned();
    let who = session.as_ref().map(|s| match s.user() {
        Some(u) => Who::person(u.role, link.as_ref().map(|l| l.headscale_user_id.clone())),
        None => Who::api_key(),
    });
    Ok(Caller {
        session,
        link,
        who,
        clear_cookie,
    })
}

/// What the decision sees of the request's body.
pub(crate) enum Evidence<'a> {
    /// The proxy: the parsed form of a POST to a built-in row (`None`: no form needed).
    Form(Option<&'a policy::Form>),
    /// Forward-auth: no body (`policy.md` section 4).
    NoBody,
}

/// The decision (DESIGN.md step 5), shared by the proxy and the forward-auth verdicts: the pure policy, then
/// the one ownership question asked of Headscale when a row needs it (failing closed).
pub(crate) async fn decide(
    app: &App,
    admitted: &Admitted,
    evidence: Evidence<'_>,
    who: Option<&Who>,
) -> Decision {
    let decision = match evidence {
        Evidence::Form(form) => app.policy.decide(admitted, form, who),
        Evidence::NoBody => app.policy.decide_without_body(admitted, who),
    };
    match &decision {
        Decision::AllowIfOwnsNode {
            node_id,
            headscale_user_id,
            ..
        } => {
            let owns = owns_node(app, node_id, headscale_user_id).await;
            decision.resolve_ownership(owns)
        }
        _ => decision,
    }
}

/// Handle a request for the upstream.
pub async fn handle(app: &App, req: Request<Incoming>, conn: Conn) -> (Response<Body>, Outcome) {
    let out = |verdict, reason| Outcome { verdict, reason };
    let Some(upstream) = &app.upstream else {
        return (
            respond::json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found"}),
            ),
            out("deny", "no_upstream"),
        );
    };
    let (mut parts, body) = req.into_parts();

    // 1. Admission: refused requests never reach a handler or the upstream.
    let admitted = match app.policy.admit(&policy::Request::from_parts(
        &parts.method,
        &parts.uri,
        &parts.headers,
    )) {
        Admission::Ok(a) => a,
        Admission::Refuse { status, reason } => {
            return (refusal(status, reason), out("deny", reason));
        }
        Admission::RedirectToAdmin => {
            return (
                respond::redirect(StatusCode::FOUND, "/admin/"),
                out("redirect", "root"),
            );
        }
        Admission::HeadgateOwned { route, .. } => {
            use policy::OwnedRoute as O;
            let to = match route {
                O::Onboarding | O::OnboardingSkip => "/_headgate/onboarding",
                O::PendingApproval => "/_headgate/onboarding",
                _ => "/admin/login",
            };
            return (
                respond::redirect(StatusCode::FOUND, to),
                out("redirect", "headgate_owned"),
            );
        }
    };

    // S8: an unsafe request must come from headgate's own origin (`Origin`, else `Referer`, else
    // `Sec-Fetch-Site: same-origin`), forwarded ones included.
    if !matches!(parts.method, Method::GET | Method::HEAD)
        && !crate::csrf::same_origin(&parts.headers, &app.config.server.base_url)
    {
        return (refusal(403, "cross_origin"), out("deny", "cross_origin"));
    }

    // 2. Session: a read, no network.
    let now = app.now();
    let Caller {
        session,
        link,
        who,
        clear_cookie,
    } = match caller(app, &parts.headers, now).await {
        Ok(c) => c,
        Err(CallerError::SeveralSessionCookies) => {
            let r = respond::with_cookies(
                respond::json(
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({"error": "several_session_cookies"}),
                ),
                &[app.sessions.clear_cookie()],
            );
            return (r, out("login", "several_session_cookies"));
        }
        Err(CallerError::Store(e)) => {
            return (
                crate::auth::store_failure(&e),
                out("error", "store_failure"),
            );
        }
    };

    // 3. The form, parsed once, strictly, when the row needs it.
    let mut form = None;
    let mut body = Some(body);
    if admitted.needs_form() && session.is_some() {
        let ct = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let ce = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = match read_body(body.take().expect("body not yet used")).await {
            Ok(b) => b,
            Err(status) => {
                return (
                    refusal(status.as_u16(), "form body"),
                    out("deny", "form_body"),
                );
            }
        };
        match policy::parse_form(ct.as_deref(), ce.as_deref(), &bytes) {
            Ok(f) => form = Some(f),
            Err(e) => return (refusal(e.status(), e.reason()), out("deny", e.reason())),
        }
    }

    // 4. The decision (pure), with the one ownership question asked of Headscale when a row needs it.
    let decision = decide(app, &admitted, Evidence::Form(form.as_ref()), who.as_ref()).await;
    let reason = decision.reason();
    let public = match decision {
        Decision::Allow { public, .. } => public,
        Decision::SignIn { reason } => {
            let r = sign_in_answer(app, &parts, admitted.data);
            let r = match clear_cookie {
                Some(c) => respond::with_cookies(r, &[c]),
                None => r,
            };
            return (r, out("login", reason));
        }
        Decision::Deny {
            page,
            missing,
            reason,
        } => {
            return (
                deny_answer(session.as_ref(), page, missing, admitted.data),
                out("deny", reason),
            );
        }
        Decision::Redirect { location, reason } => {
            return (
                respond::redirect(StatusCode::FOUND, location),
                out("redirect", reason),
            );
        }
        Decision::AllowIfOwnsNode { .. } => unreachable!("resolved above"),
    };

    // 5. Forward: hygiene, identity, the exact decided form, the upstream session in the bridge.
    let trusted_peer = app
        .config
        .server
        .trusted_proxies
        .iter()
        .any(|c| c.contains(conn.peer.ip()));
    // An allowed websocket keeps its handshake; the client's upgrade is taken to join it to the upstream's.
    let mut client_upgrade = None;
    if admitted.websocket {
        let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        match (upgrade, crate::proxy::websocket::client_key(&parts.headers)) {
            (Some(u), Some(key)) => client_upgrade = Some((u, key)),
            _ => {
                return (
                    refusal(400, "websocket_handshake"),
                    out("deny", "websocket_handshake"),
                );
            }
        }
    }
    hygiene::clean_request(
        &mut parts.headers,
        &app.identity_names,
        trusted_peer,
        admitted.websocket,
    );
    let own_cookie = |n: &str| {
        n == "_hp_auth"
            || n.trim_start_matches("__Host-")
                .trim_start_matches("__Secure-")
                .starts_with("headgate_")
    };
    hygiene::strip_cookies(&mut parts.headers, own_cookie);
    let identity = match identity_of(app, session.as_ref(), link.as_ref(), now) {
        Ok(i) => i,
        Err(e) => {
            // No assertion, no forward: an upstream that verifies it must never see a request without one.
            tracing::error!("cannot sign the identity assertion: {e}");
            let r = respond::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Temporarily unavailable",
                "headgate cannot sign the identity it hands on.",
                Some("Operators: see headgate's log (signing keys in the store)."),
            );
            return (r, out("error", "assertion"));
        }
    };
    hygiene::set_identity(&mut parts.headers, &app.identity_names, &identity);
    forward::preserve_host(&mut parts);
    forward::set_forwarded(&mut parts, conn.peer.ip(), conn.tls, trusted_peer);
    // The API-key bridge: headgate's own Headplane session, only after an allow on a non-public row.
    let mut ticket = None;
    if !public && let Some(bridge) = &app.bridge {
        match bridge.ticket().await {
            Ok(t) => {
                crate::proxy::bridge::attach(&mut parts.headers, &t);
                // Bridged bodies are checked for the API key, so they must arrive uncompressed.
                parts.headers.remove(header::ACCEPT_ENCODING);
                ticket = Some(t);
            }
            Err(e) => {
                let r = crate::proxy::bridge::unavailable(&e);
                return (r.response, out("error", r.reason));
            }
        }
    }
    let path_and_query = match &admitted.query {
        Some(q) => format!("{}?{q}", admitted.path),
        None => admitted.path.clone(),
    };
    let upstream_body: Body = match (&form, body) {
        (Some(f), _) => {
            let encoded = f.encoded();
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(policy::FORWARD_CONTENT_TYPE),
            );
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(encoded.len()));
            parts.headers.remove(header::CONTENT_ENCODING);
            Full::new(Bytes::from(encoded))
                .map_err(|never| match never {})
                .boxed()
        }
        (None, Some(b)) => forward::stream_body(b),
        (None, None) => Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    };
    let method = parts.method.clone();
    // Kept to retry an idempotent request once after the bridge signs in again (never a POST: S10).
    let retry_headers = (ticket.is_some()
        && client_upgrade.is_none()
        && matches!(method, Method::GET | Method::HEAD))
    .then(|| parts.headers.clone());
    let sent_at = std::time::Instant::now();
    let sent = upstream.send(parts, &path_and_query, upstream_body).await;
    app.metrics.upstream_latency(sent_at.elapsed());
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            let (status, title) = match e {
                forward::ForwardError::Timeout(..) => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "The application did not answer in time",
                ),
                _ => (StatusCode::BAD_GATEWAY, "The application is unavailable"),
            };
            let r = respond::error_page(
                status,
                title,
                "headgate could not get an answer from the application behind it.",
                Some("Try again in a moment."),
            );
            return (r, out("error", "upstream"));
        }
    };
    if let Some((client, key)) = client_upgrade {
        return websocket_answer(app, session.as_ref(), resp, client, &key, reason);
    }
    // The bridge checks the answer for "session gone" (renewing; a GET/HEAD is sent once more, a POST
    // never) and scrubs its API key from it.
    let (status, mut resp) = match (&app.bridge, ticket) {
        (Some(bridge), Some(t)) => {
            let retry = retry_headers.map(|h| (method.clone(), h));
            match bridge.finish(&path_and_query, t, resp, retry).await {
                Ok(r) => (r.status(), r),
                Err(r) => return (r.response, out("error", r.reason)),
            }
        }
        _ => (resp.status(), forward::stream_back(resp)),
    };
    hygiene::clean_response(resp.headers_mut(), &app.config.upstream.pass_cookies, false);
    if let Some(s) = &session {
        hygiene::mark_private(resp.headers_mut());
        if is_event_stream(resp.headers()) {
            let (guard, stop) = app.streams.open(s, crate::streams::Kind::EventStream);
            resp = resp.map(|b| crate::streams::TrackedBody::new(b, guard, stop).boxed());
        }
    }
    if let Some(c) = clear_cookie
        && let Ok(v) = HeaderValue::from_str(&c)
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    if method == Method::POST {
        audit_allowed_post(
            app,
            session.as_ref(),
            &admitted.path,
            form.as_ref(),
            status.as_u16(),
            now,
        );
    }
    (resp, out("allow", reason))
}

fn is_event_stream(h: &http::HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| {
            c.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// The answer to an allowed websocket handshake: the upstream's `101` (checked) with the tunnel started,
/// or the upstream's refusal passed on.
fn websocket_answer(
    app: &App,
    session: Option<&VerifiedSession>,
    mut resp: Response<Incoming>,
    client: hyper::upgrade::OnUpgrade,
    key: &str,
    reason: &'static str,
) -> (Response<Body>, Outcome) {
    use crate::proxy::websocket;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let mut r = forward::stream_back(resp);
        hygiene::clean_response(r.headers_mut(), &app.config.upstream.pass_cookies, false);
        if session.is_some() {
            hygiene::mark_private(r.headers_mut());
        }
        return (
            r,
            Outcome {
                verdict: "allow",
                reason,
            },
        );
    }
    if !websocket::is_valid_switch(&resp, key) {
        tracing::error!(
            "the upstream switched protocols without a valid websocket handshake; refused"
        );
        let r = respond::error_page(
            StatusCode::BAD_GATEWAY,
            "The application's answer was refused",
            "The application answered the websocket request with an invalid handshake.",
            None,
        );
        return (
            r,
            Outcome {
                verdict: "error",
                reason: "websocket_handshake_upstream",
            },
        );
    }
    let upstream = hyper::upgrade::on(&mut resp);
    let tracked = session.map(|s| app.streams.open(s, crate::streams::Kind::WebSocket));
    tokio::spawn(websocket::tunnel(client, upstream, tracked));
    let (parts, _) = resp.into_parts();
    let mut r = Response::from_parts(parts, crate::app::full(Bytes::new()));
    hygiene::clean_response(r.headers_mut(), &app.config.upstream.pass_cookies, true);
    if session.is_some() {
        hygiene::mark_private(r.headers_mut());
    }
    (
        r,
        Outcome {
            verdict: "allow",
            reason,
        },
    )
}

/// The identity headers' values (every one set, empty when unknown; S11: an API-key session is never a
/// `Remote-User`, and the email only when verified).
pub fn identity_of(
    app: &App,
    s: Option<&VerifiedSession>,
    link: Option<&crate::store::Link>,
    now: i64,
) -> Result<hygiene::Identity, crate::assertion::MintError> {
    identity_for(app, s, link, now, app.assertions().audience())
}

/// [`identity_of`] with the assertion for `audience` (forward-auth: the original host's origin).
pub fn identity_for(
    app: &App,
    s: Option<&VerifiedSession>,
    link: Option<&crate::store::Link>,
    now: i64,
    audience: &str,
) -> Result<hygiene::Identity, crate::assertion::MintError> {
    let mut id = hygiene::Identity::default();
    let Some(s) = s else { return Ok(id) };
    match (s.user(), &s.record().subject) {
        (Some(u), _) => {
            id.user = match (app.config.headers.user_claim, &app.config.oidc) {
                (crate::config::UserClaim::SubAtIss, Some(o)) => {
                    format!("{}@{}", u.subject, o.issuer.trim_end_matches('/'))
                }
                _ => u.subject.clone(),
            };
            if u.email_verified {
                id.email = u.email.clone().unwrap_or_default();
            }
            id.name = u.name.clone().unwrap_or_default();
            id.picture = u.picture.clone().unwrap_or_default();
            id.role = u.role.as_str().to_string();
            id.auth = "oidc".into();
            if let Some(l) = link {
                id.hs_user_id = l.headscale_user_id.clone();
                id.hs_user = l.headscale_name.clone();
            }
        }
        (None, SessionSubject::ApiKey { .. }) => {
            id.auth = "api_key".into();
        }
        (None, SessionSubject::User(_)) => {}
    }
    let claims = crate::assertion::AssertionClaims::for_session(s, link);
    id.assertion = Some(app.assertions().mint_header(&claims, audience, now)?);
    Ok(id)
}

/// S20: an audit record for every allowed state-changing request, batched off the request path.
fn audit_allowed_post(
    app: &App,
    s: Option<&VerifiedSession>,
    path: &str,
    form: Option<&policy::Form>,
    upstream_status: u16,
    now: i64,
) {
    let actor = match s.and_then(|s| s.user()) {
        Some(u) => format!(
            "user {} ({})",
            u.id.0,
            u.email.clone().unwrap_or_else(|| u.subject.clone())
        ),
        None => "api key".to_string(),
    };
    let action_id = form.and_then(|f| f.action_id()).unwrap_or("-");
    let targets: Vec<String> = form
        .map(|f| {
            f.fields()
                .iter()
                .filter(|(k, _)| k.ends_with("_id") && k != "action_id")
                .map(|(k, v)| format!("{k}={}", crate::logging::escape(v)))
                .collect()
        })
        .unwrap_or_default();
    app.audit(NewAuditEvent {
        at: now,
        actor,
        action: format!("POST {path} {action_id}"),
        target: targets.join(" "),
        detail: format!("upstream {upstream_status}"),
    });
}
