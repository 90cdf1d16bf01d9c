//! headgate's storage: one async interface that speaks the domain, backed by an embedded redb file (the
//! default, single node) or PostgreSQL (several replicas, `postgres.rs`). Nothing outside this module knows which
//! backend is in use, and no database or transaction type leaves it. Rules that must hold however many
//! replicas run — one owner, one-to-one links, (later) rate limits and replay caches — are decided here,
//! inside one transaction, never in process memory.
//!
//! Time: every timestamp is unix seconds passed in by the caller; the store never reads the clock, so tests
//! control time.
//!
//! Adding a backend: add a variant to `Backend` and an arm to each `Store` method (the `dispatch!` macro).
//! Adding a table (signing keys, rate-limit counters, replay caches): a record type in `records.rs`, a table
//! and its operations in `redb.rs` (see the note at its table list) and in `postgres.rs` (a new entry in its
//! `MIGRATIONS`, one per schema version: a compile-time check keeps them in step with `SCHEMA_VERSION`), a
//! `Store` method here, the table in `Snapshot` (export/import, so `store migrate` and backups carry it),
//! and a schema version bump with a migration step that creates it. A rule that must hold across replicas
//! is decided inside the database (a unique constraint, a row lock, `INSERT … ON CONFLICT`), never by reading
//! and then writing from the process; a write that ends a session or changes a user announces it with
//! `notify` in its transaction (the read cache, S16).

mod postgres;
mod records;
mod redb;

pub use postgres::{CACHE_LIFETIME, check_postgres_url, load_ca_file, probe_postgres};

pub use records::{
    AuditEvent, Link, LinkOutcome, LinkState, NewAuditEvent, NewUser, OwnerBootstrap, OwnerClaim,
    OwnerIdentity, Role, SessionKey, SessionRecord, SessionSubject, SignIn, SignedIn, SigningKey,
    SigningKeyState, User, UserId,
};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A session as a request reads it (see [`Store::session_view`]).
#[derive(Debug, Clone)]
pub struct SessionView {
    pub record: SessionRecord,
    pub user: Option<User>,
    pub link: Option<Link>,
}

/// The schema version this binary writes and understands. A file with a newer version is refused; an older
/// one is migrated at open.
pub const SCHEMA_VERSION: u64 = 1;

/// redb's page cache, set explicitly: its default can grow well past headgate's memory budget.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Why a store operation failed. Every message names the file (where there is one) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (or another open in this process) holds the file.
    #[error(
        "another headgate process is using {}: stop it, or give this one its own server.data_path",
        path.display()
    )]
    Locked { path: PathBuf },
    /// The file was written by a newer headgate.
    #[error(
        "{} was written by a newer headgate (schema {found}, this binary understands {supported}): upgrade \
         headgate or restore a backup",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    /// The file is not a headgate store, or a record in it does not decode. The file is left as it is.
    #[error(
        "{} is not a readable headgate store ({detail}); the file was left unchanged: restore a backup, or move \
         it away to start with an empty store",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
    /// Reading or writing the file failed.
    #[error(
        "cannot use the store {}: {source}; check that its directory exists, has space, and headgate may read \
         and write it",
        path.display()
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The change would break a rule (a second owner, a taken subject, …); nothing was written.
    #[error("{0}")]
    Conflict(String),
    /// The record the operation is about does not exist; nothing was written.
    #[error("{0} not found")]
    NotFound(String),
    /// PostgreSQL cannot be reached, refused the login, or went away (the operation may not have happened).
    #[error(
        "cannot use the PostgreSQL store ({location}): {detail}; check store.url, that PostgreSQL is running \
         and reachable from here, and the user's password"
    )]
    Unavailable { location: String, detail: String },
    /// PostgreSQL refused a statement, or a stored row does not decode; nothing was written.
    #[error("the PostgreSQL store ({location}) failed: {detail}")]
    Database { location: String, detail: String },
}

