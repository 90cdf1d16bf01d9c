//! Onboarding (`/_headgate/onboarding`, its `/status`) and own pre-auth keys (`/_headgate/keys`).
//!
//! - A person's own pick of a Headscale user follows S4: only unclaimed, non-OIDC users other than
//!   `tagged-devices`, whose email is empty or the person's verified email; with `onboarding.self_link =
//!   "approve"` the pick is stored pending and grants nothing until approved (the owner's and `write_users`
//!   holders' picks apply at once), `"allow"` links at once, `"off"` offers nothing and refuses crafted picks.
//!   Every decision is taken again on the post, against a fresh user list: the form is never trusted.
//! - Keys (S5, `spec/policy.md` section 3) are only ever created for, listed for and expired under the
//!   caller's own *approved* link, re-checked against Headscale (a re-created Headscale user is not followed):
//!   single use, no tags, short-lived. The onboarding button makes a 1-hour key; the keys page lets people
//!   pick up to `onboarding.own_key_max_expiry`. A new key is shown once, on the response to the post.
//! - Forms (S8): same origin, urlencoded, at most 8 KiB, a session-bound token, no repeated fields.
//! - Every pick, key creation and key expiry is audited.

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use crate::app::{App, Body};
use crate::auth::{current_session, enc, query_param, require_session, store_failure};
use crate::config::SelfLink;
use crate::csrf;
use crate::headscale::{Headscale, Node, PreAuthKey, User as HsUser};
use crate::pages::{self, keys as kp, onboarding as op};
use crate::respond;
use crate::roles::{Caps, Role, caps};
use crate::session::VerifiedSession;
use crate::store::{Link, LinkOutcome, LinkState, NewAuditEvent, StoreError, User};

pub const ONBOARDING_PATH: &str = "/_headgate/onboarding";
pub const STATUS_PATH: &str = "/_headgate/onboarding/status";
pub const KEYS_PATH: &str = "/_headgate/keys";
/// Headplane's own key page, for those who may create keys for everyone.
pub const HEADPLANE_KEYS_PATH: &str = "/admin/settings/auth-keys";
/// Lifetime of the key the onboarding button creates.
pub const ONBOARDING_KEY_SECS: i64 = 3600;
/// Shortest lifetime of a key made on the keys page.
pub const MIN_OWN_KEY_SECS: u64 = 300;
const MAX_FORM_BYTES: usize = 8 * 1024;

// ----- rules -------------------------------------------------------------------------------------------------

/// S4: whether a person with `verified_email` may pick `hs`, given every stored link (pending ones too).
pub fn pickable(hs: &HsUser, links: &[Link], verified_email: Option<&str>) -> bool {
    !hs.id.is_empty()
        && !hs.is_oidc()
        && !hs.is_tagged_devices()
        && !links.iter().any(|l| l.headscale_user_id == hs.id)
        && (hs.email.is_empty()
            || verified_email.is_some_and(|e| !e.is_empty() && hs.email.eq_ignore_ascii_case(e)))
}

/// What a pick by `role` does under `setting`.
pub fn pick_mode(setting: SelfLink, role: Role) -> op::PickMode {
    match setting {
        SelfLink::Off => op::PickMode::Off,
        _ if role == Role::Owner || caps(role).has(Caps::WRITE_USERS) => op::PickMode::Immediate,
        SelfLink::Allow => op::PickMode::Immediate,
        SelfLink::Approve => op::PickMode::Approve,
    }
}

/// The person's email, when it may be used to match (verified, or `oidc.trust_unverified_email`).
fn verified_email<'a>(app: &App, u: &'a User) -> Option<&'a str> {
    let trust = app
        .config
        .oidc
        .as_ref()
        .is_some_and(|o| o.trust_unverified_email);
    u.email
        .as_deref()
        .filter(|e| !e.is_empty() && (u.email_verified || trust))
}

/// Whether the role may create a key for its own user (from onboarding).
fn may_create_own_key(c: Caps) -> bool {
    c.has(Caps::GENERATE_OWN_AUTHKEYS) || c.has(Caps::GENERATE_AUTHKEYS)
}

fn effective(link: &Option<Link>) -> Option<&Link> {
    link.as_ref().filter(|l| l.state == LinkState::Approved)
}

/// The nodes of a Headscale user (tagged nodes belong to nobody).
fn nodes_of<'a>(nodes: &'a [Node], hs_user_id: &str) -> Vec<&'a Node> {
    nodes
        .iter()
        .filter(|n| n.tags.is_empty() && n.user.as_ref().is_some_and(|u| u.id == hs_user_id))
        .collect()
}

