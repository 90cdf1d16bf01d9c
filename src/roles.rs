//! Headplane's roles and capability bits (the numbers are Headplane's: keep them), and the rules for roles
//! that come from the IdP (S13).

use std::collections::BTreeMap;
use std::fmt;

pub use crate::store::Role;

/// A set of capability bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Caps(pub u32);

impl Caps {
    pub const UI_ACCESS: Caps = Caps(1);
    pub const READ_POLICY: Caps = Caps(2);
    pub const WRITE_POLICY: Caps = Caps(4);
    pub const READ_NETWORK: Caps = Caps(8);
    pub const WRITE_NETWORK: Caps = Caps(16);
    pub const READ_FEATURE: Caps = Caps(32);
    pub const WRITE_FEATURE: Caps = Caps(64);
    pub const CONFIGURE_IAM: Caps = Caps(128);
    pub const READ_MACHINES: Caps = Caps(256);
    pub const WRITE_MACHINES: Caps = Caps(512);
    pub const READ_USERS: Caps = Caps(1024);
    pub const WRITE_USERS: Caps = Caps(2048);
    pub const GENERATE_AUTHKEYS: Caps = Caps(4096);
    pub const USE_TAGS: Caps = Caps(8192);
    pub const WRITE_TAILNET: Caps = Caps(16384);
    pub const OWNER: Caps = Caps(32768);
    pub const GENERATE_OWN_AUTHKEYS: Caps = Caps(65536);
    pub const NONE: Caps = Caps(0);
    /// Every capability (API-key sessions).
    pub const ALL: Caps = Caps(65535 | 65536);

    pub const NAMES: [(Caps, &'static str); 17] = [
        (Caps::UI_ACCESS, "ui_access"),
        (Caps::READ_POLICY, "read_policy"),
        (Caps::WRITE_POLICY, "write_policy"),
        (Caps::READ_NETWORK, "read_network"),
        (Caps::WRITE_NETWORK, "write_network"),
        (Caps::READ_FEATURE, "read_feature"),
        (Caps::WRITE_FEATURE, "write_feature"),
        (Caps::CONFIGURE_IAM, "configure_iam"),
        (Caps::READ_MACHINES, "read_machines"),
        (Caps::WRITE_MACHINES, "write_machines"),
        (Caps::READ_USERS, "read_users"),
        (Caps::WRITE_USERS, "write_users"),
        (Caps::GENERATE_AUTHKEYS, "generate_authkeys"),
        (Caps::USE_TAGS, "use_tags"),
        (Caps::WRITE_TAILNET, "write_tailnet"),
        (Caps::OWNER, "owner"),
        (Caps::GENERATE_OWN_AUTHKEYS, "generate_own_authkeys"),
    ];

    /// A check passes when all required bits are present.
    pub fn has(self, required: Caps) -> bool {
        self.0 & required.0 == required.0
    }

    pub fn union(self, other: Caps) -> Caps {
        Caps(self.0 | other.0)
    }

    /// The capabilities of `required` that `self` lacks.
    pub fn missing(self, required: Caps) -> Caps {
        Caps(required.0 & !self.0)
    }

    pub fn names(self) -> Vec<&'static str> {
        Caps::NAMES
            .iter()
            .filter(|(c, _)| self.has(*c) && c.0 != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

impl std::ops::BitOr for Caps {
    type Output = Caps;
    fn bitor(self, o: Caps) -> Caps {
        self.union(o)
    }
}

impl fmt::Display for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(", "))
    }
}