/// Everything a store holds, as one consistent snapshot: what `headgate store migrate` and a PostgreSQL
/// store's backup copy from one backend into another (an empty one).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub users: Vec<User>,
    pub links: Vec<Link>,
    pub sessions: Vec<(SessionKey, SessionRecord)>,
    pub signing_keys: Vec<SigningKey>,
    pub audit: Vec<AuditEvent>,
    /// `(bucket, unix times of recent failures)`.
    pub rate_limits: Vec<(String, Vec<i64>)>,
    /// The owner-bootstrap marker (S2).
    pub bootstrapped: bool,
    /// The next user id and audit id the store will hand out (ids are never reused).
    pub next_user_id: u64,
    pub next_audit_id: u64,
}

impl Snapshot {
    /// How many records it holds (users, links, sessions, keys, audit events, rate-limit rows).
    pub fn rows(&self) -> u64 {
        (self.users.len()
            + self.links.len()
            + self.sessions.len()
            + self.signing_keys.len()
            + self.audit.len()
            + self.rate_limits.len()) as u64
    }
}

/// The store: cheap to clone (an `Arc` inside); every clone is the same store.
///
/// Its methods must run inside a tokio runtime: on redb, writes (and table scans) run on tokio's blocking
/// pool, so a slow fsync never stalls an async worker; point reads run inline (see `redb.rs`). On
/// PostgreSQL every call is async I/O on a small connection pool, and per-request reads may be answered by
/// a cache whose entries live at most [`CACHE_LIFETIME`] (see `postgres.rs`). Every write is one
/// transaction, durable when the call returns; a write whose caller stops waiting still completes or
/// aborts as a whole.
#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
    /// Test hook: while set, the per-request reads (sessions, users, links) fail as an unreadable file would.
    fail_reads: Arc<AtomicBool>,
    /// Signalled after a write that may end a session or change a role (S19: open streams re-check).
    changed: Arc<tokio::sync::Notify>,
}

enum Backend {
    Redb(redb::RedbStore),
    Postgres(postgres::PgStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location())
            .finish()
    }
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &*$self.backend {
            Backend::Redb(b) => b.$method($($arg),*).await,
            Backend::Postgres(b) => b.timed(b.$method($($arg),*)).await,
        }
    };
}