fn node_name(n: &Node) -> &str {
    if n.given_name.is_empty() {
        &n.name
    } else {
        &n.given_name
    }
}

/// Whether Headscale lists `k` under `hs_user_id` (a key without a user is nobody's own).
fn key_is_own(k: &PreAuthKey, hs_user_id: &str) -> bool {
    !hs_user_id.is_empty() && k.user.as_ref().is_some_and(|u| u.id == hs_user_id)
}

fn parse_time(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// `2025-01-31 13:05 UTC`.
fn readable(t: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_default()
}

fn readable_rfc(s: &str) -> String {
    match parse_time(s) {
        Some(t) if t > 0 => readable(t),
        Some(_) => "never (expired)".into(),
        None if s.is_empty() => "unknown".into(),
        None => s.chars().take(40).collect(),
    }
}

/// A person's name for pages: name, email, subject.
fn display_name(u: &User) -> String {
    u.name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .or_else(|| u.email.clone())
        .unwrap_or_else(|| u.subject.clone())
}

fn actor(u: &User) -> String {
    let label = u
        .email
        .clone()
        .or_else(|| u.name.clone())
        .unwrap_or_else(|| u.subject.clone());
    format!("user {} ({label})", u.id.0)
}

async fn audit(
    app: &App,
    u: &User,
    action: &str,
    target: String,
    detail: String,
) -> Result<(), StoreError> {
    app.store
        .append_audit(vec![NewAuditEvent {
            at: app.now(),
            actor: actor(u),
            action: action.into(),
            target,
            detail,
        }])
        .await
}

// ----- forms -------------------------------------------------------------------------------------------------

struct Form(Vec<(String, String)>);

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn refused(status: StatusCode, message: &str) -> Response<Body> {
    respond::error_page(status, "Request refused", message, None)
}

/// S8: same origin, urlencoded, bounded, no repeated field, the session's token.
async fn read_form(
    app: &App,
    req: Request<Incoming>,
    s: &VerifiedSession,
) -> Result<Form, Response<Body>> {
    if !csrf::same_origin(req.headers(), &app.config.server.base_url) {
        tracing::warn!(path = req.uri().path(), "refused a cross-site form post");
        return Err(refused(
            StatusCode::FORBIDDEN,
            "This form was not sent from this site.",
        ));
    }
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "The form must be sent as a plain HTML form.",
        ));
    }
    let body = match respond::read_body(
        req.into_body(),
        MAX_FORM_BYTES,
        app.config.server.body_read_timeout_secs,
    )
    .await
    {
        Ok(b) => b,
        Err(respond::BodyError::TooSlow(secs)) => return Err(respond::body_too_slow(secs)),
        Err(_) => {
            return Err(refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The form is too large.",
            ));
        }
    };
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let mut names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "The form repeats a field.",
        ));
    }
    let form = Form(fields);
    let ok = form
        .get("csrf")
        .is_some_and(|t| csrf::verify_session_token(&app.keys, s.key(), t));
    if !ok {
        tracing::warn!("refused a form post without a valid token");
        return Err(refused(
            StatusCode::FORBIDDEN,
            "This form has expired or was not sent from this site. Reload the page and try again.",
        ));
    }
    Ok(form)
}

fn user_agent(req: &Request<Incoming>) -> String {
    req.headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(512)
        .collect()
}

fn headscale_unavailable(e: &dyn std::fmt::Display) -> Response<Body> {
    tracing::warn!("{e}");
    respond::error_page(
        StatusCode::BAD_GATEWAY,
        "Headscale is unavailable",
        "headgate could not ask Headscale just now.",
        Some("Try again in a moment. Operators: see headgate's log."),
    )
}

fn sso_only(s: &VerifiedSession) -> Option<&User> {
    s.user()
}

// ----- onboarding --------------------------------------------------------------------------------------------

/// What one rendering of the onboarding page needs besides the stored state.
struct Render<'a> {
    step: Option<op::Step>,
    rd: &'a str,
    os: op::Os,
    notice: Option<op::Notice<'a>>,
    new_key: Option<op::NewKey<'a>>,
}

