//! Sign-in and sign-out: the login page, the OIDC flow (start, callback), logout, whoami.

pub mod api_key;

use http::{HeaderMap, Request, Response, StatusCode};
use serde_json::json;

use crate::app::{App, Body, Conn, LOGIN_PATH, START_PATH};
use crate::crypto;
use crate::csrf;
use crate::oidc::flow::{FLOW_TTL_SECS, Flow, FlowCookies};
use crate::oidc::identity;
use crate::oidc::rp::{SignInError, SsoStatus};
use crate::pages;
use crate::respond;
use crate::session::{Lookup, VerifiedSession};
use crate::store::{
    NewUser, OwnerBootstrap, OwnerIdentity, Role, SessionRecord, SessionSubject, SignIn, StoreError,
};

/// Longest query string headgate parses on its own endpoints.
const MAX_QUERY: usize = 8 * 1024;

pub(crate) fn query_param(req_uri: &http::Uri, name: &str) -> Option<String> {
    let q = req_uri.query()?;
    if q.len() > MAX_QUERY {
        return None;
    }
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn is_data(path: &str) -> bool {
    path.ends_with(".data")
}

/// Any store failure on a sign-in path: fail closed with a page that says what happened.
pub(crate) fn store_failure(e: &StoreError) -> Response<Body> {
    tracing::error!(error = %e, "store failure");
    respond::error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-in is unavailable",
        "headgate could not read or write its store.",
        Some("An operator should check headgate's log and the disk that holds server.data_path."),
    )
}

/// The session of the request, when there is a valid one.
pub(crate) async fn current_session(
    app: &App,
    headers: &HeaderMap,
) -> Result<Option<VerifiedSession>, StoreError> {
    match app.sessions.lookup(headers, app.now()).await? {
        Lookup::Valid(s) => Ok(Some(*s)),
        _ => Ok(None),
    }
}

/// Whether the browser reached headgate over plain HTTP (so a `Secure` cookie will not come back).
fn reached_over_plain_http(app: &App, headers: &HeaderMap, conn: Conn) -> bool {
    if conn.tls {
        return false;
    }
    let trusted = app
        .config
        .server
        .trusted_proxies
        .iter()
        .any(|c| c.contains(conn.peer.ip()));
    let xfp = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok());
    match (trusted, xfp) {
        (true, Some(p)) => p.eq_ignore_ascii_case("http"),
        // A TLS-terminating proxy almost always says so; without any such header the browser most likely
        // talked to us directly.
        (_, None) => true,
        (false, Some(_)) => false,
    }
}

/// `GET /admin/login`: the sign-in page (or straight on when already signed in / SSO-only).
pub async fn login_page(
    app: &App,
    req: &Request<hyper::body::Incoming>,
    conn: Conn,
) -> Response<Body> {
    let target = app
        .redirects
        .validate_or_default(query_param(req.uri(), "rd").as_deref());
    let status = query_param(req.uri(), "s");
    match current_session(app, req.headers()).await {
        Ok(Some(_)) if status.is_none() => {
            return respond::redirect(StatusCode::FOUND, target.as_str());
        }
        Ok(_) => {}
        Err(e) => return store_failure(&e),
    }
    let oidc = app.config.oidc.as_ref();
    let sso = match &app.rp {
        None => SsoStatus::Unavailable(String::new()),
        Some(rp) => rp.status().await,
    };
    let api_key_form = app.headscale.is_some() && !oidc.is_some_and(|o| o.disable_api_key_login);
    if !api_key_form && sso == SsoStatus::Available && status.is_none() {
        let to = format!("{START_PATH}?rd={}", enc(target.as_str()));
        return respond::redirect(StatusCode::FOUND, &to);
    }
    let mut warnings = Vec::new();
    if app.config.server.cookie_secure && app.config.server.base_url.scheme() == "http" {
        warnings.push(
            "server.base_url is plain http while server.cookie_secure is true: the browser will not send the \
             session cookie back. Serve headgate over https, or set server.cookie_secure = false for testing."
                .to_string(),
        );
    } else if app.config.server.cookie_secure && reached_over_plain_http(app, req.headers(), conn) {
        warnings.push(
            "This page was reached over plain HTTP while server.cookie_secure is true: the browser will not send \
             the session cookie back. Use the https address, or set server.cookie_secure = false for testing."
                .to_string(),
        );
    }
    let reason;
    let sso_state = match (&app.rp, &sso) {
        (None, _) => pages::login::Sso::NotConfigured,
        (Some(_), SsoStatus::Available) => pages::login::Sso::Available,
        (Some(_), SsoStatus::Unavailable(r)) => {
            reason = r.clone();
            pages::login::Sso::Unavailable { reason: &reason }
        }
    };
    let rd = (target.as_str() != "/admin/").then_some(target.as_str());
    let page = pages::login::LoginPage {
        sso: sso_state,
        api_key_form,
        status: status.as_deref(),
        api_key_error: None,
        warnings: &warnings,
        return_target: rd,
        csrf_token: "",
        start_path: START_PATH,
        login_path: LOGIN_PATH,
    };
    login_response(app, page, StatusCode::OK)
}

