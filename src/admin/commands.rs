//! The operator's commands (`headgate users …`, `sessions …`, `audit`): one request type, one executor, one
//! output type. The same executor runs inside `headgate serve` (behind the admin socket) and in the CLI
//! process when it opens the store itself, so both paths give the same answers. The rules live in
//! [`super::ops`]; this module only resolves names, calls the operations and shapes the answers.
//!
//! S17: every command is audited with the caller's uid — changes by the operation itself, reads and refused
//! changes here; a session is only ever shown as a short prefix of its key (the hash of the session id), never
//! a raw id or a token.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ops::{self, Actor, OpError};
use crate::app::App;
use crate::clock::Clock;
use crate::config::Config;
use crate::headscale::Headscale;
use crate::http_client::HttpClient;
use crate::store::{AuditEvent, LinkState, Role, SessionKey, SessionSubject, Store, UserId};

/// How many hex characters of a session key are shown (and the fewest accepted to name one).
pub const KEY_PREFIX_LEN: usize = 12;
pub const MIN_KEY_PREFIX_LEN: usize = 8;
/// The most audit events one request returns.
pub const MAX_AUDIT_LIMIT: usize = 10_000;

/// One command, as sent over the admin socket (one JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    UsersList,
    UsersSetRole {
        user: String,
        role: String,
    },
    UsersLink {
        user: String,
        headscale_user_id: String,
    },
    UsersUnlink {
        user: String,
    },
    UsersApproveLink {
        user: String,
    },
    UsersTransferOwnership {
        user: String,
    },
    UsersMakeOwner {
        user: String,
    },
    SessionsList,
    /// `target`: a user (id, email, subject) or a session key prefix.
    SessionsRevoke {
        target: String,
    },
    Audit {
        limit: usize,
        #[serde(default)]
        before: Option<u64>,
    },
    /// A consistent copy of the store into a new file (an absolute path the server may write).
    Backup {
        path: String,
    },
}

impl Request {
    /// The audit action name of the command.
    fn action(&self) -> &'static str {
        match self {
            Request::UsersList => "users_list",
            Request::UsersSetRole { .. } => "set_role",
            Request::UsersLink { .. } => "link",
            Request::UsersUnlink { .. } => "unlink",
            Request::UsersApproveLink { .. } => "approve_link",
            Request::UsersTransferOwnership { .. } => "transfer_ownership",
            Request::UsersMakeOwner { .. } => "make_owner",
            Request::SessionsList => "sessions_list",
            Request::SessionsRevoke { .. } => "revoke_sessions",
            Request::Audit { .. } => "audit_read",
            Request::Backup { .. } => "backup",
        }
    }

    fn is_read(&self) -> bool {
        matches!(
            self,
            Request::UsersList
                | Request::SessionsList
                | Request::Audit { .. }
                | Request::Backup { .. }
        )
    }

    fn target(&self) -> String {
        match self {
            Request::UsersSetRole { user, .. }
            | Request::UsersLink { user, .. }
            | Request::UsersUnlink { user }
            | Request::UsersApproveLink { user }
            | Request::UsersTransferOwnership { user }
            | Request::UsersMakeOwner { user } => user.clone(),
            Request::SessionsRevoke { target } => target.clone(),
            Request::Backup { path } => path.clone(),
            _ => String::new(),
        }
    }
}