async fn onboarding_response(
    app: &App,
    s: &VerifiedSession,
    user: &User,
    hs: &Headscale,
    r: Render<'_>,
) -> Response<Body> {
    let link = match app.store.link_of_user(user.id).await {
        Ok(l) => l,
        Err(e) => return store_failure(&e),
    };
    let c = caps(user.role);
    let ui_access = c.has(Caps::UI_ACCESS);
    let mode = pick_mode(app.config.onboarding.self_link, user.role);
    let step = r.step.unwrap_or(match (&link, mode) {
        (None, op::PickMode::Off) => op::Step::Device,
        (None, _) => op::Step::Link,
        (Some(l), _) if l.state == LinkState::Pending => op::Step::Link,
        _ => op::Step::Device,
    });
    let mut candidates = Vec::new();
    let mut candidates_unavailable = false;
    let wants_list =
        link.is_none() && mode != op::PickMode::Off && (step == op::Step::Link || !ui_access);
    if wants_list {
        match (hs.users().await, app.store.links().await) {
            (Ok(users), Ok(links)) => {
                let email = verified_email(app, user);
                candidates = users
                    .iter()
                    .filter(|u| pickable(u, &links, email))
                    .map(|u| op::Candidate {
                        id: u.id.clone(),
                        name: u.label().to_string(),
                        email: u.email.clone(),
                    })
                    .collect();
            }
            (Err(e), _) => {
                tracing::warn!("onboarding: {e}");
                candidates_unavailable = true;
            }
            (_, Err(e)) => return store_failure(&e),
        }
    }
    let link_view = match &link {
        None => op::LinkView::None,
        Some(l) if l.state == LinkState::Pending => op::LinkView::Pending {
            name: &l.headscale_name,
        },
        Some(l) => op::LinkView::Linked {
            name: &l.headscale_name,
        },
    };
    let eff = effective(&link);
    let mut first: Option<(String, usize)> = None;
    let mut devices = op::Devices::Unknown;
    // Only an approved link shows devices: a pending pick grants nothing, not even a look.
    if ui_access
        && step == op::Step::Wait
        && let Some(l) = eff
    {
        match hs.nodes().await {
            Ok(nodes) => {
                let own = nodes_of(&nodes, &l.headscale_user_id);
                if let Some(n) = own.first() {
                    first = Some((node_name(n).to_string(), own.len()));
                } else {
                    devices = op::Devices::None;
                }
            }
            Err(e) => {
                tracing::warn!("onboarding: {e}");
                devices = op::Devices::Unavailable;
            }
        }
    }
    if let Some((name, count)) = &first {
        devices = op::Devices::First {
            name,
            count: *count,
        };
    }
    let who = display_name(user);
    let token = csrf::session_token(&app.keys, s.key());
    let public_url = app
        .config
        .headscale
        .as_ref()
        .map(|h| h.public_url.as_str().trim_end_matches('/').to_string())
        .unwrap_or_default();
    let page = op::OnboardingPage {
        step,
        who: &who,
        ui_access,
        link: link_view,
        pick: mode,
        candidates: &candidates,
        candidates_unavailable,
        os: r.os,
        login_server: &public_url,
        key_needs_link: may_create_own_key(c) && eff.is_none(),
        key_button: may_create_own_key(c) && eff.is_some(),
        new_key: r.new_key,
        devices,
        notice: r.notice,
        csrf_token: &token,
        rd: r.rd,
        path: ONBOARDING_PATH,
    };
    respond::page(StatusCode::OK, op::render(&page))
}

fn nothing_to_set_up(rd: &str) -> Response<Body> {
    respond::page(
        StatusCode::OK,
        pages::error::render_error(
            200,
            "You are signed in",
            "There is nothing to set up here: this headgate has no Headscale to connect devices to.",
            None,
            Some(rd),
        ),
    )
}