/// The login page with a fresh CSRF cookie and its form token (S8); `page` carries everything else.
pub(crate) fn login_response(
    app: &App,
    page: pages::login::LoginPage<'_>,
    status: StatusCode,
) -> Response<Body> {
    let csrf_value = csrf::new_cookie_value(&*app.random);
    let token = csrf::token_for(&app.keys, &csrf_value);
    let html = pages::login::render(&pages::login::LoginPage {
        csrf_token: &token,
        ..page
    });
    let set = app.cookies.set(csrf::COOKIE_BASE, &csrf_value, "/", None);
    respond::with_cookies(respond::page(status, html), &[set])
}

pub(crate) fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn login_redirect(code: &str) -> Response<Body> {
    respond::redirect(StatusCode::FOUND, &format!("{LOGIN_PATH}?s={code}"))
}

/// The login page saying why single sign-on cannot start now (503): the IdP at `issuer` did not answer.
fn sso_unavailable_page(
    app: &App,
    headers: &HeaderMap,
    issuer: &str,
    target: &str,
) -> Response<Body> {
    let api_key_form = app.headscale.is_some()
        && !app
            .config
            .oidc
            .as_ref()
            .is_some_and(|o| o.disable_api_key_login);
    let reason = format!(
        "the identity provider at {issuer} did not answer. Try again in a moment{}. Operators: check \
         oidc.issuer and that the identity provider is running and reachable from headgate.",
        if api_key_form {
            ", or sign in with an API key"
        } else {
            ""
        }
    );
    let page = pages::login::LoginPage {
        sso: pages::login::Sso::Unavailable { reason: &reason },
        api_key_form,
        status: None,
        api_key_error: None,
        warnings: &[],
        return_target: (target != "/admin/").then_some(target),
        csrf_token: "",
        start_path: START_PATH,
        login_path: LOGIN_PATH,
    };
    // Keep the browser's CSRF cookie when it has one, so a login page it already shows stays usable.
    let existing = crate::cookies::values(headers, &app.cookies.name(csrf::COOKIE_BASE, "/"))
        .first()
        .map(|s| s.to_string())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    match existing {
        Some(value) => {
            let token = csrf::token_for(&app.keys, &value);
            let html = pages::login::render(&pages::login::LoginPage {
                csrf_token: &token,
                ..page
            });
            respond::page(StatusCode::SERVICE_UNAVAILABLE, html)
        }
        None => login_response(app, page, StatusCode::SERVICE_UNAVAILABLE),
    }
}

