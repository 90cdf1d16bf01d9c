//! The embedded redb backend: one file, one process.
//!
//! Threads: every write runs on tokio's blocking pool (`spawn_blocking`): a commit waits for fsync (redb's
//! default `Durability::Immediate`, so a commit that returned is on disk), and redb serialises writers, so a
//! write may also wait for another; neither may stall an async worker. Point reads (`user`, `session`, …) run
//! inline on the caller's task: redb reads are MVCC snapshots that take no lock and never wait for a writer,
//! and the pages they touch are almost always in the page cache, so they cost microseconds. Reads that scan
//! a table (`users`, `sessions`, `audit`, …) run on the blocking pool like writes, since their cost grows
//! with the table.
//!
//! Encoding: keys are native redb keys (u64, str, [u8; 32], tuples); records are one version byte
//! ([`RECORD_V1`]) followed by the record as JSON, so a later record layout can be told apart and a record
//! that does not decode is reported as [`StoreError::Corrupt`] naming the file, the table and the key.

use super::records::*;
use super::{SCHEMA_VERSION, SessionView, StoreError};
use ::redb::{
    Builder, Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    Table, TableDefinition, TableHandle, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

// ----- tables -----
//
// Never change a table's key or value type in place: add a table (and a migration) instead. `meta` in
// particular keeps its types forever, since it is how a newer file is recognised.
//
// Later tables follow the same pattern (a const here, a line in `ALL_TABLES` and `create_tables`, a copy in
// `backup_to`). A table that only adds data older binaries never need is created at open by `prepare` (no
// schema bump); a change that older binaries would misread needs a schema bump and a migration step.

/// Schema version, the bootstrapped marker and the id counters.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_SCHEMA: &str = "schema_version";
const META_BOOTSTRAPPED: &str = "bootstrapped";
const META_NEXT_USER: &str = "next_user_id";
const META_NEXT_AUDIT: &str = "next_audit_id";

/// user id → [`User`]
const USERS: TableDefinition<u64, &[u8]> = TableDefinition::new("users");
/// subject → user id
const USERS_BY_SUBJECT: TableDefinition<&str, u64> = TableDefinition::new("users_by_subject");
/// Headscale user id → [`Link`]
const LINKS: TableDefinition<&str, &[u8]> = TableDefinition::new("links");
/// user id → Headscale user id
const LINKS_BY_USER: TableDefinition<u64, &str> = TableDefinition::new("links_by_user");
/// SHA-256 of the raw session id → [`SessionRecord`]
const SESSIONS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("sessions");
/// (user id, session key) → ()
const SESSIONS_BY_USER: TableDefinition<(u64, [u8; 32]), ()> =
    TableDefinition::new("sessions_by_user");
/// (expires, session key) → ()
const SESSIONS_BY_EXPIRY: TableDefinition<(i64, [u8; 32]), ()> =
    TableDefinition::new("sessions_by_expiry");
/// audit id → [`AuditEvent`]
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// `<scope>:<client>` → the unix times of recent failures (rate limits that must hold across replicas, S14).
const RATE_LIMITS: TableDefinition<&str, &[u8]> = TableDefinition::new("rate_limits");

/// kid → [`SigningKey`] (the signed assertion's keys, private parts encrypted by the caller, S15)
const SIGNING_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("signing_keys");

/// (scope, id) → unix time until which the id counts as used (replay caches, e.g. back-channel logout
/// `jti`s); rows past that time are pruned. Added without a schema bump: `prepare` creates it in older files.
const REPLAY: TableDefinition<(&str, &str), i64> = TableDefinition::new("replay");

const ALL_TABLES: [&str; 12] = [
    "meta",
    "users",
    "users_by_subject",
    "links",
    "links_by_user",
    "sessions",
    "sessions_by_user",
    "sessions_by_expiry",
    "audit",
    "rate_limits",
    "signing_keys",
    "replay",
];

fn create_tables(txn: &WriteTransaction) -> Result<(), Fail> {
    txn.open_table(META)?;
    txn.open_table(USERS)?;
    txn.open_table(USERS_BY_SUBJECT)?;
    txn.open_table(LINKS)?;
    txn.open_table(LINKS_BY_USER)?;
    txn.open_table(SESSIONS)?;
    txn.open_table(SESSIONS_BY_USER)?;
    txn.open_table(SESSIONS_BY_EXPIRY)?;
    txn.open_table(AUDIT)?;
    txn.open_table(RATE_LIMITS)?;
    txn.open_table(SIGNING_KEYS)?;
    txn.open_table(REPLAY)?;
    Ok(())
}

/// One migration step per schema version: `MIGRATIONS[i]` takes a file from schema `i + 1` to `i + 2` (e.g.
/// creates a new table, rewrites records). Schema 1 is the first, so there are none yet.
type Migration = fn(&WriteTransaction) -> Result<(), Fail>;
const MIGRATIONS: &[Migration] = &[];

/// Bring a file of schema `from` (< [`SCHEMA_VERSION`]) up to date, one step at a time, inside the open's
/// write transaction (all or nothing).
fn migrate(txn: &WriteTransaction, from: u64) -> Result<(), Fail> {
    for v in from..SCHEMA_VERSION {
        let step = usize::try_from(v)
            .ok()
            .and_then(|v| v.checked_sub(1))
            .and_then(|i| MIGRATIONS.get(i));
        let step = step.ok_or_else(|| {
            Fail::Corrupt(format!(
                "schema version {v} is unknown (no migration from it)"
            ))
        })?;
        step(txn)?;
    }
    create_tables(txn)?;
    txn.open_table(META)?.insert(META_SCHEMA, SCHEMA_VERSION)?;
    Ok(())
}

// ----- encoding -----

/// The version byte in front of every JSON record.
const RECORD_V1: u8 = 1;

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut b = vec![RECORD_V1];
    serde_json::to_writer(&mut b, v).expect("store records always serialise");
    b
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T, Fail> {
    match bytes.split_first() {
        Some((&RECORD_V1, json)) => serde_json::from_slice(json)
            .map_err(|e| Fail::Corrupt(format!("{} does not decode: {e}", what()))),
        Some((v, _)) => Err(Fail::Corrupt(format!(
            "{} has an unknown record version {v}",
            what()
        ))),
        None => Err(Fail::Corrupt(format!("{} is empty", what()))),
    }
}

// ----- errors -----

/// An error inside a transaction, turned into a [`StoreError`] (with the path) at the boundary.
pub(super) enum Fail {
    Redb(::redb::Error),
    Corrupt(String),
    Store(StoreError),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Fail {
                Fail::Redb(e.into())
            }
        }
    )*};
}
from_redb!(
    ::redb::Error,
    ::redb::StorageError,
    ::redb::TableError,
    ::redb::TransactionError,
    ::redb::CommitError,
    ::redb::DatabaseError
);

impl Fail {
    fn into_store(self, path: &Path) -> StoreError {
        let path = path.to_path_buf();
        match self {
            Fail::Store(e) => e,
            Fail::Corrupt(detail) => StoreError::Corrupt { path, detail },
            Fail::Redb(e) => map_redb(path, e),
        }
    }
}

fn map_redb(path: PathBuf, e: ::redb::Error) -> StoreError {
    use ::redb::Error as E;
    match e {
        E::DatabaseAlreadyOpen | E::LockProtocolMismatch => StoreError::Locked { path },
        E::Corrupted(detail) => StoreError::Corrupt { path, detail },
        E::UpgradeRequired(v) => StoreError::Corrupt {
            path,
            detail: format!("it is in redb's old file format {v}"),
        },
        E::Io(source) if source.kind() == std::io::ErrorKind::InvalidData => StoreError::Corrupt {
            path,
            detail: source.to_string(),
        },
        E::Io(source) => StoreError::Io { path, source },
        e @ (E::TableTypeMismatch { .. }
        | E::TableIsMultimap(_)
        | E::TableIsNotMultimap(_)
        | E::TypeDefinitionChanged { .. }
        | E::TableDoesNotExist(_)) => StoreError::Corrupt {
            path,
            detail: e.to_string(),
        },
        other => StoreError::Io {
            path,
            source: std::io::Error::other(other.to_string()),
        },
    }
}

