//! API-key sign-in (`POST /admin/login`, form field `api_key`): validated against Headscale, lifetime the
//! shorter of the key's and `server.cookie_max_age`, only the prefix and a hash kept (S14), failures
//! rate-limited in the store, and sessions re-checked with headgate's own key.

use http::{Request, Response, StatusCode};

use crate::app::{App, Body, Conn, LOGIN_PATH, START_PATH};
use crate::crypto;
use crate::csrf;
use crate::headscale::{ApiKey, HeadscaleError};
use crate::pages;
use crate::respond;
use crate::store::{SessionRecord, SessionSubject};

/// S14 defaults: 10 failures in 10 minutes per client IP → 429.
pub const MAX_FAILURES: u32 = 10;
pub const FAILURE_WINDOW_SECS: i64 = 600;
const MAX_FORM_BYTES: usize = 16 * 1024;

/// What went wrong, in the words the login page shows (Headplane's messages, told apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Empty,
    NotFound,
    Expired,
    Invalid,
    NoExpiration,
    /// Headscale did not answer (or failed): the key could not be checked.
    Unavailable,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "Missing API key",
            Refusal::Empty => "API key cannot be empty",
            Refusal::NotFound => "API key was not found",
            Refusal::Expired => "API key has expired",
            Refusal::Invalid => "API key is invalid (it may be incorrect or expired)",
            Refusal::NoExpiration => "API key has no expiration date: create one with --expiration",
            Refusal::Unavailable => {
                "Headscale could not be reached to check the API key: try again in a moment (this attempt \
                 does not count as a failed sign-in). Operators: check that Headscale is running and \
                 headscale.url."
            }
        }
    }

    /// The status of the form page that shows the refusal.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::OK,
        }
    }
}

/// Headscale's key formats: `hskey-api-<12>-<64>` (v0.28+) or legacy `<7>.<32>`.
pub fn well_formed(key: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if let Some(rest) = key.strip_prefix("hskey-api-") {
        return rest.len() > 13 && ok(rest);
    }
    match key.split_once('.') {
        Some((p, s)) => p.len() >= 5 && s.len() >= 16 && ok(p) && ok(s),
        None => false,
    }
}

fn matching<'a>(keys: &'a [ApiKey], full: &str) -> Option<&'a ApiKey> {
    keys.iter()
        .find(|k| !k.bare_prefix().is_empty() && full.starts_with(k.bare_prefix()))
}