/// `GET /admin/oidc/start`: a fresh flow in its own encrypted cookie, then the IdP.
pub async fn oidc_start(
    app: &App,
    req: &Request<hyper::body::Incoming>,
    conn: Conn,
) -> Response<Body> {
    let Some(rp) = &app.rp else {
        return respond::error_page(
            StatusCode::NOT_FOUND,
            "Single sign-on is not configured",
            "This headgate has no [oidc] section.",
            Some("An operator can add oidc.issuer, oidc.client_id and oidc.client_secret."),
        );
    };
    let client = crate::client_ip::client_ip(
        conn.peer.ip(),
        req.headers(),
        &app.config.server.trusted_proxies,
    );
    if !app.start_limiter.allow(client) {
        tracing::warn!(peer = %conn.peer, "too many sign-in starts (limit: 30 a minute per client, 600 in all)");
        return respond::error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-in attempts",
            "Please wait a minute before trying again.",
            None,
        );
    }
    let target = app
        .redirects
        .validate_or_default(query_param(req.uri(), "rd").as_deref());
    // Never send the browser to an IdP that does not answer: the discovery document may still be cached
    // while the IdP is down, so ask the same question the login page asks (a short, briefly cached probe).
    let endpoints = match rp.status().await {
        SsoStatus::Unavailable(_) => None,
        SsoStatus::Available => match rp.endpoints().await {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::error!("{e}");
                None
            }
        },
    };
    let Some(endpoints) = endpoints else {
        tracing::warn!(
            issuer = %rp.config().issuer,
            "sign-in start refused: the IdP does not answer (oidc.issuer); the browser gets the login page with a 503"
        );
        return sso_unavailable_page(app, req.headers(), &rp.config().issuer, target.as_str());
    };
    let now = app.now();
    let flow = Flow {
        state: crypto::random_b64(&*app.random, 32),
        nonce: crypto::random_b64(&*app.random, 32),
        pkce_verifier: rp
            .config()
            .use_pkce
            .then(|| crypto::random_b64(&*app.random, 64)),
        return_to: target.as_str().to_string(),
        created: now,
        expires: now + FLOW_TTL_SECS,
    };
    let fc = FlowCookies {
        keys: &app.keys,
        cookies: &app.cookies,
        path: crate::oidc::flow::COOKIE_PATH,
    };
    let existing = fc.read(req.headers());
    let set = fc.start(&*app.random, &flow, &existing);
    let url = rp.authorization_url(&endpoints, &flow);
    respond::with_cookies(respond::redirect(StatusCode::FOUND, &url), &set)
}