/// `GET /_headgate/onboarding[?step=link|device|wait][&rd=…]`.
pub async fn page(app: &App, req: &Request<Incoming>) -> Response<Body> {
    let s = match require_session(app, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let rd = app
        .redirects
        .validate_or_default(query_param(req.uri(), "rd").as_deref());
    // API-key sessions are not a person: nothing to onboard.
    let Some(user) = sso_only(&s).cloned() else {
        return respond::redirect(StatusCode::FOUND, rd.as_str());
    };
    let Some(hs) = &app.headscale else {
        return nothing_to_set_up(rd.as_str());
    };
    let step = query_param(req.uri(), "step").and_then(|s| op::Step::from_query(&s));
    let os = op::os_from_user_agent(&user_agent(req));
    let notice = match query_param(req.uri(), "done").as_deref() {
        Some("pending") => Some(op::Notice::Info(
            "Your pick was saved. An administrator must approve it before it takes effect.",
        )),
        Some("linked") => Some(op::Notice::Info("Your account is now linked.")),
        _ => None,
    };
    onboarding_response(
        app,
        &s,
        &user,
        hs,
        Render {
            step,
            rd: rd.as_str(),
            os,
            notice,
            new_key: None,
        },
    )
    .await
}

/// `POST /_headgate/onboarding`: `action` = `pick` (`headscale_user_id`), `skip`, `create_key`, `finish`.
pub async fn post(app: &App, req: Request<Incoming>) -> Response<Body> {
    let s = match require_session(app, &req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let os = op::os_from_user_agent(&user_agent(&req));
    let form = match read_form(app, req, &s).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let rd = app.redirects.validate_or_default(form.get("rd"));
    let Some(user) = sso_only(&s).cloned() else {
        return refused(
            StatusCode::FORBIDDEN,
            "Onboarding is for people signed in with single sign-on, not API-key sessions.",
        );
    };
    match form.get("action") {
        Some("skip" | "finish") => {
            if let Err(e) = mark_onboarded(app, &user).await {
                return store_failure(&e);
            }
            tracing::info!(
                user = user.id.0,
                action = form.get("action").unwrap_or(""),
                "onboarding done"
            );
            respond::redirect(StatusCode::SEE_OTHER, rd.as_str())
        }
        Some("pick") => {
            let Some(hs) = &app.headscale else {
                return refused(StatusCode::NOT_FOUND, "There is no Headscale to link to.");
            };
            pick(
                app,
                &user,
                hs,
                form.get("headscale_user_id").unwrap_or(""),
                rd.as_str(),
            )
            .await
        }
        Some("create_key") => {
            let Some(hs) = &app.headscale else {
                return refused(
                    StatusCode::NOT_FOUND,
                    "There is no Headscale to create keys in.",
                );
            };
            onboarding_key(app, &s, &user, hs, rd.as_str(), os).await
        }
        _ => refused(StatusCode::BAD_REQUEST, "Unknown action."),
    }
}

async fn mark_onboarded(app: &App, user: &User) -> Result<(), StoreError> {
    // Only the onboarded field, written to the stored record (a role or link change meanwhile stays).
    if user.onboarded {
        return Ok(());
    }
    match app.store.mark_onboarded(user.id).await {
        Ok(()) | Err(StoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn pick(app: &App, user: &User, hs: &Headscale, id: &str, rd: &str) -> Response<Body> {
    let mode = pick_mode(app.config.onboarding.self_link, user.role);
    if mode == op::PickMode::Off {
        tracing::warn!(
            user = user.id.0,
            "refused a self-link: onboarding.self_link is off"
        );
        return refused(
            StatusCode::FORBIDDEN,
            "Picking your own Headscale user is turned off on this site. An administrator can link your account.",
        );
    }
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return refused(StatusCode::BAD_REQUEST, "Pick a Headscale user.");
    }
    match app.store.link_of_user(user.id).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            return refused(
                StatusCode::CONFLICT,
                "Your account already has a link (or a pick waiting for approval).",
            );
        }
        Err(e) => return store_failure(&e),
    }
    // Decide on a fresh list: the form only names an id.
    hs.forget_users();
    let users = match hs.users().await {
        Ok(u) => u,
        Err(e) => return headscale_unavailable(&e),
    };
    let links = match app.store.links().await {
        Ok(l) => l,
        Err(e) => return store_failure(&e),
    };
    let target = users.iter().find(|u| u.id == id);
    let Some(target) = target.filter(|t| pickable(t, &links, verified_email(app, user))) else {
        tracing::warn!(
            user = user.id.0,
            headscale_user = %crate::logging::escape(id),
            "refused a self-link: that Headscale user is not one this person may pick (S4)"
        );
        return refused(
            StatusCode::FORBIDDEN,
            "That Headscale user cannot be picked: it is linked to someone, created by single sign-on, not a person, or has another email.",
        );
    };
    let state = match mode {
        op::PickMode::Immediate => LinkState::Approved,
        _ => LinkState::Pending,
    };
    let now = app.now();
    match app
        .store
        .link_if_unclaimed(crate::linking::link_for(target, user, state, now))
        .await
    {
        Ok(LinkOutcome::Linked) => {}
        Ok(LinkOutcome::AlreadyLinkedToOther(_)) => {
            return refused(
                StatusCode::CONFLICT,
                "That Headscale user was just linked to someone else.",
            );
        }
        Ok(LinkOutcome::UserAlreadyLinked) => {
            return refused(
                StatusCode::CONFLICT,
                "Your account already has a link (or a pick waiting for approval).",
            );
        }
        Err(e) => return store_failure(&e),
    }
    let detail = match (state, app.config.onboarding.self_link) {
        (LinkState::Pending, _) => "self-pick, pending approval".to_string(),
        (_, SelfLink::Allow) => "self-pick, applied (onboarding.self_link = allow)".to_string(),
        _ => format!("self-pick, applied (role {})", user.role.as_str()),
    };
    if let Err(e) = audit(
        app,
        user,
        "self_link",
        format!("user {} ↔ headscale user {}", user.id.0, target.id),
        detail,
    )
    .await
    {
        return store_failure(&e);
    }
    tracing::info!(user = user.id.0, headscale_user = %target.id, state = ?state, "self-link");
    let done = if state == LinkState::Pending {
        "pending"
    } else {
        "linked"
    };
    respond::redirect(
        StatusCode::SEE_OTHER,
        &format!("{ONBOARDING_PATH}?step=link&done={done}&rd={}", enc(rd)),
    )
}

/// The caller's approved link, re-checked against a fresh user list (S3: a re-created user is not followed).
async fn checked_link(app: &App, user: &User, hs: &Headscale) -> Result<Link, Response<Body>> {
    let link = match app.store.link_of_user(user.id).await {
        Ok(l) => l,
        Err(e) => return Err(store_failure(&e)),
    };
    let Some(link) = link.filter(|l| l.state == LinkState::Approved) else {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "Your account is not linked to a Headscale user (or the link waits for approval).",
        ));
    };
    hs.forget_users();
    let users = match hs.users().await {
        Ok(u) => u,
        Err(e) => return Err(headscale_unavailable(&e)),
    };
    if !crate::linking::still_valid(&link, &users) {
        tracing::warn!(user = user.id.0, headscale_user = %link.headscale_user_id, "refused a key operation: the linked Headscale user changed");
        return Err(refused(
            StatusCode::CONFLICT,
            "The Headscale user your account is linked to has changed or is gone. Ask an administrator to link it again.",
        ));
    }
    Ok(link)
}

