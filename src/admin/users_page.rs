//! `/_headgate/users`: the user administration page (`GET`, needs `read_users`) and its form posts (`POST`,
//! field `action` = `set_role | approve_link | refuse_link | link | unlink | revoke_sessions |
//! transfer_ownership`, with `user_id`, `role`, `headscale_user_id` and `csrf`).
//!
//! Every rule (who may do what, `owner` never assigned, the owner never demoted, IdP-owned roles, one-to-one
//! links, auditing) lives in [`crate::admin::ops`]; this module only checks the request (S8: same origin and
//! the session-bound token; a bounded urlencoded body without repeated fields), builds the actor and maps the
//! outcome to a response. The role of the person acting is read from the store on every request (the session
//! lookup loads the user), so a change applies at that person's next request.
//!
//! API-key sessions have no user record: they act as `Actor::Person { id: UserId(0), role: Admin,
//! label: "api key <prefix>" }`. Admin carries every capability but `owner`, so an API key can do everything
//! `write_users` allows but not transfer ownership (only the owner can), and the audit log names the key's
//! public prefix. Store ids start at 1, so id 0 never names a real user.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::admin::ops::{self, Actor, OpError};
use crate::app::{App, Body};
use crate::auth::{forbidden, query_param, require_session, session_caps, store_failure};
use crate::csrf;
use crate::pages;
use crate::pages::users::{
    AUDIT_PAGE, HsChoice, LinkView, Picker, USERS_PATH, UserRow, UsersPage, role_label,
};
use crate::respond;
use crate::roles::Caps;
use crate::session::VerifiedSession;
use crate::store::{LinkState, Role, SessionSubject, UserId};

/// Largest form body accepted.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// The form's `action` values.
const ACTIONS: [&str; 7] = [
    "set_role",
    "approve_link",
    "refuse_link",
    "link",
    "unlink",
    "revoke_sessions",
    "transfer_ownership",
];

/// The field names a post may carry; anything else is refused (400).
const FIELDS: [&str; 5] = ["action", "user_id", "role", "headscale_user_id", "csrf"];

fn idp_owns_roles(app: &App) -> Option<&str> {
    app.config
        .oidc
        .as_ref()
        .and_then(|o| o.role_claim.as_deref())
}

/// Who acts: the signed-in person with their current role, or an API key (see the module docs).
pub fn actor_of(s: &VerifiedSession) -> Actor {
    match (s.user(), &s.record().subject) {
        (Some(u), _) => Actor::Person {
            id: u.id,
            role: u.role,
            label: u
                .email
                .clone()
                .or_else(|| u.name.clone())
                .unwrap_or_else(|| u.subject.clone()),
        },
        (None, SessionSubject::ApiKey { prefix, .. }) => Actor::Person {
            id: UserId(0),
            role: Role::Admin,
            label: format!("api key {prefix}"),
        },
        // A user session always carries its user (the lookup refuses one whose user is gone); be safe.
        (None, SessionSubject::User(_)) => Actor::Person {
            id: UserId(0),
            role: Role::Member,
            label: "unknown".into(),
        },
    }
}

fn page_error(status: StatusCode, title: &str, message: &str) -> Response<Body> {
    respond::page(
        status,
        pages::render_error(status.as_u16(), title, message, None, Some(USERS_PATH)),
    )
}

fn bad_request(message: &str) -> Response<Body> {
    page_error(StatusCode::BAD_REQUEST, "Request refused", message)
}

fn csrf_refused(message: &str) -> Response<Body> {
    respond::page(
        StatusCode::FORBIDDEN,
        pages::render_error(
            403,
            "Request refused",
            message,
            Some("Reload the users page and try again."),
            Some(USERS_PATH),
        ),
    )
}