/// `GET <oidc.callback_path>`: check the flow, exchange the code, verify, admit, create a fresh session.
pub async fn oidc_callback(app: &App, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let Some(rp) = &app.rp else {
        return login_redirect("error_auth_failed");
    };
    if req.uri().query().is_none_or(|q| q.is_empty()) {
        return login_redirect("error_no_query");
    }
    let fc = FlowCookies {
        keys: &app.keys,
        cookies: &app.cookies,
        path: crate::oidc::flow::COOKIE_PATH,
    };
    let found = fc.read(req.headers());
    if found.is_empty() {
        tracing::warn!(
            "sign-in callback without a flow cookie: the browser did not send it back (blocked cookies, another \
             browser, a replayed callback, or server.cookie_secure over plain HTTP)"
        );
        return login_redirect("error_no_session");
    }
    let now = app.now();
    let state = query_param(req.uri(), "state").unwrap_or_default();
    let matching = found.iter().find(|f| {
        f.flow
            .as_ref()
            .is_some_and(|fl| crypto::ct_eq(fl.state.as_bytes(), state.as_bytes()))
    });
    // The flow is single-use: whatever happens next, its cookie goes.
    let mut clear: Vec<String> = Vec::new();
    let flow = match matching {
        Some(f) => {
            clear.push(fc.clear(&f.cookie_name));
            let flow = f.flow.clone().expect("matched on a decrypted flow");
            if now >= flow.expires {
                tracing::warn!("sign-in callback for an expired flow (older than 10 minutes)");
                return respond::with_cookies(login_redirect("error_invalid_session"), &clear);
            }
            flow
        }
        None => {
            tracing::warn!(
                "sign-in callback whose state matches none of the browser's flow cookies"
            );
            return login_redirect("error_invalid_session");
        }
    };
    let fail = |e: SignInError| {
        tracing::warn!("sign-in failed: {e}");
        respond::with_cookies(login_redirect(e.code()), &clear)
    };
    if let Some(error) = query_param(req.uri(), "error") {
        let description = query_param(req.uri(), "error_description").unwrap_or_default();
        let clean = |s: String| {
            s.chars()
                .filter(|c| !c.is_control())
                .take(300)
                .collect::<String>()
        };
        return fail(SignInError::Idp {
            error: clean(error),
            description: clean(description),
        });
    }
    let Some(code) = query_param(req.uri(), "code").filter(|c| !c.is_empty() && c.len() <= 4096)
    else {
        return respond::with_cookies(login_redirect("error_no_query"), &clear);
    };
    let endpoints = match rp.endpoints().await {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let tokens = match rp
        .exchange_code(&endpoints, &code, flow.pkce_verifier.as_deref())
        .await
    {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let Some(id_token) = tokens.id_token.as_deref() else {
        return fail(SignInError::NoIdToken);
    };
    let mut claims = match rp
        .verify_id_token(&endpoints, id_token, Some(&flow.nonce), now)
        .await
    {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Some(at) = tokens.access_token.as_deref() {
        match rp.userinfo(&endpoints, at).await {
            Ok(ui) => {
                if let Err(e) = identity::merge_userinfo(&mut claims, ui) {
                    tracing::warn!("{e}");
                }
            }
            Err(e) => tracing::info!("userinfo not used: {e}"),
        }
    }
    let cfg = rp.config();
    let who = match identity::identity(cfg, &claims) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    if let Err(e) = identity::check_allowed(cfg, &who, &claims) {
        return fail(e);
    }
    // The person is in: their user record (role from the IdP when configured), their link, then a fresh
    // session (never the one the browser brought).
    let claim_role = cfg.role_claim.as_ref().map(|c| {
        crate::roles::role_from_claim(claims.get(c), &cfg.role_map).unwrap_or(cfg.default_role)
    });
    let user = match upsert_user(app, &who, claim_role, now).await {
        Ok(u) => u,
        Err(e) => return store_failure(&e),
    };
    if let Some(hs) = &app.headscale
        && let Err(e) =
            crate::linking::at_sign_in(&app.config, hs, &app.store, &user, &who, now).await
    {
        return store_failure(&e);
    }
    if let Ok(Lookup::Valid(old)) = app.sessions.lookup(req.headers(), now).await {
        let _ = app.sessions.delete(old.key()).await;
    }
    let refresh_token_enc = tokens.refresh_token.as_deref().map(|rt| {
        app.keys.seal(
            crate::crypto::Purpose::KeyEncryption,
            &*app.random,
            b"refresh_token",
            rt.as_bytes(),
        )
    });
    let record = SessionRecord {
        subject: SessionSubject::User(user.id),
        created: now,
        expires: now + app.config.server.cookie_max_age as i64,
        last_seen: now,
        idp_sid: who.sid.clone(),
        id_token: Some(id_token.to_string()),
        refresh_token_enc,
        refreshed: now,
    };
    let set = match app.sessions.create(record, now).await {
        Ok(c) => c,
        Err(e) => return store_failure(&e),
    };
    tracing::info!(subject = %crate::logging::escape(&who.subject), user = user.id.0, role = user.role.as_str(), "signed in with SSO");
    clear.push(set);
    // First sign-in (until onboarding is finished or skipped): onboarding first, then the return target.
    let to = if !user.onboarded && app.headscale.is_some() {
        format!(
            "{}?rd={}",
            crate::onboarding::ONBOARDING_PATH,
            enc(&flow.return_to)
        )
    } else {
        flow.return_to.clone()
    };
    respond::with_cookies(respond::redirect(StatusCode::FOUND, &to), &clear)
}

async fn upsert_user(
    app: &App,
    who: &identity::Identity,
    claim_role: Option<Role>,
    now: i64,
) -> Result<crate::store::User, StoreError> {
    let cfg = app
        .config
        .oidc
        .as_ref()
        .expect("SSO sign-in has an [oidc] section");
    let email = who
        .trusted_email(cfg)
        .map(str::to_string)
        .or_else(|| who.email.clone());
    if let Some(u) = app.store.user_by_subject(&who.subject).await? {
        // Only the sign-in's own fields are written, to the record as stored at the write (one transaction):
        // a role change made since the read above (an admin's demotion) stays. S13: with a role claim the
        // IdP's role applies to that stored role (the owner stays owner).
        let signed = app
            .store
            .record_sign_in(
                u.id,
                SignIn {
                    email,
                    email_verified: who.email_verified,
                    name: who.name.clone(),
                    picture: who.picture.clone(),
                    at: now,
                    role_from_idp: claim_role,
                },
            )
            .await?;
        if let Some(from) = signed.role_changed_from {
            tracing::info!(
                user = u.id.0,
                from = from.as_str(),
                to = signed.user.role.as_str(),
                "role changed by the IdP's role claim"
            );
        }
        return Ok(signed.user);
    }
    let bootstrap = match &app.config.server.initial_owner {
        Some(o) => OwnerBootstrap::Only(OwnerIdentity::EmailOrSubject(o.clone())),
        None => OwnerBootstrap::FirstUser,
    };
    let new = NewUser {
        subject: who.subject.clone(),
        email,
        email_verified: who.email_verified,
        name: who.name.clone(),
        picture: who.picture.clone(),
        role: claim_role.unwrap_or(cfg.default_role),
        onboarded: false,
        created: now,
    };
    match app.store.create_user(new, bootstrap).await {
        Ok(u) => Ok(u),
        // Two tabs finishing at once: the other one created the record first.
        Err(StoreError::Conflict(_)) => app
            .store
            .user_by_subject(&who.subject)
            .await?
            .ok_or(StoreError::NotFound(who.subject.clone())),
        Err(e) => Err(e),
    }
}

/// `POST /admin/logout`: same-origin only (Headplane's own button posts here without a token of ours); the
/// local session is deleted before the browser leaves for the IdP.
pub async fn logout(app: &App, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let data = is_data(req.uri().path());
    if !csrf::same_origin(req.headers(), &app.config.server.base_url) {
        tracing::warn!("refused a cross-site logout post");
        return respond::error_page(
            StatusCode::FORBIDDEN,
            "Logout refused",
            "This logout request did not come from this site.",
            Some("Use the logout button on the site itself."),
        );
    }
    let now = app.now();
    let mut id_token = None;
    let lookup = app.sessions.lookup(req.headers(), now).await;
    match &lookup {
        Ok(Lookup::Valid(s)) => {
            id_token = s.record().id_token.clone();
            if let Err(e) = app.sessions.delete(s.key()).await {
                return store_failure(&e);
            }
            tracing::info!("signed out");
        }
        Ok(Lookup::Ambiguous) => {
            // S6: two session cookies are refused with 401 and cleared; at logout every session they name
            // ends too, since there is no telling which one the person meant.
            for value in crate::cookies::values(req.headers(), &app.sessions.cookie_name()) {
                if let Some(key) = app.sessions.verify_cookie(value)
                    && let Err(e) = app.sessions.delete(&key).await
                {
                    return store_failure(&e);
                }
            }
            let r = respond::error_page(
                StatusCode::UNAUTHORIZED,
                "Signed out",
                "Your browser sent two session cookies; both sessions have been ended.",
                Some("Sign in again."),
            );
            return respond::with_cookies(r, &[app.sessions.clear_cookie()]);
        }
        Err(e) => return store_failure(e),
        _ => {}
    }
    let local = format!("{LOGIN_PATH}?s=logout");
    let mut target = local.clone();
    if let (Some(rp), Some(hint)) = (&app.rp, id_token.as_deref())
        && rp.config().use_end_session
        && let Ok(e) = rp.endpoints().await
        && let Some(end) = &e.end_session
    {
        let post = rp
            .config()
            .post_logout_redirect_uri
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_else(|| {
                format!(
                    "{}{local}",
                    app.config.server.base_url.as_str().trim_end_matches('/')
                )
            });
        let mut u = end.clone();
        u.query_pairs_mut()
            .append_pair("id_token_hint", hint)
            .append_pair("post_logout_redirect_uri", &post)
            .append_pair("client_id", &rp.config().client_id);
        target = u.into();
    }
    let clear = [app.sessions.clear_cookie()];
    let r = if data {
        respond::data_redirect_action(&target)
    } else {
        respond::redirect(StatusCode::SEE_OTHER, &target)
    };
    respond::with_cookies(r, &clear)
}

/// `GET /_headgate/whoami`: the caller's identity as JSON; never a token.
pub async fn whoami(app: &App, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let now = app.now();
    match app.sessions.lookup(req.headers(), now).await {
        Err(e) => {
            tracing::error!(error = %e, "store failure");
            respond::json(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "store_unavailable"}),
            )
        }
        Ok(Lookup::Ambiguous) => respond::with_cookies(
            respond::json(
                StatusCode::UNAUTHORIZED,
                json!({"error": "several_session_cookies"}),
            ),
            &[app.sessions.clear_cookie()],
        ),
        Ok(Lookup::None) => {
            respond::json(StatusCode::UNAUTHORIZED, json!({"error": "not_signed_in"}))
        }
        Ok(Lookup::Invalid) => respond::with_cookies(
            respond::json(StatusCode::UNAUTHORIZED, json!({"error": "not_signed_in"})),
            &[app.sessions.clear_cookie()],
        ),
        Ok(Lookup::Valid(s)) => {
            let r = s.record();
            let expires = time::OffsetDateTime::from_unix_timestamp(r.expires)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                });
            let link = match s.user() {
                Some(u) => match app.store.link_of_user(u.id).await {
                    Ok(l) => l,
                    Err(e) => return store_failure_json(&e),
                },
                None => None,
            };
            let (link_state, hs_id, hs_name) = match &link {
                None => ("none", None, None),
                Some(l) if l.state == crate::store::LinkState::Pending => ("pending", None, None),
                Some(l) => (
                    "linked",
                    Some(l.headscale_user_id.clone()),
                    Some(l.headscale_name.clone()),
                ),
            };
            let body = match (s.user(), &r.subject) {
                (Some(u), _) => {
                    let caps = crate::roles::caps(u.role);
                    json!({
                        "auth": "oidc",
                        "subject": u.subject,
                        "email": u.email,
                        "email_verified": u.email_verified,
                        "name": u.name,
                        "picture": u.picture,
                        "role": u.role.as_str(),
                        "capabilities": caps.names(),
                        "capability_bits": caps.0,
                        "link": link_state,
                        "headscale_user_id": hs_id,
                        "headscale_user": hs_name,
                        "session_expires": expires,
                    })
                }
                (None, SessionSubject::ApiKey { prefix, .. }) => json!({
                    "auth": "api_key",
                    "api_key_prefix": prefix,
                    "role": null,
                    "capabilities": crate::roles::Caps::ALL.names(),
                    "capability_bits": crate::roles::Caps::ALL.0,
                    "link": "none",
                    "session_expires": expires,
                }),
                (None, SessionSubject::User(_)) => json!({"error": "not_signed_in"}),
            };
            respond::json(StatusCode::OK, body)
        }
    }
}