impl Store {
    /// Open (or create, mode 0600) the redb store at `path`, with `cache_size_bytes` of page cache.
    ///
    /// Fails at once with [`StoreError::Locked`] when another process or another `Store` in this process has
    /// the file open; with [`StoreError::NewerSchema`] for a file of a newer headgate; with
    /// [`StoreError::Corrupt`] for a file that is not a headgate store (left byte-identical). An empty or new
    /// file gets the current schema; an older schema is migrated.
    ///
    /// This blocks (it may have to recover the file after a crash): call it before serving, or from
    /// `spawn_blocking`.
    pub fn open_redb(path: &Path, cache_size_bytes: usize) -> Result<Store, StoreError> {
        let b = redb::RedbStore::open(path, cache_size_bytes)?;
        Ok(Store {
            backend: Arc::new(Backend::Redb(b)),
            fail_reads: Arc::new(AtomicBool::new(false)),
            changed: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Connect to PostgreSQL (`store.backend = "postgres"`), apply the schema migrations this binary knows
    /// (under an advisory lock, so replicas starting at once migrate once) and start listening for cache
    /// invalidations. Fails with [`StoreError::Unavailable`] when the database cannot be reached within
    /// `store.connect_timeout`, and with [`StoreError::NewerSchema`] for a database a newer headgate set up.
    pub async fn open_postgres(
        config: &crate::config::PostgresConfig,
    ) -> Result<Store, StoreError> {
        let changed = Arc::new(tokio::sync::Notify::new());
        let b = postgres::PgStore::open(config, changed.clone()).await?;
        Ok(Store {
            backend: Arc::new(Backend::Postgres(b)),
            fail_reads: Arc::new(AtomicBool::new(false)),
            changed,
        })
    }

    /// Open the store `config` names: the redb file under `server.data_path` (on the blocking pool) or
    /// PostgreSQL.
    pub async fn open_configured(config: &crate::config::Config) -> Result<Store, StoreError> {
        match &config.store {
            crate::config::StoreConfig::Redb => {
                let path = config.store_path();
                tokio::task::spawn_blocking(move || Store::open_redb(&path, DEFAULT_CACHE_BYTES))
                    .await
                    .map_err(|e| StoreError::Io {
                        path: config.store_path(),
                        source: std::io::Error::other(format!("opening the store failed: {e}")),
                    })?
            }
            crate::config::StoreConfig::Postgres(pg) => Store::open_postgres(pg).await,
        }
    }

    /// Whether several headgate processes may share this store (PostgreSQL) or only one (redb).
    pub fn is_shared(&self) -> bool {
        matches!(&*self.backend, Backend::Postgres(_))
    }

    /// Test hook: the state of the PostgreSQL read cache, `(listening for invalidations, entries)`; `None`
    /// for redb.
    #[doc(hidden)]
    pub fn cache_state_for_test(&self) -> Option<(bool, usize)> {
        match &*self.backend {
            Backend::Redb(_) => None,
            Backend::Postgres(b) => Some(b.cache_state()),
        }
    }

    /// Every record, as one consistent snapshot.
    pub async fn export(&self) -> Result<Snapshot, StoreError> {
        dispatch!(self.export())
    }

    /// Load a snapshot into this store, which must be empty (no users, sessions, links, audit records or
    /// keys): a non-empty store → [`StoreError::Conflict`], nothing written. All or nothing.
    pub async fn import(&self, snapshot: Snapshot) -> Result<u64, StoreError> {
        let r = dispatch!(self.import(snapshot));
        self.signal_change(r)
    }

    /// Test hook (fail-closed tests, forward-auth.md class 7): while `on`, every per-request read (session,
    /// user, link) fails with an I/O error, on every clone of this store. Not reachable from configuration.
    #[doc(hidden)]
    pub fn fail_reads_for_test(&self, on: bool) {
        self.fail_reads.store(on, Ordering::SeqCst);
    }

    /// Test hook (outage tests: a full or read-only disk): while `on`, every write fails with an I/O error
    /// (nothing is written); reads keep working. Not reachable from configuration. redb only: a PostgreSQL
    /// outage is tested by stopping the server.
    #[doc(hidden)]
    pub fn fail_writes_for_test(&self, on: bool) {
        match &*self.backend {
            Backend::Redb(b) => b.fail_writes_for_test(on),
            Backend::Postgres(_) => panic!("fail_writes_for_test is a redb test hook"),
        }
    }

    fn check_reads(&self) -> Result<(), StoreError> {
        if self.fail_reads.load(Ordering::Relaxed) {
            return Err(StoreError::Io {
                path: PathBuf::from(self.location()),
                source: std::io::Error::other("reads made to fail by a test hook"),
            });
        }
        Ok(())
    }

    /// Signalled (one stored permit) after this process deleted sessions or changed users, and on PostgreSQL
    /// also when another replica's change is announced: whoever tracks open streams re-checks them at once.
    /// Other changes (another process on a redb file cannot happen; a lost notification) are seen by the
    /// periodic re-check.
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    fn signal_change<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if r.is_ok() {
            self.changed.notify_one();
        }
        r
    }

    /// A consistent copy of the whole store in a new file at `dest` (refused when it exists), taken while
    /// the store is in use. Returns how many rows were copied.
    pub async fn backup_to(&self, dest: &Path) -> Result<u64, StoreError> {
        dispatch!(self.backup_to(dest.to_path_buf()))
    }

    /// Whether the store holds no users, sessions, links, audit records or signing keys.
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        match &*self.backend {
            Backend::Redb(b) => b.is_empty(),
            Backend::Postgres(b) => b.timed(b.is_empty()).await,
        }
    }

    /// Where the data lives, for logs (`redb file /var/lib/headgate/headgate.redb`).
    pub fn location(&self) -> String {
        match &*self.backend {
            Backend::Redb(b) => format!("redb file {}", b.path().display()),
            Backend::Postgres(b) => b.location().to_string(),
        }
    }

    /// The schema version stored in the file (or the database).
    pub async fn schema_version(&self) -> Result<u64, StoreError> {
        dispatch!(self.schema_version())
    }

    // ----- users -----

    /// Create a user; `bootstrap` decides (atomically with the "bootstrapped" marker) whether they become
    /// owner (S2). A taken subject or `new.role == Owner` → [`StoreError::Conflict`].
    pub async fn create_user(
        &self,
        new: NewUser,
        bootstrap: OwnerBootstrap,
    ) -> Result<User, StoreError> {
        dispatch!(self.create_user(new, bootstrap))
    }

    pub async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.check_reads()?;
        dispatch!(self.user(id))
    }

