//! Linking a person to their Headscale user (S3): subject match on the whole `providerId` (issuer included,
//! percent-decoded), then a verified-email match with exactly one candidate; one-to-one, and dropped (never
//! followed) when the Headscale user's id, `createdAt` or `providerId` change. Headscale being down never
//! stops a sign-in: linking is retried at the next one.

use crate::config::Config;
use crate::headscale::{Headscale, User as HsUser};
use crate::oidc::identity::Identity;
use crate::store::{Link, LinkOutcome, LinkState, Store, StoreError, User};

/// Headscale's normal form of an issuer or providerId prefix: scheme lower-cased, repeated slashes
/// collapsed, no trailing slash.
fn normalise(s: &str) -> String {
    let (scheme, rest) = match s.split_once("://") {
        Some((a, b)) => (a.to_ascii_lowercase(), b),
        None => (String::new(), s),
    };
    let mut out = String::with_capacity(s.len());
    let mut prev_slash = false;
    for c in rest.chars() {
        if c == '/' && prev_slash {
            continue;
        }
        prev_slash = c == '/';
        out.push(c);
    }
    let out = out.trim_end_matches('/');
    if scheme.is_empty() {
        out.to_string()
    } else {
        format!("{scheme}://{out}")
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Whether a Headscale user was created by Headscale's own OIDC login for exactly this issuer and subject.
pub fn subject_matches(hs: &HsUser, issuer: &str, subject: &str) -> bool {
    if hs.provider_id.is_empty() || hs.is_tagged_devices() {
        return false;
    }
    let Some((prefix, last)) = hs.provider_id.rsplit_once('/') else {
        return false;
    };
    normalise(&decode(prefix)) == normalise(issuer) && decode(last) == subject
}

/// The one Headscale user the person should be linked to, if any.
pub fn find_match<'a>(
    users: &'a [HsUser],
    issuer: &str,
    who: &Identity,
    trusted_email: Option<&str>,
) -> Option<&'a HsUser> {
    if let Some(u) = users
        .iter()
        .find(|u| subject_matches(u, issuer, &who.subject))
    {
        return Some(u);
    }
    let email = trusted_email?;
    let candidates: Vec<&HsUser> = users
        .iter()
        .filter(|u| {
            !u.is_tagged_devices() && !u.email.is_empty() && u.email.eq_ignore_ascii_case(email)
        })
        .collect();
    match candidates.as_slice() {
        [one] => Some(one),
        [] => None,
        many => {
            tracing::warn!(
                count = many.len(),
                "several Headscale users have the signed-in person's email; not linking (link by hand on /_headgate/users)"
            );
            None
        }
    }
}

/// Whether a stored link still points at the same Headscale user (S3: a re-created user is not followed).
pub fn still_valid(link: &Link, users: &[HsUser]) -> bool {
    users.iter().any(|u| {
        u.id == link.headscale_user_id
            && u.created_at == link.headscale_created_at
            && u.provider_id == link.provider_id
    })
}

pub fn link_for(hs: &HsUser, user: &User, state: LinkState, now: i64) -> Link {
    Link {
        headscale_user_id: hs.id.clone(),
        user_id: user.id,
        headscale_created_at: hs.created_at.clone(),
        provider_id: hs.provider_id.clone(),
        state,
        created: now,
        headscale_name: hs.name.clone(),
    }
}

/// At an OIDC sign-in: drop a stale link, then try to link when there is none. Headscale failures are
/// logged and leave things as they are. Store failures are returned (fail closed).
pub async fn at_sign_in(
    config: &Config,
    headscale: &Headscale,
    store: &Store,
    user: &User,
    who: &Identity,
    now: i64,
) -> Result<(), StoreError> {
    let Some(oidc) = &config.oidc else {
        return Ok(());
    };
    let users = match headscale.users().await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!("linking skipped for this sign-in (retried at the next one): {e}");
            return Ok(());
        }
    };
    if let Some(link) = store.link_of_user(user.id).await? {
        if still_valid(&link, &users) {
            return Ok(());
        }
        tracing::warn!(
            headscale_user = %link.headscale_user_id,
            user = user.id.0,
            "dropping a link: the Headscale user is gone or was re-created (id, createdAt or providerId changed)"
        );
        store.remove_link(user.id).await?;
    }
    let issuer = config
        .headscale
        .as_ref()
        .and_then(|h| h.oidc_issuer.as_deref())
        .unwrap_or(&oidc.issuer);
    let Some(hs) = find_match(&users, issuer, who, who.trusted_email(oidc)) else {
        return Ok(());
    };
    match store
        .link_if_unclaimed(link_for(hs, user, LinkState::Approved, now))
        .await?
    {
        LinkOutcome::Linked => {
            tracing::info!(headscale_user = %hs.id, user = user.id.0, "linked to a Headscale user");
            store
                .append_audit(vec![crate::store::NewAuditEvent {
                    at: now,
                    actor: "headgate".into(),
                    action: "link".into(),
                    target: format!("user {} ↔ headscale user {}", user.id.0, hs.id),
                    detail: "automatic (subject or verified email)".into(),
                }])
                .await?;
        }
        LinkOutcome::AlreadyLinkedToOther(other) => {
            tracing::warn!(headscale_user = %hs.id, other = other.0, "not linking: that Headscale user is linked to someone else");
        }
        LinkOutcome::UserAlreadyLinked => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(id: &str, provider_id: &str, email: &str) -> HsUser {
        HsUser {
            id: id.into(),
            name: format!("u{id}"),
            provider: if provider_id.is_empty() {
                String::new()
            } else {
                "oidc".into()
            },
            provider_id: provider_id.into(),
            email: email.into(),
            created_at: "2025-01-01T00:00:00Z".into(),
            ..Default::default()
        }
    }

    #[test]
    fn subject_needs_the_issuer_too() {
        let u = hs("1", "https://idp.example.com/alice", "");
        assert!(subject_matches(&u, "https://idp.example.com", "alice"));
        assert!(subject_matches(&u, "HTTPS://idp.example.com/", "alice"));
        assert!(!subject_matches(&u, "https://other.example.com", "alice"));
        assert!(!subject_matches(
            &hs("2", "https://evil.example/alice", ""),
            "https://idp.example.com",
            "alice"
        ));
        let auth0 = hs("3", "https://tenant.auth0.com/auth0%7Cabc", "");
        assert!(subject_matches(
            &auth0,
            "https://tenant.auth0.com/",
            "auth0|abc"
        ));
        let realm = hs("4", "https://kc.example.com/realms/main/f00", "");
        assert!(subject_matches(
            &realm,
            "https://kc.example.com/realms/main",
            "f00"
        ));
    }
}