async fn onboarding_key(
    app: &App,
    s: &VerifiedSession,
    user: &User,
    hs: &Headscale,
    rd: &str,
    os: op::Os,
) -> Response<Body> {
    if !may_create_own_key(caps(user.role)) {
        return crate::auth::forbidden(s, Caps::GENERATE_OWN_AUTHKEYS);
    }
    let link = match checked_link(app, user, hs).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let expires = app.now() + ONBOARDING_KEY_SECS;
    let key = match create_key(app, user, hs, &link, expires, "onboarding").await {
        Ok(k) => k,
        Err(r) => return r,
    };
    let shown = readable(expires);
    onboarding_response(
        app,
        s,
        user,
        hs,
        Render {
            step: Some(op::Step::Device),
            rd,
            os,
            notice: None,
            new_key: Some(op::NewKey {
                key: &key.key,
                expires: &format!("at {shown}"),
            }),
        },
    )
    .await
}

async fn create_key(
    app: &App,
    user: &User,
    hs: &Headscale,
    link: &Link,
    expires: i64,
    via: &str,
) -> Result<PreAuthKey, Response<Body>> {
    let key = match hs
        .create_own_preauth_key(&link.headscale_user_id, &rfc3339(expires))
        .await
    {
        Ok(k) => k,
        Err(e) => return Err(headscale_unavailable(&e)),
    };
    if let Err(e) = audit(
        app,
        user,
        "create_own_preauth_key",
        format!("headscale user {}", link.headscale_user_id),
        format!(
            "key {} ({}), single use, no tags, expires {}; via {via}",
            key.id,
            kp::masked_prefix(&key.key),
            rfc3339(expires)
        ),
    )
    .await
    {
        return Err(store_failure(&e));
    }
    tracing::info!(user = user.id.0, headscale_user = %link.headscale_user_id, key_id = %key.id, "created an own pre-auth key");
    Ok(key)
}