/// Headplane 0.7's capability values of each role.
pub fn caps(role: Role) -> Caps {
    use Caps as C;
    match role {
        Role::Owner => Caps(65535),
        Role::Admin => Caps(32767),
        Role::NetworkAdmin => {
            C::UI_ACCESS
                | C::READ_POLICY
                | C::WRITE_POLICY
                | C::READ_NETWORK
                | C::WRITE_NETWORK
                | C::READ_FEATURE
                | C::READ_MACHINES
                | C::READ_USERS
                | C::GENERATE_AUTHKEYS
                | C::USE_TAGS
                | C::WRITE_TAILNET
        }
        Role::ItAdmin => {
            C::UI_ACCESS
                | C::READ_POLICY
                | C::READ_NETWORK
                | C::READ_FEATURE
                | C::WRITE_FEATURE
                | C::CONFIGURE_IAM
                | C::READ_MACHINES
                | C::WRITE_MACHINES
                | C::READ_USERS
                | C::WRITE_USERS
                | C::GENERATE_AUTHKEYS
        }
        Role::Auditor => {
            C::UI_ACCESS
                | C::READ_POLICY
                | C::READ_NETWORK
                | C::READ_FEATURE
                | C::READ_MACHINES
                | C::READ_USERS
                | C::GENERATE_OWN_AUTHKEYS
        }
        Role::Viewer => C::UI_ACCESS | C::READ_MACHINES | C::READ_USERS | C::GENERATE_OWN_AUTHKEYS,
        Role::Member => C::NONE,
    }
}

/// Strongest first, for an array-valued role claim (`owner` never comes from a claim).
pub const CLAIM_PRECEDENCE: [Role; 6] = [
    Role::Admin,
    Role::NetworkAdmin,
    Role::ItAdmin,
    Role::Auditor,
    Role::Viewer,
    Role::Member,
];

/// The role an IdP claim gives (S13): each value is mapped through `role_map` (else taken as a role name);
/// `owner` and unknown values are ignored; for several values the strongest wins; nothing usable → None
/// (the caller uses `oidc.default_role`).
pub fn role_from_claim(
    claim: Option<&serde_json::Value>,
    role_map: &BTreeMap<String, Role>,
) -> Option<Role> {
    let values: Vec<&str> = match claim? {
        serde_json::Value::String(s) => vec![s.as_str()],
        serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
        _ => return None,
    };
    let mapped: Vec<Role> = values
        .iter()
        .filter_map(|v| role_map.get(*v).copied().or_else(|| Role::from_name(v)))
        .filter(|r| *r != Role::Owner)
        .collect();
    CLAIM_PRECEDENCE
        .iter()
        .copied()
        .find(|r| mapped.contains(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_values_are_headplanes() {
        let values: Vec<u32> = Role::ALL.iter().map(|r| caps(*r).0).collect();
        assert_eq!(values, vec![65535, 32767, 30015, 8171, 66859, 66817, 0]);
        assert!(caps(Role::Owner).has(Caps::OWNER));
        assert!(!caps(Role::Admin).has(Caps::OWNER));
        assert!(caps(Role::Viewer).has(Caps::GENERATE_OWN_AUTHKEYS));
        assert_eq!(
            caps(Role::Viewer).missing(Caps::WRITE_USERS | Caps::READ_USERS),
            Caps::WRITE_USERS
        );
    }

    #[test]
    fn claims_map_never_to_owner() {
        let mut map = BTreeMap::new();
        map.insert("hs-admins".to_string(), Role::Admin);
        map.insert("hs-owners".to_string(), Role::Owner);
        assert_eq!(
            role_from_claim(Some(&serde_json::json!("hs-admins")), &map),
            Some(Role::Admin)
        );
        assert_eq!(
            role_from_claim(Some(&serde_json::json!("viewer")), &map),
            Some(Role::Viewer)
        );
        assert_eq!(
            role_from_claim(Some(&serde_json::json!("hs-owners")), &map),
            None
        );
        assert_eq!(
            role_from_claim(Some(&serde_json::json!("owner")), &map),
            None
        );
        assert_eq!(
            role_from_claim(
                Some(&serde_json::json!(["viewer", "junk", "hs-admins"])),
                &map
            ),
            Some(Role::Admin)
        );
        assert_eq!(
            role_from_claim(Some(&serde_json::json!(["junk"])), &map),
            None
        );
        assert_eq!(role_from_claim(None, &map), None);
    }
}
