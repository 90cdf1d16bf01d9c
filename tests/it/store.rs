//! The store through its public interface, against both backends (redb and a real PostgreSQL, see
//! `harness/postgres.rs`): every table's round trip, the owner and link rules, hashed session keys; for redb
//! also locking, refusing files it must not touch, and surviving `kill -9` mid-write; for PostgreSQL also
//! migrations under concurrent starts, rules across several "replicas" (stores on one database), the read
//! cache's invalidation and hard lifetime (S16), failing closed when the server is gone, and copying a store
//! from one backend to the other.

use crate::harness;
use crate::harness::postgres::PgServer;
use crate::harness::process::ChildProcess;
use headgate::store::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CACHE: usize = 4 << 20;

fn open(path: &Path) -> Store {
    Store::open_redb(path, CACHE).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("headgate.redb")
}

/// Which backend a parameterised test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Redb,
    Postgres,
}

/// A `[store] backend = "postgres"` configuration for `url`.
pub fn pg_config(url: &str) -> headgate::config::PostgresConfig {
    headgate::config::PostgresConfig {
        url: headgate::config::Secret::new(url),
        pool_size: 4,
        connect_timeout: 5,
        tls_ca_path: None,
    }
}

/// A fresh, empty store of one kind: a redb file in a temp dir, or a new database on the shared PostgreSQL.
pub struct Target {
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    pub db: Option<String>,
}

impl Target {
    pub fn new(kind: Kind) -> Target {
        Target {
            kind,
            dir: harness::tempdir(),
            db: (kind == Kind::Postgres).then(|| PgServer::shared().database()),
        }
    }

    pub fn url(&self) -> String {
        PgServer::shared().url(self.db.as_deref().expect("a PostgreSQL target"))
    }

    /// Open (another handle on) the store; for PostgreSQL that is another "replica".
    pub async fn open(&self) -> Store {
        match self.kind {
            Kind::Redb => open(&db_path(&self.dir)),
            Kind::Postgres => Store::open_postgres(&pg_config(&self.url()))
                .await
                .unwrap_or_else(|e| panic!("open {}: {e}", self.url())),
        }
    }

    /// Every stored byte: the redb file, or a text dump of headgate's tables.
    pub fn raw_bytes(&self) -> Vec<u8> {
        match self.kind {
            Kind::Redb => std::fs::read(db_path(&self.dir)).unwrap(),
            Kind::Postgres => {
                let mut out = Vec::new();
                for table in [
                    "headgate_meta",
                    "headgate_users",
                    "headgate_links",
                    "headgate_sessions",
                    "headgate_audit",
                    "headgate_rate_limits",
                    "headgate_signing_keys",
                ] {
                    for row in PgServer::shared().sql(
                        self.db.as_deref().unwrap(),
                        &format!("SELECT t::text FROM {table} t"),
                    ) {
                        out.extend(row.into_iter().flatten().flat_map(String::into_bytes));
                    }
                }
                out
            }
        }
    }
}

/// Run a store test against both backends: `<name>::redb` and `<name>::postgres`.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redb() {
                super::$name(super::Kind::Redb).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Kind::Postgres).await
            }
        }
    };
}

fn new_user(subject: &str) -> NewUser {
    NewUser {
        subject: subject.into(),
        email: Some(format!("{subject}@example.com")),
        email_verified: true,
        name: Some(format!("Name of {subject}")),
        picture: None,
        role: Role::Member,
        onboarded: false,
        created: 1_000,
    }
}

fn user_session(user: UserId, expires: i64) -> SessionRecord {
    SessionRecord {
        subject: SessionSubject::User(user),
        created: 100,
        expires,
        last_seen: 100,
        idp_sid: Some("sid-1".into()),
        id_token: Some("eyJ.id.token".into()),
        refresh_token_enc: Some(vec![1, 2, 3, 0xff]),
        refreshed: 100,
    }
}

fn api_key_session(expires: i64) -> SessionRecord {
    SessionRecord {
        subject: SessionSubject::ApiKey {
            prefix: "hskey-abc".into(),
            key_hash: [0x5a; 32],
        },
        created: 100,
        expires,
        last_seen: 100,
        idp_sid: None,
        id_token: None,
        refresh_token_enc: None,
        refreshed: 0,
    }
}

fn link(hs: &str, user: UserId, state: LinkState) -> Link {
    Link {
        headscale_user_id: hs.into(),
        user_id: user,
        headscale_created_at: "2024-01-02T03:04:05Z".into(),
        provider_id: format!("https://idp.example/{hs}"),
        state,
        created: 500,
        headscale_name: format!("hs-{hs}"),
    }
}

fn event(at: i64, action: &str) -> NewAuditEvent {
    NewAuditEvent {
        at,
        actor: "user 1".into(),
        action: action.into(),
        target: "user 2".into(),
        detail: "{}".into(),
    }
}

/// This test's full name as libtest knows it inside the `it` binary (for re-executing one child test).
fn test_name(f: &str) -> String {
    let module = module_path!()
        .split_once("::")
        .map(|(_, m)| m)
        .unwrap_or(module_path!());
    format!("{module}::{f}")
}