/// `GET`/`HEAD /_headgate/users`.
pub async fn get(app: &App, req: &Request<Incoming>) -> Response<Body> {
    let s = match require_session(app, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let caps = session_caps(&s);
    if !caps.has(Caps::READ_USERS) {
        return forbidden(&s, Caps::READ_USERS);
    }
    let can_write = caps.has(Caps::WRITE_USERS);
    let is_owner = s.user().is_some_and(|u| u.role == Role::Owner);
    let now = app.now();
    let before = query_param(req.uri(), "before").and_then(|b| b.parse::<u64>().ok());
    let done = query_param(req.uri(), "done");

    let users = match app.store.users().await {
        Ok(u) => u,
        Err(e) => return store_failure(&e),
    };
    let links = match app.store.links().await {
        Ok(l) => l,
        Err(e) => return store_failure(&e),
    };
    let sessions = match app.store.sessions().await {
        Ok(s) => s,
        Err(e) => return store_failure(&e),
    };
    // One more than a page, to know whether there is an older page.
    let mut audit = match app.store.audit(AUDIT_PAGE + 1, before).await {
        Ok(a) => a,
        Err(e) => return store_failure(&e),
    };
    let older = if audit.len() > AUDIT_PAGE {
        audit.truncate(AUDIT_PAGE);
        audit.last().map(|e| e.id)
    } else {
        None
    };

    // The link picker: unclaimed Headscale users (never the synthetic tagged-devices user), asked of
    // Headscale only when the viewer can link and someone is unlinked.
    let needs_picker = can_write
        && users
            .iter()
            .any(|u| !links.iter().any(|l| l.user_id == u.id));
    let mut reason = String::new();
    let mut choices: Vec<HsChoice> = Vec::new();
    if needs_picker {
        match &app.headscale {
            None => reason = "Linking needs a `[headscale]` section.".into(),
            Some(hs) => match hs.users().await {
                Ok(list) => {
                    choices = list
                        .iter()
                        .filter(|h| !h.is_tagged_devices())
                        .filter(|h| !links.iter().any(|l| l.headscale_user_id == h.id))
                        .map(|h| {
                            let mut label = h.label().to_string();
                            if !h.email.is_empty() && h.email != label {
                                label.push_str(&format!(" <{}>", h.email));
                            }
                            label.push_str(&format!(" #{}", h.id));
                            HsChoice {
                                id: h.id.clone(),
                                label,
                            }
                        })
                        .collect();
                }
                Err(e) => {
                    tracing::warn!("users page: could not list Headscale users: {e}");
                    reason =
                        "Headscale did not answer, so linking is unavailable right now.".into();
                }
            },
        }
    }
    let picker = if reason.is_empty() {
        Picker::Choices(&choices)
    } else {
        Picker::Unavailable(&reason)
    };

    let me = s.user().map(|u| u.id);
    let rows: Vec<UserRow<'_>> = users
        .iter()
        .map(|u| {
            let link = match links.iter().find(|l| l.user_id == u.id) {
                None => LinkView::None,
                Some(l) if l.state == LinkState::Pending => LinkView::Pending {
                    hs_id: &l.headscale_user_id,
                    hs_name: &l.headscale_name,
                },
                Some(l) => LinkView::Linked {
                    hs_id: &l.headscale_user_id,
                    hs_name: &l.headscale_name,
                },
            };
            let active = sessions
                .iter()
                .filter(|(_, r)| r.user_id() == Some(u.id) && now < r.expires)
                .count();
            UserRow {
                id: u.id.0,
                name: u.name.as_deref(),
                email: u.email.as_deref(),
                email_verified: u.email_verified,
                subject: &u.subject,
                role: u.role,
                link,
                last_login: u.last_login,
                sessions: active,
                is_self: me == Some(u.id),
            }
        })
        .collect();

    let (viewer, viewer_role) = match (s.user(), &s.record().subject) {
        (Some(u), _) => (
            u.name
                .clone()
                .filter(|n| !n.is_empty())
                .or_else(|| u.email.clone())
                .unwrap_or_else(|| u.subject.clone()),
            role_label(u.role).to_string(),
        ),
        (None, SessionSubject::ApiKey { prefix, .. }) => {
            (format!("API key {prefix}…"), "API key".to_string())
        }
        (None, _) => ("unknown".into(), "none".into()),
    };
    let token = csrf::session_token(&app.keys, s.key());
    let html = pages::users::render(&UsersPage {
        viewer: &viewer,
        viewer_role: &viewer_role,
        can_write,
        is_owner,
        role_claim: idp_owns_roles(app),
        csrf_token: &token,
        flash: done.as_deref(),
        users: &rows,
        picker,
        audit: &audit,
        older,
        paged: before.is_some(),
    });
    respond::page(StatusCode::OK, html)
}

/// The parsed form: each allowed field at most once.
#[derive(Default)]
struct Form {
    fields: Vec<(String, String)>,
}

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse a urlencoded body: a repeated or unknown field is refused.
fn parse_form(body: &[u8]) -> Result<Form, &'static str> {
    let mut f = Form::default();
    for (k, v) in url::form_urlencoded::parse(body) {
        if !FIELDS.contains(&k.as_ref()) {
            return Err("The form has a field this page does not know.");
        }
        if f.fields.iter().any(|(n, _)| *n == k) {
            return Err("The form repeats a field.");
        }
        f.fields.push((k.into_owned(), v.into_owned()));
    }
    Ok(f)
}