fn user_not_found(id: UserId) -> Fail {
    Fail::Store(StoreError::NotFound(format!("user {id}")))
}

// ----- the store -----

#[derive(Clone)]
pub(super) struct RedbStore {
    shared: Arc<Shared>,
}

struct Shared {
    db: Database,
    path: PathBuf,
    /// Test hook ([`crate::store::Store::fail_writes_for_test`]): every write fails as on a full disk.
    fail_writes: std::sync::atomic::AtomicBool,
    /// Bumped after every committed write. Every write to the file goes through this process (redb locks
    /// it; the CLI goes through the admin socket), so an unchanged generation means unchanged data.
    generation: AtomicU64,
    /// Session views read at a generation (see [`RedbStore::session_view`]).
    views: std::sync::Mutex<ViewCache>,
}

/// Session views as read at `generation`; any write empties it. Only sessions that exist are kept.
#[derive(Default)]
struct ViewCache {
    generation: u64,
    map: HashMap<SessionKey, Arc<SessionView>>,
}

/// At most this many cached session views (a few MiB), then the cache starts over.
const VIEW_CACHE_MAX: usize = 4096;

impl RedbStore {
    pub(super) fn open(path: &Path, cache_size_bytes: usize) -> Result<RedbStore, StoreError> {
        let path = path.to_path_buf();
        create_private(&path)?;
        // First look without writing: redb's writable open marks the file in use (and a clean close marks it
        // again), so a file we refuse (another program's, a newer headgate's, not redb at all) must be refused
        // by a read-only open to stay byte-identical. A file that needs crash recovery cannot be opened read-only;
        // the writable open below recovers it and checks it again.
        let empty = std::fs::metadata(&path)
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?
            .len()
            == 0;
        if !empty {
            let mut b = Builder::new();
            b.set_cache_size(cache_size_bytes);
            match guard_panic(&path, || b.open_read_only(&path))? {
                Ok(db) => {
                    let txn = db
                        .begin_read()
                        .map_err(|e| Fail::from(e).into_store(&path))?;
                    check_schema(&path, &inspect(&txn).map_err(|f| f.into_store(&path))?)?;
                }
                Err(::redb::DatabaseError::RepairAborted) => {}
                Err(e) => return Err(Fail::from(e).into_store(&path)),
            }
        }
        let mut b = Builder::new();
        b.set_cache_size(cache_size_bytes);
        let db =
            guard_panic(&path, || b.create(&path))?.map_err(|e| Fail::from(e).into_store(&path))?;
        let store = RedbStore {
            shared: Arc::new(Shared {
                db,
                path,
                fail_writes: std::sync::atomic::AtomicBool::new(false),
                generation: AtomicU64::new(0),
                views: std::sync::Mutex::new(ViewCache::default()),
            }),
        };
        store
            .prepare()
            .map_err(|f| f.into_store(&store.shared.path))?;
        Ok(store)
    }

    pub(super) fn path(&self) -> &Path {
        &self.shared.path
    }

