//! User administration as domain operations, shared by the users page, the admin socket and the CLI, so the
//! rules are the same everywhere: nobody assigns `owner` by a role change, the owner is never demoted,
//! only the owner (or the local operator) transfers ownership, links stay one-to-one, and every change is
//! audited.

use std::fmt;

use crate::headscale::User as HsUser;
use crate::roles::{Caps, caps};
use crate::store::{
    Link, LinkOutcome, LinkState, NewAuditEvent, OwnerClaim, Role, SessionKey, Store, StoreError,
    User, UserId,
};

/// Who asks for a change.
#[derive(Debug, Clone)]
pub enum Actor {
    /// A signed-in person with their current role.
    Person {
        id: UserId,
        role: Role,
        label: String,
    },
    /// The local operator through the CLI (admin socket or the store directly), with their uid.
    Operator { uid: u32 },
}

impl Actor {
    fn label(&self) -> String {
        match self {
            Actor::Person { id, label, .. } => format!("user {} ({label})", id.0),
            Actor::Operator { uid } => format!("cli uid {uid}"),
        }
    }
    fn caps(&self) -> Caps {
        match self {
            Actor::Person { role, .. } => caps(*role),
            Actor::Operator { .. } => Caps::ALL,
        }
    }
    fn is_owner(&self) -> bool {
        match self {
            Actor::Person { role, .. } => *role == Role::Owner,
            Actor::Operator { .. } => true,
        }
    }
}

#[derive(Debug)]
pub enum OpError {
    /// The actor lacks a capability (403).
    Forbidden(String),
    /// The change breaks a rule (409/400).
    Refused(String),
    NotFound(String),
    Store(StoreError),
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Forbidden(m) | OpError::Refused(m) | OpError::NotFound(m) => f.write_str(m),
            OpError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OpError {}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => OpError::Refused(m),
            StoreError::NotFound(m) => OpError::NotFound(m),
            other => OpError::Store(other),
        }
    }
}

fn need(actor: &Actor, c: Caps) -> Result<(), OpError> {
    if actor.caps().has(c) {
        Ok(())
    } else {
        Err(OpError::Forbidden(format!("this needs the {c} capability")))
    }
}

/// Append one audit record for `actor` (also used by the admin socket and the CLI for reads and refusals).
pub async fn audit(
    store: &Store,
    now: i64,
    actor: &Actor,
    action: &str,
    target: String,
    detail: String,
) -> Result<(), OpError> {
    store
        .append_audit(vec![NewAuditEvent {
            at: now,
            actor: actor.label(),
            action: action.into(),
            target,
            detail,
        }])
        .await?;
    Ok(())
}

