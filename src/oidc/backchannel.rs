//! OpenID Connect Back-Channel Logout 1.0: `POST /_headgate/oidc/backchannel-logout`.
//!
//! The IdP posts a form with one `logout_token`, a JWT it signed. headgate checks it as section 2.6 of the
//! specification says — signature by a key of the IdP's JWKS (the ID token's code, `rp::verify_signature`),
//! `iss`, `aud` holding `oidc.client_id`, `iat` recent (at most [`MAX_AGE_SECS`] old, not in the future beyond
//! the skew), `exp` when present, the back-channel logout event in `events`, no `nonce` (so an ID token can
//! never pass as a logout token), a `sid` or a `sub`, and a `jti` not seen before (a replay cache in the
//! store, so it holds across replicas) — and then ends the matching sessions: with a `sid`, the sessions
//! that began in that IdP session (only the `sub`'s, when both are given); with only a `sub`, every session
//! of that person. Answers: 200 (also when no session matched), 400 with a JSON error for a token that is
//! refused, 501 when SSO is not configured, 503 when the store failed (the IdP may retry); always
//! `Cache-Control: no-store`.

use http::{HeaderValue, Request, Response, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::app::{App, Body};
use crate::oidc::rp::SKEW_SECS;
use crate::respond;
use crate::store::NewAuditEvent;

pub const PATH: &str = "/_headgate/oidc/backchannel-logout";
/// The member of `events` that makes a JWT a back-channel logout token.
pub const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// A logout token whose `iat` is older than this (plus the skew) is refused. It bounds how long its `jti` must
/// be remembered.
pub const MAX_AGE_SECS: i64 = 600;
/// The replay cache's scope for logout-token `jti`s.
pub const REPLAY_SCOPE: &str = "backchannel_jti";
/// Largest form accepted (a logout token is a few KiB at most).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_ID_LEN: usize = 256;

/// What a valid logout token asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    /// Until when the `jti` must be remembered: after it, the `iat` check refuses the token anyway.
    pub remember_until: i64,
}

/// Check the claims (and the JOSE `typ`) of a logout token whose signature, `iss` and `aud` were verified.
/// Pure: the unit and property tests drive it directly.
pub fn check_claims(
    typ: Option<&str>,
    c: &Map<String, Value>,
    now: i64,
) -> Result<LogoutRequest, String> {
    // Explicit typing (section 2.4): `logout+jwt` is recommended; plain `JWT` or none are accepted, anything
    // else (an access token's `at+jwt`, ...) is a token of another kind.
    if let Some(t) = typ {
        let t = t.to_ascii_lowercase();
        if !matches!(
            t.as_str(),
            "jwt" | "logout+jwt" | "application/logout+jwt" | "application/jwt"
        ) {
            return Err(format!("its typ {t:?} is not logout+jwt"));
        }
    }
    let num = |k: &str| c.get(k).and_then(Value::as_i64);
    let iat = num("iat").ok_or("it has no iat")?;
    if iat > now + SKEW_SECS {
        return Err(
            "it was issued in the future (check the clocks of headgate and the IdP)".into(),
        );
    }
    if iat < now - MAX_AGE_SECS - SKEW_SECS {
        return Err(format!(
            "it was issued more than {MAX_AGE_SECS} s ago (check the clocks of headgate and the IdP)"
        ));
    }
    if let Some(exp) = c.get("exp") {
        let exp = exp.as_i64().ok_or("its exp is not a number")?;
        if now > exp + SKEW_SECS {
            return Err("it has expired".into());
        }
    }
    if let Some(nbf) = c.get("nbf") {
        let nbf = nbf.as_i64().ok_or("its nbf is not a number")?;
        if nbf > now + SKEW_SECS {
            return Err("it is not valid yet (nbf)".into());
        }
    }
    match c
        .get("events")
        .and_then(Value::as_object)
        .and_then(|e| e.get(EVENT))
    {
        Some(Value::Object(_)) => {}
        _ => return Err(format!("its events claim has no {EVENT} object")),
    }
    if c.contains_key("nonce") {
        return Err("it has a nonce (an ID token is not a logout token)".into());
    }
    let text = |k: &str| -> Result<Option<String>, String> {
        match c.get(k) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_LEN => Ok(Some(s.clone())),
            Some(_) => Err(format!(
                "its {k} is not a string of 1 to {MAX_ID_LEN} bytes"
            )),
        }
    };
    let sub = text("sub")?;
    let sid = text("sid")?;
    if sub.is_none() && sid.is_none() {
        return Err("it has neither sid nor sub".into());
    }
    let jti = text("jti")?.ok_or("it has no jti")?;
    Ok(LogoutRequest {
        sub,
        sid,
        jti,
        remember_until: iat + MAX_AGE_SECS + SKEW_SECS + 1,
    })
}