fn parse_time(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Check a submitted key: Ok((prefix, expiry)) or the refusal to show.
async fn validate(app: &App, key: &str, now: i64) -> Result<(String, i64), Refusal> {
    let hs = app.headscale.as_ref().ok_or(Refusal::Invalid)?;
    match hs.list_api_keys_with(key).await {
        Ok(list) => {
            let k = matching(&list, key).ok_or(Refusal::NotFound)?;
            let exp = k
                .expiration
                .as_deref()
                .and_then(parse_time)
                .ok_or(Refusal::NoExpiration)?;
            // Headscale's zero time means "no expiration was set".
            if exp <= 0 {
                return Err(Refusal::NoExpiration);
            }
            if exp <= now {
                return Err(Refusal::Expired);
            }
            Ok((k.bare_prefix().to_string(), exp))
        }
        Err(HeadscaleError::InvalidKey) => {
            if !well_formed(key) {
                return Err(Refusal::Invalid);
            }
            // Tell "expired" and "not found" apart with headgate's own key (Headplane cannot).
            match hs.list_api_keys_with(hs_own_key(app)).await {
                Ok(all) => match matching(&all, key) {
                    Some(k)
                        if k.expiration
                            .as_deref()
                            .and_then(parse_time)
                            .is_some_and(|e| e > 0 && e <= now) =>
                    {
                        Err(Refusal::Expired)
                    }
                    Some(_) => Err(Refusal::Invalid),
                    None => Err(Refusal::NotFound),
                },
                Err(e) => {
                    tracing::warn!(
                        "could not list API keys with headscale.api_key to explain a refusal: {e}"
                    );
                    Err(Refusal::Invalid)
                }
            }
        }
        Err(e) => {
            tracing::error!("API-key sign-in could not reach Headscale: {e}");
            Err(Refusal::Unavailable)
        }
    }
}

fn hs_own_key(app: &App) -> &str {
    app.config
        .headscale
        .as_ref()
        .map(|h| h.api_key.expose())
        .unwrap_or("")
}

fn form_page(app: &App, error: &str, rd: Option<&str>, status: StatusCode) -> Response<Body> {
    let sso = match &app.rp {
        None => pages::login::Sso::NotConfigured,
        Some(_) => pages::login::Sso::Available,
    };
    let page = pages::login::LoginPage {
        sso,
        api_key_form: true,
        status: None,
        api_key_error: Some(error),
        warnings: &[],
        return_target: rd,
        csrf_token: "",
        start_path: START_PATH,
        login_path: LOGIN_PATH,
    };
    super::login_response(app, page, status)
}

/// `POST /admin/login` and `/admin/login.data`.
pub async fn login(app: &App, req: Request<hyper::body::Incoming>, conn: Conn) -> Response<Body> {
    let data = req.uri().path().ends_with(".data");
    if app.headscale.is_none()
        || app
            .config
            .oidc
            .as_ref()
            .is_some_and(|o| o.disable_api_key_login)
    {
        tracing::warn!(
            "refused an API-key sign-in: it is disabled (oidc.disable_api_key_login, or no [headscale])"
        );
        return respond::error_page(
            StatusCode::FORBIDDEN,
            "API-key sign-in is disabled",
            "This site only allows single sign-on.",
            None,
        );
    }
    let client = crate::client_ip::client_ip(
        conn.peer.ip(),
        req.headers(),
        &app.config.server.trusted_proxies,
    );
    let cidrs = &app.config.server.api_key_login_cidrs;
    if !cidrs.is_empty() && !cidrs.iter().any(|c| c.contains(client)) {
        return respond::error_page(
            StatusCode::FORBIDDEN,
            "API-key sign-in is not allowed from here",
            "Your network is not in server.api_key_login_cidrs.",
            None,
        );
    }
    if !csrf::same_origin(req.headers(), &app.config.server.base_url) {
        tracing::warn!("refused a cross-site API-key sign-in post");
        return respond::error_page(
            StatusCode::FORBIDDEN,
            "Sign-in refused",
            "This form was not sent from this site.",
            None,
        );
    }
    let ct = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return respond::error_page(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Sign-in refused",
            "The form must be sent as a plain HTML form.",
            None,
        );
    }
    let csrf_cookie =
        crate::cookies::values(req.headers(), &app.cookies.name(csrf::COOKIE_BASE, "/"))
            .first()
            .map(|s| s.to_string());
    let body = match respond::read_body(
        req.into_body(),
        MAX_FORM_BYTES,
        app.config.server.body_read_timeout_secs,
    )
    .await
    {
        Ok(b) => b,
        Err(respond::BodyError::TooSlow(secs)) => return respond::body_too_slow(secs),
        Err(_) => {
            return respond::error_page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Sign-in refused",
                "The form is too large.",
                None,
            );
        }
    };
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let rd = field("rd")
        .and_then(|r| app.redirects.validate(&r))
        .map(|t| t.as_str().to_string());
    if !data {
        let ok = match (csrf_cookie.as_deref(), field("csrf")) {
            (Some(c), Some(t)) => csrf::verify(&app.keys, c, &t),
            _ => false,
        };
        if !ok {
            return form_page(
                app,
                "The sign-in form expired: please try again.",
                rd.as_deref(),
                StatusCode::FORBIDDEN,
            );
        }
    }
    let now = app.now();
    let limit_key = format!("api_key_login:{}", limit_bucket(client));
    match app
        .store
        .failures(&limit_key, now, FAILURE_WINDOW_SECS)
        .await
    {
        Ok(n) if n >= MAX_FAILURES => {
            tracing::warn!(peer = %conn.peer, "API-key sign-in rate limit reached ({MAX_FAILURES} failures in 10 minutes)");
            return form_page(
                app,
                "Too many failed attempts: try again in 10 minutes",
                rd.as_deref(),
                StatusCode::TOO_MANY_REQUESTS,
            );
        }
        Ok(_) => {}
        Err(e) => return super::store_failure(&e),
    }
    // Count this attempt as a failure before checking the key (one write transaction increments and
    // counts), so parallel posts cannot all slip past the limit; a success clears the count.
    match app
        .store
        .record_failure(&limit_key, now, FAILURE_WINDOW_SECS)
        .await
    {
        Ok(n) if n > MAX_FAILURES => {
            return form_page(
                app,
                "Too many failed attempts: try again in 10 minutes",
                rd.as_deref(),
                StatusCode::TOO_MANY_REQUESTS,
            );
        }
        Ok(_) => {}
        Err(e) => return super::store_failure(&e),
    }
    let refusal = match field("api_key") {
        None => Err(Refusal::Missing),
        Some(k) if k.trim().is_empty() => Err(Refusal::Empty),
        Some(k) if k.len() > 512 => Err(Refusal::Invalid),
        Some(k) => validate(app, k.trim(), now)
            .await
            .map(|v| (k.trim().to_string(), v)),
    };
    let (key, (prefix, key_expires)) = match refusal {
        Ok(v) => v,
        Err(r) => {
            if r == Refusal::Unavailable {
                // Headscale's outage is not a wrong guess: take this attempt's failure back, so nobody is
                // locked out for trying again while Headscale is down.
                if let Err(e) = app.store.forget_failure(&limit_key, now).await {
                    tracing::warn!(
                        "could not take back the failure count of an attempt Headscale did not answer: {e}"
                    );
                }
            }
            tracing::info!(peer = %conn.peer, reason = r.message(), "API-key sign-in refused");
            return form_page(app, r.message(), rd.as_deref(), r.status());
        }
    };
    let _ = app.store.clear_failures(&limit_key).await;
    let expires = key_expires.min(now + app.config.server.cookie_max_age as i64);
    let record = SessionRecord {
        subject: SessionSubject::ApiKey {
            prefix: prefix.clone(),
            key_hash: crypto::sha256(key.as_bytes()),
        },
        created: now,
        expires,
        last_seen: now,
        idp_sid: None,
        id_token: None,
        refresh_token_enc: None,
        refreshed: now,
    };
    let set = match app.sessions.create(record, now).await {
        Ok(c) => c,
        Err(e) => return super::store_failure(&e),
    };
    tracing::info!(key_prefix = %prefix, "signed in with an API key");
    let target = rd.unwrap_or_else(|| "/admin/".to_string());
    let r = if data {
        respond::data_redirect_action(&target)
    } else {
        respond::redirect(StatusCode::SEE_OTHER, &target)
    };
    respond::with_cookies(r, &[set])
}