/// `GET /_headgate/onboarding/status`: the link and the first device, as JSON (for scripts and tests; the page
/// itself reloads with a `<meta>` refresh).
pub async fn status(app: &App, req: &Request<Incoming>) -> Response<Body> {
    let s = match current_session(app, req.headers()).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return respond::json(StatusCode::UNAUTHORIZED, json!({"error": "not_signed_in"}));
        }
        Err(e) => {
            tracing::error!(error = %e, "store failure");
            return respond::json(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "store_unavailable"}),
            );
        }
    };
    let Some(user) = s.user() else {
        return respond::json(StatusCode::OK, json!({"onboarded": true, "link": "none"}));
    };
    let link = match app.store.link_of_user(user.id).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "store failure");
            return respond::json(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "store_unavailable"}),
            );
        }
    };
    let state = match &link {
        None => "none",
        Some(l) if l.state == LinkState::Pending => "pending",
        Some(_) => "linked",
    };
    let mut body = json!({
        "onboarded": user.onboarded,
        "link": state,
        "devices": null,
        "first_device": null,
    });
    if let (Some(l), Some(hs)) = (effective(&link), &app.headscale) {
        body["headscale_user"] = json!(l.headscale_name);
        match hs.nodes().await {
            Ok(nodes) => {
                let own = nodes_of(&nodes, &l.headscale_user_id);
                body["devices"] = json!(own.len());
                body["first_device"] = json!(own.first().map(|n| node_name(n)));
            }
            Err(e) => {
                tracing::warn!("onboarding status: {e}");
                return respond::json(
                    StatusCode::BAD_GATEWAY,
                    json!({"error": "headscale_unavailable", "link": state}),
                );
            }
        }
    }
    respond::json(StatusCode::OK, body)
}

// ----- own keys ----------------------------------------------------------------------------------------------

enum KeysGate {
    /// The caller's approved, re-checked link.
    Own(User, Link),
    Answer(Response<Body>),
}

fn use_headplane(status: StatusCode, error: Option<&str>) -> Response<Body> {
    respond::page(
        status,
        kp::render(&kp::KeysPage {
            view: kp::KeysView::UseHeadplane {
                href: HEADPLANE_KEYS_PATH,
            },
            info: None,
            error,
            path: KEYS_PATH,
        }),
    )
}

fn not_linked(status: StatusCode, pending: bool) -> Response<Body> {
    respond::page(
        status,
        kp::render(&kp::KeysPage {
            view: kp::KeysView::NotLinked {
                pending,
                onboarding_href: &format!("{ONBOARDING_PATH}?step=link"),
            },
            info: None,
            error: None,
            path: KEYS_PATH,
        }),
    )
}

/// Who may use the keys page: `generate_own_authkeys` without `generate_authkeys`, with an approved link.
async fn keys_gate(app: &App, s: &VerifiedSession, post: bool) -> KeysGate {
    let c = crate::auth::session_caps(s);
    if c.has(Caps::GENERATE_AUTHKEYS) {
        let (status, error) = if post {
            (
                StatusCode::FORBIDDEN,
                Some("This page is for people who may only create keys for themselves."),
            )
        } else {
            (StatusCode::OK, None)
        };
        return KeysGate::Answer(use_headplane(status, error));
    }
    if !c.has(Caps::GENERATE_OWN_AUTHKEYS) {
        return KeysGate::Answer(crate::auth::forbidden(s, Caps::GENERATE_OWN_AUTHKEYS));
    }
    let Some(user) = s.user().cloned() else {
        // Only people have roles without generate_authkeys.
        return KeysGate::Answer(use_headplane(StatusCode::OK, None));
    };
    if app.headscale.is_none() {
        return KeysGate::Answer(refused(
            StatusCode::NOT_FOUND,
            "This headgate has no Headscale to create keys in.",
        ));
    }
    match app.store.link_of_user(user.id).await {
        Err(e) => KeysGate::Answer(store_failure(&e)),
        Ok(Some(l)) if l.state == LinkState::Approved => KeysGate::Own(user, l),
        Ok(l) => {
            let status = if post {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::OK
            };
            KeysGate::Answer(not_linked(status, l.is_some()))
        }
    }
}

struct KeysRender<'a> {
    status: StatusCode,
    info: Option<&'a str>,
    error: Option<&'a str>,
    new_key: Option<kp::NewKey<'a>>,
}

