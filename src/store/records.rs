//! The domain records the store keeps. They are plain data: the store decides the rules that must hold across
//! records (one owner, one-to-one links) and callers pass every timestamp in (unix seconds), so tests control
//! time.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// A headgate user's id: assigned by the store, never reused (a counter, not the largest id + 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub u64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Headplane's roles. `Owner` is held by at most one user, and never comes from a claim (S13): only the owner
/// bootstrap, `transfer_ownership`, `make_owner_if_none` or an explicit `update_user` while no owner exists
/// make one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    NetworkAdmin,
    ItAdmin,
    Auditor,
    Viewer,
    Member,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Owner,
        Role::Admin,
        Role::NetworkAdmin,
        Role::ItAdmin,
        Role::Auditor,
        Role::Viewer,
        Role::Member,
    ];

    /// The snake_case name (as in configuration and on the wire).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::NetworkAdmin => "network_admin",
            Role::ItAdmin => "it_admin",
            Role::Auditor => "auditor",
            Role::Viewer => "viewer",
            Role::Member => "member",
        }
    }

    /// The role named `s` (snake_case), if any.
    pub fn from_name(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A person who signed in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    /// The IdP's `sub`, unique (indexed).
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    pub picture: Option<String>,
    pub role: Role,
    /// The Headscale user this person is linked to by an *approved* link; kept by the store (see
    /// [`crate::store::Store::update_user`]).
    pub headscale_user_id: Option<String>,
    pub onboarded: bool,
    pub created: i64,
    pub last_login: i64,
}

/// What a first sign-in creates; the store assigns the id and decides whether the user becomes owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    pub picture: Option<String>,
    /// The role the user gets unless the bootstrap rule makes them owner. `Owner` here is refused with
    /// [`crate::store::StoreError::Conflict`]: only the bootstrap rule makes an owner at creation.
    pub role: Role,
    pub onboarded: bool,
    /// Unix seconds; also the first `last_login`.
    pub created: i64,
}

/// Who may become owner at `create_user` (S2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerBootstrap {
    /// The seed's rule: the first user ever created becomes owner (decided with the "bootstrapped" marker
    /// inside the write transaction, so concurrent first sign-ins yield exactly one owner).
    FirstUser,
    /// `server.initial_owner`: only this identity becomes owner, and only while the store was never
    /// bootstrapped.
    Only(OwnerIdentity),
    /// Nobody becomes owner by signing in.
    Never,
}

/// The identity `server.initial_owner` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerIdentity {
    /// Matches a *verified* email, ASCII case-insensitively.
    Email(String),
    /// Matches the IdP subject exactly.
    Subject(String),
    /// Either of the above (for a configured value that could be either).
    EmailOrSubject(String),
}

impl OwnerIdentity {
    /// Whether `user` is this identity. An email only counts when the IdP said it is verified.
    pub fn matches(&self, subject: &str, email: Option<&str>, email_verified: bool) -> bool {
        let email_is =
            |want: &str| email_verified && email.is_some_and(|e| e.eq_ignore_ascii_case(want));
        match self {
            OwnerIdentity::Email(e) => email_is(e),
            OwnerIdentity::Subject(s) => subject == s,
            OwnerIdentity::EmailOrSubject(v) => subject == v || email_is(v),
        }
    }
}

/// Whether a link grants anything yet (S4: a self-picked link waits for approval).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Pending,
    Approved,
}

/// A headgate user ↔ Headscale user link; one-to-one both ways (S3, S4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub headscale_user_id: String,
    pub user_id: UserId,
    /// The Headscale user's `createdAt` when linked: if it changes, the link is dropped, not followed (S3).
    pub headscale_created_at: String,
    pub provider_id: String,
    pub state: LinkState,
    pub created: i64,
    /// The Headscale user's name when linked (for headers and pages; never used to decide anything).
    #[serde(default)]
    pub headscale_name: String,
}

/// What `link_if_unclaimed` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOutcome {
    /// The link was stored.
    Linked,
    /// The Headscale user is already linked to this other headgate user; nothing changed.
    AlreadyLinkedToOther(UserId),
    /// The headgate user already has a link (to this or another Headscale user); nothing changed.
    UserAlreadyLinked,
}