/// What a command answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Output {
    Users(Vec<UserRow>),
    Sessions(Vec<SessionRow>),
    Audit(Vec<AuditEvent>),
    Done(Done),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRow {
    pub id: u64,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    pub role: Role,
    pub link: LinkRow,
    pub created: i64,
    pub last_login: i64,
    /// Sessions that have not expired.
    pub active_sessions: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkStatus {
    None,
    Pending,
    Linked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRow {
    pub state: LinkStatus,
    pub headscale_user_id: Option<String>,
    pub headscale_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    Oidc,
    ApiKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRow {
    /// The first [`KEY_PREFIX_LEN`] hex characters of the session's key (SHA-256 of the session id): enough
    /// to name it for `sessions revoke`, useless for signing in.
    pub key_prefix: String,
    pub kind: SessionKind,
    pub user_id: Option<u64>,
    /// The user's email (or subject when there is none).
    pub user: Option<String>,
    /// The Headscale API key's public prefix, for API-key sessions.
    pub api_key_prefix: Option<String>,
    pub created: i64,
    pub expires: i64,
    pub last_seen: i64,
}

/// What the commands work on: the store, Headscale (for `users link`), whether the IdP owns roles, time.
#[derive(Clone)]
pub struct Context {
    pub store: Store,
    pub headscale: Option<Headscale>,
    /// `oidc.role_claim` is set: roles are read-only here (S13).
    pub idp_owns_roles: bool,
    pub clock: Arc<dyn Clock>,
}

impl Context {
    /// The running server's context (the admin socket).
    pub fn from_app(app: &App) -> Context {
        Context {
            store: app.store.clone(),
            headscale: app.headscale.clone(),
            idp_owns_roles: idp_owns_roles(&app.config),
            clock: app.clock.clone(),
        }
    }

    /// The CLI's own context when it opened the store itself.
    pub fn new(config: &Config, store: Store, http: HttpClient, clock: Arc<dyn Clock>) -> Context {
        Context {
            store,
            headscale: config
                .headscale
                .as_ref()
                .map(|h| Headscale::new(http, h.url.clone(), h.api_key.clone())),
            idp_owns_roles: idp_owns_roles(config),
            clock,
        }
    }
}

fn idp_owns_roles(config: &Config) -> bool {
    config.oidc.as_ref().is_some_and(|o| o.role_claim.is_some())
}

/// Run one command for the local operator `uid`. The error is a message for the operator.
pub async fn execute(ctx: &Context, uid: u32, req: Request) -> Result<Output, String> {
    let actor = Actor::Operator { uid };
    let now = ctx.clock.now();
    let action = req.action();
    let read = req.is_read();
    let target = req.target();
    match run(ctx, &actor, now, req).await {
        Ok(out) => {
            if read {
                // S17: reads are audited too (changes were audited by the operation itself).
                ops::audit(
                    &ctx.store,
                    now,
                    &actor,
                    action,
                    String::new(),
                    String::new(),
                )
                .await
                .map_err(|e| e.to_string())?;
            }
            Ok(out)
        }
        Err(e) => {
            if !matches!(e, OpError::Store(_)) {
                // A refused change is worth a trace too; a broken store cannot take one.
                let _ = ops::audit(
                    &ctx.store,
                    now,
                    &actor,
                    &format!("{action}_refused"),
                    crate::logging::escape(&target.chars().take(200).collect::<String>())
                        .into_owned(),
                    e.to_string(),
                )
                .await;
            }
            Err(e.to_string())
        }
    }
}

fn done(message: String) -> Result<Output, OpError> {
    Ok(Output::Done(Done { message }))
}

async fn run(ctx: &Context, actor: &Actor, now: i64, req: Request) -> Result<Output, OpError> {
    let store = &ctx.store;
    match req {
        Request::UsersList => users_list(store, now).await.map(Output::Users),
        Request::UsersSetRole { user, role } => {
            let role = Role::from_name(role.trim()).ok_or_else(|| {
                OpError::Refused(format!(
                    "unknown role {:?}: one of {}",
                    crate::logging::escape(&role),
                    Role::ALL.map(Role::as_str).join(", ")
                ))
            })?;
            let u = ops::resolve_user(store, &user).await?;
            let from = u.role;
            let u = ops::set_role(store, actor, u.id, role, ctx.idp_owns_roles, now).await?;
            done(format!(
                "user {} ({}): role {from} → {}",
                u.id,
                label(&u),
                u.role
            ))
        }
        Request::UsersLink {
            user,
            headscale_user_id,
        } => {
            let hs = ctx.headscale.as_ref().ok_or_else(|| {
                OpError::Refused(
                    "linking needs Headscale: add a [headscale] section (url, api_key) to the configuration"
                        .into(),
                )
            })?;
            let u = ops::resolve_user(store, &user).await?;
            hs.forget_users();
            let list = hs
                .users()
                .await
                .map_err(|e| OpError::Refused(format!("cannot list Headscale users: {e}")))?;
            let want = headscale_user_id.trim();
            let h = list.iter().find(|h| h.id == want).ok_or_else(|| {
                OpError::NotFound(format!(
                    "Headscale has no user with id {:?}",
                    crate::logging::escape(want)
                ))
            })?;
            ops::link(store, actor, u.id, h, now).await?;
            done(format!(
                "user {} ({}) linked to Headscale user {} ({})",
                u.id,
                label(&u),
                h.id,
                h.label()
            ))
        }
        Request::UsersUnlink { user } => {
            let u = ops::resolve_user(store, &user).await?;
            ops::unlink(store, actor, u.id, now).await?;
            done(format!("user {} ({}) unlinked", u.id, label(&u)))
        }
        Request::UsersApproveLink { user } => {
            let u = ops::resolve_user(store, &user).await?;
            let l = ops::approve_link(store, actor, u.id, now).await?;
            done(format!(
                "user {} ({}): link to Headscale user {} approved",
                u.id,
                label(&u),
                l.headscale_user_id
            ))
        }
        Request::UsersTransferOwnership { user } => {
            let u = ops::resolve_user(store, &user).await?;
            ops::transfer_ownership(store, actor, u.id, now).await?;
            done(format!(
                "user {} ({}) is now the owner; the previous owner is admin",
                u.id,
                label(&u)
            ))
        }
        Request::UsersMakeOwner { user } => {
            let u = ops::resolve_user(store, &user).await?;
            let u = ops::make_owner(store, actor, u.id, now).await?;
            done(format!(
                "user {} ({}) is now the owner (there was none)",
                u.id,
                label(&u)
            ))
        }
        Request::SessionsList => sessions_list(store, now).await.map(Output::Sessions),
        Request::SessionsRevoke { target } => revoke(store, actor, now, &target).await,
        Request::Audit { limit, before } => Ok(Output::Audit(
            store.audit(limit.clamp(1, MAX_AUDIT_LIMIT), before).await?,
        )),
        Request::Backup { path } => {
            let p = std::path::Path::new(&path);
            if !p.is_absolute() {
                return Err(OpError::Refused(format!(
                    "{path:?} is not an absolute path"
                )));
            }
            let rows = store.backup_to(p).await.map_err(|e| match e {
                crate::store::StoreError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    OpError::Refused(format!(
                        "{path} exists: choose a new file name (a backup never overwrites)"
                    ))
                }
                e => OpError::Store(e),
            })?;
            Ok(Output::Done(Done {
                message: format!("backed up {rows} rows to {path}"),
            }))
        }
    }
}

fn label(u: &crate::store::User) -> String {
    crate::logging::escape(u.email.as_deref().unwrap_or(&u.subject)).into_owned()
}

async fn users_list(store: &Store, now: i64) -> Result<Vec<UserRow>, OpError> {
    let users = store.users().await?;
    let links: HashMap<UserId, crate::store::Link> = store
        .links()
        .await?
        .into_iter()
        .map(|l| (l.user_id, l))
        .collect();
    let mut active: HashMap<UserId, u64> = HashMap::new();
    for (_, s) in store.sessions().await? {
        if let Some(id) = s.user_id()
            && now < s.expires
        {
            *active.entry(id).or_default() += 1;
        }
    }
    Ok(users
        .into_iter()
        .map(|u| {
            let link = match links.get(&u.id) {
                None => LinkRow {
                    state: LinkStatus::None,
                    headscale_user_id: None,
                    headscale_name: None,
                },
                Some(l) => LinkRow {
                    state: match l.state {
                        LinkState::Pending => LinkStatus::Pending,
                        LinkState::Approved => LinkStatus::Linked,
                    },
                    headscale_user_id: Some(l.headscale_user_id.clone()),
                    headscale_name: Some(l.headscale_name.clone()).filter(|n| !n.is_empty()),
                },
            };
            UserRow {
                id: u.id.0,
                active_sessions: active.get(&u.id).copied().unwrap_or(0),
                subject: u.subject,
                email: u.email,
                email_verified: u.email_verified,
                name: u.name,
                role: u.role,
                link,
                created: u.created,
                last_login: u.last_login,
            }
        })
        .collect())
}

async fn sessions_list(store: &Store, now: i64) -> Result<Vec<SessionRow>, OpError> {
    let users: HashMap<UserId, String> = store
        .users()
        .await?
        .into_iter()
        .map(|u| (u.id, u.email.unwrap_or(u.subject)))
        .collect();
    let mut rows: Vec<SessionRow> = store
        .sessions()
        .await?
        .into_iter()
        .filter(|(_, s)| now < s.expires)
        .map(|(k, s)| {
            let (kind, user_id, api_key_prefix) = match &s.subject {
                SessionSubject::User(id) => (SessionKind::Oidc, Some(*id), None),
                SessionSubject::ApiKey { prefix, .. } => {
                    (SessionKind::ApiKey, None, Some(prefix.clone()))
                }
            };
            SessionRow {
                key_prefix: k.to_hex()[..KEY_PREFIX_LEN].to_string(),
                kind,
                user_id: user_id.map(|i| i.0),
                user: user_id.and_then(|i| users.get(&i).cloned()),
                api_key_prefix,
                created: s.created,
                expires: s.expires,
                last_seen: s.last_seen,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        (a.user_id, a.created, &a.key_prefix).cmp(&(b.user_id, b.created, &b.key_prefix))
    });
    Ok(rows)
}

/// `sessions revoke <user|session>`: a user (id, email, subject) ends all their sessions; otherwise a
/// key prefix of at least [`MIN_KEY_PREFIX_LEN`] hex characters that names exactly one session ends it.
async fn revoke(store: &Store, actor: &Actor, now: i64, target: &str) -> Result<Output, OpError> {
    match ops::resolve_user(store, target).await {
        Ok(u) => {
            let n = ops::revoke_sessions(store, actor, u.id, now).await?;
            return done(format!(
                "ended {n} session{} of user {} ({})",
                if n == 1 { "" } else { "s" },
                u.id,
                label(&u)
            ));
        }
        Err(OpError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let p = target.trim().to_ascii_lowercase();
    if p.len() < MIN_KEY_PREFIX_LEN || p.len() > 64 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(OpError::NotFound(format!(
            "no user {:?} and not a session key prefix (give an id, an email, a subject, or at least \
             {MIN_KEY_PREFIX_LEN} hex characters of a key from `headgate sessions list`)",
            crate::logging::escape(target.trim())
        )));
    }
    let matching: Vec<SessionKey> = store
        .sessions()
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.to_hex().starts_with(&p))
        .collect();
    match matching.as_slice() {
        [key] => {
            ops::revoke_session(store, actor, key, now).await?;
            done(format!("ended session {}", &key.to_hex()[..KEY_PREFIX_LEN]))
        }
        [] => Err(OpError::NotFound(format!(
            "no user and no session matches {p:?}"
        ))),
        many => Err(OpError::Refused(format!(
            "{p:?} matches {} sessions: give more characters",
            many.len()
        ))),
    }
}

// ----- rendering for people -----

fn when(t: i64) -> String {
    if t <= 0 {
        return "-".into();
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&fmt).ok())
        .unwrap_or_else(|| t.to_string())
}

/// Columns padded to their widest cell; every cell has its control characters escaped, so a name from the
/// IdP cannot drive the operator's terminal.
fn table(head: &[&str], rows: Vec<Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|c| crate::logging::escape(&c).into_owned())
                .collect()
        })
        .collect();
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(width[i] - c.chars().count() + 2));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// The output as text for a person.
pub fn render_text(out: &Output) -> String {
    match out {
        Output::Users(rows) if rows.is_empty() => "no users yet\n".into(),
        Output::Users(rows) => table(
            &[
                "ID",
                "EMAIL",
                "NAME",
                "ROLE",
                "LINK",
                "LAST LOGIN",
                "SESSIONS",
            ],
            rows.iter()
                .map(|u| {
                    let link = match u.link.state {
                        LinkStatus::None => "none".to_string(),
                        s => format!(
                            "{} {}{}",
                            if s == LinkStatus::Pending {
                                "pending"
                            } else {
                                "linked"
                            },
                            u.link.headscale_user_id.as_deref().unwrap_or("?"),
                            u.link
                                .headscale_name
                                .as_deref()
                                .map(|n| format!(" ({n})"))
                                .unwrap_or_default()
                        ),
                    };
                    vec![
                        u.id.to_string(),
                        u.email
                            .clone()
                            .unwrap_or_else(|| format!("({})", u.subject)),
                        u.name.clone().unwrap_or_default(),
                        u.role.to_string(),
                        link,
                        when(u.last_login),
                        u.active_sessions.to_string(),
                    ]
                })
                .collect(),
        ),
        Output::Sessions(rows) if rows.is_empty() => "no active sessions\n".into(),
        Output::Sessions(rows) => table(
            &["KEY", "USER", "KIND", "CREATED", "EXPIRES", "LAST SEEN"],
            rows.iter()
                .map(|s| {
                    vec![
                        s.key_prefix.clone(),
                        match (s.user_id, &s.user) {
                            (Some(id), Some(u)) => format!("{u} ({id})"),
                            (Some(id), None) => format!("user {id}"),
                            _ => "-".into(),
                        },
                        match s.kind {
                            SessionKind::Oidc => "oidc".into(),
                            SessionKind::ApiKey => {
                                format!("api_key {}", s.api_key_prefix.as_deref().unwrap_or(""))
                            }
                        },
                        when(s.created),
                        when(s.expires),
                        when(s.last_seen),
                    ]
                })
                .collect(),
        ),
        Output::Audit(rows) if rows.is_empty() => "the audit log is empty\n".into(),
        Output::Audit(rows) => table(
            &["ID", "AT", "ACTOR", "ACTION", "TARGET", "DETAIL"],
            rows.iter()
                .map(|e| {
                    vec![
                        e.id.to_string(),
                        when(e.at),
                        e.actor.clone(),
                        e.action.clone(),
                        e.target.clone(),
                        e.detail.clone(),
                    ]
                })
                .collect(),
        ),
        Output::Done(d) => format!("{}\n", crate::logging::escape(&d.message)),
    }
}

/// The output as JSON for machines: the rows (or `{"message": …}`), pretty-printed.
pub fn render_json(out: &Output) -> String {
    let v = match out {
        Output::Users(r) => serde_json::to_value(r),
        Output::Sessions(r) => serde_json::to_value(r),
        Output::Audit(r) => serde_json::to_value(r),
        Output::Done(d) => serde_json::to_value(d),
    }
    .unwrap_or(serde_json::Value::Null);
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_unknown_fields_are_refused() {
        let r = Request::UsersSetRole {
            user: "a@b".into(),
            role: "viewer".into(),
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            r#"{"command":"users_set_role","user":"a@b","role":"viewer"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&j).unwrap(), r);
        assert!(
            serde_json::from_str::<Request>(
                r#"{"command":"users_set_role","user":"a","role":"viewer","uid":0}"#
            )
            .is_err()
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"rm_rf"}"#).is_err());
    }

    #[test]
    fn tables_escape_control_characters() {
        let t = table(&["A", "B"], vec![vec!["x\x1b[31m".into(), "y\nz".into()]]);
        assert!(!t.contains('\x1b'), "{t}");
        assert!(t.contains("x\\u{1b}[31m"), "{t}");
        assert_eq!(t.lines().count(), 2, "{t}");
    }
}