async fn keys_response(
    app: &App,
    s: &VerifiedSession,
    hs: &Headscale,
    link: &Link,
    r: KeysRender<'_>,
) -> Response<Body> {
    let now = app.now();
    let (rows, list_error) = match hs.preauth_keys().await {
        Ok(keys) => {
            let mut own: Vec<&PreAuthKey> = keys
                .iter()
                .filter(|k| key_is_own(k, &link.headscale_user_id))
                .collect();
            own.sort_by_key(|k| std::cmp::Reverse(k.id.parse::<u64>().unwrap_or(0)));
            let rows: Vec<kp::KeyRow> = own
                .into_iter()
                .map(|k| kp::KeyRow {
                    id: k.id.clone(),
                    prefix: kp::masked_prefix(&k.key),
                    created: readable_rfc(&k.created_at),
                    expires: readable_rfc(&k.expiration),
                    used: k.used,
                    expired: parse_time(&k.expiration).is_none_or(|t| t <= now),
                    reusable: k.reusable,
                    ephemeral: k.ephemeral,
                    tags: k.acl_tags.clone(),
                })
                .collect();
            (rows, None)
        }
        Err(e) => {
            tracing::warn!("keys page: {e}");
            (
                Vec::new(),
                Some("Headscale could not list the keys just now. Try again in a moment."),
            )
        }
    };
    let token = csrf::session_token(&app.keys, s.key());
    let public_url = app
        .config
        .headscale
        .as_ref()
        .map(|h| h.public_url.as_str().trim_end_matches('/').to_string())
        .unwrap_or_default();
    let html = kp::render(&kp::KeysPage {
        view: kp::KeysView::List {
            headscale_user: &link.headscale_name,
            keys: &rows,
            list_error,
            max_expiry_secs: app.config.onboarding.own_key_max_expiry,
            new_key: r.new_key,
            login_server: &public_url,
            csrf_token: &token,
        },
        info: r.info,
        error: r.error,
        path: KEYS_PATH,
    });
    respond::page(r.status, html)
}

/// `GET /_headgate/keys`.
pub async fn keys_page(app: &App, req: &Request<Incoming>) -> Response<Body> {
    let s = match require_session(app, req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (_user, link) = match keys_gate(app, &s, false).await {
        KeysGate::Own(u, l) => (u, l),
        KeysGate::Answer(r) => return r,
    };
    let hs = app.headscale.as_ref().expect("checked by keys_gate");
    let info = match query_param(req.uri(), "done").as_deref() {
        Some("expired") => Some("The key was expired."),
        _ => None,
    };
    keys_response(
        app,
        &s,
        hs,
        &link,
        KeysRender {
            status: StatusCode::OK,
            info,
            error: None,
            new_key: None,
        },
    )
    .await
}

/// The lifetime asked for, in seconds: `expiry` in `unit` (`hours` or `minutes`).
pub fn requested_secs(expiry: Option<&str>, unit: Option<&str>) -> Option<u64> {
    let n: u64 = expiry?
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0 && *n <= 1_000_000)?;
    let per = match unit.unwrap_or("hours") {
        "hours" => 3600,
        "minutes" => 60,
        _ => return None,
    };
    Some(n * per)
}

