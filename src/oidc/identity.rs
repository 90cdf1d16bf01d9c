//! From verified claims to the person signing in: subject, verified email, name, picture, groups; and the
//! sign-in allowlist (S1).

use serde_json::{Map, Value};

use super::rp::SignInError;
use crate::config::OidcConfig;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    /// A single well-formed address (class 6), whatever its verification state.
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    pub picture: Option<String>,
    pub groups: Vec<String>,
    /// The IdP session id, for logout.
    pub sid: Option<String>,
}

/// ID-token claims first; userinfo fills only what the ID token lacks (and only when its `sub` agrees).
pub fn merge_userinfo(
    id_claims: &mut Map<String, Value>,
    userinfo: Map<String, Value>,
) -> Result<(), String> {
    // The subject comes from the signed ID token only: userinfo is trusted to describe that subject, never
    // to supply it (OpenID Connect Core 5.3.2).
    match (id_claims.get("sub"), userinfo.get("sub")) {
        (Some(a), Some(b)) if a == b => {}
        (None, _) => return Err("the ID token has no sub; ignoring userinfo".into()),
        _ => {
            return Err(
                "userinfo names another subject than the ID token (or none); ignoring it".into(),
            );
        }
    }
    // email and email_verified travel as a pair from one source, so a verification flag can never be
    // borrowed for another address.
    let id_email = id_claims.get("email").cloned();
    for (k, v) in userinfo {
        if k == "email_verified" {
            let same_address = id_email.is_none() || id_email.as_ref() == id_claims.get("email");
            if !same_address {
                continue;
            }
        }
        id_claims.entry(k).or_insert(v);
    }
    if id_email.is_some() && !id_claims.contains_key("email_verified") {
        id_claims.insert("email_verified".into(), serde_json::Value::Bool(false));
    }
    Ok(())
}

fn text(c: &Map<String, Value>, k: &str) -> Option<String> {
    match c.get(k) {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            Some(s.trim().chars().take(512).collect())
        }
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// One address: exactly one `@`, non-empty local part and domain, no whitespace, controls or separators.
pub fn well_formed_email(s: &str) -> bool {
    let mut parts = s.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && s.len() <= 254
        && !s.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, ',' | ';' | '<' | '>' | '"' | '(' | ')')
        })
}

pub fn identity(cfg: &OidcConfig, c: &Map<String, Value>) -> Result<Identity, SignInError> {
    // The subject is taken verbatim (no trimming or conversion, so distinct subjects never collide); an
    // oversized one is refused rather than cut.
    let subject = std::iter::once("sub")
        .chain(cfg.subject_claims.iter().map(String::as_str))
        .find_map(|k| {
            c.get(k)
                .and_then(serde_json::Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .ok_or(SignInError::NoSubject)?;
    if subject.len() > 255 || subject.chars().any(char::is_control) {
        return Err(SignInError::NoSubject);
    }
    let subject = subject.to_string();
    let email = text(c, "email").filter(|e| well_formed_email(e));
    let email_verified = match c.get("email_verified") {
        Some(Value::Bool(b)) => *b,
        // Some IdPs send "true" as a string.
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    };
    let name = text(c, "name")
        .or_else(|| {
            let g = text(c, "given_name");
            let f = text(c, "family_name");
            match (g, f) {
                (Some(g), Some(f)) => Some(format!("{g} {f}")),
                (g, f) => g.or(f),
            }
        })
        .or_else(|| text(c, "preferred_username"));
    let picture = text(c, "picture").filter(|p| p.starts_with("https://"));
    let groups = match c.get(&cfg.groups_claim) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => vec![],
    };
    Ok(Identity {
        subject,
        email,
        email_verified,
        name,
        picture,
        groups,
        sid: text(c, "sid"),
    })
}

impl Identity {
    /// The email when it may be trusted (verified, or `oidc.trust_unverified_email`).
    pub fn trusted_email(&self, cfg: &OidcConfig) -> Option<&str> {
        self.email
            .as_deref()
            .filter(|_| self.email_verified || cfg.trust_unverified_email)
    }
}

/// S1: with no allowlist everyone the IdP accepts gets in. Otherwise being on any configured list admits
/// (verified email domain, a group, a subject); with domains configured, a Google `hd` claim that is present
/// must be one of them.
pub fn check_allowed(
    cfg: &OidcConfig,
    id: &Identity,
    c: &Map<String, Value>,
) -> Result<(), SignInError> {
    let (domains, groups, subjects) = (
        &cfg.allowed_email_domains,
        &cfg.allowed_groups,
        &cfg.allowed_subjects,
    );
    if domains.is_empty() && groups.is_empty() && subjects.is_empty() {
        return Ok(());
    }
    // S1: the domain allowlist counts a verified email only (trust_unverified_email is for linking, not
    // admission); a Google `hd` claim that is present must be an allowed domain whatever admits the person.
    let hd_ok = domains.is_empty()
        || text(c, "hd").is_none_or(|hd| domains.iter().any(|x| x.eq_ignore_ascii_case(&hd)));
    let by_domain = !domains.is_empty()
        && id.email_verified
        && id.email.as_deref().is_some_and(|e| {
            let d = e.rsplit('@').next().unwrap_or("").to_ascii_lowercase();
            domains.contains(&d)
        });
    let by_group = id.groups.iter().any(|g| groups.contains(g));
    let by_subject = subjects.contains(&id.subject);
    if hd_ok && (by_domain || by_group || by_subject) {
        Ok(())
    } else {
        let why = match (&id.email, id.email_verified) {
            (Some(_), false) if !domains.is_empty() && !cfg.trust_unverified_email => {
                "its email is not verified by the IdP"
            }
            _ => {
                "it is not on oidc.allowed_email_domains, oidc.allowed_groups or oidc.allowed_subjects"
            }
        };
        Err(SignInError::NotAllowed(format!(
            "sign-in of subject {:?} refused: {why}",
            id.subject
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(well_formed_email("a@example.com"));
        for bad in [
            "a@b@example.com",
            "@example.com",
            "a@",
            "a b@example.com",
            "a@example",
            "a@example.com,b@evil.com",
            "a@.com",
        ] {
            assert!(!well_formed_email(bad), "{bad}");
        }
    }
}