    pub async fn user_by_subject(&self, subject: &str) -> Result<Option<User>, StoreError> {
        self.check_reads()?;
        dispatch!(self.user_by_subject(subject))
    }

    /// Every user, by id.
    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        dispatch!(self.users())
    }

    /// Write `user` (found by its id) as a whole. The subject cannot change, and `headscale_user_id` is kept
    /// as stored (links decide it). Ownership: making a user owner while another user is owner, or taking the
    /// owner role away (use [`Store::transfer_ownership`]), is a [`StoreError::Conflict`]; making a user owner
    /// while nobody is (the owner was deleted) is allowed and sets the bootstrapped marker.
    ///
    /// Every field is overwritten with the caller's copy, so a change made since that copy was read is lost:
    /// this is for tools and tests that own the record. Request paths use the field-level writes instead
    /// ([`Store::record_sign_in`], [`Store::apply_idp_role`], [`Store::set_role`], [`Store::mark_onboarded`],
    /// [`Store::make_owner_if_none`]), each decided on the stored record inside one write transaction.
    pub async fn update_user(&self, user: &User) -> Result<(), StoreError> {
        let r = dispatch!(self.update_user(user.clone()));
        self.signal_change(r)
    }

    /// A sign-in of an existing user: writes only the sign-in fields and the IdP's role (see [`SignIn`]) to
    /// the record as stored now, in one write transaction. Unknown user → NotFound.
    pub async fn record_sign_in(&self, id: UserId, s: SignIn) -> Result<SignedIn, StoreError> {
        let r = dispatch!(self.record_sign_in(id, s));
        self.signal_change(r)
    }

    /// The IdP's role claim at a session refresh (S13): applied to the role stored now (the owner stays
    /// owner; `owner` never comes from a claim), in one write transaction. Unknown user → NotFound.
    pub async fn apply_idp_role(&self, id: UserId, role: Role) -> Result<SignedIn, StoreError> {
        let r = dispatch!(self.apply_idp_role(id, role));
        self.signal_change(r)
    }

    /// An administrator's role change, decided on the stored record inside one write transaction: `owner`
    /// is never given this way, the owner's role never changes (transfer ownership), and with `expected`
    /// the change applies only while the stored role still is `expected` (the role the caller's rights were
    /// checked against); otherwise [`StoreError::Conflict`] and nothing changes. Unknown user → NotFound.
    /// Returns the user as stored after the write.
    pub async fn set_role(
        &self,
        id: UserId,
        role: Role,
        expected: Option<Role>,
    ) -> Result<User, StoreError> {
        let r = dispatch!(self.set_role(id, role, expected));
        self.signal_change(r)
    }

    /// Mark the user as done with onboarding (only that field). Unknown user → NotFound.
    pub async fn mark_onboarded(&self, id: UserId) -> Result<(), StoreError> {
        let r = dispatch!(self.mark_onboarded(id));
        self.signal_change(r)
    }

    /// Make `id` the owner if, and only if, nobody is (decided in one write transaction with the
    /// bootstrapped marker, which it sets): for the local operator after the owner was deleted, or to
    /// bootstrap without the first-sign-in rule. Someone being owner already → [`OwnerClaim::Taken`] with
    /// them, nothing changed. Unknown user → NotFound.
    pub async fn make_owner_if_none(&self, id: UserId) -> Result<OwnerClaim, StoreError> {
        let r = dispatch!(self.make_owner_if_none(id));
        self.signal_change(r)
    }

    /// Delete a user with their sessions and link. The bootstrapped marker stays: deleting the owner never
    /// lets the next sign-in become owner.
    pub async fn delete_user(&self, id: UserId) -> Result<(), StoreError> {
        let r = dispatch!(self.delete_user(id));
        self.signal_change(r)
    }

    /// Make `to` the owner and `from` (who must be the owner) an admin, in one transaction.
    pub async fn transfer_ownership(&self, from: UserId, to: UserId) -> Result<(), StoreError> {
        let r = dispatch!(self.transfer_ownership(from, to));
        self.signal_change(r)
    }

    /// Whether an owner was ever made (the persisted marker of S2).
    pub async fn is_bootstrapped(&self) -> Result<bool, StoreError> {
        dispatch!(self.is_bootstrapped())
    }

    // ----- links -----

    /// Store `link` unless its Headscale user or its headgate user is already linked (decided in one
    /// transaction). An approved link also sets the user's `headscale_user_id`. Unknown user → NotFound.
    pub async fn link_if_unclaimed(&self, link: Link) -> Result<LinkOutcome, StoreError> {
        dispatch!(self.link_if_unclaimed(link))
    }

    pub async fn link_of_user(&self, user_id: UserId) -> Result<Option<Link>, StoreError> {
        self.check_reads()?;
        dispatch!(self.link_of_user(user_id))
    }

    pub async fn link_of_headscale_user(
        &self,
        headscale_user_id: &str,
    ) -> Result<Option<Link>, StoreError> {
        dispatch!(self.link_of_headscale_user(headscale_user_id))
    }

    /// Approve the user's pending link (idempotent) and set their `headscale_user_id`; no link → NotFound.
    pub async fn approve_link(&self, user_id: UserId) -> Result<Link, StoreError> {
        dispatch!(self.approve_link(user_id))
    }

    /// Remove the user's link (and clear their `headscale_user_id`); returns the removed link, if any.
    pub async fn remove_link(&self, user_id: UserId) -> Result<Option<Link>, StoreError> {
        dispatch!(self.remove_link(user_id))
    }

    /// Every link, by Headscale user id.
    pub async fn links(&self) -> Result<Vec<Link>, StoreError> {
        dispatch!(self.links())
    }

    // ----- sessions -----

    /// Store a new session. A taken key → Conflict; a user session for an unknown user → NotFound.
    pub async fn create_session(
        &self,
        key: SessionKey,
        record: SessionRecord,
    ) -> Result<(), StoreError> {
        dispatch!(self.create_session(key, record))
    }

    /// A session with its person and their link (any state), read in one transaction: what a request needs
    /// to know about its caller. `None`: no such session (expired or not: the caller compares `expires`).
    /// The user is `None` for an API-key session, and for a user session whose user is gone.
    ///
    /// The redb backend keeps the views it read until the next write (any write), so a repeated read of an
    /// unchanged session costs a hash lookup.
    pub async fn session_view(
        &self,
        key: &SessionKey,
    ) -> Result<Option<Arc<SessionView>>, StoreError> {
        self.check_reads()?;
        match &*self.backend {
            Backend::Redb(b) => b.session_view(*key),
            Backend::Postgres(b) => b.timed(b.session_view(*key)).await,
        }
    }

    /// Store many new sessions in one transaction (imports, benchmarks): all or nothing, with the rules of
    /// [`Store::create_session`] for each.
    pub async fn create_sessions(
        &self,
        batch: Vec<(SessionKey, SessionRecord)>,
    ) -> Result<(), StoreError> {
        dispatch!(self.create_sessions(batch))
    }

    /// How many sessions have not expired at `now` (counted on the expiry index; no record is decoded).
    pub async fn count_live_sessions(&self, now: i64) -> Result<u64, StoreError> {
        dispatch!(self.count_live_sessions(now))
    }

    /// The API-key sessions with their key prefix (read one record at a time; user sessions are skipped).
    pub async fn api_key_sessions(&self) -> Result<Vec<(SessionKey, String)>, StoreError> {
        dispatch!(self.api_key_sessions())
    }

    /// The session, if stored (expired or not: the caller compares `expires` with its clock). Only reads.
    pub async fn session(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StoreError> {
        self.check_reads()?;
        dispatch!(self.session(*key))
    }

    /// Delete a session; returns whether it existed.
    pub async fn delete_session(&self, key: &SessionKey) -> Result<bool, StoreError> {
        let r = dispatch!(self.delete_session(*key));
        self.signal_change(r)
    }

    /// Delete every session of a user; returns how many.
    pub async fn delete_sessions_of_user(&self, user_id: UserId) -> Result<u64, StoreError> {
        let r = dispatch!(self.delete_sessions_of_user(user_id));
        self.signal_change(r)
    }

    /// Delete every session whose IdP session id (`SessionRecord::idp_sid`) is `sid`, restricted to `user`'s
    /// sessions when given (back-channel logout); returns how many.
    pub async fn delete_sessions_by_idp_sid(
        &self,
        sid: &str,
        user: Option<UserId>,
    ) -> Result<u64, StoreError> {
        let r = dispatch!(self.delete_sessions_by_idp_sid(sid.to_string(), user));
        self.signal_change(r)
    }

    pub async fn sessions_of_user(
        &self,
        user_id: UserId,
    ) -> Result<Vec<(SessionKey, SessionRecord)>, StoreError> {
        dispatch!(self.sessions_of_user(user_id))
    }

    /// Every session (user and API-key), by key.
    pub async fn sessions(&self) -> Result<Vec<(SessionKey, SessionRecord)>, StoreError> {
        dispatch!(self.sessions())
    }

    /// Write a batch of last-seen times in one transaction. Missing keys are skipped; a time older than the
    /// stored one is ignored.
    pub async fn touch_sessions(&self, batch: Vec<(SessionKey, i64)>) -> Result<(), StoreError> {
        dispatch!(self.touch_sessions(batch))
    }

    /// Replace a stored session (a refresh, a new expiry); missing → NotFound.
    pub async fn update_session(
        &self,
        key: &SessionKey,
        record: SessionRecord,
    ) -> Result<(), StoreError> {
        dispatch!(self.update_session(*key, record))
    }

    // ----- rate limits and replay caches (decided by the store, so they hold across replicas) -----

    /// Record a failure for `key` (e.g. `api_key_login:<ip>`) and return the count within `window` seconds.
    pub async fn record_failure(
        &self,
        key: &str,
        now: i64,
        window: i64,
    ) -> Result<u32, StoreError> {
        dispatch!(self.record_failure(key.to_string(), now, window))
    }

    /// Failures of `key` within the last `window` seconds.
    pub async fn failures(&self, key: &str, now: i64, window: i64) -> Result<u32, StoreError> {
        dispatch!(self.failures(key, now, window))
    }

    /// Drop rate-limit rows whose every entry is older than `window` seconds.
    pub async fn prune_rate_limits(&self, now: i64, window: i64) -> Result<u64, StoreError> {
        dispatch!(self.prune_rate_limits(now, window))
    }

    /// Take back one failure recorded at `at` for `key` (an attempt that turned out not to be a guess, e.g.
    /// Headscale did not answer); the others stay.
    pub async fn forget_failure(&self, key: &str, at: i64) -> Result<(), StoreError> {
        dispatch!(self.forget_failure(key.to_string(), at))
    }

    pub async fn clear_failures(&self, key: &str) -> Result<(), StoreError> {
        dispatch!(self.clear_failures(key.to_string()))
    }

    /// Replay cache: mark `id` used in `scope` (e.g. `backchannel_jti`) until `expires`, in one transaction.
    /// Returns false (and changes nothing) when it is already marked and `expires` of that mark is after
    /// `now`: the id was seen before. Across replicas, exactly one caller gets `true` for a given id.
    pub async fn use_replay_id(
        &self,
        scope: &str,
        id: &str,
        expires: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        dispatch!(self.use_replay_id(scope.to_string(), id.to_string(), expires, now))
    }

    /// Undo [`Store::use_replay_id`] (the work the id allowed failed, so a retry must be able to use it).
    pub async fn forget_replay_id(&self, scope: &str, id: &str) -> Result<(), StoreError> {
        dispatch!(self.forget_replay_id(scope.to_string(), id.to_string()))
    }

    /// Drop replay-cache marks whose time has passed (`expires <= now`); returns how many.
    pub async fn prune_replay(&self, now: i64) -> Result<u64, StoreError> {
        dispatch!(self.prune_replay(now))
    }

    /// Delete every session with `expires <= now`; returns how many.
    pub async fn prune_expired(&self, now: i64) -> Result<u64, StoreError> {
        dispatch!(self.prune_expired(now))
    }

    // ----- signing keys of the signed assertion (S15) -----

    /// Every signing key, by kid.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKey>, StoreError> {
        dispatch!(self.signing_keys())
    }

    /// Store a new signing key; a taken kid → Conflict.
    pub async fn put_signing_key(&self, key: SigningKey) -> Result<(), StoreError> {
        dispatch!(self.put_signing_key(key))
    }

    /// Move a key to `state` at `now`, in one transaction, and return it as stored. Making a key `Current`
    /// (only a `Next` key can be) retires the key that was current; `Retired` is reachable from `Next` and
    /// `Current`; `Revoked` from any state, and erases the private key; a revoked key never changes again, and
    /// nothing becomes `Next` again. A refused move → Conflict (nothing written); an unknown kid → NotFound.
    /// Moving to the state a key already has changes nothing.
    pub async fn set_signing_key_state(
        &self,
        kid: &str,
        state: SigningKeyState,
        now: i64,
    ) -> Result<SigningKey, StoreError> {
        dispatch!(self.set_signing_key_state(kid.to_string(), state, now))
    }

    /// Record when a running headgate first published the key (kept if already set); returns the key.
    pub async fn mark_signing_key_published(
        &self,
        kid: &str,
        now: i64,
    ) -> Result<SigningKey, StoreError> {
        dispatch!(self.mark_signing_key_published(kid.to_string(), now))
    }

    /// Replace the encrypted private key (re-encryption under a new `cookie_secret`). A revoked key keeps no
    /// private key: → Conflict.
    pub async fn reseal_signing_key(
        &self,
        kid: &str,
        private_enc: Vec<u8>,
    ) -> Result<(), StoreError> {
        dispatch!(self.reseal_signing_key(kid.to_string(), private_enc))
    }

    /// Delete a key (a retired key whose tokens have all expired); returns whether it existed.
    pub async fn delete_signing_key(&self, kid: &str) -> Result<bool, StoreError> {
        dispatch!(self.delete_signing_key(kid.to_string()))
    }

    // ----- audit -----

    /// Append events in one transaction; ids are assigned in order.
    pub async fn append_audit(&self, events: Vec<NewAuditEvent>) -> Result<(), StoreError> {
        dispatch!(self.append_audit(events))
    }

    /// Up to `limit` events, newest first, with ids below `before_id` when given (paging).
    pub async fn audit(
        &self,
        limit: usize,
        before_id: Option<u64>,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        dispatch!(self.audit(limit, before_id))
    }
}