/// The `logout_token` of a form body: exactly one, non-empty.
pub fn logout_token_of(form: &[u8]) -> Result<String, &'static str> {
    let mut found = None;
    for (k, v) in url::form_urlencoded::parse(form) {
        if k == "logout_token" {
            if found.is_some() {
                return Err("the form has more than one logout_token");
            }
            found = Some(v.into_owned());
        }
    }
    match found {
        Some(t) if !t.is_empty() => Ok(t),
        _ => Err("the form has no logout_token"),
    }
}

fn answer(status: StatusCode, body: Option<Value>) -> Response<Body> {
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    let mut r = Response::new(crate::app::full(text.clone()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if !text.is_empty() {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    r
}

fn refuse(description: &str) -> Response<Body> {
    tracing::warn!(
        "refused a back-channel logout: {}",
        crate::logging::escape(description)
    );
    answer(
        StatusCode::BAD_REQUEST,
        Some(json!({ "error": "invalid_request", "error_description": description })),
    )
}

fn unavailable(e: &crate::store::StoreError) -> Response<Body> {
    tracing::error!(error = %e, "back-channel logout: store failure");
    answer(
        StatusCode::SERVICE_UNAVAILABLE,
        Some(json!({ "error": "temporarily_unavailable" })),
    )
}

/// `POST /_headgate/oidc/backchannel-logout`.
pub async fn handle(app: &App, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let Some(rp) = &app.rp else {
        return answer(
            StatusCode::NOT_IMPLEMENTED,
            Some(
                json!({ "error": "invalid_request", "error_description": "SSO ([oidc]) is not configured" }),
            ),
        );
    };
    let media = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or("");
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return refuse("the body must be application/x-www-form-urlencoded");
    }
    let body = match respond::read_body(
        req.into_body(),
        MAX_BODY_BYTES,
        app.config.server.body_read_timeout_secs,
    )
    .await
    {
        Ok(b) => b,
        Err(respond::BodyError::TooSlow(secs)) => {
            tracing::warn!(
                "back-channel logout body did not arrive within {secs} s (server.body_read_timeout_secs)"
            );
            let mut r = answer(
                StatusCode::REQUEST_TIMEOUT,
                Some(
                    json!({ "error": "invalid_request", "error_description": "the body did not arrive in time" }),
                ),
            );
            r.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            return r;
        }
        Err(respond::BodyError::TooLarge) => {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(
                    json!({ "error": "invalid_request", "error_description": "the body is too large" }),
                ),
            );
        }
        _ => return refuse("the body could not be read"),
    };
    let token = match logout_token_of(&body) {
        Ok(t) => t,
        Err(m) => return refuse(m),
    };
    let now = app.now();
    let endpoints = match rp.endpoints().await {
        Ok(e) => e,
        Err(e) => {
            // Without the IdP's keys the token cannot be checked; the IdP may retry.
            tracing::warn!("back-channel logout: {e}");
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(json!({ "error": "temporarily_unavailable" })),
            );
        }
    };
    let lr = match rp.verify_logout_token(&endpoints, &token, now).await {
        Ok(lr) => lr,
        Err(m) => return refuse(&m),
    };
    match app
        .store
        .use_replay_id(REPLAY_SCOPE, &lr.jti, lr.remember_until, now)
        .await
    {
        Ok(true) => {}
        Ok(false) => return refuse("its jti was used before (a replayed logout token)"),
        Err(e) => return unavailable(&e),
    }
    let ended = match revoke(app, &lr).await {
        Ok(n) => n,
        Err(e) => {
            // Nothing was ended: let the IdP's retry use the same token.
            let _ = app.store.forget_replay_id(REPLAY_SCOPE, &lr.jti).await;
            return unavailable(&e);
        }
    };
    let who = lr.sub.as_deref().unwrap_or("");
    tracing::info!(
        sub = %crate::logging::escape(who),
        sessions = ended,
        "back-channel logout from the IdP"
    );
    app.audit(NewAuditEvent {
        at: now,
        actor: "idp".into(),
        action: "backchannel_logout".into(),
        target: who.to_string(),
        detail: format!(
            "{ended} session(s) ended{}",
            if lr.sid.is_some() {
                " (by IdP session id)"
            } else {
                ""
            }
        ),
    });
    answer(StatusCode::OK, None)
}