/// A session's key in the store: SHA-256 of the raw session id (S16). Raw ids are never stored.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionKey(pub [u8; 32]);

impl SessionKey {
    /// The key of the session whose raw id (the secret in the cookie) is `raw`.
    pub fn from_raw_id(raw: &[u8]) -> SessionKey {
        SessionKey(Sha256::digest(raw).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex (64 characters); safe to print: it is a hash, not the cookie's secret.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<SessionKey> {
        hex::decode32(s).map(SessionKey)
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({})", &self.to_hex()[..12])
    }
}

/// Whose session it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionSubject {
    /// A person who signed in with OIDC.
    User(UserId),
    /// A Headscale API-key sign-in: the key's public prefix and the SHA-256 of the key (S14); never a user.
    ApiKey {
        prefix: String,
        #[serde(with = "hex::serde32")]
        key_hash: [u8; 32],
    },
}

/// A session, keyed by [`SessionKey`]. Its `Debug` output redacts the tokens (S20).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub subject: SessionSubject,
    pub created: i64,
    /// The session ends when `now >= expires`.
    pub expires: i64,
    pub last_seen: i64,
    /// The IdP's `sid` (for back-channel logout).
    pub idp_sid: Option<String>,
    /// The id token, for RP-initiated logout's `id_token_hint`.
    pub id_token: Option<String>,
    /// The refresh token, encrypted by the caller.
    #[serde(with = "b64_opt", default)]
    pub refresh_token_enc: Option<Vec<u8>>,
    /// When the session was last refreshed at the IdP.
    pub refreshed: i64,
}

impl fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |present: bool| if present { Some("<redacted>") } else { None };
        f.debug_struct("SessionRecord")
            .field("subject", &self.subject)
            .field("created", &self.created)
            .field("expires", &self.expires)
            .field("last_seen", &self.last_seen)
            .field("idp_sid", &self.idp_sid)
            .field("id_token", &redacted(self.id_token.is_some()))
            .field(
                "refresh_token_enc",
                &redacted(self.refresh_token_enc.is_some()),
            )
            .field("refreshed", &self.refreshed)
            .finish()
    }
}

impl SessionRecord {
    /// The user whose session this is (`None` for an API-key session).
    pub fn user_id(&self) -> Option<UserId> {
        match self.subject {
            SessionSubject::User(id) => Some(id),
            SessionSubject::ApiKey { .. } => None,
        }
    }
}

/// An audit record as appended; the store assigns the id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAuditEvent {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// An audit record; ids increase with every append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: u64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// Where a signing key of the signed assertion is in its life (S15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SigningKeyState {
    /// Published in the JWKS, not signing yet (waits out the publish delay).
    Next,
    /// The one key that signs.
    Current,
    /// No longer signs; published until every token it signed has expired.
    Retired,
    /// Withdrawn at once: never published, never signs again; its private key is erased.
    Revoked,
}

impl SigningKeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningKeyState::Next => "next",
            SigningKeyState::Current => "current",
            SigningKeyState::Retired => "retired",
            SigningKeyState::Revoked => "revoked",
        }
    }
}

impl fmt::Display for SigningKeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A signing key of the signed assertion, keyed by `kid`. The private key is stored encrypted by the caller
/// (with a key derived from `cookie_secret`); its `Debug` output redacts it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    pub kid: String,
    pub created: i64,
    pub state: SigningKeyState,
    /// The public key as a JWK (JSON text).
    pub public_jwk: String,
    /// The encrypted private key; empty once revoked.
    #[serde(with = "b64")]
    pub private_enc: Vec<u8>,
    /// When a running headgate first served it in the JWKS (the publish delay counts from here).
    #[serde(default)]
    pub published: Option<i64>,
    /// When it started signing.
    #[serde(default)]
    pub activated: Option<i64>,
    /// When it stopped signing.
    #[serde(default)]
    pub retired: Option<i64>,
    /// When it was revoked.
    #[serde(default)]
    pub revoked: Option<i64>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created", &self.created)
            .field("state", &self.state)
            .field("public_jwk", &self.public_jwk)
            .field(
                "private_enc",
                &if self.private_enc.is_empty() {
                    "<none>"
                } else {
                    "<redacted>"
                },
            )
            .field("published", &self.published)
            .field("activated", &self.activated)
            .field("retired", &self.retired)
            .field("revoked", &self.revoked)
            .finish()
    }
}