/// `POST /_headgate/users`.
pub async fn post(app: &App, req: Request<Incoming>) -> Response<Body> {
    // S8: the post must come from our own origin (before anything else is looked at).
    if !csrf::same_origin(req.headers(), &app.config.server.base_url) {
        tracing::warn!("refused a cross-site post to the users page");
        return csrf_refused("This form was not sent from this site.");
    }
    let s = match require_session(app, &req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let ct = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return page_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Request refused",
            "The form must be sent as a plain HTML form (`application/x-www-form-urlencoded`).",
        );
    }
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
            return page_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request refused",
                "The form is too large.",
            );
        }
    };
    let form = match parse_form(&body) {
        Ok(f) => f,
        Err(m) => return bad_request(m),
    };
    // S8: the token bound to this session.
    let token_ok = form
        .get("csrf")
        .is_some_and(|t| csrf::verify_session_token(&app.keys, s.key(), t));
    if !token_ok {
        tracing::warn!("refused a users-page post without a valid form token");
        return csrf_refused(
            "The form's security token is missing or does not match your session.",
        );
    }
    let Some(action) = form.get("action").filter(|a| ACTIONS.contains(a)) else {
        return bad_request("The form has no known `action`.");
    };
    // Capability first, so a reader gets the page naming what they lack (ops checks again).
    if action != "transfer_ownership" && !session_caps(&s).has(Caps::WRITE_USERS) {
        return forbidden(&s, Caps::WRITE_USERS);
    }
    let Some(target) = form
        .get("user_id")
        .filter(|v| !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .map(UserId)
    else {
        return bad_request("The form has no valid `user_id`.");
    };
    let actor = actor_of(&s);
    let now = app.now();
    let store = &app.store;
    let outcome: Result<&'static str, OpError> = match action {
        "set_role" => {
            let Some(role) = form.get("role").and_then(Role::from_name) else {
                return bad_request("The form has no valid `role`.");
            };
            ops::set_role(
                store,
                &actor,
                target,
                role,
                idp_owns_roles(app).is_some(),
                now,
            )
            .await
            .map(|_| "role_changed")
        }
        "approve_link" => ops::approve_link(store, &actor, target, now)
            .await
            .map(|_| "link_approved"),
        "refuse_link" => match store.link_of_user(target).await {
            Err(e) => Err(OpError::from(e)),
            Ok(None) => Err(OpError::NotFound("that user has no link".into())),
            Ok(Some(l)) if l.state != LinkState::Pending => {
                Err(OpError::Refused("that link is not pending".into()))
            }
            Ok(Some(_)) => ops::unlink(store, &actor, target, now)
                .await
                .map(|_| "link_refused"),
        },
        "unlink" => ops::unlink(store, &actor, target, now)
            .await
            .map(|_| "unlinked"),
        "link" => {
            let Some(hs_id) = form
                .get("headscale_user_id")
                .filter(|v| !v.is_empty() && v.len() <= 64)
            else {
                return bad_request("The form has no `headscale_user_id`.");
            };
            let Some(hs) = &app.headscale else {
                return page_error(
                    StatusCode::CONFLICT,
                    "Not possible",
                    "Linking needs a `[headscale]` section.",
                );
            };
            // A fresh list: never link to a user Headscale no longer has.
            hs.forget_users();
            let list = match hs.users().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("users page: could not list Headscale users: {e}");
                    return page_error(
                        StatusCode::BAD_GATEWAY,
                        "Headscale is unavailable",
                        "Headscale did not answer, so the link was not made. Try again in a moment.",
                    );
                }
            };
            match list.iter().find(|u| u.id == hs_id) {
                None => Err(OpError::NotFound("no such Headscale user".into())),
                Some(h) => ops::link(store, &actor, target, h, now)
                    .await
                    .map(|_| "linked"),
            }
        }
        "revoke_sessions" => ops::revoke_sessions(store, &actor, target, now)
            .await
            .map(|_| "sessions_revoked"),
        "transfer_ownership" => ops::transfer_ownership(store, &actor, target, now)
            .await
            .map(|_| "ownership_transferred"),
        _ => unreachable!("checked against ACTIONS"),
    };
    match outcome {
        Ok(done) => {
            tracing::info!(action, target = target.0, "users page: change made");
            respond::redirect(StatusCode::SEE_OTHER, &format!("{USERS_PATH}?done={done}"))
        }
        Err(OpError::Forbidden(m)) => {
            tracing::warn!(action, target = target.0, "users page: refused ({m})");
            page_error(StatusCode::FORBIDDEN, "Not allowed", &m)
        }
        Err(OpError::Refused(m)) => {
            tracing::info!(action, target = target.0, "users page: refused ({m})");
            page_error(StatusCode::CONFLICT, "Change refused", &m)
        }
        Err(OpError::NotFound(m)) => page_error(StatusCode::NOT_FOUND, "Not found", &m),
        Err(OpError::Store(e)) => store_failure(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_refuse_repeats_and_unknown_fields() {
        let f = parse_form(b"action=set_role&user_id=2&role=viewer&csrf=x").unwrap();
        assert_eq!(f.get("role"), Some("viewer"));
        assert!(parse_form(b"action=set_role&action=unlink").is_err());
        assert!(parse_form(b"role=viewer&role=owner").is_err());
        assert!(parse_form(b"action=set_role&evil=1").is_err());
        assert!(parse_form(b"").unwrap().fields.is_empty());
    }
}