async fn revoke(app: &App, lr: &LogoutRequest) -> Result<u64, crate::store::StoreError> {
    let user = match &lr.sub {
        Some(sub) => match app.store.user_by_subject(sub).await? {
            Some(u) => Some(u.id),
            // Nobody by that subject signed in here: nothing to end.
            None => return Ok(0),
        },
        None => None,
    };
    match (&lr.sid, user) {
        (Some(sid), user) => app.store.delete_sessions_by_idp_sid(sid, user).await,
        (None, Some(uid)) => app.store.delete_sessions_of_user(uid).await,
        (None, None) => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn good(now: i64) -> Value {
        json!({
            "iss": "https://idp", "aud": "headgate", "iat": now, "exp": now + 120, "jti": "j1",
            "sub": "alice", "sid": "s1", "events": { EVENT: {} }
        })
    }

    #[test]
    fn a_good_token_names_its_sessions() {
        let r = check_claims(Some("logout+jwt"), &claims(good(1000)), 1000).unwrap();
        assert_eq!(r.sub.as_deref(), Some("alice"));
        assert_eq!(r.sid.as_deref(), Some("s1"));
        assert_eq!(r.jti, "j1");
        assert!(r.remember_until > 1000 + MAX_AGE_SECS);
        assert!(check_claims(None, &claims(good(1000)), 1000).is_ok());
        assert!(check_claims(Some("JWT"), &claims(good(1000)), 1000).is_ok());
    }

    #[test]
    fn each_rule_refuses() {
        let now = 10_000;
        let with = |f: &dyn Fn(&mut Map<String, Value>)| {
            let mut c = claims(good(now));
            f(&mut c);
            check_claims(Some("logout+jwt"), &c, now)
        };
        assert!(
            with(&|c| {
                c.insert("nonce".into(), json!("n"));
            })
            .unwrap_err()
            .contains("nonce")
        );
        assert!(
            with(&|c| {
                c.remove("events");
            })
            .is_err()
        );
        assert!(
            with(&|c| {
                c.insert("events".into(), json!({ EVENT: "x" }));
            })
            .is_err()
        );
        assert!(
            with(&|c| {
                c.insert("events".into(), json!({ "http://other": {} }));
            })
            .is_err()
        );
        assert!(
            with(&|c| {
                c.remove("sub");
                c.remove("sid");
            })
            .unwrap_err()
            .contains("neither")
        );
        assert!(
            with(&|c| {
                c.remove("sub");
            })
            .is_ok()
        );
        assert!(
            with(&|c| {
                c.remove("sid");
            })
            .is_ok()
        );
        assert!(
            with(&|c| {
                c.remove("jti");
            })
            .is_err()
        );
        assert!(
            with(&|c| {
                c.insert("jti".into(), json!(""));
            })
            .is_err()
        );
        assert!(
            with(&|c| {
                c.remove("iat");
            })
            .is_err()
        );
        assert!(
            with(&|c| {
                c.insert("iat".into(), json!(now + SKEW_SECS + 5));
            })
            .is_err()
        );
        assert!(
            with(&|c| {
                c.insert("iat".into(), json!(now - MAX_AGE_SECS - SKEW_SECS - 5));
            })
            .is_err()
        );
        assert!(
            with(&|c| {
                c.insert("exp".into(), json!(now - SKEW_SECS - 5));
            })
            .is_err()
        );
        assert!(
            with(&|c| {
                c.insert("sub".into(), json!(7));
            })
            .is_err()
        );
        assert!(check_claims(Some("at+jwt"), &claims(good(now)), now).is_err());
    }

    #[test]
    fn the_form_has_exactly_one_token() {
        assert_eq!(logout_token_of(b"logout_token=abc").unwrap(), "abc");
        assert!(logout_token_of(b"logout_token=a&logout_token=b").is_err());
        assert!(logout_token_of(b"logout_token=").is_err());
        assert!(logout_token_of(b"other=1").is_err());
        assert!(logout_token_of(b"\xff\xfe%%%").is_err());
    }
}