fn child_test(name: &str, env: &str, db: &Path) -> ChildProcess {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", &test_name(name), "--nocapture", "--ignored"])
        .env(env, db);
    ChildProcess::spawn(name, cmd)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ----- users -----

both!(users_round_trip_with_the_subject_index);
async fn users_round_trip_with_the_subject_index(kind: Kind) {
    let t = Target::new(kind);
    let s = t.open().await;
    let a = s
        .create_user(new_user("alice"), OwnerBootstrap::Never)
        .await
        .unwrap();
    let b = s
        .create_user(
            NewUser {
                role: Role::Viewer,
                ..new_user("bob")
            },
            OwnerBootstrap::Never,
        )
        .await
        .unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(a.role, Role::Member);
    assert_eq!(b.role, Role::Viewer);
    assert_eq!(
        (a.created, a.last_login, a.headscale_user_id.clone()),
        (1_000, 1_000, None)
    );
    assert_eq!(a.email.as_deref(), Some("alice@example.com"));
    assert!(!s.is_bootstrapped().await.unwrap());

    assert_eq!(s.user(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(s.user_by_subject("bob").await.unwrap(), Some(b.clone()));
    assert_eq!(s.user_by_subject("nobody").await.unwrap(), None);
    assert_eq!(s.user(UserId(999)).await.unwrap(), None);
    assert_eq!(s.users().await.unwrap(), vec![a.clone(), b.clone()]);

    // A taken subject, or a new user with the owner role, is refused.
    let e = s
        .create_user(new_user("alice"), OwnerBootstrap::Never)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    let e = s
        .create_user(
            NewUser {
                role: Role::Owner,
                ..new_user("carol")
            },
            OwnerBootstrap::FirstUser,
        )
        .await;
    assert!(matches!(e, Err(StoreError::Conflict(_))), "{e:?}");
    assert_eq!(s.user_by_subject("carol").await.unwrap(), None);
    assert!(
        !s.is_bootstrapped().await.unwrap(),
        "a refused create must not set the marker"
    );

    // Update: fields change, the subject cannot, headscale_user_id is the links' business.
    let mut a2 = a.clone();
    a2.name = Some("Alice A.".into());
    a2.role = Role::NetworkAdmin;
    a2.onboarded = true;
    a2.last_login = 2_000;
    a2.headscale_user_id = Some("hs-forged".into());
    s.update_user(&a2).await.unwrap();
    let stored = s.user(a.id).await.unwrap().unwrap();
    assert_eq!(
        stored,
        User {
            headscale_user_id: None,
            ..a2.clone()
        }
    );
    let e = s
        .update_user(&User {
            subject: "mallory".into(),
            ..a2.clone()
        })
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    let e = s
        .update_user(&User {
            id: UserId(999),
            ..a2.clone()
        })
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");

    // Delete takes sessions, link and subject index along; ids are never reused.
    s.create_session(SessionKey::from_raw_id(b"a-1"), user_session(a.id, 10_000))
        .await
        .unwrap();
    s.create_session(SessionKey::from_raw_id(b"b-1"), user_session(b.id, 10_000))
        .await
        .unwrap();
    assert_eq!(
        s.link_if_unclaimed(link("hs-a", a.id, LinkState::Approved))
            .await
            .unwrap(),
        LinkOutcome::Linked
    );
    s.delete_user(a.id).await.unwrap();
    assert_eq!(s.user(a.id).await.unwrap(), None);
    assert_eq!(s.user_by_subject("alice").await.unwrap(), None);
    assert_eq!(s.link_of_user(a.id).await.unwrap(), None);
    assert_eq!(s.link_of_headscale_user("hs-a").await.unwrap(), None);
    assert_eq!(
        s.session(&SessionKey::from_raw_id(b"a-1")).await.unwrap(),
        None
    );
    assert!(
        s.session(&SessionKey::from_raw_id(b"b-1"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(matches!(
        s.delete_user(a.id).await,
        Err(StoreError::NotFound(_))
    ));
    let a3 = s
        .create_user(new_user("alice"), OwnerBootstrap::Never)
        .await
        .unwrap();
    assert!(a3.id > b.id, "ids are not reused: {a3:?}");

    // Everything survives a reopen.
    drop(s);
    let s = t.open().await;
    assert_eq!(s.users().await.unwrap(), vec![b.clone(), a3.clone()]);
    assert_eq!(s.user_by_subject("alice").await.unwrap(), Some(a3));
}

both!(concurrent_first_sign_ins_make_exactly_one_owner);
async fn concurrent_first_sign_ins_make_exactly_one_owner(kind: Kind) {
    let t = Target::new(kind);
    let s = t.open().await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.create_user(new_user(&format!("u{i}")), OwnerBootstrap::FirstUser)
                    .await
            })
        })
        .collect();
    let mut owners = 0;
    for t in tasks {
        let u = t.await.unwrap().unwrap();
        owners += usize::from(u.role == Role::Owner);
    }
    assert_eq!(owners, 1, "returned users");
    let users = s.users().await.unwrap();
    assert_eq!(users.len(), 20);
    assert_eq!(
        users.iter().filter(|u| u.role == Role::Owner).count(),
        1,
        "{users:#?}"
    );
    assert!(
        users
            .iter()
            .all(|u| u.role == Role::Owner || u.role == Role::Member)
    );
    assert!(s.is_bootstrapped().await.unwrap());
}

both!(only_the_configured_identity_becomes_owner);
async fn only_the_configured_identity_becomes_owner(kind: Kind) {
    let t = Target::new(kind);
    let s = t.open().await;
    let rule = || OwnerBootstrap::Only(OwnerIdentity::Email("Boss@Example.com".into()));
    let first = s.create_user(new_user("first"), rule()).await.unwrap();
    assert_eq!(
        first.role,
        Role::Member,
        "the first sign-in is not the configured owner"
    );
    assert!(!s.is_bootstrapped().await.unwrap());
    let unverified = NewUser {
        email: Some("boss@example.com".into()),
        email_verified: false,
        ..new_user("u1")
    };
    assert_eq!(
        s.create_user(unverified, rule()).await.unwrap().role,
        Role::Member,
        "unverified email"
    );
    let boss = NewUser {
        email: Some("boss@example.COM".into()),
        ..new_user("boss")
    };
    assert_eq!(s.create_user(boss, rule()).await.unwrap().role, Role::Owner);
    assert!(s.is_bootstrapped().await.unwrap());
    let again = NewUser {
        email: Some("boss@example.com".into()),
        ..new_user("boss-2")
    };
    assert_eq!(
        s.create_user(again, rule()).await.unwrap().role,
        Role::Member,
        "only one owner"
    );

    let t = Target::new(kind);
    let s = t.open().await;
    let rule = || OwnerBootstrap::Only(OwnerIdentity::Subject("sub-owner".into()));
    assert_eq!(
        s.create_user(new_user("x"), rule()).await.unwrap().role,
        Role::Member
    );
    assert_eq!(
        s.create_user(new_user("sub-owner"), rule())
            .await
            .unwrap()
            .role,
        Role::Owner
    );

    let t = Target::new(kind);
    let s = t.open().await;
    assert_eq!(
        s.create_user(new_user("x"), OwnerBootstrap::Never)
            .await
            .unwrap()
            .role,
        Role::Member
    );
    assert!(!s.is_bootstrapped().await.unwrap());
}

both!(the_bootstrapped_marker_survives_deleting_the_owner);
async fn the_bootstrapped_marker_survives_deleting_the_owner(kind: Kind) {
    let t = Target::new(kind);
    let s = t.open().await;
    let owner = s
        .create_user(new_user("owner"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    assert_eq!(owner.role, Role::Owner);
    s.delete_user(owner.id).await.unwrap();
    assert!(s.is_bootstrapped().await.unwrap());
    let next = s
        .create_user(new_user("next"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    assert_eq!(next.role, Role::Member);
    drop(s);
    let s = t.open().await;
    assert!(
        s.is_bootstrapped().await.unwrap(),
        "the marker is persisted"
    );
    let rule = OwnerBootstrap::Only(OwnerIdentity::Subject("owner".into()));
    let back = s.create_user(new_user("owner"), rule).await.unwrap();
    assert_eq!(
        back.role,
        Role::Member,
        "not even the configured identity, once bootstrapped"
    );
    assert!(
        s.users()
            .await
            .unwrap()
            .iter()
            .all(|u| u.role != Role::Owner)
    );
}

both!(there_is_never_a_second_owner);
async fn there_is_never_a_second_owner(kind: Kind) {
    let t = Target::new(kind);
    let s = t.open().await;
    let owner = s
        .create_user(new_user("owner"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    let admin = s
        .create_user(
            NewUser {
                role: Role::Admin,
                ..new_user("admin")
            },
            OwnerBootstrap::FirstUser,
        )
        .await;
    let admin = admin.unwrap();
    assert_eq!(admin.role, Role::Admin);

    let e = s
        .update_user(&User {
            role: Role::Owner,
            ..admin.clone()
        })
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    assert_eq!(s.user(admin.id).await.unwrap().unwrap().role, Role::Admin);
    // Nor can the owner be demoted in place (that leaves no owner): transfer instead.
    let e = s
        .update_user(&User {
            role: Role::Admin,
            ..owner.clone()
        })
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    // The owner may update other fields.
    s.update_user(&User {
        name: Some("The Owner".into()),
        ..owner.clone()
    })
    .await
    .unwrap();

    // With the owner gone, someone may be made owner explicitly (an admin's recovery), once.
    s.delete_user(owner.id).await.unwrap();
    s.update_user(&User {
        role: Role::Owner,
        ..admin.clone()
    })
    .await
    .unwrap();
    let third = s
        .create_user(new_user("third"), OwnerBootstrap::Never)
        .await
        .unwrap();
    let e = s
        .update_user(&User {
            role: Role::Owner,
            ..third
        })
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    let owners: Vec<_> = s
        .users()
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.role == Role::Owner)
        .collect();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].id, admin.id);
}

both!(ownership_is_transferred_atomically);
async fn ownership_is_transferred_atomically(kind: Kind) {
    let t = Target::new(kind);
    let s = t.open().await;
    let owner = s
        .create_user(new_user("owner"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    let heir = s
        .create_user(new_user("heir"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    let other = s
        .create_user(new_user("other"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();

    let e = s.transfer_ownership(heir.id, other.id).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict(_)),
        "only the owner can hand over: {e:?}"
    );
    let e = s
        .transfer_ownership(owner.id, UserId(999))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    let e = s.transfer_ownership(owner.id, owner.id).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    assert_eq!(
        s.user(owner.id).await.unwrap().unwrap().role,
        Role::Owner,
        "failed transfers change nothing"
    );

    s.transfer_ownership(owner.id, heir.id).await.unwrap();
    assert_eq!(s.user(owner.id).await.unwrap().unwrap().role, Role::Admin);
    assert_eq!(s.user(heir.id).await.unwrap().unwrap().role, Role::Owner);
    assert_eq!(
        s.users()
            .await
            .unwrap()
            .iter()
            .filter(|u| u.role == Role::Owner)
            .count(),
        1
    );
    let e = s.transfer_ownership(owner.id, other.id).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict(_)),
        "the old owner no longer is: {e:?}"
    );
}

// ----- links -----

both!(links_are_one_to_one_both_ways);
async fn links_are_one_to_one_both_ways(kind: Kind) {
    let t = Target::new(kind);
    let s = t.open().await;
    let a = s
        .create_user(new_user("a"), OwnerBootstrap::Never)
        .await
        .unwrap();
    let b = s
        .create_user(new_user("b"), OwnerBootstrap::Never)
        .await
        .unwrap();

    // A pending link is stored but grants nothing yet.
    let la = link("hs-1", a.id, LinkState::Pending);
    assert_eq!(
        s.link_if_unclaimed(la.clone()).await.unwrap(),
        LinkOutcome::Linked
    );
    assert_eq!(s.link_of_user(a.id).await.unwrap(), Some(la.clone()));
    assert_eq!(
        s.link_of_headscale_user("hs-1").await.unwrap(),
        Some(la.clone())
    );
    assert_eq!(s.user(a.id).await.unwrap().unwrap().headscale_user_id, None);

    // The Headscale user is taken; the headgate user is taken.
    assert_eq!(
        s.link_if_unclaimed(link("hs-1", b.id, LinkState::Approved))
            .await
            .unwrap(),
        LinkOutcome::AlreadyLinkedToOther(a.id)
    );
    assert_eq!(
        s.link_if_unclaimed(link("hs-2", a.id, LinkState::Approved))
            .await
            .unwrap(),
        LinkOutcome::UserAlreadyLinked
    );
    assert_eq!(
        s.link_if_unclaimed(link("hs-1", a.id, LinkState::Approved))
            .await
            .unwrap(),
        LinkOutcome::UserAlreadyLinked
    );
    assert_eq!(s.link_of_headscale_user("hs-2").await.unwrap(), None);
    assert_eq!(s.link_of_user(b.id).await.unwrap(), None);
    assert_eq!(
        s.link_of_user(a.id).await.unwrap().unwrap().state,
        LinkState::Pending,
        "unchanged"
    );
    let e = s
        .link_if_unclaimed(link("hs-9", UserId(999), LinkState::Approved))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");

    // Approval grants it.
    let approved = s.approve_link(a.id).await.unwrap();
    assert_eq!(
        approved,
        Link {
            state: LinkState::Approved,
            ..la.clone()
        }
    );
    assert_eq!(
        s.user(a.id)
            .await
            .unwrap()
            .unwrap()
            .headscale_user_id
            .as_deref(),
        Some("hs-1")
    );
    assert!(matches!(
        s.approve_link(b.id).await,
        Err(StoreError::NotFound(_))
    ));

    // An approved link applies at once.
    let lb = link("hs-2", b.id, LinkState::Approved);
    assert_eq!(
        s.link_if_unclaimed(lb.clone()).await.unwrap(),
        LinkOutcome::Linked
    );
    assert_eq!(
        s.user(b.id)
            .await
            .unwrap()
            .unwrap()
            .headscale_user_id
            .as_deref(),
        Some("hs-2")
    );
    assert_eq!(s.links().await.unwrap(), vec![approved.clone(), lb.clone()]);

    // update_user cannot move a link around.
    let bu = s.user(b.id).await.unwrap().unwrap();
    s.update_user(&User {
        headscale_user_id: Some("hs-1".into()),
        ..bu
    })
    .await
    .unwrap();
    assert_eq!(
        s.user(b.id)
            .await
            .unwrap()
            .unwrap()
            .headscale_user_id
            .as_deref(),
        Some("hs-2")
    );

    // Removing frees both sides.
    assert_eq!(s.remove_link(a.id).await.unwrap(), Some(approved));
    assert_eq!(s.remove_link(a.id).await.unwrap(), None);
    assert_eq!(s.user(a.id).await.unwrap().unwrap().headscale_user_id, None);
    assert_eq!(s.link_of_headscale_user("hs-1").await.unwrap(), None);
    assert_eq!(
        s.link_if_unclaimed(link("hs-1", a.id, LinkState::Approved))
            .await
            .unwrap(),
        LinkOutcome::Linked
    );

    drop(s);
    let s = t.open().await;
    assert_eq!(s.links().await.unwrap().len(), 2);
    assert_eq!(s.link_of_user(b.id).await.unwrap(), Some(lb));
}

// ----- sessions -----

both!(sessions_round_trip_under_hashed_keys);
async fn sessions_round_trip_under_hashed_keys(kind: Kind) {
    let t = Target::new(kind);
    let s = t.open().await;
    let a = s
        .create_user(new_user("a"), OwnerBootstrap::Never)
        .await
        .unwrap();
    let b = s
        .create_user(new_user("b"), OwnerBootstrap::Never)
        .await
        .unwrap();

    let raw: &[u8] = b"RAW-SESSION-ID-3f9c1e7a-must-never-be-stored";
    let key = SessionKey::from_raw_id(raw);
    let rec = SessionRecord {
        idp_sid: Some("sid-marker-7781".into()),
        ..user_session(a.id, 10_000)
    };
    s.create_session(key, rec.clone()).await.unwrap();
    assert_eq!(s.session(&key).await.unwrap(), Some(rec.clone()));
    assert_eq!(
        s.session(&SessionKey::from_raw_id(b"other")).await.unwrap(),
        None
    );
    let e = s.create_session(key, rec.clone()).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    let e = s
        .create_session(SessionKey::from_raw_id(b"x"), user_session(UserId(999), 1))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");

    let a2 = SessionKey::from_raw_id(b"a-2");
    let b1 = SessionKey::from_raw_id(b"b-1");
    let k1 = SessionKey::from_raw_id(b"apikey-1");
    s.create_session(a2, user_session(a.id, 20_000))
        .await
        .unwrap();
    s.create_session(b1, user_session(b.id, 30_000))
        .await
        .unwrap();
    s.create_session(k1, api_key_session(40_000)).await.unwrap();

    let mut of_a = s.sessions_of_user(a.id).await.unwrap();
    of_a.sort_by_key(|(k, _)| *k);
    let mut want = vec![(key, rec.clone()), (a2, user_session(a.id, 20_000))];
    want.sort_by_key(|(k, _)| *k);
    assert_eq!(of_a, want);
    assert_eq!(s.sessions().await.unwrap().len(), 4);
    assert!(
        s.sessions()
            .await
            .unwrap()
            .contains(&(k1, api_key_session(40_000)))
    );

    // The raw id is not in the file (or the database); its hash and the record are.
    drop(s);
    let bytes = t.raw_bytes();
    assert!(
        contains(&bytes, b"sid-marker-7781"),
        "records are findable in the stored bytes"
    );
    assert!(
        contains(&bytes, key.as_bytes()) || contains(&bytes, key.to_hex().as_bytes()),
        "the hashed key is the key"
    );
    assert!(!contains(&bytes, raw), "the raw session id is stored");
    assert!(
        !contains(&bytes, b"RAW-SESSION-ID"),
        "part of the raw session id is stored"
    );
    let hex_raw: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        !contains(&bytes, hex_raw.as_bytes()),
        "the raw session id is stored (hex)"
    );
    let s = t.open().await;
    assert_eq!(
        s.session(&key).await.unwrap(),
        Some(rec.clone()),
        "sessions survive a reopen"
    );

    // touch: one batch, missing keys skipped, never backwards.
    let missing = SessionKey::from_raw_id(b"missing");
    s.touch_sessions(vec![(key, 500), (a2, 50), (missing, 900), (k1, 600)])
        .await
        .unwrap();
    assert_eq!(s.session(&key).await.unwrap().unwrap().last_seen, 500);
    assert_eq!(
        s.session(&a2).await.unwrap().unwrap().last_seen,
        100,
        "older time ignored"
    );
    assert_eq!(s.session(&k1).await.unwrap().unwrap().last_seen, 600);
    assert_eq!(
        s.session(&missing).await.unwrap(),
        None,
        "touch does not create"
    );
    s.touch_sessions(vec![]).await.unwrap();

    // update: a refresh with a new expiry (the expiry index follows).
    let refreshed = SessionRecord {
        expires: 50_000,
        refreshed: 700,
        id_token: None,
        ..rec.clone()
    };
    s.update_session(&key, refreshed.clone()).await.unwrap();
    assert_eq!(s.session(&key).await.unwrap(), Some(refreshed.clone()));
    let e = s
        .update_session(&missing, refreshed.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");

    // prune: expires <= now goes.
    assert_eq!(s.prune_expired(19_999).await.unwrap(), 0);
    assert_eq!(
        s.prune_expired(20_000).await.unwrap(),
        1,
        "a2 expires at 20000"
    );
    assert_eq!(s.session(&a2).await.unwrap(), None);
    assert_eq!(s.prune_expired(30_000).await.unwrap(), 1, "b1");
    assert_eq!(s.prune_expired(30_000).await.unwrap(), 0);
    assert!(
        s.session(&key).await.unwrap().is_some(),
        "its old expiry (10000) no longer counts"
    );
    assert!(s.session(&k1).await.unwrap().is_some());
    assert_eq!(s.sessions_of_user(b.id).await.unwrap(), vec![]);

    // delete one; delete all of a user.
    s.create_session(b1, user_session(b.id, 30_000))
        .await
        .unwrap();
    let b2 = SessionKey::from_raw_id(b"b-2");
    s.create_session(b2, user_session(b.id, 30_000))
        .await
        .unwrap();
    assert!(s.delete_session(&k1).await.unwrap());
    assert!(!s.delete_session(&k1).await.unwrap());
    assert_eq!(s.delete_sessions_of_user(b.id).await.unwrap(), 2);
    assert_eq!(s.delete_sessions_of_user(b.id).await.unwrap(), 0);
    assert_eq!(s.sessions().await.unwrap(), vec![(key, refreshed)]);
    assert_eq!(s.prune_expired(i64::MAX).await.unwrap(), 1);
    assert_eq!(s.sessions().await.unwrap(), vec![]);
}

// ----- audit -----

both!(audit_is_newest_first_and_pages);
async fn audit_is_newest_first_and_pages(kind: Kind) {
    let t = Target::new(kind);
    let s = t.open().await;
    assert_eq!(s.audit(10, None).await.unwrap(), vec![]);
    s.append_audit((1..=3).map(|i| event(i, &format!("a{i}"))).collect())
        .await
        .unwrap();
    s.append_audit(vec![]).await.unwrap();
    s.append_audit((4..=7).map(|i| event(i, &format!("a{i}"))).collect())
        .await
        .unwrap();

    let all = s.audit(100, None).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["a7", "a6", "a5", "a4", "a3", "a2", "a1"]
    );
    assert!(
        all.windows(2).all(|w| w[0].id > w[1].id),
        "ids increase with appends"
    );
    assert_eq!(
        all[6],
        AuditEvent {
            id: all[6].id,
            at: 1,
            actor: "user 1".into(),
            action: "a1".into(),
            target: "user 2".into(),
            detail: "{}".into()
        }
    );

    let page1 = s.audit(3, None).await.unwrap();
    assert_eq!(page1, all[..3]);
    let page2 = s.audit(3, Some(page1[2].id)).await.unwrap();
    assert_eq!(page2, all[3..6]);
    let page3 = s.audit(3, Some(page2[2].id)).await.unwrap();
    assert_eq!(page3, all[6..]);
    assert_eq!(s.audit(3, Some(page3[0].id)).await.unwrap(), vec![]);
    assert_eq!(s.audit(0, None).await.unwrap(), vec![]);

    drop(s);
    let s = t.open().await;
    s.append_audit(vec![event(8, "a8")]).await.unwrap();
    let top = s.audit(1, None).await.unwrap();
    assert_eq!(top[0].action, "a8");
    assert!(top[0].id > all[0].id, "ids continue after a reopen");
}

// ----- files it must not touch -----

#[test]
fn a_second_open_of_the_same_file_is_refused_at_once() {
    let dir = harness::tempdir();
    let path = db_path(&dir);
    let first = open(&path);
    let t = Instant::now();
    let e = Store::open_redb(&path, CACHE).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        matches!(&e, StoreError::Locked { path: p } if p == &path),
        "{e:?}"
    );
    assert!(
        e.to_string().contains(&format!(
            "another headgate process is using {}",
            path.display()
        )),
        "{e}"
    );
    drop(first);
    open(&path);
}

#[test]
fn a_file_held_by_another_process_is_refused_at_once() {
    let dir = harness::tempdir();
    let path = db_path(&dir);
    let mut child = child_test("lock_holder_child", "HEADGATE_TEST_STORE_LOCK_DB", &path);
    child.wait_for_line(Duration::from_secs(60), |l| l == "OPEN");

    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.clone();
    std::thread::spawn(move || {
        let t = Instant::now();
        let r = Store::open_redb(&p, CACHE).map(|_| ());
        let _ = tx.send((r, t.elapsed()));
    });
    let (r, took) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("opening a locked file hangs");
    let e = r.unwrap_err();
    assert!(matches!(&e, StoreError::Locked { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with(&format!(
            "another headgate process is using {}",
            path.display()
        )),
        "{e}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");

    child.kill();
    open(&path);
}

#[ignore = "child process of a_file_held_by_another_process_is_refused_at_once; runs only when spawned by it"]
#[test]
fn lock_holder_child() {
    let path = std::env::var_os("HEADGATE_TEST_STORE_LOCK_DB").expect(
        "HEADGATE_TEST_STORE_LOCK_DB is not set: this test only runs as a child of another test",
    );
    let _s = open(Path::new(&path));
    println!("OPEN");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_file_that_is_not_a_store_is_refused_and_left_alone() {
    let dir = harness::tempdir();
    for (name, content) in [
        ("text.redb", b"hello, I am not a database\n".to_vec()),
        (
            "noise.redb",
            (0..20_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
        ("fake-magic.redb", {
            let mut v = b"redb\x1a\x0a\xa9\x0d\x0a".to_vec();
            v.resize(8192, 0x42);
            v
        }),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &content).unwrap();
        let e = Store::open_redb(&path, CACHE).unwrap_err();
        let StoreError::Corrupt { path: p, .. } = &e else {
            panic!("{name}: {e:?}")
        };
        assert_eq!(p, &path);
        assert!(
            e.to_string().starts_with(&format!(
                "{} is not a readable headgate store",
                path.display()
            )),
            "{e}"
        );
        assert!(
            std::fs::read(&path).unwrap() == content,
            "{name} was modified"
        );
    }
}

// ----- kill -9 -----

#[test]
fn every_acknowledged_write_survives_kill_9() {
    for round in 0..5 {
        let dir = harness::tempdir();
        let path = db_path(&dir);
        let mut child = child_test("kill9_child_writer", "HEADGATE_TEST_STORE_KILL9_DB", &path);
        child.wait_for_line(Duration::from_secs(60), |l| l.starts_with("ACK "));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        std::thread::sleep(Duration::from_millis(20 + u64::from(nanos % 400)));
        child.kill();
        std::thread::sleep(Duration::from_millis(200)); // let the reader threads drain the pipe
        let acked: Vec<u64> = child
            .output()
            .lines()
            .filter_map(|l| l.strip_prefix("ACK ")?.trim().parse().ok())
            .collect();
        assert!(!acked.is_empty());
        assert!(
            acked.windows(2).all(|w| w[1] == w[0] + 1),
            "ACKs in order: {acked:?}"
        );
        let last = *acked.last().unwrap();

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = Store::open_redb(&path, CACHE)
                .unwrap_or_else(|e| panic!("round {round}: reopening after kill -9: {e}"));
            let user = s
                .user_by_subject("writer")
                .await
                .unwrap()
                .expect("the writer's user");
            for i in 0..=last {
                let got = s.session(&kill9_key(i)).await.unwrap();
                let got = got.unwrap_or_else(|| {
                    panic!("round {round}: acknowledged session {i} of {last} is lost")
                });
                let want = kill9_record(user.id, i);
                assert_eq!(
                    got,
                    SessionRecord {
                        last_seen: got.last_seen,
                        ..want
                    },
                    "session {i}"
                );
                assert!(got.last_seen >= want.last_seen);
            }
            // Every record decodes, including any written after the last ACK.
            let sessions = s.sessions().await.unwrap();
            assert!(sessions.len() as u64 > last);
            assert_eq!(
                s.sessions_of_user(user.id).await.unwrap().len(),
                sessions.len()
            );
            let audit = s.audit(usize::MAX, None).await.unwrap();
            assert!(
                audit.len() as u64 > last,
                "round {round}: {} audit events for {last} ACKs",
                audit.len()
            );
            for i in 0..=last {
                assert!(
                    audit.iter().any(|e| e.action == format!("write-{i}")),
                    "audit event {i} lost"
                );
            }
            assert_eq!(s.users().await.unwrap().len(), 1);
            eprintln!(
                "round {round}: {} acknowledged, {} sessions after kill -9",
                last + 1,
                sessions.len()
            );
        });
    }
}

fn kill9_key(i: u64) -> SessionKey {
    SessionKey::from_raw_id(format!("kill9-raw-{i}").as_bytes())
}

fn kill9_record(user: UserId, i: u64) -> SessionRecord {
    let i = i as i64;
    SessionRecord {
        subject: SessionSubject::User(user),
        created: i,
        expires: 1_000_000 + i,
        last_seen: i,
        idp_sid: Some(format!("sid-{i}")),
        id_token: Some("x".repeat(200 + (i as usize % 500))),
        refresh_token_enc: Some(vec![i as u8; 64]),
        refreshed: i,
    }
}

#[ignore = "child process of the kill -9 test; runs only when spawned by it"]
#[tokio::test]
async fn kill9_child_writer() {
    let path = std::env::var_os("HEADGATE_TEST_STORE_KILL9_DB")
        .expect("HEADGATE_TEST_STORE_KILL9_DB is not set: this test only runs as a child of the kill -9 test");
    let s = open(Path::new(&path));
    let user = s
        .create_user(new_user("writer"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    for i in 0u64.. {
        s.create_session(kill9_key(i), kill9_record(user.id, i))
            .await
            .unwrap();
        s.append_audit(vec![event(i as i64, &format!("write-{i}"))])
            .await
            .unwrap();
        if i % 4 == 3 {
            let batch = (i.saturating_sub(10)..=i)
                .map(|j| (kill9_key(j), (i + 1) as i64))
                .collect();
            s.touch_sessions(batch).await.unwrap();
        }
        println!("ACK {i}");
    }
}

both!(rate_limit_counters_count_within_the_window_and_are_pruned);
async fn rate_limit_counters_count_within_the_window_and_are_pruned(kind: Kind) {
    let t = Target::new(kind);
    let store = t.open().await;
    for t in [100, 200, 300] {
        store
            .record_failure("api_key_login:10.0.0.1", t, 600)
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .failures("api_key_login:10.0.0.1", 300, 600)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .failures("api_key_login:10.0.0.1", 750, 600)
            .await
            .unwrap(),
        2,
        "t=200 and t=300 are within 600 s of 750"
    );
    store
        .record_failure("api_key_login:10.0.0.2", 1000, 600)
        .await
        .unwrap();
    // At 1000 the first client's newest failure (300) is older than the window: its row goes, the other stays.
    assert_eq!(store.prune_rate_limits(1000, 600).await.unwrap(), 1);
    assert_eq!(
        store
            .failures("api_key_login:10.0.0.1", 1000, 600)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .failures("api_key_login:10.0.0.2", 1000, 600)
            .await
            .unwrap(),
        1
    );
    store
        .clear_failures("api_key_login:10.0.0.2")
        .await
        .unwrap();
    assert_eq!(
        store
            .failures("api_key_login:10.0.0.2", 1000, 600)
            .await
            .unwrap(),
        0
    );
}

// ----- signing keys (S15), on both backends -----

both!(signing_key_transitions_are_consistent);
async fn signing_key_transitions_are_consistent(kind: Kind) {
    let t = Target::new(kind);
    let store = t.open().await;
    let key = |kid: &str| SigningKey {
        kid: kid.into(),
        created: 100,
        state: SigningKeyState::Next,
        public_jwk: "{}".into(),
        private_enc: vec![1, 2, 3],
        published: None,
        activated: None,
        retired: None,
        revoked: None,
    };
    store.put_signing_key(key("a")).await.unwrap();
    assert!(matches!(
        store.put_signing_key(key("a")).await,
        Err(StoreError::Conflict(_))
    ));
    let a = store
        .set_signing_key_state("a", SigningKeyState::Current, 110)
        .await
        .unwrap();
    assert_eq!((a.activated, a.published), (Some(110), Some(110)));
    store.put_signing_key(key("b")).await.unwrap();
    let b = store.mark_signing_key_published("b", 120).await.unwrap();
    assert_eq!(b.published, Some(120));
    assert_eq!(
        store
            .mark_signing_key_published("b", 130)
            .await
            .unwrap()
            .published,
        Some(120)
    );
    store
        .set_signing_key_state("b", SigningKeyState::Current, 140)
        .await
        .unwrap();
    let all = store.signing_keys().await.unwrap();
    assert_eq!(
        all.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(
        (all[0].state, all[0].retired),
        (SigningKeyState::Retired, Some(140))
    );
    assert_eq!(all[1].state, SigningKeyState::Current);
    for (kid, to) in [
        ("a", SigningKeyState::Current),
        ("a", SigningKeyState::Next),
        ("b", SigningKeyState::Next),
    ] {
        assert!(
            matches!(
                store.set_signing_key_state(kid, to, 150).await,
                Err(StoreError::Conflict(_))
            ),
            "{kid} → {to}"
        );
    }
    assert_eq!(store.signing_keys().await.unwrap(), all);
    let r = store
        .set_signing_key_state("a", SigningKeyState::Revoked, 160)
        .await
        .unwrap();
    assert!(r.private_enc.is_empty() && r.revoked == Some(160));
    assert!(matches!(
        store.reseal_signing_key("a", vec![9]).await,
        Err(StoreError::Conflict(_))
    ));
    store.reseal_signing_key("b", vec![9, 9]).await.unwrap();
    assert!(matches!(
        store
            .set_signing_key_state("zz", SigningKeyState::Retired, 170)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.delete_signing_key("a").await.unwrap());
    assert!(!store.delete_signing_key("a").await.unwrap());
    let left = store.signing_keys().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].private_enc, vec![9, 9]);
    drop(store);
    let store = t.open().await;
    assert_eq!(store.signing_keys().await.unwrap(), left);
}

// ----- PostgreSQL: several replicas on one database -----

/// `n` stores ("replicas") on one new PostgreSQL database.
async fn replicas(n: usize) -> (Target, Vec<Store>) {
    let t = Target::new(Kind::Postgres);
    let mut stores = Vec::new();
    for _ in 0..n {
        stores.push(t.open().await);
    }
    (t, stores)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_migrations_run_once_when_replicas_start_at_once() {
    let t = Target::new(Kind::Postgres);
    let url = t.url();
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Store::open_postgres(&pg_config(&url)).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().unwrap());
    }
    for s in &stores {
        assert_eq!(s.schema_version().await.unwrap(), SCHEMA_VERSION);
        assert!(s.is_shared());
        assert!(
            s.location().starts_with("PostgreSQL database hg_"),
            "{}",
            s.location()
        );
    }
    let applied = PgServer::shared().sql(
        t.db.as_deref().unwrap(),
        "SELECT count(*), max(version) FROM headgate_schema",
    );
    assert_eq!(
        applied[0],
        [
            Some(SCHEMA_VERSION.to_string()),
            Some(SCHEMA_VERSION.to_string())
        ],
        "each migration applied once"
    );
    // A database a newer headgate set up is refused, and left alone.
    drop(stores);
    PgServer::shared().sql(
        t.db.as_deref().unwrap(),
        &format!(
            "INSERT INTO headgate_schema (version) VALUES ({})",
            SCHEMA_VERSION + 1
        ),
    );
    let e = Store::open_postgres(&pg_config(&url)).await.unwrap_err();
    assert!(
        matches!(e, StoreError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1),
        "{e:?}"
    );
    assert!(e.to_string().contains("newer headgate"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_rules_hold_across_replicas() {
    let (_t, stores) = replicas(3).await;
    // 12 concurrent first sign-ins spread over three replicas: exactly one owner.
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let s = stores[i % 3].clone();
            tokio::spawn(async move {
                s.create_user(new_user(&format!("u{i}")), OwnerBootstrap::FirstUser)
                    .await
            })
        })
        .collect();
    let mut users = Vec::new();
    for t in tasks {
        users.push(t.await.unwrap().unwrap());
    }
    assert_eq!(users.iter().filter(|u| u.role == Role::Owner).count(), 1);
    let all = stores[1].users().await.unwrap();
    assert_eq!(all.len(), 12);
    assert_eq!(all.iter().filter(|u| u.role == Role::Owner).count(), 1);

    // One Headscale user claimed by several people at once on different replicas: one link.
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let s = stores[i % 3].clone();
            let uid = users[i].id;
            tokio::spawn(async move {
                s.link_if_unclaimed(link("hs-x", uid, LinkState::Approved))
                    .await
            })
        })
        .collect();
    let mut linked = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            LinkOutcome::Linked => linked += 1,
            LinkOutcome::AlreadyLinkedToOther(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(linked, 1);
    assert_eq!(stores[2].links().await.unwrap().len(), 1);

    // No second owner, whichever replica asks.
    let not_owner = all.iter().find(|u| u.role != Role::Owner).unwrap();
    let e = stores[2]
        .update_user(&User {
            role: Role::Owner,
            ..not_owner.clone()
        })
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");

    // Failures counted from every replica at once: each count is one more than the last.
    let tasks: Vec<_> = (0..15)
        .map(|i| {
            let s = stores[i % 3].clone();
            tokio::spawn(
                async move { s.record_failure("api_key_login:10.9.9.9", 1_000, 600).await },
            )
        })
        .collect();
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap().unwrap());
    }
    counts.sort();
    assert_eq!(counts, (1..=15).collect::<Vec<u32>>());

    // Two replicas making different keys current at once: one current key.
    for kid in ["k1", "k2", "k3"] {
        stores[0]
            .put_signing_key(SigningKey {
                kid: kid.into(),
                created: 1,
                state: SigningKeyState::Next,
                public_jwk: "{}".into(),
                private_enc: vec![1],
                published: None,
                activated: None,
                retired: None,
                revoked: None,
            })
            .await
            .unwrap();
    }
    let tasks: Vec<_> = ["k1", "k2", "k3"]
        .into_iter()
        .enumerate()
        .map(|(i, kid)| {
            let s = stores[i].clone();
            tokio::spawn(async move {
                s.set_signing_key_state(kid, SigningKeyState::Current, 10)
                    .await
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await.unwrap();
    }
    let keys = stores[1].signing_keys().await.unwrap();
    assert_eq!(
        keys.iter()
            .filter(|k| k.state == SigningKeyState::Current)
            .count(),
        1,
        "{keys:?}"
    );
}

/// Poll `f` until it is true; returns how long it took, or panics after `within`.
async fn until(within: Duration, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let t = Instant::now();
    loop {
        if f().await {
            return t.elapsed();
        }
        assert!(t.elapsed() < within, "not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cache_changes_reach_other_replicas_and_entries_have_a_hard_lifetime() {
    let (t, stores) = replicas(2).await;
    let (a, b) = (&stores[0], &stores[1]);
    let db = t.db.clone().unwrap();
    assert_eq!(
        a.cache_state_for_test(),
        Some((true, 0)),
        "listening at open"
    );
    let user = a
        .create_user(new_user("alice"), OwnerBootstrap::Never)
        .await
        .unwrap();
    let key = SessionKey::from_raw_id(b"cache-session");
    b.create_session(key, user_session(user.id, i64::MAX))
        .await
        .unwrap();

    // Cached on a; revoked on b: a sees it by the notification, well before the hard lifetime.
    assert!(a.session(&key).await.unwrap().is_some());
    assert!(a.cache_state_for_test().unwrap().1 >= 1, "it is cached");
    assert!(b.delete_session(&key).await.unwrap());
    let took = until(CACHE_LIFETIME * 2, async || {
        a.session(&key).await.unwrap().is_none()
    })
    .await;
    assert!(took < Duration::from_millis(800), "took {took:?}");

    // A role change, likewise.
    assert_eq!(a.user(user.id).await.unwrap().unwrap().role, Role::Member);
    b.update_user(&User {
        role: Role::Auditor,
        ..user.clone()
    })
    .await
    .unwrap();
    let took = until(CACHE_LIFETIME * 2, async || {
        a.user(user.id).await.unwrap().unwrap().role == Role::Auditor
    })
    .await;
    assert!(took < Duration::from_millis(800), "took {took:?}");

    // A change nobody announced (written behind headgate's back, as if the notification were lost) is
    // still seen once the entry's hard lifetime is over.
    assert_eq!(a.user(user.id).await.unwrap().unwrap().role, Role::Auditor);
    PgServer::shared().sql(
        &db,
        &format!(
            "UPDATE headgate_users SET record = jsonb_set(record, '{{role}}', '\"viewer\"') WHERE id = {}",
            user.id
        ),
    );
    assert_eq!(
        a.user(user.id).await.unwrap().unwrap().role,
        Role::Auditor,
        "served from the cache"
    );
    let took = until(CACHE_LIFETIME * 3, async || {
        a.user(user.id).await.unwrap().unwrap().role == Role::Viewer
    })
    .await;
    assert!(
        took <= CACHE_LIFETIME + Duration::from_millis(300),
        "took {took:?}"
    );

    // The notification connection is killed: the cache is flushed (and off until it listens again), and a
    // revocation made meanwhile is refused at once.
    b.create_session(key, user_session(user.id, i64::MAX))
        .await
        .unwrap();
    assert!(a.session(&key).await.unwrap().is_some());
    assert!(PgServer::shared().terminate(&db, "headgate-listen") >= 2);
    assert!(b.delete_session(&key).await.unwrap());
    let took = until(CACHE_LIFETIME + Duration::from_millis(500), async || {
        a.session(&key).await.unwrap().is_none()
    })
    .await;
    assert!(took <= CACHE_LIFETIME, "took {took:?}");
    // It listens again by itself.
    until(Duration::from_secs(10), async || {
        a.cache_state_for_test().unwrap().0
    })
    .await;
    b.create_session(key, user_session(user.id, i64::MAX))
        .await
        .unwrap();
    assert!(a.session(&key).await.unwrap().is_some());
    b.delete_sessions_of_user(user.id).await.unwrap();
    let took = until(CACHE_LIFETIME * 2, async || {
        a.session(&key).await.unwrap().is_none()
    })
    .await;
    assert!(took < Duration::from_millis(800), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fails_closed_while_the_server_is_down_and_recovers() {
    let server = PgServer::start();
    let db = server.database();
    let url = format!(
        "postgresql://postgres:NotThePassword@127.0.0.1:{}/{db}",
        server.port
    );
    let cfg = headgate::config::PostgresConfig {
        connect_timeout: 2,
        ..pg_config(&url)
    };
    let s = Store::open_postgres(&cfg).await.unwrap();
    let user = s
        .create_user(new_user("alice"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    let key = SessionKey::from_raw_id(b"s");
    s.create_session(key, user_session(user.id, i64::MAX))
        .await
        .unwrap();
    assert!(s.session(&key).await.unwrap().is_some());

    server.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let e = s.session(&key).await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("store.url"), "{msg}");
        assert!(!msg.contains("NotThePassword"), "{msg}");
        assert!(s.user(user.id).await.is_err());
    }
    assert_eq!(
        s.cache_state_for_test(),
        Some((false, 0)),
        "flushed and off"
    );

    server.start_again();
    let took = until(Duration::from_secs(20), async || {
        s.session(&key).await.is_ok()
    })
    .await;
    eprintln!("recovered {took:?} after PostgreSQL came back");
    assert!(s.session(&key).await.unwrap().is_some());
    assert_eq!(s.user(user.id).await.unwrap().unwrap().role, Role::Owner);
    until(Duration::from_secs(10), async || {
        s.cache_state_for_test().unwrap().0
    })
    .await;
}

#[tokio::test]
async fn postgres_unreachable_is_reported_naming_store_url_without_the_password() {
    let port = harness::free_port();
    let cfg = headgate::config::PostgresConfig {
        connect_timeout: 2,
        ..pg_config(&format!(
            "postgresql://headgate:Sup3rSecretPw@127.0.0.1:{port}/headgate"
        ))
    };
    let t = Instant::now();
    let e = Store::open_postgres(&cfg).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let msg = e.to_string();
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    assert!(
        msg.contains("store.url") && msg.contains(&format!("127.0.0.1:{port}")),
        "{msg}"
    );
    assert!(!msg.contains("Sup3rSecretPw"), "{msg}");
}

#[tokio::test]
async fn postgres_over_a_unix_socket() {
    let server = PgServer::shared();
    let db = server.database();
    let s = Store::open_postgres(&pg_config(&server.socket_url(&db)))
        .await
        .unwrap();
    s.create_user(new_user("a"), OwnerBootstrap::Never)
        .await
        .unwrap();
    assert_eq!(s.users().await.unwrap().len(), 1);
    assert!(s.location().contains(".s.PGSQL."), "{}", s.location());
}

// ----- copying a store into the other backend -----

/// A store with one of everything: owner and members, links (approved, pending), user and API-key sessions,
/// signing keys in every state, audit events, rate-limit rows.
pub async fn populate(s: &Store) {
    let owner = s
        .create_user(new_user("owner"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    let mut ids = vec![owner.id];
    for i in 0..4 {
        let u = s
            .create_user(
                NewUser {
                    role: [Role::Admin, Role::Viewer, Role::Auditor, Role::Member][i],
                    ..new_user(&format!("user-{i}"))
                },
                OwnerBootstrap::FirstUser,
            )
            .await
            .unwrap();
        ids.push(u.id);
    }
    // A deleted user: its id is never handed out again, in either backend.
    s.delete_user(ids.pop().unwrap()).await.unwrap();
    s.link_if_unclaimed(link("hs-1", ids[0], LinkState::Approved))
        .await
        .unwrap();
    s.link_if_unclaimed(link("hs-2", ids[1], LinkState::Pending))
        .await
        .unwrap();
    for (i, id) in ids.iter().enumerate() {
        s.create_session(
            SessionKey::from_raw_id(format!("session-{i}").as_bytes()),
            user_session(*id, 50_000 + i as i64),
        )
        .await
        .unwrap();
    }
    s.create_session(SessionKey::from_raw_id(b"api"), api_key_session(60_000))
        .await
        .unwrap();
    for (kid, state) in [
        ("k-old", SigningKeyState::Current),
        ("k-cur", SigningKeyState::Current),
        ("k-next", SigningKeyState::Next),
        ("k-bad", SigningKeyState::Revoked),
    ] {
        s.put_signing_key(SigningKey {
            kid: kid.into(),
            created: 7,
            state: SigningKeyState::Next,
            public_jwk: format!("{{\"kid\":\"{kid}\"}}"),
            private_enc: kid.as_bytes().to_vec(),
            published: None,
            activated: None,
            retired: None,
            revoked: None,
        })
        .await
        .unwrap();
        if state != SigningKeyState::Next {
            s.set_signing_key_state(kid, state, 9).await.unwrap();
        }
    }
    s.append_audit((0..5).map(|i| event(i, &format!("act-{i}"))).collect())
        .await
        .unwrap();
    s.record_failure("api_key_login:10.1.1.1", 100, 600)
        .await
        .unwrap();
    s.record_failure("api_key_login:10.1.1.1", 150, 600)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_copies_into_the_other_backend_with_everything_preserved() {
    let redb = Target::new(Kind::Redb);
    let src = redb.open().await;
    populate(&src).await;
    let snap = src.export().await.unwrap();
    assert_eq!(snap.users.len(), 4);
    assert_eq!(snap.next_user_id, 6, "the deleted user's id stays used");
    assert!(snap.bootstrapped);
    assert_eq!(
        (
            snap.links.len(),
            snap.sessions.len(),
            snap.signing_keys.len()
        ),
        (2, 5, 4)
    );
    assert_eq!((snap.audit.len(), snap.rate_limits.len()), (5, 1));

    // redb → PostgreSQL: the same snapshot comes back out.
    let pg = Target::new(Kind::Postgres);
    let dst = pg.open().await;
    assert_eq!(dst.import(snap.clone()).await.unwrap(), snap.rows());
    let back = dst.export().await.unwrap();
    assert_eq!(back, snap);
    // …and it works as a store: the rules and counters carry over.
    let next = dst
        .create_user(new_user("newcomer"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    assert_eq!(
        (next.id, next.role),
        (UserId(6), Role::Member),
        "ids continue; bootstrapped"
    );
    assert_eq!(
        dst.user_by_subject("owner")
            .await
            .unwrap()
            .unwrap()
            .headscale_user_id
            .as_deref(),
        Some("hs-1")
    );
    dst.append_audit(vec![event(9, "after")]).await.unwrap();
    assert_eq!(dst.audit(1, None).await.unwrap()[0].id, 6);
    assert_eq!(
        dst.failures("api_key_login:10.1.1.1", 200, 600)
            .await
            .unwrap(),
        2
    );
    // A target that holds anything is refused, and left as it was.
    let e = dst.import(snap.clone()).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    let e = src.import(snap.clone()).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    assert_eq!(dst.users().await.unwrap().len(), 5);

    // PostgreSQL → a redb file (the PostgreSQL store's backup): the same again.
    let file = redb.dir.path().join("from-pg.redb");
    let pg_snap = dst.export().await.unwrap();
    assert_eq!(dst.backup_to(&file).await.unwrap(), pg_snap.rows());
    assert!(
        dst.backup_to(&file).await.is_err(),
        "an existing file is refused"
    );
    let copy = Store::open_redb(&file, CACHE).unwrap();
    assert_eq!(copy.export().await.unwrap(), pg_snap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verifies_the_server_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let srv_key = KeyPair::generate().unwrap();
    let srv = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&srv_key, &issuer)
        .unwrap();
    let server = PgServer::start_tls(&srv.pem(), &srv_key.serialize_pem());
    let db = server.database();
    let dir = harness::tempdir();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();

    // An unknown CA: refused, and the message says what to do.
    let url = format!("{}?sslmode=require", server.url(&db));
    let e = Store::open_postgres(&pg_config(&url)).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    assert!(msg.contains("store.tls_ca_path"), "{msg}");

    // Its CA trusted: TLS, for the pool and the listener alike (sslmode=require and the default, prefer).
    for url in [url.clone(), server.url(&db)] {
        let s = Store::open_postgres(&headgate::config::PostgresConfig {
            tls_ca_path: Some(ca_path.clone()),
            ..pg_config(&url)
        })
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
        s.create_user(new_user(&format!("u-{}", url.len())), OwnerBootstrap::Never)
            .await
            .unwrap();
        let rows = server.sql(
            "postgres",
            &format!(
                "SELECT count(*), bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.datname = '{db}' AND a.application_name IN ('headgate', 'headgate-listen')"
            ),
        );
        assert_eq!(rows[0][1].as_deref(), Some("t"), "{rows:?}");
        assert_ne!(rows[0][0].as_deref(), Some("0"));
    }
}

both!(a_session_view_reads_the_session_its_person_and_their_link_at_once);
async fn a_session_view_reads_the_session_its_person_and_their_link_at_once(kind: Kind) {
    let t = Target::new(kind);
    let s = t.open().await;
    let alice = s
        .create_user(new_user("alice"), OwnerBootstrap::Never)
        .await
        .unwrap();
    let bob = s
        .create_user(new_user("bob"), OwnerBootstrap::Never)
        .await
        .unwrap();
    s.link_if_unclaimed(link("7", alice.id, LinkState::Approved))
        .await
        .unwrap();
    let (ka, kb, kk) = (
        SessionKey([1; 32]),
        SessionKey([2; 32]),
        SessionKey([3; 32]),
    );
    // Many sessions in one transaction; a taken key or an unknown user refuses the whole batch.
    s.create_sessions(vec![
        (ka, user_session(alice.id, 2_000)),
        (kb, user_session(bob.id, 2_000)),
        (kk, api_key_session(900)),
    ])
    .await
    .unwrap();
    assert!(matches!(
        s.create_sessions(vec![
            (SessionKey([4; 32]), user_session(bob.id, 2_000)),
            (ka, user_session(alice.id, 2_000)),
        ])
        .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_sessions(vec![(SessionKey([5; 32]), user_session(UserId(99), 2_000))])
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(s.session(&SessionKey([4; 32])).await.unwrap().is_none());

    let v = s.session_view(&ka).await.unwrap().expect("alice's session");
    assert_eq!(v.record, user_session(alice.id, 2_000));
    assert_eq!(v.user.as_ref().map(|u| u.id), Some(alice.id));
    assert_eq!(v.link, Some(link("7", alice.id, LinkState::Approved)));
    let v = s.session_view(&kb).await.unwrap().expect("bob's session");
    assert_eq!(
        (v.user.as_ref().map(|u| u.id), v.link.clone()),
        (Some(bob.id), None)
    );
    // Read again: the same (cached) view; any write makes the next read see the change.
    let again = s.session_view(&kb).await.unwrap().unwrap();
    if matches!(kind, Kind::Redb) {
        assert!(std::sync::Arc::ptr_eq(&v, &again));
    } else {
        assert_eq!(v.record, again.record);
    }
    s.link_if_unclaimed(link("8", bob.id, LinkState::Pending))
        .await
        .unwrap();
    let after = s.session_view(&kb).await.unwrap().unwrap();
    assert_eq!(after.link, Some(link("8", bob.id, LinkState::Pending)));
    let mut bob_admin = after.user.clone().unwrap();
    bob_admin.role = Role::Admin;
    s.update_user(&bob_admin).await.unwrap();
    assert_eq!(
        s.session_view(&kb)
            .await
            .unwrap()
            .unwrap()
            .user
            .as_ref()
            .map(|u| u.role),
        Some(Role::Admin)
    );
    assert!(s.delete_session(&kb).await.unwrap());
    assert!(s.session_view(&kb).await.unwrap().is_none());
    let v = s
        .session_view(&kk)
        .await
        .unwrap()
        .expect("the API-key session");
    assert!(v.user.is_none() && v.link.is_none());
    assert!(
        s.session_view(&SessionKey([9; 32]))
            .await
            .unwrap()
            .is_none()
    );

    // Counted on the expiry index (bob's session is gone); API-key sessions listed without loading every
    // record.
    assert_eq!(s.count_live_sessions(899).await.unwrap(), 2);
    assert_eq!(s.count_live_sessions(900).await.unwrap(), 1);
    assert_eq!(s.count_live_sessions(2_000).await.unwrap(), 0);
    assert_eq!(
        s.api_key_sessions().await.unwrap(),
        vec![(kk, "hskey-abc".to_string())]
    );

    // The test hook fails this read like every other per-request read.
    s.fail_reads_for_test(true);
    assert!(s.session_view(&ka).await.is_err());
}

/// Another replica on the same database for PostgreSQL; the same store for redb (one process per file).
async fn replica(t: &Target, s: &Store) -> Store {
    match t.kind {
        Kind::Postgres => t.open().await,
        Kind::Redb => s.clone(),
    }
}

/// The sign-in's write of an existing user, given the copy it read first (as `auth::upsert_user` does).
/// Before the fix this was `update_user` of the read copy with the new fields, which fails the test below.
async fn sign_in_write(s: &Store, read: &User, name: &str, at: i64) -> User {
    let done = s
        .record_sign_in(
            read.id,
            SignIn {
                email: read.email.clone(),
                email_verified: read.email_verified,
                name: Some(name.into()),
                picture: read.picture.clone(),
                at,
                role_from_idp: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(done.role_changed_from, None);
    assert_eq!(s.user(read.id).await.unwrap().unwrap(), done.user);
    done.user
}

both!(a_sign_in_never_undoes_a_role_change_made_meanwhile);
async fn a_sign_in_never_undoes_a_role_change_made_meanwhile(kind: Kind) {
    let t = Target::new(kind);
    let s = t.open().await;
    let admin_side = &replica(&t, &s).await;
    s.create_user(new_user("owner"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    let alice = s
        .create_user(
            NewUser {
                role: Role::Admin,
                ..new_user("alice")
            },
            OwnerBootstrap::FirstUser,
        )
        .await
        .unwrap();
    // 1. Alice's sign-in reads her record (still admin).
    let read = s.user_by_subject("alice").await.unwrap().unwrap();
    assert_eq!(read.role, Role::Admin);
    // 2. Meanwhile an admin demotes her.
    let demoted = admin_side
        .set_role(alice.id, Role::Viewer, Some(Role::Admin))
        .await
        .unwrap();
    assert_eq!(demoted.role, Role::Viewer);
    // 3. The sign-in writes what it came for.
    let after = sign_in_write(&s, &read, "Alice Renamed", 5_000).await;
    assert_eq!(after.role, Role::Viewer, "the sign-in undid the demotion");
    assert_eq!(after.name.as_deref(), Some("Alice Renamed"));
    assert_eq!(after.last_login, 5_000);
    for h in [&s, admin_side] {
        let u = h.user(alice.id).await.unwrap().unwrap();
        assert_eq!((u.role, u.last_login), (Role::Viewer, 5_000));
    }
}

both!(the_idp_role_applies_to_the_role_stored_at_the_write);
async fn the_idp_role_applies_to_the_role_stored_at_the_write(kind: Kind) {
    let t = Target::new(kind);
    let s = t.open().await;
    let owner = s
        .create_user(new_user("owner"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    let bob = s
        .create_user(new_user("bob"), OwnerBootstrap::Never)
        .await
        .unwrap();
    let sign_in = |role_from_idp, at| SignIn {
        email: Some("bob@new.example.com".into()),
        email_verified: true,
        name: Some("Bob".into()),
        picture: Some("https://pics.example.com/bob".into()),
        at,
        role_from_idp,
    };
    // The claim's role applies, and says what it replaced.
    let done = s
        .record_sign_in(bob.id, sign_in(Some(Role::Auditor), 2_000))
        .await
        .unwrap();
    assert_eq!(done.role_changed_from, Some(Role::Member));
    assert_eq!(done.user.role, Role::Auditor);
    assert_eq!(done.user.email.as_deref(), Some("bob@new.example.com"));
    assert_eq!(
        done.user.picture.as_deref(),
        Some("https://pics.example.com/bob")
    );
    assert_eq!(done.user.created, 1_000, "only the sign-in's fields change");
    assert_eq!(s.user(bob.id).await.unwrap().unwrap(), done.user);
    // The same role again: nothing to report.
    let done = s
        .record_sign_in(bob.id, sign_in(Some(Role::Auditor), 2_100))
        .await
        .unwrap();
    assert_eq!(done.role_changed_from, None);
    // No claim configured: the stored role stays whatever it is.
    s.set_role(bob.id, Role::Viewer, None).await.unwrap();
    let done = s
        .record_sign_in(bob.id, sign_in(None, 2_200))
        .await
        .unwrap();
    assert_eq!(
        (done.user.role, done.role_changed_from),
        (Role::Viewer, None)
    );

    // Bob's sign-in read him as a member of staff; ownership moved to him meanwhile: the claim's role is
    // applied to what is stored at the write, and the owner stays owner.
    let read = s.user_by_subject("bob").await.unwrap().unwrap();
    assert_eq!(read.role, Role::Viewer);
    s.transfer_ownership(owner.id, bob.id).await.unwrap();
    let done = s
        .record_sign_in(read.id, sign_in(Some(Role::Member), 2_300))
        .await
        .unwrap();
    assert_eq!(
        (done.user.role, done.role_changed_from),
        (Role::Owner, None)
    );
    // Owner never comes from a claim (the store ignores it even if a caller passed it).
    let done = s
        .record_sign_in(owner.id, sign_in(Some(Role::Owner), 2_400))
        .await
        .unwrap();
    assert_eq!(done.user.role, Role::Admin);
    // The refresh path: the same rule, role only.
    let done = s.apply_idp_role(owner.id, Role::Viewer).await.unwrap();
    assert_eq!(
        (done.user.role, done.role_changed_from),
        (Role::Viewer, Some(Role::Admin))
    );
    assert_eq!(done.user.last_login, 2_400);
    let done = s.apply_idp_role(bob.id, Role::Viewer).await.unwrap();
    assert_eq!(
        (done.user.role, done.role_changed_from),
        (Role::Owner, None)
    );

    let gone = UserId(999);
    for e in [
        s.record_sign_in(gone, sign_in(None, 1)).await.unwrap_err(),
        s.apply_idp_role(gone, Role::Viewer).await.unwrap_err(),
        s.set_role(gone, Role::Viewer, None).await.unwrap_err(),
        s.mark_onboarded(gone).await.unwrap_err(),
        s.make_owner_if_none(gone).await.unwrap_err(),
    ] {
        assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    }
}

both!(a_role_change_is_decided_on_the_stored_role);
async fn a_role_change_is_decided_on_the_stored_role(kind: Kind) {
    let t = Target::new(kind);
    let s = t.open().await;
    let owner = s
        .create_user(new_user("owner"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    let carol = s
        .create_user(new_user("carol"), OwnerBootstrap::Never)
        .await
        .unwrap();
    let msg = |e: StoreError| match e {
        StoreError::Conflict(m) => m,
        other => panic!("not a conflict: {other:?}"),
    };
    // The caller saw carol as a member; someone made her an admin meanwhile: refused, nothing changes.
    s.set_role(carol.id, Role::Admin, Some(Role::Member))
        .await
        .unwrap();
    let m = msg(s
        .set_role(carol.id, Role::Viewer, Some(Role::Member))
        .await
        .unwrap_err());
    assert!(
        m.contains("changed to admin meanwhile") && m.contains("retry"),
        "{m}"
    );
    assert_eq!(s.user(carol.id).await.unwrap().unwrap().role, Role::Admin);
    // Owner is never given by a role change, and the owner's role never changes this way.
    let m = msg(s.set_role(carol.id, Role::Owner, None).await.unwrap_err());
    assert!(
        m.contains("make-owner") && m.contains("transfer-ownership"),
        "{m}"
    );
    let m = msg(s.set_role(owner.id, Role::Admin, None).await.unwrap_err());
    assert!(m.contains("is the owner"), "{m}");
    let m = msg(s
        .set_role(owner.id, Role::Admin, Some(Role::Owner))
        .await
        .unwrap_err());
    assert!(m.contains("is the owner"), "{m}");
    // A change leaves the sign-in's fields as they are stored; onboarding touches only its field.
    s.record_sign_in(
        carol.id,
        SignIn {
            email: None,
            email_verified: false,
            name: Some("Carol C.".into()),
            picture: None,
            at: 3_000,
            role_from_idp: None,
        },
    )
    .await
    .unwrap();
    let u = s
        .set_role(carol.id, Role::Auditor, Some(Role::Admin))
        .await
        .unwrap();
    assert_eq!(
        (u.role, u.name.as_deref(), u.last_login),
        (Role::Auditor, Some("Carol C."), 3_000)
    );
    s.mark_onboarded(carol.id).await.unwrap();
    let u = s.user(carol.id).await.unwrap().unwrap();
    assert!(u.onboarded);
    assert_eq!((u.role, u.last_login), (Role::Auditor, 3_000));
}

both!(concurrent_sign_ins_never_undo_role_changes);
async fn concurrent_sign_ins_never_undo_role_changes(kind: Kind) {
    let t = Target::new(kind);
    let s = t.open().await;
    let other = replica(&t, &s).await;
    s.create_user(new_user("owner"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    let dan = s
        .create_user(new_user("dan"), OwnerBootstrap::Never)
        .await
        .unwrap();
    // Eight tabs sign in over and over (each reading first, as the sign-in does) while an admin on the other
    // handle walks dan's role through a sequence, each change expecting the previous one.
    let signers: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                for n in 0..15 {
                    let read = s.user_by_subject("dan").await.unwrap().unwrap();
                    let at = 10_000 + i * 100 + n;
                    s.record_sign_in(
                        read.id,
                        SignIn {
                            email: read.email.clone(),
                            email_verified: true,
                            name: Some(format!("dan via tab {i}")),
                            picture: None,
                            at,
                            role_from_idp: None,
                        },
                    )
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    let walk = [Role::Viewer, Role::Auditor, Role::ItAdmin, Role::Admin];
    let mut prev = Role::Member;
    for n in 0..24 {
        let next = walk[n % walk.len()];
        let u = other.set_role(dan.id, next, Some(prev)).await.unwrap();
        assert_eq!(u.role, next);
        prev = next;
        tokio::task::yield_now().await;
    }
    for h in signers {
        h.await.unwrap();
    }
    for h in [&s, &other] {
        let u = h.user(dan.id).await.unwrap().unwrap();
        assert_eq!(u.role, prev, "a sign-in undid a role change");
        assert!(u.name.unwrap().starts_with("dan via tab"));
    }
}

both!(an_owner_is_made_only_while_there_is_none);
async fn an_owner_is_made_only_while_there_is_none(kind: Kind) {
    let t = Target::new(kind);
    let s = t.open().await;
    let owner = s
        .create_user(new_user("owner"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    let erin = s
        .create_user(new_user("erin"), OwnerBootstrap::Never)
        .await
        .unwrap();
    let frank = s
        .create_user(new_user("frank"), OwnerBootstrap::Never)
        .await
        .unwrap();
    // With an owner: nothing changes, and the answer names them (for erin and for the owner alike).
    for who in [erin.id, owner.id] {
        match s.make_owner_if_none(who).await.unwrap() {
            OwnerClaim::Taken(o) => assert_eq!(o.id, owner.id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(s.user(erin.id).await.unwrap().unwrap().role, Role::Member);

    // The owner deleted: erin and frank race from two handles (replicas for PostgreSQL); exactly one wins.
    s.delete_user(owner.id).await.unwrap();
    let s2 = replica(&t, &s).await;
    let (a, b) = tokio::join!(
        s.make_owner_if_none(erin.id),
        s2.make_owner_if_none(frank.id)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let winner = match (&a, &b) {
        (OwnerClaim::Made(w), OwnerClaim::Taken(o))
        | (OwnerClaim::Taken(o), OwnerClaim::Made(w)) => {
            assert_eq!(o.id, w.id);
            w.clone()
        }
        other => panic!("not exactly one owner: {other:?}"),
    };
    assert_eq!(winner.role, Role::Owner);
    let owners: Vec<_> = s2
        .users()
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.role == Role::Owner)
        .collect();
    assert_eq!(owners, vec![winner.clone()]);
    assert!(s.is_bootstrapped().await.unwrap());
    // The new owner's record is as before but for the role (and is what every handle reads).
    let before = if winner.id == erin.id { &erin } else { &frank };
    assert_eq!(
        User {
            role: Role::Member,
            ..winner.clone()
        },
        *before
    );
    assert_eq!(s.user(winner.id).await.unwrap().unwrap().role, Role::Owner);
    // Nobody becomes owner by signing in afterwards.
    let g = s
        .create_user(new_user("gina"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    assert_eq!(g.role, Role::Member);
}

both!(a_forgotten_failure_no_longer_counts_and_the_others_stay);
async fn a_forgotten_failure_no_longer_counts_and_the_others_stay(kind: Kind) {
    let t = Target::new(kind);
    let store = t.open().await;
    let key = "api_key_login:10.0.0.9";
    for at in [100, 200, 200, 300] {
        store.record_failure(key, at, 600).await.unwrap();
    }
    // An attempt Headscale did not answer is taken back: one of the two at 200, nothing else.
    store.forget_failure(key, 200).await.unwrap();
    assert_eq!(store.failures(key, 300, 600).await.unwrap(), 3);
    store.forget_failure(key, 200).await.unwrap();
    assert_eq!(store.failures(key, 300, 600).await.unwrap(), 2);
    // Nothing recorded at that moment (or no row at all): nothing changes.
    store.forget_failure(key, 250).await.unwrap();
    store
        .forget_failure("api_key_login:10.0.0.10", 200)
        .await
        .unwrap();
    assert_eq!(store.failures(key, 300, 600).await.unwrap(), 2);
}