fn store_failure_json(e: &StoreError) -> Response<Body> {
    tracing::error!(error = %e, "store failure");
    respond::json(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": "store_unavailable"}),
    )
}

/// `/admin/` when headgate runs without an upstream (forward-auth only): a small signed-in page.
pub async fn signed_in_page(app: &App, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    match current_session(app, req.headers()).await {
        Err(e) => store_failure(&e),
        Ok(None) => respond::redirect(StatusCode::FOUND, &format!("{LOGIN_PATH}?rd=%2Fadmin%2F")),
        Ok(Some(s)) => {
            let who = match s.user() {
                Some(u) => u
                    .name
                    .clone()
                    .or(u.email.clone())
                    .unwrap_or_else(|| u.subject.clone()),
                None => "an API key".to_string(),
            };
            respond::page(
                StatusCode::OK,
                pages::error::render_error(
                    200,
                    "Signed in",
                    &format!("You are signed in as {who}."),
                    None,
                    None,
                ),
            )
        }
    }
}

/// For headgate's own pages: the verified session, or the response to send instead (sign-in redirect for a
/// signed-out person, 401 + cleared cookies for two session cookies, 503 on a store failure).
pub async fn require_session(
    app: &App,
    req: &Request<hyper::body::Incoming>,
) -> Result<VerifiedSession, Response<Body>> {
    match app.sessions.lookup(req.headers(), app.now()).await {
        Ok(Lookup::Valid(s)) => Ok(*s),
        Ok(Lookup::Ambiguous) => Err(respond::with_cookies(
            respond::error_page(
                StatusCode::UNAUTHORIZED,
                "Sign in again",
                "Your browser sent two session cookies.",
                None,
            ),
            &[app.sessions.clear_cookie()],
        )),
        Ok(Lookup::None | Lookup::Invalid) => {
            let path_q = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/admin/");
            let rd = app.redirects.validate_or_default(Some(path_q));
            let to = format!("{LOGIN_PATH}?rd={}", enc(rd.as_str()));
            let status = if req.method() == http::Method::POST {
                StatusCode::SEE_OTHER
            } else {
                StatusCode::FOUND
            };
            Err(respond::with_cookies(
                respond::redirect(status, &to),
                &[app.sessions.clear_cookie()],
            ))
        }
        Err(e) => Err(store_failure(&e)),
    }
}

/// The capabilities of a session (API-key sessions: all).
pub fn session_caps(s: &VerifiedSession) -> crate::roles::Caps {
    match s.user() {
        Some(u) => crate::roles::caps(u.role),
        None => crate::roles::Caps::ALL,
    }
}

/// A 403 page naming the missing capability and the person's role.
pub fn forbidden(s: &VerifiedSession, needed: crate::roles::Caps) -> Response<Body> {
    let role = s.user().map(|u| u.role.as_str()).unwrap_or("api key");
    let missing = session_caps(s).missing(needed);
    respond::error_page(
        StatusCode::FORBIDDEN,
        "Not allowed",
        &format!("This needs the {missing} capability; your role is {role}."),
        Some("Ask an administrator to change your role."),
    )
}