mod hex {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";

    pub fn encode(bytes: &[u8]) -> String {
        let mut s = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            s.push(DIGITS[(b >> 4) as usize] as char);
            s.push(DIGITS[(b & 15) as usize] as char);
        }
        s
    }

    pub fn decode32(s: &str) -> Option<[u8; 32]> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return None;
        }
        let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (nibble(s[2 * i])? << 4) | nibble(s[2 * i + 1])?;
        }
        Some(out)
    }

    pub mod serde32 {
        use serde::{Deserialize, Deserializer, Serializer, de::Error};

        pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&super::encode(v))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
            let s = String::deserialize(d)?;
            super::decode32(&s).ok_or_else(|| D::Error::custom("expected 64 hex digits"))
        }
    }
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD_NO_PAD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        STANDARD_NO_PAD
            .decode(String::deserialize(d)?)
            .map_err(D::Error::custom)
    }
}

mod b64_opt {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&STANDARD_NO_PAD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => STANDARD_NO_PAD
                .decode(s)
                .map(Some)
                .map_err(D::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_snake_case() {
        for r in Role::ALL {
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
            assert_eq!(Role::from_name(r.as_str()), Some(r));
        }
        assert_eq!(
            serde_json::to_string(&Role::NetworkAdmin).unwrap(),
            "\"network_admin\""
        );
        assert_eq!(
            serde_json::to_string(&Role::ItAdmin).unwrap(),
            "\"it_admin\""
        );
        assert_eq!(Role::from_name("Owner"), None);
    }

    #[test]
    fn session_key_is_sha256_of_the_raw_id() {
        // SHA-256("abc")
        let k = SessionKey::from_raw_id(b"abc");
        assert_eq!(
            k.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(SessionKey::from_hex(&k.to_hex()), Some(k));
        assert_eq!(SessionKey::from_hex("zz"), None);
        assert_eq!(format!("{k:?}"), "SessionKey(ba7816bf8f01)");
    }

    #[test]
    fn session_record_round_trips_through_json() {
        let r = SessionRecord {
            subject: SessionSubject::ApiKey {
                prefix: "abc123".into(),
                key_hash: [7; 32],
            },
            created: 1,
            expires: 2,
            last_seen: 3,
            idp_sid: Some("sid".into()),
            id_token: None,
            refresh_token_enc: Some(vec![0, 1, 2, 255]),
            refreshed: 4,
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains(&"07".repeat(32)), "{j}");
        assert_eq!(serde_json::from_str::<SessionRecord>(&j).unwrap(), r);
        let u = SessionRecord {
            subject: SessionSubject::User(UserId(9)),
            refresh_token_enc: None,
            ..r
        };
        assert_eq!(
            serde_json::from_str::<SessionRecord>(&serde_json::to_string(&u).unwrap()).unwrap(),
            u
        );
    }

    #[test]
    fn session_debug_redacts_tokens() {
        let r = SessionRecord {
            subject: SessionSubject::User(UserId(1)),
            created: 1,
            expires: 2,
            last_seen: 3,
            idp_sid: Some("sid".into()),
            id_token: Some("eyJSECRET".into()),
            refresh_token_enc: Some(b"SECRETBYTES".to_vec()),
            refreshed: 4,
        };
        let d = format!("{r:?}");
        assert!(!d.contains("SECRET") && !d.contains("83, 69"), "{d}");
        assert!(d.contains("<redacted>") && d.contains("sid"), "{d}");
    }

    #[test]
    fn signing_key_round_trips_and_debug_redacts_the_private_key() {
        let k = SigningKey {
            kid: "k1".into(),
            created: 1,
            state: SigningKeyState::Next,
            public_jwk: "{}".into(),
            private_enc: b"SECRETBYTES".to_vec(),
            published: Some(2),
            activated: None,
            retired: None,
            revoked: None,
        };
        let j = serde_json::to_string(&k).unwrap();
        assert!(j.contains("\"state\":\"next\""), "{j}");
        assert!(!j.contains("SECRETBYTES"), "{j}");
        assert_eq!(serde_json::from_str::<SigningKey>(&j).unwrap(), k);
        let d = format!("{k:?}");
        assert!(!d.contains("SECRET") && d.contains("<redacted>"), "{d}");
    }

    #[test]
    fn owner_identity_matching() {
        let e = OwnerIdentity::Email("Boss@Example.com".into());
        assert!(e.matches("s", Some("boss@example.COM"), true));
        assert!(
            !e.matches("s", Some("boss@example.com"), false),
            "an unverified email never matches"
        );
        assert!(!e.matches("s", None, true));
        let s = OwnerIdentity::Subject("sub-1".into());
        assert!(s.matches("sub-1", None, false));
        assert!(!s.matches("SUB-1", None, false));
        let any = OwnerIdentity::EmailOrSubject("x@y".into());
        assert!(any.matches("x@y", None, false));
        assert!(any.matches("other", Some("X@Y"), true));
        assert!(!any.matches("other", Some("X@Y"), false));
    }
}

/// What a sign-in of an existing user writes: the fields the IdP tells at every sign-in, and the time. Written
/// field by field inside one write transaction ([`crate::store::Store::record_sign_in`]), never as a whole
/// record read before: a role change made meanwhile (an admin's demotion) is never undone by a sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignIn {
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    pub picture: Option<String>,
    /// Unix seconds; becomes `last_login`.
    pub at: i64,
    /// The role the IdP's role claim decides (`oidc.role_claim`, S13), if it is configured. It is applied to the
    /// role stored at the time of the write (never to a copy read earlier); the owner keeps the owner role, and
    /// `owner` itself never comes from a claim (ignored).
    pub role_from_idp: Option<Role>,
}

/// What [`crate::store::Store::record_sign_in`] (or [`crate::store::Store::apply_idp_role`]) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    /// The user as stored after the write.
    pub user: User,
    /// The role the IdP's role claim replaced, when it changed it.
    pub role_changed_from: Option<Role>,
}