/// S14: end the sessions whose key Headscale no longer lists, or lists as expired. A Headscale failure
/// leaves sessions alone (they still end at the key's expiry) and is logged.
pub async fn recheck_sessions(app: &App) {
    let Some(hs) = &app.headscale else { return };
    let api = match app.store.api_key_sessions().await {
        Ok(s) => s,
        Err(e) => return tracing::warn!(error = %e, "API-key re-check: cannot list sessions"),
    };
    if api.is_empty() {
        return;
    }
    let listed = match hs.list_api_keys_with(hs_own_key(app)).await {
        Ok(l) => l,
        Err(e) => return tracing::warn!("API-key re-check: {e}"),
    };
    let now = app.now();
    for (key, prefix) in api {
        let alive = listed.iter().any(|k| {
            k.bare_prefix() == prefix
                && k.expiration
                    .as_deref()
                    .and_then(parse_time)
                    .is_some_and(|e| e > now)
        });
        if !alive {
            match app.store.delete_session(&key).await {
                Ok(_) => {
                    tracing::info!(key_prefix = %prefix, "ended an API-key session: the key is gone or expired at Headscale")
                }
                Err(e) => tracing::warn!(error = %e, "API-key re-check: cannot end a session"),
            }
        }
    }
}

/// IPv6 clients are bucketed by /64 (one subscriber), so rotating addresses does not escape the limit.
fn limit_bucket(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(|v4| v4.to_string())
            .unwrap_or_default(),
        v4 => v4.to_string(),
    }
}