/// Find a user by id, email (ASCII case-insensitive) or subject.
pub async fn resolve_user(store: &Store, who: &str) -> Result<User, OpError> {
    let users = store.users().await?;
    let w = who.trim();
    let found: Vec<&User> = users
        .iter()
        .filter(|u| {
            w.parse::<u64>().is_ok_and(|n| u.id.0 == n)
                || u.subject == w
                || u.email
                    .as_deref()
                    .is_some_and(|e| e.eq_ignore_ascii_case(w))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(OpError::NotFound(format!(
            "no user {w:?} (give an id, an email or a subject)"
        ))),
        _ => Err(OpError::Refused(format!(
            "{w:?} matches several users: give the id"
        ))),
    }
}

async fn load(store: &Store, id: UserId) -> Result<User, OpError> {
    store
        .user(id)
        .await?
        .ok_or_else(|| OpError::NotFound(format!("no user with id {}", id.0)))
}

/// Only the owner (or the local operator) acts on the owner's link and sessions.
async fn protect_owner(
    store: &Store,
    actor: &Actor,
    target: UserId,
    what: &str,
) -> Result<(), OpError> {
    if actor.is_owner() {
        return Ok(());
    }
    match store.user(target).await? {
        Some(u) if u.role == Role::Owner => {
            Err(OpError::Forbidden(format!("only the owner can {what}")))
        }
        _ => Ok(()),
    }
}

/// Change a role. `owner` is never assigned this way, the owner is never demoted, and roles owned by the
/// IdP (`oidc.role_claim`) are read-only.
pub async fn set_role(
    store: &Store,
    actor: &Actor,
    target: UserId,
    role: Role,
    idp_owns_roles: bool,
    now: i64,
) -> Result<User, OpError> {
    need(actor, Caps::WRITE_USERS)?;
    if role == Role::Owner {
        return Err(OpError::Refused(
            "owner cannot be assigned by a role change: the owner transfers ownership instead \
             (headgate users transfer-ownership); while there is no owner, the local operator runs \
             headgate users make-owner <user>"
                .into(),
        ));
    }
    let u = load(store, target).await?;
    if u.role == Role::Owner {
        return Err(OpError::Refused(
            "the owner's role cannot be changed: transfer ownership first".into(),
        ));
    }
    if idp_owns_roles {
        return Err(OpError::Refused(
            "roles come from the identity provider (oidc.role_claim): change them there".into(),
        ));
    }
    // Nobody grants more than they hold, and nobody changes their own role (an IT admin has write_users
    // but must not make anyone, themselves included, an admin).
    if let Actor::Person { id, .. } = actor {
        if *id == target {
            return Err(OpError::Forbidden("you cannot change your own role".into()));
        }
        // generate_authkeys (any user's keys) includes generate_own_authkeys.
        let widen = |c: Caps| {
            if c.has(Caps::GENERATE_AUTHKEYS) {
                c.union(Caps::GENERATE_OWN_AUTHKEYS)
            } else {
                c
            }
        };
        let (mine, theirs_now, theirs_new) = (widen(actor.caps()), caps(u.role), caps(role));
        if !mine.has(theirs_new) || !mine.has(theirs_now) {
            return Err(OpError::Forbidden(format!(
                "you can only give or change roles whose rights you hold yourself ({} needs {})",
                role.as_str(),
                mine.missing(theirs_new.union(theirs_now))
            )));
        }
    }
    let from = u.role;
    // Decided on the stored record: the rights above were checked against `from`, so the change applies
    // only while the role still is `from` (a change made meanwhile refuses it, nothing is overwritten).
    let u = store.set_role(target, role, Some(from)).await?;
    audit(
        store,
        now,
        actor,
        "set_role",
        format!("user {}", u.id.0),
        format!("{} → {}", from.as_str(), role.as_str()),
    )
    .await?;
    Ok(u)
}

/// Hand ownership to another user; the old owner becomes admin. Only the owner (or the local operator).
pub async fn transfer_ownership(
    store: &Store,
    actor: &Actor,
    to: UserId,
    now: i64,
) -> Result<(), OpError> {
    if !actor.is_owner() {
        return Err(OpError::Forbidden(
            "only the owner can transfer ownership".into(),
        ));
    }
    let owner = store
        .users()
        .await?
        .into_iter()
        .find(|u| u.role == Role::Owner)
        .ok_or_else(|| {
            OpError::Refused(
                "there is no owner to transfer from: make this user the owner with \
                 headgate users make-owner <user>"
                    .into(),
            )
        })?;
    if owner.id == to {
        return Err(OpError::Refused("that user is already the owner".into()));
    }
    load(store, to).await?;
    store.transfer_ownership(owner.id, to).await?;
    audit(
        store,
        now,
        actor,
        "transfer_ownership",
        format!("user {}", to.0),
        format!("from user {}", owner.id.0),
    )
    .await
}

/// Make `to` the owner while nobody is (the owner was deleted, or to bootstrap without the first-sign-in
/// rule): only the local operator, and "exactly one owner" is decided by the store in one write transaction.
/// With an owner, refused naming them (ownership moves only by the owner's transfer).
pub async fn make_owner(
    store: &Store,
    actor: &Actor,
    to: UserId,
    now: i64,
) -> Result<User, OpError> {
    if !matches!(actor, Actor::Operator { .. }) {
        return Err(OpError::Forbidden(
            "only the local operator (headgate users make-owner) makes an owner while there is none; \
             with an owner, the owner transfers ownership"
                .into(),
        ));
    }
    match store.make_owner_if_none(to).await? {
        OwnerClaim::Made(u) => {
            audit(
                store,
                now,
                actor,
                "make_owner",
                format!("user {}", u.id.0),
                "there was no owner".into(),
            )
            .await?;
            Ok(u)
        }
        OwnerClaim::Taken(owner) if owner.id == to => Err(OpError::Refused(format!(
            "user {} ({}) is already the owner: nothing to do",
            owner.id,
            user_label(&owner)
        ))),
        OwnerClaim::Taken(owner) => Err(OpError::Refused(format!(
            "user {} ({}) is the owner, and there is only one: ownership moves only by a transfer \
             (headgate users transfer-ownership <user>, which makes the current owner an admin)",
            owner.id,
            user_label(&owner)
        ))),
    }
}

/// How a person is named in messages: their email, else their IdP subject.
fn user_label(u: &User) -> String {
    crate::logging::escape(u.email.as_deref().unwrap_or(&u.subject)).into_owned()
}

/// Approve a pending self-link.
pub async fn approve_link(
    store: &Store,
    actor: &Actor,
    target: UserId,
    now: i64,
) -> Result<Link, OpError> {
    need(actor, Caps::WRITE_USERS)?;
    let link = store
        .link_of_user(target)
        .await?
        .ok_or_else(|| OpError::NotFound("that user has no link".into()))?;
    if link.state != LinkState::Pending {
        return Err(OpError::Refused("that link is not pending".into()));
    }
    let l = store.approve_link(target).await?;
    audit(
        store,
        now,
        actor,
        "approve_link",
        format!("user {}", target.0),
        format!("headscale user {}", l.headscale_user_id),
    )
    .await?;
    Ok(l)
}

/// Remove a user's link (a refused pending pick, or an unlink).
pub async fn unlink(store: &Store, actor: &Actor, target: UserId, now: i64) -> Result<(), OpError> {
    need(actor, Caps::WRITE_USERS)?;
    protect_owner(store, actor, target, "unlink the owner").await?;
    let removed = store
        .remove_link(target)
        .await?
        .ok_or_else(|| OpError::NotFound("that user has no link".into()))?;
    audit(
        store,
        now,
        actor,
        "unlink",
        format!("user {}", target.0),
        format!("headscale user {}", removed.headscale_user_id),
    )
    .await
}

/// Link a user to a Headscale user chosen by an administrator (never the synthetic tagged-devices user).
pub async fn link(
    store: &Store,
    actor: &Actor,
    target: UserId,
    hs: &HsUser,
    now: i64,
) -> Result<(), OpError> {
    need(actor, Caps::WRITE_USERS)?;
    if hs.is_tagged_devices() {
        return Err(OpError::Refused("tagged-devices is not a person".into()));
    }
    let u = load(store, target).await?;
    match store
        .link_if_unclaimed(crate::linking::link_for(hs, &u, LinkState::Approved, now))
        .await?
    {
        LinkOutcome::Linked => {}
        LinkOutcome::AlreadyLinkedToOther(o) => {
            return Err(OpError::Refused(format!(
                "Headscale user {} is already linked to user {}",
                hs.id, o.0
            )));
        }
        LinkOutcome::UserAlreadyLinked => {
            return Err(OpError::Refused(
                "that user is already linked: unlink first".into(),
            ));
        }
    }
    audit(
        store,
        now,
        actor,
        "link",
        format!("user {}", target.0),
        format!("headscale user {}", hs.id),
    )
    .await
}

/// End every session of a user.
pub async fn revoke_sessions(
    store: &Store,
    actor: &Actor,
    target: UserId,
    now: i64,
) -> Result<u64, OpError> {
    need(actor, Caps::WRITE_USERS)?;
    protect_owner(store, actor, target, "end the owner's sessions").await?;
    let n = store.delete_sessions_of_user(target).await?;
    audit(
        store,
        now,
        actor,
        "revoke_sessions",
        format!("user {}", target.0),
        format!("{n} session(s)"),
    )
    .await?;
    Ok(n)
}

/// End one session, named by its key (the hash of the session id; the raw id is never known here). The
/// audit record names only a short prefix of the key.
pub async fn revoke_session(
    store: &Store,
    actor: &Actor,
    key: &SessionKey,
    now: i64,
) -> Result<(), OpError> {
    need(actor, Caps::WRITE_USERS)?;
    let record = store.session(key).await?;
    if !store.delete_session(key).await? {
        return Err(OpError::NotFound("no such session".into()));
    }
    let whose = match record.as_ref().map(|r| &r.subject) {
        Some(crate::store::SessionSubject::User(id)) => format!("user {}", id.0),
        Some(crate::store::SessionSubject::ApiKey { prefix, .. }) => format!("api key {prefix}"),
        None => "unknown".into(),
    };
    audit(
        store,
        now,
        actor,
        "revoke_session",
        format!("session {}", &key.to_hex()[..12]),
        whose,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewUser, OwnerBootstrap};

    async fn person(store: &Store, sub: &str, role: Role, bootstrap: OwnerBootstrap) -> User {
        let new = NewUser {
            subject: sub.into(),
            email: Some(format!("{sub}@example.com")),
            email_verified: true,
            name: None,
            picture: None,
            role,
            onboarded: true,
            created: 1,
        };
        store.create_user(new, bootstrap).await.unwrap()
    }

    #[tokio::test]
    async fn nobody_grants_more_than_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_redb(&dir.path().join("s.redb"), 1 << 20).unwrap();
        let owner = person(&store, "owner", Role::Member, OwnerBootstrap::FirstUser).await;
        let it = person(&store, "it", Role::ItAdmin, OwnerBootstrap::Never).await;
        let m = person(&store, "m", Role::Member, OwnerBootstrap::Never).await;
        let as_it = Actor::Person {
            id: it.id,
            role: Role::ItAdmin,
            label: "it".into(),
        };
        // An IT admin may make someone a viewer (rights it holds) but not an admin, nor change itself.
        assert!(
            set_role(&store, &as_it, m.id, Role::Viewer, false, 2)
                .await
                .is_ok()
        );
        assert!(matches!(
            set_role(&store, &as_it, m.id, Role::Admin, false, 2).await,
            Err(OpError::Forbidden(_))
        ));
        assert!(matches!(
            set_role(&store, &as_it, it.id, Role::Admin, false, 2).await,
            Err(OpError::Forbidden(_))
        ));
        // Nor touch the owner's sessions or link.
        assert!(matches!(
            revoke_sessions(&store, &as_it, owner.id, 2).await,
            Err(OpError::Forbidden(_))
        ));
        // The owner can do all of it (but never assign owner).
        let as_owner = Actor::Person {
            id: owner.id,
            role: Role::Owner,
            label: "o".into(),
        };
        assert!(
            set_role(&store, &as_owner, m.id, Role::Admin, false, 3)
                .await
                .is_ok()
        );
        assert!(matches!(
            set_role(&store, &as_owner, m.id, Role::Owner, false, 3).await,
            Err(OpError::Refused(_))
        ));
    }
}