/// What [`crate::store::Store::make_owner_if_none`] decided (inside one write transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerClaim {
    /// Nobody was owner: this user now is (the bootstrapped marker is set).
    Made(User),
    /// Someone is owner already (possibly this very user): nothing changed.
    Taken(User),
}

impl User {
    /// Apply the IdP's role (S13) to this stored record: the owner stays owner and `owner` never comes from a
    /// claim. Returns the replaced role when it changed.
    pub(crate) fn apply_idp_role(&mut self, role: Role) -> Option<Role> {
        if role == Role::Owner || self.role == Role::Owner || self.role == role {
            return None;
        }
        Some(std::mem::replace(&mut self.role, role))
    }

    /// Apply a sign-in to this stored record (see [`SignIn`]).
    pub(crate) fn apply_sign_in(&mut self, s: SignIn) -> Option<Role> {
        self.email = s.email;
        self.email_verified = s.email_verified;
        self.name = s.name;
        self.picture = s.picture;
        self.last_login = s.at;
        s.role_from_idp.and_then(|r| self.apply_idp_role(r))
    }

    /// Whether an administrator's role change to `role` may apply to this stored record, `expected` being the
    /// role the administrator saw (and their rights were checked against). Checked inside the write
    /// transaction.
    pub(crate) fn check_role_change(
        &self,
        role: Role,
        expected: Option<Role>,
    ) -> Result<(), crate::store::StoreError> {
        use crate::store::StoreError::Conflict;
        if role == Role::Owner {
            return Err(Conflict(
                "owner is never given by a role change: the owner transfers ownership \
                 (headgate users transfer-ownership), and while there is no owner the local operator runs \
                 headgate users make-owner"
                    .into(),
            ));
        }
        if self.role == Role::Owner {
            return Err(Conflict(format!(
                "user {} is the owner: the owner's role cannot be changed; transfer ownership to someone else first",
                self.id
            )));
        }
        if let Some(e) = expected
            && e != self.role
        {
            return Err(Conflict(format!(
                "user {}'s role was changed to {} meanwhile (it was {e} when this change was asked): \
                 look at the user again and retry",
                self.id, self.role
            )));
        }
        Ok(())
    }
}