/// `POST /_headgate/keys`: `action` = `create` (`expiry`, `unit`) or `expire` (`key_id`).
pub async fn keys_post(app: &App, req: Request<Incoming>) -> Response<Body> {
    let s = match require_session(app, &req).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let form = match read_form(app, req, &s).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let (user, stored) = match keys_gate(app, &s, true).await {
        KeysGate::Own(u, l) => (u, l),
        KeysGate::Answer(r) => return r,
    };
    let hs = app.headscale.as_ref().expect("checked by keys_gate");
    let link = match checked_link(app, &user, hs).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    debug_assert_eq!(stored.headscale_user_id, link.headscale_user_id);
    let max = app.config.onboarding.own_key_max_expiry;
    match form.get("action") {
        Some("create") => {
            let secs = requested_secs(form.get("expiry"), form.get("unit"));
            let Some(secs) = secs.filter(|s| (MIN_OWN_KEY_SECS..=max).contains(s)) else {
                let msg = format!(
                    "Choose a lifetime between 5 minutes and {}.",
                    kp::duration_words(max)
                );
                return keys_response(
                    app,
                    &s,
                    hs,
                    &link,
                    KeysRender {
                        status: StatusCode::BAD_REQUEST,
                        info: None,
                        error: Some(&msg),
                        new_key: None,
                    },
                )
                .await;
            };
            let expires = app.now() + secs as i64;
            let key = match create_key(app, &user, hs, &link, expires, "keys page").await {
                Ok(k) => k,
                Err(r) => return r,
            };
            let shown = format!("at {}", readable(expires));
            keys_response(
                app,
                &s,
                hs,
                &link,
                KeysRender {
                    status: StatusCode::OK,
                    info: None,
                    error: None,
                    new_key: Some(kp::NewKey {
                        key: &key.key,
                        expires: &shown,
                    }),
                },
            )
            .await
        }
        Some("expire") => {
            let id = form.get("key_id").unwrap_or("");
            if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
                return refused(StatusCode::BAD_REQUEST, "Which key?");
            }
            // Ownership is asked of Headscale for the id in the form (S5).
            let keys = match hs.preauth_keys().await {
                Ok(k) => k,
                Err(e) => return headscale_unavailable(&e),
            };
            if !keys
                .iter()
                .any(|k| k.id == id && key_is_own(k, &link.headscale_user_id))
            {
                tracing::warn!(
                    user = user.id.0,
                    key_id = id,
                    "refused to expire a pre-auth key that is not the caller's own"
                );
                return keys_response(
                    app,
                    &s,
                    hs,
                    &link,
                    KeysRender {
                        status: StatusCode::FORBIDDEN,
                        info: None,
                        error: Some("That is not one of your keys."),
                        new_key: None,
                    },
                )
                .await;
            }
            if let Err(e) = hs.expire_preauth_key(id).await {
                return headscale_unavailable(&e);
            }
            if let Err(e) = audit(
                app,
                &user,
                "expire_own_preauth_key",
                format!("headscale user {}", link.headscale_user_id),
                format!("key {id}"),
            )
            .await
            {
                return store_failure(&e);
            }
            tracing::info!(user = user.id.0, key_id = id, "expired an own pre-auth key");
            respond::redirect(StatusCode::SEE_OTHER, &format!("{KEYS_PATH}?done=expired"))
        }
        _ => refused(StatusCode::BAD_REQUEST, "Unknown action."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(id: &str, email: &str) -> HsUser {
        HsUser {
            id: id.into(),
            name: format!("u{id}"),
            email: email.into(),
            created_at: "2025-01-01T00:00:00Z".into(),
            ..Default::default()
        }
    }

    fn link(id: &str) -> Link {
        Link {
            headscale_user_id: id.into(),
            user_id: crate::store::UserId(9),
            headscale_created_at: String::new(),
            provider_id: String::new(),
            state: LinkState::Pending,
            created: 0,
            headscale_name: String::new(),
        }
    }

    #[test]
    fn s4_pick_rules() {
        let me = Some("Alice@Example.com");
        assert!(pickable(&hs("1", ""), &[], me));
        assert!(pickable(&hs("1", ""), &[], None));
        assert!(pickable(&hs("1", "alice@example.COM"), &[], me));
        assert!(!pickable(&hs("1", "bob@example.com"), &[], me));
        assert!(!pickable(&hs("1", "alice@example.com"), &[], None));
        // Claimed, even by a pending pick.
        assert!(!pickable(&hs("1", ""), &[link("1")], me));
        assert!(pickable(&hs("1", ""), &[link("2")], me));
        // OIDC users link automatically, never by a pick.
        let mut o = hs("1", "");
        o.provider = "oidc".into();
        assert!(!pickable(&o, &[], me));
        let mut o = hs("1", "");
        o.provider_id = "https://idp/x".into();
        assert!(!pickable(&o, &[], me));
        // The synthetic tagged-devices user, by id or by name.
        assert!(!pickable(
            &hs(crate::headscale::TAGGED_DEVICES_USER_ID, ""),
            &[],
            me
        ));
        let mut t = hs("5", "");
        t.name = "tagged-devices".into();
        assert!(!pickable(&t, &[], me));
        assert!(!pickable(&hs("", ""), &[], me));
    }

    #[test]
    fn pick_modes() {
        use op::PickMode::*;
        assert_eq!(pick_mode(SelfLink::Approve, Role::Viewer), Approve);
        assert_eq!(pick_mode(SelfLink::Approve, Role::Member), Approve);
        assert_eq!(pick_mode(SelfLink::Approve, Role::Owner), Immediate);
        assert_eq!(pick_mode(SelfLink::Approve, Role::ItAdmin), Immediate);
        assert_eq!(pick_mode(SelfLink::Allow, Role::Member), Immediate);
        assert_eq!(pick_mode(SelfLink::Off, Role::Owner), Off);
    }

    #[test]
    fn lifetimes() {
        assert_eq!(requested_secs(Some("1"), Some("hours")), Some(3600));
        assert_eq!(requested_secs(Some("5"), Some("minutes")), Some(300));
        assert_eq!(requested_secs(Some("2"), None), Some(7200));
        assert_eq!(requested_secs(Some("0"), Some("hours")), None);
        assert_eq!(requested_secs(Some("-1"), Some("hours")), None);
        assert_eq!(requested_secs(Some("1"), Some("days")), None);
        assert_eq!(requested_secs(Some("x"), Some("hours")), None);
        assert_eq!(requested_secs(None, Some("hours")), None);
    }

    #[test]
    fn own_keys_need_a_user() {
        let mut k = PreAuthKey::default();
        assert!(!key_is_own(&k, "1"));
        k.user = Some(hs("1", ""));
        assert!(key_is_own(&k, "1"));
        assert!(!key_is_own(&k, "2"));
        assert!(!key_is_own(&k, ""));
    }
}