    pub(super) fn fail_writes_for_test(&self, on: bool) {
        self.shared
            .fail_writes
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Check the schema version; set up a new file; migrate an older one.
    fn prepare(&self) -> Result<(), Fail> {
        let db = &self.shared.db;
        let found = inspect(&db.begin_read()?)?;
        let Some((version, tables)) = found else {
            let txn = db.begin_write()?;
            create_tables(&txn)?;
            txn.open_table(META)?.insert(META_SCHEMA, SCHEMA_VERSION)?;
            txn.commit()?;
            tracing::info!(path = %self.shared.path.display(), schema = SCHEMA_VERSION, "created a new store");
            return Ok(());
        };
        check_schema(&self.shared.path, &Some((version, tables.clone())))?;
        if version < SCHEMA_VERSION {
            let txn = db.begin_write()?;
            migrate(&txn, version)?;
            txn.commit()?;
            tracing::info!(path = %self.shared.path.display(), from = version, to = SCHEMA_VERSION, "migrated the store");
        } else if ALL_TABLES
            .iter()
            .any(|t| !tables.iter().any(|have| have == t))
        {
            let txn = db.begin_write()?;
            create_tables(&txn)?;
            txn.commit()?;
        }
        Ok(())
    }

    /// Run `f` in a write transaction on the blocking pool and commit (durably) when it returns `Ok`; an `Err`
    /// aborts (the transaction is dropped), so a refused change writes nothing.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, Fail> + Send + 'static,
    {
        let shared = self.shared.clone();
        if shared
            .fail_writes
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(StoreError::Io {
                path: shared.path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "writes made to fail by a test hook (as on a full disk)",
                ),
            });
        }
        let task = tokio::task::spawn_blocking(move || {
            let run = || {
                let txn = shared.db.begin_write()?;
                let out = f(&txn)?;
                txn.commit()?;
                Ok(out)
            };
            let r = run().map_err(|f: Fail| f.into_store(&shared.path));
            // After the commit (never before: a read that starts between the two must not be cached as
            // current).
            shared.generation.fetch_add(1, Ordering::SeqCst);
            r
        });
        self.join(task.await)
    }

    /// Run `f` in a read transaction on this thread.
    fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let run = || {
            let txn = self.shared.db.begin_read()?;
            f(&txn)
        };
        run().map_err(|f| f.into_store(&self.shared.path))
    }

    /// Run `f` in a read transaction on the blocking pool (for scans).
    async fn read_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, Fail> + Send + 'static,
    {
        let me = self.clone();
        let task = tokio::task::spawn_blocking(move || me.read(f));
        self.join(task.await)
    }

    /// Copy every table, as one read transaction sees it (a consistent snapshot, taken while writes go
    /// on), into a new redb file at `dest` (created 0600; an existing file is refused). Returns how many
    /// rows were copied.
    pub(super) async fn backup_to(&self, dest: PathBuf) -> Result<u64, StoreError> {
        let shared = self.shared.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create_new(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            o.open(&dest).map_err(|source| StoreError::Io {
                path: dest.clone(),
                source,
            })?;
            let copy = || -> Result<u64, Fail> {
                let src = shared.db.begin_read()?;
                let out = Builder::new().create(&dest)?;
                let txn = out.begin_write()?;
                let mut n = 0;
                n += copy_table(&src, &txn, META)?;
                n += copy_table(&src, &txn, USERS)?;
                n += copy_table(&src, &txn, USERS_BY_SUBJECT)?;
                n += copy_table(&src, &txn, LINKS)?;
                n += copy_table(&src, &txn, LINKS_BY_USER)?;
                n += copy_table(&src, &txn, SESSIONS)?;
                n += copy_table(&src, &txn, SESSIONS_BY_USER)?;
                n += copy_table(&src, &txn, SESSIONS_BY_EXPIRY)?;
                n += copy_table(&src, &txn, AUDIT)?;
                n += copy_table(&src, &txn, RATE_LIMITS)?;
                n += copy_table(&src, &txn, SIGNING_KEYS)?;
                // A file made before the replay table existed may not have it yet.
                if src.list_tables()?.any(|t| t.name() == "replay") {
                    n += copy_table(&src, &txn, REPLAY)?;
                }
                txn.commit()?;
                Ok(n)
            };
            match copy() {
                Ok(n) => Ok(n),
                Err(f) => {
                    // No half-written backup left behind to be mistaken for a good one.
                    let _ = std::fs::remove_file(&dest);
                    Err(f.into_store(&dest))
                }
            }
        });
        self.join(task.await)
    }

    /// Whether the store holds anything besides its schema marker (restore refuses such a target).
    pub(super) fn is_empty(&self) -> Result<bool, StoreError> {
        self.read(|txn| {
            let mut any = false;
            any |= !txn.open_table(USERS)?.is_empty()?;
            any |= !txn.open_table(SESSIONS)?.is_empty()?;
            any |= !txn.open_table(LINKS)?.is_empty()?;
            any |= !txn.open_table(AUDIT)?.is_empty()?;
            any |= !txn.open_table(SIGNING_KEYS)?.is_empty()?;
            Ok(!any)
        })
    }

    fn join<T>(
        &self,
        r: Result<Result<T, StoreError>, tokio::task::JoinError>,
    ) -> Result<T, StoreError> {
        match r {
            Ok(r) => r,
            // A panic in store code is a bug: let it surface where it would have, had the code run inline.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Io {
                path: self.shared.path.clone(),
                source: std::io::Error::other(format!("the store task did not run: {e}")),
            }),
        }
    }

    pub(super) async fn schema_version(&self) -> Result<u64, StoreError> {
        self.read(|txn| {
            Ok(txn
                .open_table(META)?
                .get(META_SCHEMA)?
                .map(|g| g.value())
                .unwrap_or(0))
        })
    }

    // ----- users -----

    pub(super) async fn create_user(
        &self,
        new: NewUser,
        bootstrap: OwnerBootstrap,
    ) -> Result<User, StoreError> {
        if new.role == Role::Owner {
            return Err(StoreError::Conflict(
                "a new user cannot be given the owner role: the owner comes from the owner bootstrap \
                 (server.initial_owner) or a transfer of ownership"
                    .into(),
            ));
        }
        self.write(move |txn| {
            let mut meta = txn.open_table(META)?;
            let mut by_subject = txn.open_table(USERS_BY_SUBJECT)?;
            let mut users = txn.open_table(USERS)?;
            if let Some(id) = by_subject.get(new.subject.as_str())? {
                return Err(StoreError::Conflict(format!(
                    "a user with subject {:?} already exists (user {})",
                    new.subject,
                    id.value()
                ))
                .into());
            }
            // Invariant: an owner exists ⇒ the marker is set. So "no marker" means "never had an owner".
            let bootstrapped = meta.get(META_BOOTSTRAPPED)?.is_some();
            let owner = !bootstrapped
                && match &bootstrap {
                    OwnerBootstrap::FirstUser => true,
                    OwnerBootstrap::Only(who) => {
                        who.matches(&new.subject, new.email.as_deref(), new.email_verified)
                    }
                    OwnerBootstrap::Never => false,
                };
            let id = take_next(&mut meta, META_NEXT_USER)?;
            let user = User {
                id: UserId(id),
                subject: new.subject,
                email: new.email,
                email_verified: new.email_verified,
                name: new.name,
                picture: new.picture,
                role: if owner { Role::Owner } else { new.role },
                headscale_user_id: None,
                onboarded: new.onboarded,
                created: new.created,
                last_login: new.created,
            };
            users.insert(id, encode(&user).as_slice())?;
            by_subject.insert(user.subject.as_str(), id)?;
            if owner {
                meta.insert(META_BOOTSTRAPPED, 1)?;
            }
            Ok(user)
        })
        .await
    }

    pub(super) async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.read(|txn| get_user(&txn.open_table(USERS)?, id))
    }

    pub(super) async fn user_by_subject(&self, subject: &str) -> Result<Option<User>, StoreError> {
        self.read(|txn| {
            let Some(id) = txn
                .open_table(USERS_BY_SUBJECT)?
                .get(subject)?
                .map(|g| g.value())
            else {
                return Ok(None);
            };
            match get_user(&txn.open_table(USERS)?, UserId(id))? {
                Some(u) => Ok(Some(u)),
                None => Err(Fail::Corrupt(format!(
                    "users_by_subject names user {id}, who is missing"
                ))),
            }
        })
    }

    pub(super) async fn users(&self) -> Result<Vec<User>, StoreError> {
        self.read_blocking(|txn| all_users(&txn.open_table(USERS)?))
            .await
    }

    pub(super) async fn update_user(&self, user: User) -> Result<(), StoreError> {
        self.write(move |txn| {
            let mut users = txn.open_table(USERS)?;
            let stored = get_user(&users, user.id)?.ok_or_else(|| user_not_found(user.id))?;
            if stored.subject != user.subject {
                return Err(StoreError::Conflict(format!("user {}'s subject cannot change", user.id)).into());
            }
            let mut user = user;
            user.headscale_user_id = stored.headscale_user_id.clone();
            match (stored.role == Role::Owner, user.role == Role::Owner) {
                (true, false) => {
                    return Err(StoreError::Conflict(format!(
                        "user {} is the owner: transfer ownership to someone else first",
                        user.id
                    ))
                    .into());
                }
                (false, true) => {
                    if let Some(owner) = all_users(&users)?.into_iter().find(|u| u.role == Role::Owner) {
                        return Err(StoreError::Conflict(format!(
                            "user {} is already the owner and there is only one: transfer ownership instead",
                            owner.id
                        ))
                        .into());
                    }
                    txn.open_table(META)?.insert(META_BOOTSTRAPPED, 1)?;
                }
                _ => {}
            }
            users.insert(user.id.0, encode(&user).as_slice())?;
            Ok(())
        })
        .await
    }

    /// Read the stored user, change it with `f`, write it back: all inside one write transaction (redb
    /// runs one at a time), so nothing written meanwhile is lost.
    async fn modify_user<T, F>(&self, id: UserId, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut User) -> Result<T, StoreError> + Send + 'static,
    {
        self.write(move |txn| {
            let mut users = txn.open_table(USERS)?;
            let mut user = get_user(&users, id)?.ok_or_else(|| user_not_found(id))?;
            let out = f(&mut user)?;
            users.insert(id.0, encode(&user).as_slice())?;
            Ok(out)
        })
        .await
    }

    pub(super) async fn record_sign_in(
        &self,
        id: UserId,
        s: SignIn,
    ) -> Result<SignedIn, StoreError> {
        self.modify_user(id, move |u| {
            let role_changed_from = u.apply_sign_in(s);
            Ok(SignedIn {
                user: u.clone(),
                role_changed_from,
            })
        })
        .await
    }

    pub(super) async fn apply_idp_role(
        &self,
        id: UserId,
        role: Role,
    ) -> Result<SignedIn, StoreError> {
        self.modify_user(id, move |u| {
            let role_changed_from = u.apply_idp_role(role);
            Ok(SignedIn {
                user: u.clone(),
                role_changed_from,
            })
        })
        .await
    }

    pub(super) async fn set_role(
        &self,
        id: UserId,
        role: Role,
        expected: Option<Role>,
    ) -> Result<User, StoreError> {
        self.modify_user(id, move |u| {
            u.check_role_change(role, expected)?;
            u.role = role;
            Ok(u.clone())
        })
        .await
    }

    pub(super) async fn mark_onboarded(&self, id: UserId) -> Result<(), StoreError> {
        self.modify_user(id, |u| {
            u.onboarded = true;
            Ok(())
        })
        .await
    }

    pub(super) async fn make_owner_if_none(&self, id: UserId) -> Result<OwnerClaim, StoreError> {
        self.write(move |txn| {
            let mut users = txn.open_table(USERS)?;
            let mut user = get_user(&users, id)?.ok_or_else(|| user_not_found(id))?;
            if let Some(owner) = all_users(&users)?
                .into_iter()
                .find(|u| u.role == Role::Owner)
            {
                return Ok(OwnerClaim::Taken(owner));
            }
            user.role = Role::Owner;
            users.insert(id.0, encode(&user).as_slice())?;
            txn.open_table(META)?.insert(META_BOOTSTRAPPED, 1)?;
            Ok(OwnerClaim::Made(user))
        })
        .await
    }

    pub(super) async fn delete_user(&self, id: UserId) -> Result<(), StoreError> {
        self.write(move |txn| {
            let user = {
                let mut users = txn.open_table(USERS)?;
                let removed = users.remove(id.0)?;
                match removed {
                    Some(g) => decode::<User>(g.value(), || format!("user {id}"))?,
                    None => return Err(user_not_found(id)),
                }
            };
            txn.open_table(USERS_BY_SUBJECT)?
                .remove(user.subject.as_str())?;
            let hs = txn
                .open_table(LINKS_BY_USER)?
                .remove(id.0)?
                .map(|g| g.value().to_string());
            if let Some(hs) = hs {
                txn.open_table(LINKS)?.remove(hs.as_str())?;
            }
            let mut sessions = SessionTables::open(txn)?;
            for key in sessions.keys_of_user(id)? {
                sessions.remove(key)?;
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn transfer_ownership(
        &self,
        from: UserId,
        to: UserId,
    ) -> Result<(), StoreError> {
        self.write(move |txn| {
            let mut users = txn.open_table(USERS)?;
            let mut old = get_user(&users, from)?.ok_or_else(|| user_not_found(from))?;
            if old.role != Role::Owner {
                return Err(StoreError::Conflict(format!("user {from} is not the owner")).into());
            }
            if from == to {
                return Err(
                    StoreError::Conflict(format!("user {from} is already the owner")).into(),
                );
            }
            let mut new = get_user(&users, to)?.ok_or_else(|| user_not_found(to))?;
            old.role = Role::Admin;
            new.role = Role::Owner;
            users.insert(from.0, encode(&old).as_slice())?;
            users.insert(to.0, encode(&new).as_slice())?;
            txn.open_table(META)?.insert(META_BOOTSTRAPPED, 1)?;
            Ok(())
        })
        .await
    }

    pub(super) async fn is_bootstrapped(&self) -> Result<bool, StoreError> {
        self.read(|txn| Ok(txn.open_table(META)?.get(META_BOOTSTRAPPED)?.is_some()))
    }

    // ----- links -----

    pub(super) async fn link_if_unclaimed(&self, link: Link) -> Result<LinkOutcome, StoreError> {
        self.write(move |txn| {
            let mut users = txn.open_table(USERS)?;
            let mut user =
                get_user(&users, link.user_id)?.ok_or_else(|| user_not_found(link.user_id))?;
            let mut links = txn.open_table(LINKS)?;
            let mut by_user = txn.open_table(LINKS_BY_USER)?;
            if let Some(existing) = get_link(&links, &link.headscale_user_id)? {
                if existing.user_id != link.user_id {
                    return Ok(LinkOutcome::AlreadyLinkedToOther(existing.user_id));
                }
                return Ok(LinkOutcome::UserAlreadyLinked);
            }
            if by_user.get(link.user_id.0)?.is_some() {
                return Ok(LinkOutcome::UserAlreadyLinked);
            }
            links.insert(link.headscale_user_id.as_str(), encode(&link).as_slice())?;
            by_user.insert(link.user_id.0, link.headscale_user_id.as_str())?;
            if link.state == LinkState::Approved {
                user.headscale_user_id = Some(link.headscale_user_id.clone());
                users.insert(user.id.0, encode(&user).as_slice())?;
            }
            Ok(LinkOutcome::Linked)
        })
        .await
    }

    pub(super) async fn link_of_user(&self, user_id: UserId) -> Result<Option<Link>, StoreError> {
        self.read(|txn| {
            let Some(hs) = txn
                .open_table(LINKS_BY_USER)?
                .get(user_id.0)?
                .map(|g| g.value().to_string())
            else {
                return Ok(None);
            };
            get_link(&txn.open_table(LINKS)?, &hs)
        })
    }

    pub(super) async fn link_of_headscale_user(
        &self,
        hs: &str,
    ) -> Result<Option<Link>, StoreError> {
        self.read(|txn| get_link(&txn.open_table(LINKS)?, hs))
    }

    pub(super) async fn approve_link(&self, user_id: UserId) -> Result<Link, StoreError> {
        self.write(move |txn| {
            let hs = txn
                .open_table(LINKS_BY_USER)?
                .get(user_id.0)?
                .map(|g| g.value().to_string());
            let not_found =
                || Fail::Store(StoreError::NotFound(format!("a link of user {user_id}")));
            let hs = hs.ok_or_else(not_found)?;
            let mut links = txn.open_table(LINKS)?;
            let mut link = get_link(&links, &hs)?.ok_or_else(not_found)?;
            link.state = LinkState::Approved;
            links.insert(hs.as_str(), encode(&link).as_slice())?;
            let mut users = txn.open_table(USERS)?;
            let mut user = get_user(&users, user_id)?.ok_or_else(|| user_not_found(user_id))?;
            user.headscale_user_id = Some(hs);
            users.insert(user_id.0, encode(&user).as_slice())?;
            Ok(link)
        })
        .await
    }

    pub(super) async fn remove_link(&self, user_id: UserId) -> Result<Option<Link>, StoreError> {
        self.write(move |txn| {
            let Some(hs) = txn
                .open_table(LINKS_BY_USER)?
                .remove(user_id.0)?
                .map(|g| g.value().to_string())
            else {
                return Ok(None);
            };
            let link = {
                let mut links = txn.open_table(LINKS)?;
                let removed = links.remove(hs.as_str())?;
                match removed {
                    Some(g) => Some(decode::<Link>(g.value(), || {
                        format!("link of Headscale user {hs:?}")
                    })?),
                    None => None,
                }
            };
            let mut users = txn.open_table(USERS)?;
            if let Some(mut user) = get_user(&users, user_id)?
                && user.headscale_user_id.is_some()
            {
                user.headscale_user_id = None;
                users.insert(user_id.0, encode(&user).as_slice())?;
            }
            Ok(link)
        })
        .await
    }

    pub(super) async fn links(&self) -> Result<Vec<Link>, StoreError> {
        self.read_blocking(|txn| {
            let links = txn.open_table(LINKS)?;
            let mut out = Vec::new();
            for row in links.range::<&str>(..)? {
                let (k, v) = row?;
                out.push(decode(v.value(), || {
                    format!("link of Headscale user {:?}", k.value())
                })?);
            }
            Ok(out)
        })
        .await
    }

    // ----- sessions -----

    pub(super) async fn create_session(
        &self,
        key: SessionKey,
        record: SessionRecord,
    ) -> Result<(), StoreError> {
        self.create_sessions(vec![(key, record)]).await
    }

    pub(super) async fn create_sessions(
        &self,
        batch: Vec<(SessionKey, SessionRecord)>,
    ) -> Result<(), StoreError> {
        self.write(move |txn| {
            let users = txn.open_table(USERS)?;
            let mut sessions = SessionTables::open(txn)?;
            let mut known = std::collections::HashSet::new();
            for (key, record) in &batch {
                if let Some(uid) = record.user_id()
                    && !known.contains(&uid)
                {
                    if get_user(&users, uid)?.is_none() {
                        return Err(user_not_found(uid));
                    }
                    known.insert(uid);
                }
                if sessions.main.get(key.0)?.is_some() {
                    return Err(StoreError::Conflict(format!("{key:?} already exists")).into());
                }
                sessions.insert(*key, record)?;
            }
            Ok(())
        })
        .await
    }

    /// The session view, from the cache while nothing was written since it was read (every request reads
    /// its session: a cache hit is a hash lookup instead of a read transaction and three decoded records).
    pub(super) fn session_view(
        &self,
        key: SessionKey,
    ) -> Result<Option<Arc<SessionView>>, StoreError> {
        let lock = || self.shared.views.lock().unwrap_or_else(|p| p.into_inner());
        // Read the generation before the data: a write that commits in between makes this read stale.
        let generation = self.shared.generation.load(Ordering::SeqCst);
        {
            let cache = lock();
            if cache.generation == generation
                && let Some(v) = cache.map.get(&key)
            {
                return Ok(Some(v.clone()));
            }
        }
        let Some(view) = self.read_session_view(key)? else {
            return Ok(None);
        };
        let view = Arc::new(view);
        let mut cache = lock();
        if cache.generation < generation {
            cache.map.clear();
            cache.generation = generation;
        }
        if cache.generation == generation {
            if cache.map.len() >= VIEW_CACHE_MAX {
                cache.map.clear();
            }
            cache.map.insert(key, view.clone());
        }
        Ok(Some(view))
    }

    fn read_session_view(&self, key: SessionKey) -> Result<Option<SessionView>, StoreError> {
        self.read(|txn| {
            let Some(record) = get_session(&txn.open_table(SESSIONS)?, key)? else {
                return Ok(None);
            };
            let (user, link) = match record.user_id() {
                Some(uid) => {
                    let user = get_user(&txn.open_table(USERS)?, uid)?;
                    let hs = match &user {
                        Some(_) => txn
                            .open_table(LINKS_BY_USER)?
                            .get(uid.0)?
                            .map(|g| g.value().to_string()),
                        None => None,
                    };
                    let link = match hs {
                        Some(hs) => get_link(&txn.open_table(LINKS)?, &hs)?,
                        None => None,
                    };
                    (user, link)
                }
                None => (None, None),
            };
            Ok(Some(SessionView { record, user, link }))
        })
    }

    pub(super) async fn count_live_sessions(&self, now: i64) -> Result<u64, StoreError> {
        self.read_blocking(move |txn| {
            let by_expiry = txn.open_table(SESSIONS_BY_EXPIRY)?;
            let mut n = 0;
            // Live: `now < expires`, i.e. every key from (now + 1, 0…) on.
            for row in by_expiry.range((now.saturating_add(1), [0u8; 32])..)? {
                row?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    pub(super) async fn api_key_sessions(&self) -> Result<Vec<(SessionKey, String)>, StoreError> {
        self.read_blocking(|txn| {
            let sessions = txn.open_table(SESSIONS)?;
            let mut out = Vec::new();
            for row in sessions.range::<[u8; 32]>(..)? {
                let (k, v) = row?;
                let key = SessionKey(k.value());
                // API-key sessions have no `sessions_by_user` row, so the whole table is read, one record
                // at a time (never all of them in memory at once).
                let rec: SessionRecord = decode(v.value(), || format!("session {key:?}"))?;
                if let SessionSubject::ApiKey { prefix, .. } = rec.subject {
                    out.push((key, prefix));
                }
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn session(
        &self,
        key: SessionKey,
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.read(|txn| get_session(&txn.open_table(SESSIONS)?, key))
    }

    pub(super) async fn delete_session(&self, key: SessionKey) -> Result<bool, StoreError> {
        self.write(move |txn| Ok(SessionTables::open(txn)?.remove(key)?.is_some()))
            .await
    }

    pub(super) async fn delete_sessions_of_user(&self, user_id: UserId) -> Result<u64, StoreError> {
        self.write(move |txn| {
            let mut sessions = SessionTables::open(txn)?;
            let mut n = 0;
            for key in sessions.keys_of_user(user_id)? {
                n += u64::from(sessions.remove(key)?.is_some());
            }
            Ok(n)
        })
        .await
    }

    /// Delete the sessions that carry the IdP session id `sid` (and belong to `user`, when given).
    pub(super) async fn delete_sessions_by_idp_sid(
        &self,
        sid: String,
        user: Option<UserId>,
    ) -> Result<u64, StoreError> {
        self.write(move |txn| {
            let mut sessions = SessionTables::open(txn)?;
            let mut doomed = Vec::new();
            for row in sessions.main.range::<[u8; 32]>(..)? {
                let (k, v) = row?;
                let key = SessionKey(k.value());
                let rec: SessionRecord = decode(v.value(), || format!("session {key:?}"))?;
                if rec.idp_sid.as_deref() == Some(sid.as_str())
                    && user.is_none_or(|u| rec.user_id() == Some(u))
                {
                    doomed.push(key);
                }
            }
            let mut n = 0;
            for key in doomed {
                n += u64::from(sessions.remove(key)?.is_some());
            }
            Ok(n)
        })
        .await
    }

    pub(super) async fn sessions_of_user(
        &self,
        user_id: UserId,
    ) -> Result<Vec<(SessionKey, SessionRecord)>, StoreError> {
        self.read_blocking(move |txn| {
            let by_user = txn.open_table(SESSIONS_BY_USER)?;
            let sessions = txn.open_table(SESSIONS)?;
            let mut out = Vec::new();
            for row in by_user.range((user_id.0, [0u8; 32])..=(user_id.0, [0xffu8; 32]))? {
                let key = SessionKey(row?.0.value().1);
                let rec = get_session(&sessions, key)?.ok_or_else(|| {
                    Fail::Corrupt(format!("sessions_by_user names {key:?}, which is missing"))
                })?;
                out.push((key, rec));
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn sessions(&self) -> Result<Vec<(SessionKey, SessionRecord)>, StoreError> {
        self.read_blocking(|txn| {
            let sessions = txn.open_table(SESSIONS)?;
            let mut out = Vec::new();
            for row in sessions.range::<[u8; 32]>(..)? {
                let (k, v) = row?;
                let key = SessionKey(k.value());
                out.push((key, decode(v.value(), || format!("session {key:?}"))?));
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn touch_sessions(
        &self,
        batch: Vec<(SessionKey, i64)>,
    ) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.write(move |txn| {
            let mut sessions = txn.open_table(SESSIONS)?;
            for (key, seen) in batch {
                if let Some(mut rec) = get_session(&sessions, key)?
                    && seen > rec.last_seen
                {
                    rec.last_seen = seen;
                    sessions.insert(key.0, encode(&rec).as_slice())?;
                }
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn update_session(
        &self,
        key: SessionKey,
        record: SessionRecord,
    ) -> Result<(), StoreError> {
        self.write(move |txn| {
            let mut sessions = SessionTables::open(txn)?;
            let Some(old) = sessions.remove(key)? else {
                return Err(StoreError::NotFound(format!("{key:?}")).into());
            };
            if let Some(uid) = record.user_id()
                && old.user_id() != Some(uid)
                && get_user(&txn.open_table(USERS)?, uid)?.is_none()
            {
                return Err(user_not_found(uid));
            }
            sessions.insert(key, &record)
        })
        .await
    }

    /// Record a failure for `key` at `now` and return how many fall within the last `window` seconds.
    pub(super) async fn record_failure(
        &self,
        key: String,
        now: i64,
        window: i64,
    ) -> Result<u32, StoreError> {
        self.write(move |txn| {
            let mut t = txn.open_table(RATE_LIMITS)?;
            let mut times: Vec<i64> = match t.get(key.as_str())? {
                Some(v) => serde_json::from_slice(v.value()).unwrap_or_default(),
                None => Vec::new(),
            };
            times.retain(|x| *x > now - window);
            times.push(now);
            // Bounded: only the newest entries matter for any sane limit.
            let excess = times.len().saturating_sub(256);
            times.drain(..excess);
            let bytes = serde_json::to_vec(&times).expect("a list of numbers serialises");
            t.insert(key.as_str(), bytes.as_slice())?;
            Ok(times.len() as u32)
        })
        .await
    }

    /// How many failures `key` has within the last `window` seconds (a read).
    pub(super) async fn failures(
        &self,
        key: &str,
        now: i64,
        window: i64,
    ) -> Result<u32, StoreError> {
        self.read(|txn| {
            let t = txn.open_table(RATE_LIMITS)?;
            let times: Vec<i64> = match t.get(key)? {
                Some(v) => serde_json::from_slice(v.value()).unwrap_or_default(),
                None => Vec::new(),
            };
            Ok(times.iter().filter(|x| **x > now - window).count() as u32)
        })
    }

    /// Delete rate-limit rows with no entry newer than `now - window` (bounded growth, S14).
    pub(super) async fn prune_rate_limits(&self, now: i64, window: i64) -> Result<u64, StoreError> {
        self.write(move |txn| {
            let mut t = txn.open_table(RATE_LIMITS)?;
            let mut stale = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                let times: Vec<i64> = serde_json::from_slice(v.value()).unwrap_or_default();
                if times.iter().all(|x| *x <= now - window) {
                    stale.push(k.value().to_string());
                }
            }
            for k in &stale {
                t.remove(k.as_str())?;
            }
            Ok(stale.len() as u64)
        })
        .await
    }

    /// Forget the failures of `key` (after a success).
    pub(super) async fn forget_failure(&self, key: String, at: i64) -> Result<(), StoreError> {
        self.write(move |txn| {
            let mut t = txn.open_table(RATE_LIMITS)?;
            let mut times: Vec<i64> = match t.get(key.as_str())? {
                Some(v) => serde_json::from_slice(v.value()).unwrap_or_default(),
                None => return Ok(()),
            };
            if let Some(i) = times.iter().rposition(|x| *x == at) {
                times.remove(i);
                if times.is_empty() {
                    t.remove(key.as_str())?;
                } else {
                    let bytes = serde_json::to_vec(&times).expect("a list of numbers serialises");
                    t.insert(key.as_str(), bytes.as_slice())?;
                }
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn clear_failures(&self, key: String) -> Result<(), StoreError> {
        self.write(move |txn| {
            txn.open_table(RATE_LIMITS)?.remove(key.as_str())?;
            Ok(())
        })
        .await
    }

    /// Mark `(scope, id)` used until `expires`; false when it is already marked and `expires` has not passed.
    pub(super) async fn use_replay_id(
        &self,
        scope: String,
        id: String,
        expires: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.write(move |txn| {
            let mut t = txn.open_table(REPLAY)?;
            let seen = t.get((scope.as_str(), id.as_str()))?.map(|g| g.value());
            if seen.is_some_and(|until| until > now) {
                return Ok(false);
            }
            t.insert((scope.as_str(), id.as_str()), expires)?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn forget_replay_id(
        &self,
        scope: String,
        id: String,
    ) -> Result<(), StoreError> {
        self.write(move |txn| {
            txn.open_table(REPLAY)?
                .remove((scope.as_str(), id.as_str()))?;
            Ok(())
        })
        .await
    }

    /// Delete replay rows whose time has passed (`<= now`).
    pub(super) async fn prune_replay(&self, now: i64) -> Result<u64, StoreError> {
        self.write(move |txn| {
            let mut t = txn.open_table(REPLAY)?;
            let mut stale = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                if v.value() <= now {
                    let (scope, id) = k.value();
                    stale.push((scope.to_string(), id.to_string()));
                }
            }
            for (scope, id) in &stale {
                t.remove((scope.as_str(), id.as_str()))?;
            }
            Ok(stale.len() as u64)
        })
        .await
    }

    pub(super) async fn prune_expired(&self, now: i64) -> Result<u64, StoreError> {
        self.write(move |txn| {
            let mut sessions = SessionTables::open(txn)?;
            let mut expired = Vec::new();
            for row in sessions.by_expiry.range(..=(now, [0xffu8; 32]))? {
                expired.push(SessionKey(row?.0.value().1));
            }
            let mut n = 0;
            for key in expired {
                n += u64::from(sessions.remove(key)?.is_some());
            }
            Ok(n)
        })
        .await
    }

    // ----- signing keys -----

    pub(super) async fn signing_keys(&self) -> Result<Vec<SigningKey>, StoreError> {
        self.read_blocking(|txn| all_signing_keys(&txn.open_table(SIGNING_KEYS)?))
            .await
    }

    pub(super) async fn put_signing_key(&self, key: SigningKey) -> Result<(), StoreError> {
        self.write(move |txn| {
            let mut t = txn.open_table(SIGNING_KEYS)?;
            if t.get(key.kid.as_str())?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "signing key {} already exists",
                    key.kid
                ))
                .into());
            }
            t.insert(key.kid.as_str(), encode(&key).as_slice())?;
            Ok(())
        })
        .await
    }

    pub(super) async fn set_signing_key_state(
        &self,
        kid: String,
        state: SigningKeyState,
        now: i64,
    ) -> Result<SigningKey, StoreError> {
        use SigningKeyState as S;
        self.write(move |txn| {
            let mut t = txn.open_table(SIGNING_KEYS)?;
            let mut key = get_signing_key(&t, &kid)?.ok_or_else(|| signing_key_not_found(&kid))?;
            if key.state == state {
                return Ok(key);
            }
            let refuse = |why: &str| {
                Err(Fail::Store(StoreError::Conflict(format!(
                    "signing key {kid} is {}: {why}",
                    key.state
                ))))
            };
            match (key.state, state) {
                (S::Revoked, _) => return refuse("a revoked key never comes back"),
                (_, S::Next) => return refuse("only a new key waits to sign"),
                (S::Retired, S::Current) => return refuse("a retired key never signs again"),
                (_, S::Current) => {
                    for other in all_signing_keys(&t)? {
                        if other.state == S::Current && other.kid != kid {
                            let mut other = other;
                            other.state = S::Retired;
                            other.retired = Some(now);
                            t.insert(other.kid.as_str(), encode(&other).as_slice())?;
                        }
                    }
                    key.activated = Some(now);
                    key.published.get_or_insert(now);
                }
                (_, S::Retired) => key.retired = Some(now),
                (_, S::Revoked) => {
                    key.private_enc = Vec::new();
                    key.revoked = Some(now);
                }
            }
            key.state = state;
            t.insert(kid.as_str(), encode(&key).as_slice())?;
            Ok(key)
        })
        .await
    }

    pub(super) async fn mark_signing_key_published(
        &self,
        kid: String,
        now: i64,
    ) -> Result<SigningKey, StoreError> {
        self.write(move |txn| {
            let mut t = txn.open_table(SIGNING_KEYS)?;
            let mut key = get_signing_key(&t, &kid)?.ok_or_else(|| signing_key_not_found(&kid))?;
            if key.published.is_none() {
                key.published = Some(now);
                t.insert(kid.as_str(), encode(&key).as_slice())?;
            }
            Ok(key)
        })
        .await
    }

    pub(super) async fn reseal_signing_key(
        &self,
        kid: String,
        private_enc: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.write(move |txn| {
            let mut t = txn.open_table(SIGNING_KEYS)?;
            let mut key = get_signing_key(&t, &kid)?.ok_or_else(|| signing_key_not_found(&kid))?;
            if key.state == SigningKeyState::Revoked {
                return Err(StoreError::Conflict(format!(
                    "signing key {kid} is revoked and keeps no private key"
                ))
                .into());
            }
            key.private_enc = private_enc;
            t.insert(kid.as_str(), encode(&key).as_slice())?;
            Ok(())
        })
        .await
    }

    pub(super) async fn delete_signing_key(&self, kid: String) -> Result<bool, StoreError> {
        self.write(move |txn| {
            let mut t = txn.open_table(SIGNING_KEYS)?;
            let removed = t.remove(kid.as_str())?.is_some();
            Ok(removed)
        })
        .await
    }

    // ----- audit -----

    pub(super) async fn append_audit(&self, events: Vec<NewAuditEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.write(move |txn| {
            let mut meta = txn.open_table(META)?;
            let mut audit = txn.open_table(AUDIT)?;
            for e in events {
                let id = take_next(&mut meta, META_NEXT_AUDIT)?;
                let event = AuditEvent {
                    id,
                    at: e.at,
                    actor: e.actor,
                    action: e.action,
                    target: e.target,
                    detail: e.detail,
                };
                audit.insert(id, encode(&event).as_slice())?;
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn audit(
        &self,
        limit: usize,
        before_id: Option<u64>,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.read_blocking(move |txn| {
            let audit = txn.open_table(AUDIT)?;
            let rows = match before_id {
                Some(b) => audit.range(..b)?,
                None => audit.range::<u64>(..)?,
            };
            let mut out = Vec::new();
            for row in rows.rev().take(limit) {
                let (k, v) = row?;
                out.push(decode(v.value(), || format!("audit event {}", k.value()))?);
            }
            Ok(out)
        })
        .await
    }
}

impl RedbStore {
    /// Every table as one read transaction sees it.
    pub(super) async fn export(&self) -> Result<super::Snapshot, StoreError> {
        self.read_blocking(|txn| {
            let meta = txn.open_table(META)?;
            let get =
                |k: &str| -> Result<Option<u64>, Fail> { Ok(meta.get(k)?.map(|g| g.value())) };
            let mut snap = super::Snapshot {
                bootstrapped: get(META_BOOTSTRAPPED)?.is_some(),
                next_user_id: get(META_NEXT_USER)?.unwrap_or(1),
                next_audit_id: get(META_NEXT_AUDIT)?.unwrap_or(1),
                users: all_users(&txn.open_table(USERS)?)?,
                signing_keys: all_signing_keys(&txn.open_table(SIGNING_KEYS)?)?,
                ..Default::default()
            };
            for row in txn.open_table(LINKS)?.range::<&str>(..)? {
                let (k, v) = row?;
                snap.links.push(decode(v.value(), || {
                    format!("link of Headscale user {:?}", k.value())
                })?);
            }
            for row in txn.open_table(SESSIONS)?.range::<[u8; 32]>(..)? {
                let (k, v) = row?;
                let key = SessionKey(k.value());
                snap.sessions
                    .push((key, decode(v.value(), || format!("session {key:?}"))?));
            }
            for row in txn.open_table(AUDIT)?.range::<u64>(..)? {
                let (k, v) = row?;
                snap.audit
                    .push(decode(v.value(), || format!("audit event {}", k.value()))?);
            }
            for row in txn.open_table(RATE_LIMITS)?.range::<&str>(..)? {
                let (k, v) = row?;
                let times: Vec<i64> = serde_json::from_slice(v.value()).unwrap_or_default();
                snap.rate_limits.push((k.value().to_string(), times));
            }
            Ok(snap)
        })
        .await
    }

    /// Write `snap` into this (empty) store in one transaction; returns how many records.
    pub(super) async fn import(&self, snap: super::Snapshot) -> Result<u64, StoreError> {
        let empty = self.is_empty()?;
        self.write(move |txn| {
            if !empty {
                return Err(Fail::Store(StoreError::Conflict(
                    "the target store already holds users, sessions, links, keys or audit records: nothing was \
                     copied (move it away, or use an empty one)"
                        .into(),
                )));
            }
            let rows = snap.rows();
            {
                let mut users = txn.open_table(USERS)?;
                let mut by_subject = txn.open_table(USERS_BY_SUBJECT)?;
                for u in &snap.users {
                    users.insert(u.id.0, encode(u).as_slice())?;
                    by_subject.insert(u.subject.as_str(), u.id.0)?;
                }
                let mut links = txn.open_table(LINKS)?;
                let mut links_by_user = txn.open_table(LINKS_BY_USER)?;
                for l in &snap.links {
                    links.insert(l.headscale_user_id.as_str(), encode(l).as_slice())?;
                    links_by_user.insert(l.user_id.0, l.headscale_user_id.as_str())?;
                }
                let mut sessions = SessionTables::open(txn)?;
                for (k, r) in &snap.sessions {
                    sessions.insert(*k, r)?;
                }
                let mut keys = txn.open_table(SIGNING_KEYS)?;
                for k in &snap.signing_keys {
                    keys.insert(k.kid.as_str(), encode(k).as_slice())?;
                }
                let mut audit = txn.open_table(AUDIT)?;
                for e in &snap.audit {
                    audit.insert(e.id, encode(e).as_slice())?;
                }
                let mut rl = txn.open_table(RATE_LIMITS)?;
                for (bucket, times) in &snap.rate_limits {
                    let bytes = serde_json::to_vec(times).expect("a list of numbers serialises");
                    rl.insert(bucket.as_str(), bytes.as_slice())?;
                }
            }
            let mut meta = txn.open_table(META)?;
            let max_user = snap.users.iter().map(|u| u.id.0 + 1).max().unwrap_or(1);
            let max_audit = snap.audit.iter().map(|e| e.id + 1).max().unwrap_or(1);
            meta.insert(META_NEXT_USER, snap.next_user_id.max(max_user))?;
            meta.insert(META_NEXT_AUDIT, snap.next_audit_id.max(max_audit))?;
            if snap.bootstrapped || snap.users.iter().any(|u| u.role == Role::Owner) {
                meta.insert(META_BOOTSTRAPPED, 1)?;
            }
            Ok(rows)
        })
        .await
    }
}

/// Write `snap` into a new redb file at `dest` (created 0600; an existing file is refused): a PostgreSQL
/// store's backup. Returns how many records.
pub(super) async fn write_snapshot_file(
    dest: PathBuf,
    snap: super::Snapshot,
) -> Result<u64, StoreError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(&dest).map_err(|source| StoreError::Io {
        path: dest.clone(),
        source,
    })?;
    let store = {
        let d = dest.clone();
        tokio::task::spawn_blocking(move || RedbStore::open(&d, 1 << 20))
            .await
            .map_err(|e| StoreError::Io {
                path: dest.clone(),
                source: std::io::Error::other(format!("the store task did not run: {e}")),
            })?
    };
    let r = match store {
        Ok(s) => s.import(snap).await,
        Err(e) => Err(e),
    };
    if r.is_err() {
        // No half-written backup left behind to be mistaken for a good one.
        let _ = std::fs::remove_file(&dest);
    }
    r
}

// ----- opening -----

/// `None` for a file without tables (new or empty); else the schema version and the tables present.
type Found = Option<(u64, Vec<String>)>;

fn inspect(txn: &ReadTransaction) -> Result<Found, Fail> {
    let tables: Vec<String> = txn.list_tables()?.map(|t| t.name().to_string()).collect();
    if tables.is_empty() {
        return Ok(None);
    }
    let version = if tables.iter().any(|t| t == "meta") {
        txn.open_table(META)?.get(META_SCHEMA)?.map(|g| g.value())
    } else {
        None
    };
    match version {
        Some(v) => Ok(Some((v, tables))),
        None => Err(Fail::Corrupt(
            "it is a redb file without headgate's schema version".into(),
        )),
    }
}

fn check_schema(path: &Path, found: &Found) -> Result<(), StoreError> {
    match found {
        Some((v, _)) if *v > SCHEMA_VERSION => Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found: *v,
            supported: SCHEMA_VERSION,
        }),
        _ => Ok(()),
    }
}

/// Run redb's open, reporting a panic (a damaged file that still has redb's magic number can make redb panic
/// rather than return an error) as a corrupt file instead of taking the process down.
fn guard_panic<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("redb failed reading it: {msg}"),
        }
    })
}

// ----- helpers inside a transaction -----

/// Create the file (readable by this user only, S17) if it does not exist yet; redb then opens it.
/// Copy one table's rows from a read snapshot into a write transaction.
fn copy_table<K: ::redb::Key + 'static, V: ::redb::Value + 'static>(
    src: &ReadTransaction,
    dst: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<u64, Fail> {
    let from = src.open_table(def)?;
    let mut to = dst.open_table(def)?;
    let mut n = 0;
    for row in from.iter()? {
        let (k, v) = row?;
        to.insert(k.value(), v.value())?;
        n += 1;
    }
    Ok(n)
}

fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    match o.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn take_next(meta: &mut Table<&str, u64>, key: &str) -> Result<u64, Fail> {
    let n = meta.get(key)?.map(|g| g.value()).unwrap_or(1);
    meta.insert(key, n + 1)?;
    Ok(n)
}

fn get_user(
    users: &impl ReadableTable<u64, &'static [u8]>,
    id: UserId,
) -> Result<Option<User>, Fail> {
    match users.get(id.0)? {
        Some(g) => Ok(Some(decode(g.value(), || format!("user {id}"))?)),
        None => Ok(None),
    }
}

fn all_users(users: &impl ReadableTable<u64, &'static [u8]>) -> Result<Vec<User>, Fail> {
    let mut out = Vec::new();
    for row in users.range::<u64>(..)? {
        let (k, v) = row?;
        out.push(decode(v.value(), || format!("user {}", k.value()))?);
    }
    Ok(out)
}

fn get_signing_key(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    kid: &str,
) -> Result<Option<SigningKey>, Fail> {
    match t.get(kid)? {
        Some(g) => Ok(Some(decode(g.value(), || format!("signing key {kid:?}"))?)),
        None => Ok(None),
    }
}

fn all_signing_keys(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<SigningKey>, Fail> {
    let mut out = Vec::new();
    for row in t.range::<&str>(..)? {
        let (k, v) = row?;
        out.push(decode(v.value(), || {
            format!("signing key {:?}", k.value())
        })?);
    }
    Ok(out)
}

fn signing_key_not_found(kid: &str) -> Fail {
    Fail::Store(StoreError::NotFound(format!("signing key {kid}")))
}

fn get_link(
    links: &impl ReadableTable<&'static str, &'static [u8]>,
    hs: &str,
) -> Result<Option<Link>, Fail> {
    match links.get(hs)? {
        Some(g) => Ok(Some(decode(g.value(), || {
            format!("link of Headscale user {hs:?}")
        })?)),
        None => Ok(None),
    }
}

fn get_session(
    sessions: &impl ReadableTable<[u8; 32], &'static [u8]>,
    key: SessionKey,
) -> Result<Option<SessionRecord>, Fail> {
    match sessions.get(key.0)? {
        Some(g) => Ok(Some(decode(g.value(), || format!("session {key:?}"))?)),
        None => Ok(None),
    }
}

/// The session table and its two indexes, kept in step.
struct SessionTables<'txn> {
    main: Table<'txn, [u8; 32], &'static [u8]>,
    by_user: Table<'txn, (u64, [u8; 32]), ()>,
    by_expiry: Table<'txn, (i64, [u8; 32]), ()>,
}

impl<'txn> SessionTables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, Fail> {
        Ok(SessionTables {
            main: txn.open_table(SESSIONS)?,
            by_user: txn.open_table(SESSIONS_BY_USER)?,
            by_expiry: txn.open_table(SESSIONS_BY_EXPIRY)?,
        })
    }

    fn insert(&mut self, key: SessionKey, rec: &SessionRecord) -> Result<(), Fail> {
        self.main.insert(key.0, encode(rec).as_slice())?;
        if let Some(uid) = rec.user_id() {
            self.by_user.insert((uid.0, key.0), ())?;
        }
        self.by_expiry.insert((rec.expires, key.0), ())?;
        Ok(())
    }

    fn remove(&mut self, key: SessionKey) -> Result<Option<SessionRecord>, Fail> {
        let rec = match self.main.remove(key.0)? {
            Some(g) => decode::<SessionRecord>(g.value(), || format!("session {key:?}"))?,
            None => return Ok(None),
        };
        if let Some(uid) = rec.user_id() {
            self.by_user.remove((uid.0, key.0))?;
        }
        self.by_expiry.remove((rec.expires, key.0))?;
        Ok(Some(rec))
    }

    fn keys_of_user(&self, user_id: UserId) -> Result<Vec<SessionKey>, Fail> {
        let mut keys = Vec::new();
        for row in self
            .by_user
            .range((user_id.0, [0u8; 32])..=(user_id.0, [0xffu8; 32]))?
        {
            keys.push(SessionKey(row?.0.value().1));
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn tmp() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("headgate.redb");
        (dir, path)
    }

    /// Write straight into the file with redb, as a newer or broken headgate would have.
    fn poke(path: &Path, f: impl FnOnce(&WriteTransaction)) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        f(&txn);
        txn.commit().unwrap();
    }

    #[test]
    fn records_carry_a_version_byte() {
        let e = AuditEvent {
            id: 1,
            at: 2,
            actor: "a".into(),
            action: "b".into(),
            target: "c".into(),
            detail: "d".into(),
        };
        let b = encode(&e);
        assert_eq!(b[0], RECORD_V1);
        assert_eq!(decode::<AuditEvent>(&b, || "x".into()).ok(), Some(e));
        let mut newer = b.clone();
        newer[0] = 9;
        let Err(Fail::Corrupt(d)) = decode::<AuditEvent>(&newer, || "audit event 1".into()) else {
            panic!()
        };
        assert!(
            d.contains("audit event 1") && d.contains("version 9"),
            "{d}"
        );
        assert!(matches!(
            decode::<AuditEvent>(&[], || "x".into()),
            Err(Fail::Corrupt(_))
        ));
        assert!(matches!(
            decode::<AuditEvent>(b"\x01{not json", || "x".into()),
            Err(Fail::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn new_file_gets_the_current_schema_and_mode_0600() {
        let (_d, path) = tmp();
        let s = Store::open_redb(&path, 1 << 20).unwrap();
        assert_eq!(s.schema_version().await.unwrap(), SCHEMA_VERSION);
        assert!(!s.is_bootstrapped().await.unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        drop(s);
        // Reopening keeps it.
        let s = Store::open_redb(&path, 1 << 20).unwrap();
        assert_eq!(s.schema_version().await.unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn an_empty_file_becomes_a_store() {
        let (_d, path) = tmp();
        std::fs::write(&path, b"").unwrap();
        let s = Store::open_redb(&path, 1 << 20).unwrap();
        assert_eq!(s.location(), format!("redb file {}", path.display()));
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused_and_left_alone() {
        let (_d, path) = tmp();
        drop(Store::open_redb(&path, 1 << 20).unwrap());
        poke(&path, |txn| {
            txn.open_table(META)
                .unwrap()
                .insert(META_SCHEMA, SCHEMA_VERSION + 1)
                .unwrap();
        });
        let before = std::fs::read(&path).unwrap();
        let err = Store::open_redb(&path, 1 << 20).unwrap_err();
        let StoreError::NewerSchema {
            found, supported, ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!((*found, *supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        assert_eq!(
            err.to_string(),
            format!(
                "{} was written by a newer headgate (schema {}, this binary understands {}): upgrade headgate or \
                 restore a backup",
                path.display(),
                SCHEMA_VERSION + 1,
                SCHEMA_VERSION
            )
        );
        assert!(
            std::fs::read(&path).unwrap() == before,
            "the file was modified"
        );
    }

    #[test]
    fn an_unknown_older_schema_is_refused_by_the_migration_hook() {
        let (_d, path) = tmp();
        drop(Store::open_redb(&path, 1 << 20).unwrap());
        poke(&path, |txn| {
            txn.open_table(META)
                .unwrap()
                .insert(META_SCHEMA, 0)
                .unwrap();
        });
        let err = Store::open_redb(&path, 1 << 20).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { detail, .. } if detail.contains("no migration")),
            "{err}"
        );
        // The failed migration wrote nothing: still version 0.
        let db = Database::open(&path).unwrap();
        let v = db
            .begin_read()
            .unwrap()
            .open_table(META)
            .unwrap()
            .get(META_SCHEMA)
            .unwrap()
            .unwrap()
            .value();
        assert_eq!(v, 0);
    }

    #[test]
    fn a_redb_file_of_another_program_is_refused() {
        let (_d, path) = tmp();
        const OTHER: TableDefinition<u64, u64> = TableDefinition::new("something_else");
        poke(&path, |txn| {
            txn.open_table(OTHER).unwrap().insert(1, 2).unwrap();
        });
        let err = Store::open_redb(&path, 1 << 20).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { detail, .. } if detail.contains("schema version")),
            "{err}"
        );
        assert!(err.to_string().starts_with(&format!(
            "{} is not a readable headgate store",
            path.display()
        )));
    }

    #[tokio::test]
    async fn a_record_that_does_not_decode_is_reported_with_the_file_and_key() {
        let (_d, path) = tmp();
        drop(Store::open_redb(&path, 1 << 20).unwrap());
        poke(&path, |txn| {
            txn.open_table(USERS)
                .unwrap()
                .insert(7, b"\x01{\"id\":".as_slice())
                .unwrap();
            txn.open_table(USERS_BY_SUBJECT)
                .unwrap()
                .insert("s7", 7)
                .unwrap();
        });
        let s = Store::open_redb(&path, 1 << 20).unwrap();
        for err in [
            s.user(UserId(7)).await.unwrap_err(),
            s.user_by_subject("s7").await.unwrap_err(),
            s.users().await.unwrap_err(),
        ] {
            let StoreError::Corrupt { path: p, detail } = &err else {
                panic!("{err:?}")
            };
            assert_eq!(p, &path);
            assert!(detail.contains("user 7"), "{detail}");
        }
        assert_eq!(s.user(UserId(8)).await.unwrap(), None);
    }

    #[test]
    fn a_second_open_in_this_process_is_locked_at_once() {
        let (_d, path) = tmp();
        let _first = Store::open_redb(&path, 1 << 20).unwrap();
        let t = std::time::Instant::now();
        let err = Store::open_redb(&path, 1 << 20).unwrap_err();
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        assert!(
            matches!(&err, StoreError::Locked { path: p } if p == &path),
            "{err:?}"
        );
        assert!(err.to_string().starts_with(&format!(
            "another headgate process is using {}",
            path.display()
        )));
    }

    #[test]
    fn redb_errors_map_to_store_errors() {
        let p = PathBuf::from("/x/headgate.redb");
        assert!(matches!(
            map_redb(p.clone(), ::redb::Error::DatabaseAlreadyOpen),
            StoreError::Locked { .. }
        ));
        assert!(matches!(
            map_redb(p.clone(), ::redb::Error::Corrupted("x".into())),
            StoreError::Corrupt { .. }
        ));
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let e = map_redb(p.clone(), ::redb::Error::Io(io));
        assert!(matches!(e, StoreError::Io { .. }));
        assert!(
            e.to_string().contains("/x/headgate.redb") && e.to_string().contains("denied"),
            "{e}"
        );
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, "Not a redb database");
        assert!(matches!(
            map_redb(p, ::redb::Error::Io(io)),
            StoreError::Corrupt { .. }
        ));
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_the_path() {
        let (d, _) = tmp();
        let path = d.path().join("no/such/dir/headgate.redb");
        let err = Store::open_redb(&path, 1 << 20).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }
}
