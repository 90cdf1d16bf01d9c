//! The PostgreSQL backend: one database shared by several headgate replicas.
//!
//! Rules: everything that must hold across replicas is decided by the database, never by a process. One
//! owner: a partial unique index (`role = 'owner'`) and, for the bootstrap decision, a row lock on the
//! `bootstrapped` marker, so concurrent first sign-ins on different replicas serialise on it. One-to-one
//! links: two unique keys (`headscale_user_id`, `user_id`). One current signing key: a partial unique
//! index, and state moves under a table lock. Rate limits: the bucket row is locked while it is counted and
//! written. Statements run in READ COMMITTED with explicit row locks; a serialization failure or deadlock is
//! retried a few times.
//!
//! Records: rows keep the columns the rules and lookups need (subject, role, user id, expiry, state) and the
//! whole record as versioned JSON (`v`, `record`), like the redb backend's version byte + JSON.
//!
//! Schema: versioned migrations ([`MIGRATIONS`], one per schema version, the applied ones listed in
//! `headgate_schema`) run at open inside one transaction holding an advisory lock, so replicas that start
//! at once migrate once and the others wait, then see the result. Tables are prefixed `headgate_`, so the
//! database may be shared with other programs (Headscale has a `users` table of its own).
//!
//! Per-request reads (`session`, `user`, `link_of_user`) go through a small in-process cache (S16): every
//! entry lives at most [`CACHE_LIFETIME`] from the moment its read began, whatever else happens; writes that
//! end a session or change a user send a `NOTIFY` (in their transaction, so it is delivered at commit) whose
//! payload is an opaque tag (a truncated SHA-256 of the record's kind and key: never a session id or its
//! stored hash), and every replica's listener drops the matching entries; when the listening connection
//! drops, the cache is flushed and bypassed until listening again. So a revocation or role change reaches
//! every replica within about the notification latency, and within [`CACHE_LIFETIME`] at worst.

use super::records::*;
use super::{SCHEMA_VERSION, Snapshot, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{AsyncMessage, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The hard lifetime of a cached session or user (S16): the most a change made on another replica can take
/// to be seen here, even when notifications are lost.
pub const CACHE_LIFETIME: Duration = Duration::from_secs(1);

/// At most this many cached records; past it, expired ones are dropped, and if that is not enough, all.
const CACHE_MAX: usize = 20_000;

/// The LISTEN/NOTIFY channel of cache invalidations.
const CHANNEL: &str = "headgate_cache";

/// The advisory lock held while migrating ("headgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x6865_6164_6761_7465;

/// The version of the JSON in `record` columns.
const RECORD_V1: i16 = 1;

/// `application_name` of the pool's connections and of the listening connection (operators can tell them
/// apart in `pg_stat_activity`; the tests terminate the listener by it).
pub const APP_NAME: &str = "headgate";
pub const LISTENER_APP_NAME: &str = "headgate-listen";

/// One migration per schema version: `MIGRATIONS[i]` takes a database from schema `i` to `i + 1` (schema 0
/// is an empty database). Never edit a migration that shipped: add one (and bump `SCHEMA_VERSION`).
const MIGRATIONS: &[&str] = &[
    // 1: the tables of schema 1.
    r#"
    CREATE TABLE headgate_meta (key text PRIMARY KEY, value bigint NOT NULL);
    INSERT INTO headgate_meta (key, value) VALUES ('bootstrapped', 0);
    CREATE SEQUENCE headgate_user_ids;
    CREATE SEQUENCE headgate_audit_ids;
    CREATE TABLE headgate_users (
        id bigint PRIMARY KEY,
        subject text NOT NULL UNIQUE,
        role text NOT NULL,
        v smallint NOT NULL,
        record jsonb NOT NULL
    );
    CREATE UNIQUE INDEX headgate_users_one_owner ON headgate_users (role) WHERE role = 'owner';
    CREATE TABLE headgate_links (
        headscale_user_id text PRIMARY KEY,
        user_id bigint NOT NULL UNIQUE REFERENCES headgate_users (id) ON DELETE CASCADE,
        v smallint NOT NULL,
        record jsonb NOT NULL
    );
    CREATE TABLE headgate_sessions (
        key bytea PRIMARY KEY CHECK (length(key) = 32),
        user_id bigint REFERENCES headgate_users (id) ON DELETE CASCADE,
        expires bigint NOT NULL,
        v smallint NOT NULL,
        record jsonb NOT NULL
    );
    CREATE INDEX headgate_sessions_by_user ON headgate_sessions (user_id);
    CREATE INDEX headgate_sessions_by_expiry ON headgate_sessions (expires);
    CREATE TABLE headgate_audit (id bigint PRIMARY KEY, v smallint NOT NULL, record jsonb NOT NULL);
    CREATE TABLE headgate_rate_limits (bucket text PRIMARY KEY, times bigint[] NOT NULL);
    CREATE TABLE headgate_signing_keys (
        kid text PRIMARY KEY,
        state text NOT NULL,
        v smallint NOT NULL,
        record jsonb NOT NULL
    );
    CREATE UNIQUE INDEX headgate_signing_keys_one_current ON headgate_signing_keys (state)
        WHERE state = 'current';
    CREATE TABLE headgate_replay (
        scope text NOT NULL,
        id text NOT NULL,
        expires bigint NOT NULL,
        PRIMARY KEY (scope, id)
    );
    CREATE INDEX headgate_replay_by_expiry ON headgate_replay (expires);
    "#,
];

const _: () = assert!(MIGRATIONS.len() as u64 == SCHEMA_VERSION);

// ----- configuration helpers (used by config validation too) -----

/// Check a `store.url` without connecting; the message never repeats the URL (it may hold a password).
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    let cfg: tokio_postgres::Config = url.parse().map_err(|e| {
        format!(
            "is not a PostgreSQL connection URL or key=value string ({e}); e.g. \
             \"postgresql://headgate:PASSWORD@db.example.com:5432/headgate\" or, over a unix socket, \
             \"postgresql://headgate@%2Frun%2Fpostgresql/headgate\" (sslmode may be disable, prefer or require)"
        )
    })?;
    if cfg.get_hosts().is_empty() {
        return Err(
            "names no host: add one (a name, an IP address, or a unix socket directory such as \
             host=/run/postgresql)"
                .into(),
        );
    }
    if cfg.get_user().is_none() {
        return Err("names no user: e.g. postgresql://headgate@db.example.com/headgate".into());
    }
    Ok(())
}

/// Read the PEM certificates of `store.tls_ca_path`.
pub fn load_ca_file(path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no CERTIFICATE block", path.display()));
    }
    Ok(certs)
}

/// TLS for `sslmode=prefer|require`: the server certificate is verified (name and chain) against the public
/// roots and `store.tls_ca_path`.
fn tls(ca: Option<&Path>) -> Result<MakeRustlsConnect, String> {
    crate::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(p) = ca {
        for c in load_ca_file(p)? {
            roots
                .add(c)
                .map_err(|e| format!("store.tls_ca_path {}: {e}", p.display()))?;
        }
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(cfg))
}

/// Where the data lives, for messages: database, hosts and user, never the password.
fn describe(cfg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let ports = cfg.get_ports();
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
            }
        })
        .collect();
    let user = cfg.get_user().unwrap_or("?");
    format!(
        "PostgreSQL database {} on {} as {user}",
        cfg.get_dbname().unwrap_or(user),
        hosts.join(",")
    )
}

/// Connect once, read the schema version (0 when headgate never ran there), change nothing: for
/// `check-config`. Returns where the data lives (no password) and the version.
pub async fn probe_postgres(
    config: &crate::config::PostgresConfig,
) -> Result<(String, u64), StoreError> {
    let mut cfg: tokio_postgres::Config =
        config
            .url
            .expose()
            .parse()
            .map_err(|e| StoreError::Unavailable {
                location: "store.url".into(),
                detail: format!("store.url does not parse: {e}"),
            })?;
    let location = describe(&cfg);
    let unavailable = |detail: String| StoreError::Unavailable {
        location: location.clone(),
        detail,
    };
    let timeout = Duration::from_secs(config.connect_timeout);
    cfg.connect_timeout(timeout).application_name(APP_NAME);
    let tls = tls(config.tls_ca_path.as_deref()).map_err(&unavailable)?;
    let (client, conn) = tokio::time::timeout(timeout, cfg.connect(tls))
        .await
        .map_err(|_| unavailable("no connection within store.connect_timeout".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
    let task = tokio::spawn(conn);
    let version = async {
        let exists: bool = client
            .query_one("SELECT to_regclass('headgate_schema') IS NOT NULL", &[])
            .await?
            .get(0);
        if !exists {
            return Ok(0);
        }
        let v: i64 = client
            .query_one("SELECT coalesce(max(version), 0) FROM headgate_schema", &[])
            .await?
            .get(0);
        Ok::<_, tokio_postgres::Error>(v)
    }
    .await;
    drop(client);
    let _ = task.await;
    let v = version.map_err(|e| unavailable(e.to_string()))?;
    Ok((location, v as u64))
}

// ----- errors -----

/// An error inside an operation, turned into a [`StoreError`] (with the location) at the boundary.
enum Fail {
    Pg(tokio_postgres::Error),
    Corrupt(String),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Fail {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

fn user_not_found(id: UserId) -> Fail {
    Fail::Store(StoreError::NotFound(format!("user {id}")))
}

fn signing_key_not_found(kid: &str) -> Fail {
    Fail::Store(StoreError::NotFound(format!("signing key {kid}")))
}

fn sql_state(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// A transaction that lost a race and may simply be run again.
fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(sql_state(e), Some("40001" | "40P01"))
}

// ----- records -----

fn decode<T: DeserializeOwned>(row: &Row, what: impl FnOnce() -> String) -> Result<T, Fail> {
    let v: i16 = row.try_get("v")?;
    if v != RECORD_V1 {
        return Err(Fail::Corrupt(format!(
            "{} has an unknown record version {v}",
            what()
        )));
    }
    let j: serde_json::Value = row.try_get("record")?;
    serde_json::from_value(j).map_err(|e| Fail::Corrupt(format!("{} does not decode: {e}", what())))
}

fn session_key(row: &Row) -> Result<SessionKey, Fail> {
    let k: Vec<u8> = row.try_get("key")?;
    let k: [u8; 32] = k
        .try_into()
        .map_err(|_| Fail::Corrupt("a session key is not 32 bytes".into()))?;
    Ok(SessionKey(k))
}

fn id(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn uid(row: &Row, col: &str) -> Result<UserId, Fail> {
    let n: i64 = row.try_get(col)?;
    Ok(UserId(n as u64))
}

// ----- cache tags -----

/// What a notification names: a truncated SHA-256 of the record's kind and key. It tells a listener which
/// cached entry to drop and nothing else.
type Tag = [u8; 12];

fn tag(kind: &[u8], key: &[u8]) -> Tag {
    let h = Sha256::new()
        .chain_update(b"headgate cache tag\0")
        .chain_update(kind)
        .chain_update(b"\0")
        .chain_update(key)
        .finalize();
    let mut t = [0u8; 12];
    t.copy_from_slice(&h[..12]);
    t
}

fn user_tag(id: &UserId) -> Tag {
    tag(b"user", &id.0.to_be_bytes())
}

fn session_tag(key: &SessionKey) -> Tag {
    tag(b"session", key.as_bytes())
}

fn hex(t: &Tag) -> String {
    t.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_tag(s: &str) -> Option<Tag> {
    if s.len() != 24 {
        return None;
    }
    let mut t = [0u8; 12];
    for (i, o) in t.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(t)
}

/// The payloads that announce `tags` (several tags a payload; one `*` = flush everything, for big batches).
fn payloads(tags: &[Tag]) -> Vec<String> {
    if tags.len() > 2_000 {
        return vec!["*".into()];
    }
    tags.chunks(200)
        .map(|c| c.iter().map(hex).collect::<Vec<_>>().join(","))
        .collect()
}

// ----- the cache -----

struct Entry<K, V> {
    key: K,
    since: Instant,
    value: V,
}

#[derive(Default)]
struct Slot {
    user: Option<Entry<UserId, Option<User>>>,
    link: Option<Entry<UserId, Option<Link>>>,
    session: Option<Entry<SessionKey, Option<SessionRecord>>>,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.user.is_none() && self.link.is_none() && self.session.is_none()
    }

    fn expired(&self, lifetime: Duration) -> bool {
        let old = |s: Option<Instant>| s.is_none_or(|s| s.elapsed() >= lifetime);
        old(self.user.as_ref().map(|e| e.since))
            && old(self.link.as_ref().map(|e| e.since))
            && old(self.session.as_ref().map(|e| e.since))
    }
}

struct CacheInner {
    /// Whether the listener is listening: when not, nothing is served from or put in the cache.
    listening: bool,
    /// Bumped by every invalidation: a read that began before one never fills the cache.
    epoch: u64,
    slots: HashMap<Tag, Slot>,
}

/// The per-process read cache of sessions, users and links (S16).
pub(super) struct Cache {
    inner: Mutex<CacheInner>,
    lifetime: Duration,
    /// Signalled when another replica's change arrives (open streams re-check, S19).
    changed: Arc<tokio::sync::Notify>,
}

/// A read's ticket: the epoch and time it began, or `None` when the cache is off.
type Ticket = Option<(u64, Instant)>;

macro_rules! cached {
    ($name:ident, $put:ident, $field:ident, $k:ty, $v:ty, $tag:expr) => {
        fn $name(&self, key: &$k) -> Option<$v> {
            let g = self.inner.lock().unwrap();
            if !g.listening {
                return None;
            }
            let e = g.slots.get(&$tag(key))?.$field.as_ref()?;
            (e.key == *key && e.since.elapsed() < self.lifetime).then(|| e.value.clone())
        }

        fn $put(&self, ticket: Ticket, key: $k, value: $v) {
            let Some((epoch, since)) = ticket else { return };
            let mut g = self.inner.lock().unwrap();
            if !g.listening || g.epoch != epoch || since.elapsed() >= self.lifetime {
                return;
            }
            Self::make_room(&mut g, self.lifetime);
            g.slots.entry($tag(&key)).or_default().$field = Some(Entry { key, since, value });
        }
    };
}

impl Cache {
    fn new(lifetime: Duration, changed: Arc<tokio::sync::Notify>) -> Cache {
        Cache {
            inner: Mutex::new(CacheInner {
                listening: false,
                epoch: 0,
                slots: HashMap::new(),
            }),
            lifetime,
            changed,
        }
    }

    fn ticket(&self) -> Ticket {
        let g = self.inner.lock().unwrap();
        g.listening.then(|| (g.epoch, Instant::now()))
    }

    cached!(user, put_user, user, UserId, Option<User>, user_tag);
    cached!(link, put_link, link, UserId, Option<Link>, user_tag);
    cached!(
        session,
        put_session,
        session,
        SessionKey,
        Option<SessionRecord>,
        session_tag
    );

    fn make_room(g: &mut CacheInner, lifetime: Duration) {
        if g.slots.len() < CACHE_MAX {
            return;
        }
        g.slots.retain(|_, s| !s.expired(lifetime));
        if g.slots.len() >= CACHE_MAX {
            g.slots.clear();
        }
    }

    /// Drop the entries of `tags` (a local write, or a notification).
    fn invalidate(&self, tags: &[Tag]) {
        let mut g = self.inner.lock().unwrap();
        g.epoch += 1;
        for t in tags {
            g.slots.remove(t);
        }
    }

    fn flush(&self) {
        let mut g = self.inner.lock().unwrap();
        g.epoch += 1;
        g.slots.clear();
    }

    /// Listening (after a flush: what was missed while not listening is gone) or not (flushed, bypassed).
    fn set_listening(&self, on: bool) {
        let mut g = self.inner.lock().unwrap();
        g.epoch += 1;
        g.slots.clear();
        g.listening = on;
    }

    fn on_notification(&self, payload: &str) {
        if payload == "*" {
            self.flush();
        } else {
            let tags: Vec<Tag> = payload.split(',').filter_map(parse_tag).collect();
            self.invalidate(&tags);
        }
        self.changed.notify_one();
    }

    fn state(&self) -> (bool, usize) {
        let g = self.inner.lock().unwrap();
        let n = g.slots.values().filter(|s| !s.is_empty()).count();
        (g.listening, n)
    }
}

/// Listen for invalidations until the store is dropped: connect, `LISTEN`, and flush on every (re)start and
/// drop of the connection.
async fn listen(
    cfg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    cache: Arc<Cache>,
    location: String,
) {
    let mut delay = Duration::from_millis(50);
    loop {
        let connect = tokio::time::timeout(
            cfg.get_connect_timeout()
                .copied()
                .unwrap_or(Duration::from_secs(5)),
            cfg.connect(tls.clone()),
        )
        .await;
        match connect {
            Ok(Ok((client, mut conn))) => {
                let cache2 = cache.clone();
                let drive = async move {
                    loop {
                        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                cache2.on_notification(n.payload())
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return e.to_string(),
                            None => return "the server closed it".to_string(),
                        }
                    }
                };
                tokio::pin!(drive);
                let listen_sql = format!("LISTEN {CHANNEL}");
                let listening = tokio::select! {
                    r = client.batch_execute(&listen_sql) => r.map_err(|e| e.to_string()),
                    why = &mut drive => Err(why),
                };
                match listening {
                    Ok(()) => {
                        cache.set_listening(true);
                        delay = Duration::from_millis(50);
                        tracing::debug!(store = %location, "listening for cache invalidations");
                        let why = drive.await;
                        cache.set_listening(false);
                        tracing::warn!(
                            store = %location,
                            "the connection that listens for cache invalidations ended ({why}): the read cache \
                             is flushed and off until it is back"
                        );
                    }
                    Err(why) => {
                        tracing::warn!(store = %location, "cannot listen for cache invalidations: {why}");
                    }
                }
                drop(client);
            }
            Ok(Err(e)) => {
                tracing::warn!(store = %location, "cannot connect to listen for cache invalidations: {e}");
            }
            Err(_) => {
                tracing::warn!(store = %location, "cannot connect to listen for cache invalidations: timed out");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

// ----- the store -----

pub(super) struct PgStore {
    pool: Pool,
    location: String,
    cache: Arc<Cache>,
    /// The longest one operation may take before it fails as unavailable.
    op_timeout: Duration,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Run `$body` (which uses `$t`, a transaction) and commit; an `Err` rolls back. A serialization failure or
/// deadlock runs it again (a few times).
macro_rules! transaction {
    ($self:ident, $t:ident => $body:block) => {{
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut client = $self.client().await?;
            let $t = client.transaction().await.map_err(|e| $self.pg_err(e))?;
            let r: Result<_, Fail> = async { $body }.await;
            let r = match r {
                Ok(v) => $t.commit().await.map(|()| v).map_err(Fail::Pg),
                Err(f) => Err(f),
            };
            match r {
                Ok(v) => break Ok(v),
                Err(Fail::Pg(e)) if attempt < 6 && retryable(&e) => {
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                }
                Err(f) => break Err($self.fail(f)),
            }
        }
    }};
}

impl PgStore {
    pub(super) async fn open(
        config: &crate::config::PostgresConfig,
        changed: Arc<tokio::sync::Notify>,
    ) -> Result<PgStore, StoreError> {
        let mut cfg: tokio_postgres::Config =
            config
                .url
                .expose()
                .parse()
                .map_err(|e| StoreError::Unavailable {
                    location: "store.url".into(),
                    detail: format!("store.url does not parse: {e}"),
                })?;
        let location = describe(&cfg);
        let connect_timeout = Duration::from_secs(config.connect_timeout);
        cfg.connect_timeout(connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(15))
            .application_name(APP_NAME);
        let tls = tls(config.tls_ca_path.as_deref()).map_err(|detail| StoreError::Unavailable {
            location: location.clone(),
            detail,
        })?;
        let mgr = Manager::from_config(
            cfg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(connect_timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .build()
            .map_err(|e| StoreError::Database {
                location: location.clone(),
                detail: format!("cannot set up the connection pool: {e}"),
            })?;
        let cache = Arc::new(Cache::new(CACHE_LIFETIME, changed));
        let mut listen_cfg = cfg.clone();
        listen_cfg.application_name(LISTENER_APP_NAME);
        let listener = tokio::spawn(listen(listen_cfg, tls, cache.clone(), location.clone()));
        let store = PgStore {
            pool,
            location,
            cache,
            op_timeout: (connect_timeout * 2).max(Duration::from_secs(10)),
            listener,
        };
        store.timed(store.migrate()).await?;
        // Give the listener a moment, so the cache is on from the first request (it works without, uncached).
        let deadline = Instant::now() + connect_timeout;
        while !store.cache.state().0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(store)
    }

    pub(super) fn location(&self) -> &str {
        &self.location
    }

    pub(super) fn cache_state(&self) -> (bool, usize) {
        self.cache.state()
    }

    /// Fail as unavailable when `f` takes longer than the operation timeout (a hung server).
    pub(super) async fn timed<T>(
        &self,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.op_timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable {
                location: self.location.clone(),
                detail: format!("no answer within {} s", self.op_timeout.as_secs()),
            }),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        use deadpool_postgres::PoolError as P;
        self.pool.get().await.map_err(|e| match e {
            P::Backend(e) => self.pg_err(e),
            P::Timeout(_) => StoreError::Unavailable {
                location: self.location.clone(),
                detail: "no connection within store.connect_timeout".into(),
            },
            other => StoreError::Unavailable {
                location: self.location.clone(),
                detail: other.to_string(),
            },
        })
    }

    fn pg_err(&self, e: tokio_postgres::Error) -> StoreError {
        let location = self.location.clone();
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            let detail = format!("{} {code}: {}", db.severity(), db.message());
            if code.starts_with("08")
                || code.starts_with("28")
                || code.starts_with("57P")
                || code == "3D000"
                || code == "53300"
            {
                return StoreError::Unavailable { location, detail };
            }
            if code == "23505" {
                return StoreError::Conflict(db.message().to_string());
            }
            return StoreError::Database { location, detail };
        }
        let mut detail = e.to_string();
        if let Some(source) = std::error::Error::source(&e) {
            detail = format!("{detail}: {source}");
        }
        if detail.starts_with("error serializing") || detail.starts_with("error deserializing") {
            return StoreError::Database { location, detail };
        }
        if detail.contains("TLS") || detail.contains("certificate") {
            detail.push_str(
                " (headgate verifies the server's certificate and name: trust its CA with store.tls_ca_path, or use \
                 sslmode=disable where the network is trusted)",
            );
        }
        StoreError::Unavailable { location, detail }
    }

    fn fail(&self, f: Fail) -> StoreError {
        match f {
            Fail::Pg(e) => self.pg_err(e),
            Fail::Store(e) => e,
            Fail::Corrupt(detail) => StoreError::Database {
                location: self.location.clone(),
                detail,
            },
        }
    }

    /// Apply the migrations this binary knows, under the advisory lock (one replica migrates; the others
    /// wait, then find nothing to do).
    async fn migrate(&self) -> Result<(), StoreError> {
        let location = self.location.clone();
        transaction!(self, t => {
            t.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
            let exists: bool = t
                .query_one("SELECT to_regclass('headgate_schema') IS NOT NULL", &[])
                .await?
                .get(0);
            if !exists {
                t.batch_execute(
                    "CREATE TABLE headgate_schema (
                        version bigint PRIMARY KEY,
                        applied timestamptz NOT NULL DEFAULT now()
                    )",
                )
                .await?;
            }
            let found: i64 = t
                .query_one("SELECT coalesce(max(version), 0) FROM headgate_schema", &[])
                .await?
                .get(0);
            let found = found as u64;
            if found > SCHEMA_VERSION {
                return Err(Fail::Store(StoreError::NewerSchema {
                    path: PathBuf::from(&location),
                    found,
                    supported: SCHEMA_VERSION,
                }));
            }
            for v in found..SCHEMA_VERSION {
                t.batch_execute(MIGRATIONS[v as usize]).await?;
                t.execute("INSERT INTO headgate_schema (version) VALUES ($1)", &[&((v + 1) as i64)])
                    .await?;
            }
            if found < SCHEMA_VERSION {
                tracing::info!(store = %location, from = found, to = SCHEMA_VERSION, "migrated the store");
            }
            Ok(())
        })
    }

    pub(super) async fn schema_version(&self) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one("SELECT coalesce(max(version), 0) FROM headgate_schema", &[])
            .await
            .map_err(|e| self.pg_err(e))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    pub(super) async fn is_empty(&self) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM headgate_users)
                    AND NOT EXISTS (SELECT 1 FROM headgate_sessions)
                    AND NOT EXISTS (SELECT 1 FROM headgate_links)
                    AND NOT EXISTS (SELECT 1 FROM headgate_audit)
                    AND NOT EXISTS (SELECT 1 FROM headgate_signing_keys)",
                &[],
            )
            .await
            .map_err(|e| self.pg_err(e))?;
        Ok(row.get(0))
    }

    /// A read of at most one row.
    async fn read_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let c = self.client().await?;
        let st = c.prepare_cached(sql).await.map_err(|e| self.pg_err(e))?;
        c.query_opt(&st, params).await.map_err(|e| self.pg_err(e))
    }

    async fn read_all(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let c = self.client().await?;
        let st = c.prepare_cached(sql).await.map_err(|e| self.pg_err(e))?;
        c.query(&st, params).await.map_err(|e| self.pg_err(e))
    }

    fn decode_rows<T: DeserializeOwned>(
        &self,
        rows: &[Row],
        what: impl Fn(&Row) -> String,
    ) -> Result<Vec<T>, StoreError> {
        rows.iter()
            .map(|r| decode(r, || what(r)))
            .collect::<Result<_, _>>()
            .map_err(|f| self.fail(f))
    }

    /// A local write committed: drop what it changed here at once (other replicas hear the NOTIFY).
    fn invalidated(&self, tags: &[Tag]) {
        if !tags.is_empty() {
            self.cache.invalidate(tags);
        }
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
        let taken = |id: i64| {
            Fail::Store(StoreError::Conflict(format!(
                "a user with subject {:?} already exists (user {id})",
                new.subject
            )))
        };
        let user = transaction!(self, t => {
            if let Some(row) = t
                .query_opt("SELECT id FROM headgate_users WHERE subject = $1", &[&new.subject])
                .await?
            {
                return Err(taken(row.get(0)));
            }
            // Invariant: an owner exists ⇒ the marker is set. The row lock serialises every owner decision.
            let owner = match &bootstrap {
                OwnerBootstrap::Never => false,
                rule => {
                    let marker: i64 = t
                        .query_one(
                            "SELECT value FROM headgate_meta WHERE key = 'bootstrapped' FOR UPDATE",
                            &[],
                        )
                        .await?
                        .get(0);
                    marker == 0
                        && match rule {
                            OwnerBootstrap::FirstUser => true,
                            OwnerBootstrap::Only(who) => {
                                who.matches(&new.subject, new.email.as_deref(), new.email_verified)
                            }
                            OwnerBootstrap::Never => false,
                        }
                }
            };
            let id: i64 = t.query_one("SELECT nextval('headgate_user_ids')", &[]).await?.get(0);
            let user = User {
                id: UserId(id as u64),
                subject: new.subject.clone(),
                email: new.email.clone(),
                email_verified: new.email_verified,
                name: new.name.clone(),
                picture: new.picture.clone(),
                role: if owner { Role::Owner } else { new.role },
                headscale_user_id: None,
                onboarded: new.onboarded,
                created: new.created,
                last_login: new.created,
            };
            let n = t
                .execute(
                    "INSERT INTO headgate_users (id, subject, role, v, record) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (subject) DO NOTHING",
                    &[&id, &user.subject, &user.role.as_str(), &RECORD_V1, &Json(&user)],
                )
                .await?;
            if n == 0 {
                let other: i64 = t
                    .query_one("SELECT id FROM headgate_users WHERE subject = $1", &[&new.subject])
                    .await?
                    .get(0);
                return Err(taken(other));
            }
            if owner {
                t.execute("UPDATE headgate_meta SET value = 1 WHERE key = 'bootstrapped'", &[])
                    .await?;
            }
            Ok(user)
        })?;
        self.invalidated(&[user_tag(&user.id)]);
        Ok(user)
    }

    pub(super) async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        if let Some(hit) = self.cache.user(&id) {
            return Ok(hit);
        }
        let ticket = self.cache.ticket();
        let row = self
            .read_opt(
                "SELECT v, record FROM headgate_users WHERE id = $1",
                &[&self::id(id.0)],
            )
            .await?;
        let user: Option<User> = match row {
            Some(r) => Some(decode(&r, || format!("user {id}")).map_err(|f| self.fail(f))?),
            None => None,
        };
        self.cache.put_user(ticket, id, user.clone());
        Ok(user)
    }

    pub(super) async fn user_by_subject(&self, subject: &str) -> Result<Option<User>, StoreError> {
        let row = self
            .read_opt(
                "SELECT id, v, record FROM headgate_users WHERE subject = $1",
                &[&subject],
            )
            .await?;
        match row {
            Some(r) => Ok(Some(
                decode(&r, || format!("user {}", r.get::<_, i64>("id")))
                    .map_err(|f| self.fail(f))?,
            )),
            None => Ok(None),
        }
    }

    pub(super) async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows = self
            .read_all("SELECT id, v, record FROM headgate_users ORDER BY id", &[])
            .await?;
        self.decode_rows(&rows, |r| format!("user {}", r.get::<_, i64>("id")))
    }

    pub(super) async fn update_user(&self, user: User) -> Result<(), StoreError> {
        transaction!(self, t => {
            let row = t
                .query_opt(
                    "SELECT v, record FROM headgate_users WHERE id = $1 FOR UPDATE",
                    &[&id(user.id.0)],
                )
                .await?
                .ok_or_else(|| user_not_found(user.id))?;
            let stored: User = decode(&row, || format!("user {}", user.id))?;
            if stored.subject != user.subject {
                return Err(StoreError::Conflict(format!("user {}'s subject cannot change", user.id)).into());
            }
            let mut user = user.clone();
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
                    t.execute("SELECT 1 FROM headgate_meta WHERE key = 'bootstrapped' FOR UPDATE", &[])
                        .await?;
                    if let Some(owner) = t
                        .query_opt("SELECT id FROM headgate_users WHERE role = 'owner'", &[])
                        .await?
                    {
                        return Err(StoreError::Conflict(format!(
                            "user {} is already the owner and there is only one: transfer ownership instead",
                            owner.get::<_, i64>(0)
                        ))
                        .into());
                    }
                    t.execute("UPDATE headgate_meta SET value = 1 WHERE key = 'bootstrapped'", &[])
                        .await?;
                }
                _ => {}
            }
            t.execute(
                "UPDATE headgate_users SET role = $2, v = $3, record = $4 WHERE id = $1",
                &[&id(user.id.0), &user.role.as_str(), &RECORD_V1, &Json(&user)],
            )
            .await?;
            notify(&t, &[user_tag(&user.id)]).await?;
            Ok(())
        })?;
        self.invalidated(&[user_tag(&user.id)]);
        Ok(())
    }

    /// Read the stored user under a row lock, change it with `f`, write it back: one transaction, so a write
    /// made meanwhile by another replica or task is seen, never overwritten. `f` runs again when the
    /// transaction is retried.
    async fn modify_user<T, F>(&self, uid: UserId, f: F) -> Result<T, StoreError>
    where
        F: Fn(&mut User) -> Result<T, StoreError>,
    {
        let out = transaction!(self, t => {
            let row = t
                .query_opt(
                    "SELECT v, record FROM headgate_users WHERE id = $1 FOR UPDATE",
                    &[&id(uid.0)],
                )
                .await?
                .ok_or_else(|| user_not_found(uid))?;
            let mut user: User = decode(&row, || format!("user {uid}"))?;
            let out = f(&mut user)?;
            t.execute(
                "UPDATE headgate_users SET role = $2, v = $3, record = $4 WHERE id = $1",
                &[&id(uid.0), &user.role.as_str(), &RECORD_V1, &Json(&user)],
            )
            .await?;
            notify(&t, &[user_tag(&uid)]).await?;
            Ok(out)
        })?;
        self.invalidated(&[user_tag(&uid)]);
        Ok(out)
    }

    pub(super) async fn record_sign_in(
        &self,
        uid: UserId,
        s: SignIn,
    ) -> Result<SignedIn, StoreError> {
        self.modify_user(uid, |u| {
            let role_changed_from = u.apply_sign_in(s.clone());
            Ok(SignedIn {
                user: u.clone(),
                role_changed_from,
            })
        })
        .await
    }

    pub(super) async fn apply_idp_role(
        &self,
        uid: UserId,
        role: Role,
    ) -> Result<SignedIn, StoreError> {
        self.modify_user(uid, |u| {
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
        uid: UserId,
        role: Role,
        expected: Option<Role>,
    ) -> Result<User, StoreError> {
        self.modify_user(uid, |u| {
            u.check_role_change(role, expected)?;
            u.role = role;
            Ok(u.clone())
        })
        .await
    }

    pub(super) async fn mark_onboarded(&self, uid: UserId) -> Result<(), StoreError> {
        self.modify_user(uid, |u| {
            u.onboarded = true;
            Ok(())
        })
        .await
    }

    pub(super) async fn make_owner_if_none(&self, uid: UserId) -> Result<OwnerClaim, StoreError> {
        let claim = transaction!(self, t => {
            // The marker's row lock serialises every owner decision (as in create_user and update_user); the
            // one-owner index stays the last word.
            t.execute("SELECT 1 FROM headgate_meta WHERE key = 'bootstrapped' FOR UPDATE", &[])
                .await?;
            let row = t
                .query_opt(
                    "SELECT v, record FROM headgate_users WHERE id = $1 FOR UPDATE",
                    &[&id(uid.0)],
                )
                .await?
                .ok_or_else(|| user_not_found(uid))?;
            let mut user: User = decode(&row, || format!("user {uid}"))?;
            if let Some(r) = t
                .query_opt("SELECT id, v, record FROM headgate_users WHERE role = 'owner'", &[])
                .await?
            {
                let owner: User = decode(&r, || format!("user {}", r.get::<_, i64>("id")))?;
                return Ok(OwnerClaim::Taken(owner));
            }
            user.role = Role::Owner;
            t.execute(
                "UPDATE headgate_users SET role = $2, v = $3, record = $4 WHERE id = $1",
                &[&id(uid.0), &user.role.as_str(), &RECORD_V1, &Json(&user)],
            )
            .await?;
            t.execute("UPDATE headgate_meta SET value = 1 WHERE key = 'bootstrapped'", &[])
                .await?;
            notify(&t, &[user_tag(&uid)]).await?;
            Ok(OwnerClaim::Made(user))
        })?;
        if let OwnerClaim::Made(_) = claim {
            self.invalidated(&[user_tag(&uid)]);
        }
        Ok(claim)
    }

    pub(super) async fn delete_user(&self, uid: UserId) -> Result<(), StoreError> {
        let tags = transaction!(self, t => {
            let rows = t
                .query("DELETE FROM headgate_sessions WHERE user_id = $1 RETURNING key", &[&id(uid.0)])
                .await?;
            let n = t.execute("DELETE FROM headgate_users WHERE id = $1", &[&id(uid.0)]).await?;
            if n == 0 {
                return Err(user_not_found(uid));
            }
            let mut tags = vec![user_tag(&uid)];
            for r in &rows {
                tags.push(session_tag(&session_key(r)?));
            }
            notify(&t, &tags).await?;
            Ok(tags)
        })?;
        self.invalidated(&tags);
        Ok(())
    }

    pub(super) async fn transfer_ownership(
        &self,
        from: UserId,
        to: UserId,
    ) -> Result<(), StoreError> {
        transaction!(self, t => {
            let rows = t
                .query(
                    "SELECT id, v, record FROM headgate_users WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                    &[&vec![id(from.0), id(to.0)]],
                )
                .await?;
            let find = |want: UserId| -> Result<Option<User>, Fail> {
                for r in &rows {
                    if uid(r, "id")? == want {
                        return decode(r, || format!("user {want}")).map(Some);
                    }
                }
                Ok(None)
            };
            let mut old = find(from)?.ok_or_else(|| user_not_found(from))?;
            if old.role != Role::Owner {
                return Err(StoreError::Conflict(format!("user {from} is not the owner")).into());
            }
            if from == to {
                return Err(StoreError::Conflict(format!("user {from} is already the owner")).into());
            }
            let mut new = find(to)?.ok_or_else(|| user_not_found(to))?;
            old.role = Role::Admin;
            new.role = Role::Owner;
            // The old owner steps down first: the one-owner index is checked row by row.
            for u in [&old, &new] {
                t.execute(
                    "UPDATE headgate_users SET role = $2, v = $3, record = $4 WHERE id = $1",
                    &[&id(u.id.0), &u.role.as_str(), &RECORD_V1, &Json(u)],
                )
                .await?;
            }
            t.execute("UPDATE headgate_meta SET value = 1 WHERE key = 'bootstrapped'", &[])
                .await?;
            notify(&t, &[user_tag(&from), user_tag(&to)]).await?;
            Ok(())
        })?;
        self.invalidated(&[user_tag(&from), user_tag(&to)]);
        Ok(())
    }

    pub(super) async fn is_bootstrapped(&self) -> Result<bool, StoreError> {
        let row = self
            .read_opt(
                "SELECT value FROM headgate_meta WHERE key = 'bootstrapped'",
                &[],
            )
            .await?;
        Ok(row.is_some_and(|r| r.get::<_, i64>(0) != 0))
    }

    // ----- links -----

    pub(super) async fn link_if_unclaimed(&self, link: Link) -> Result<LinkOutcome, StoreError> {
        let outcome = transaction!(self, t => {
            let row = t
                .query_opt(
                    "SELECT v, record FROM headgate_users WHERE id = $1 FOR UPDATE",
                    &[&id(link.user_id.0)],
                )
                .await?
                .ok_or_else(|| user_not_found(link.user_id))?;
            let mut user: User = decode(&row, || format!("user {}", link.user_id))?;
            let holder = async |t: &deadpool_postgres::Transaction<'_>| -> Result<Option<UserId>, Fail> {
                match t
                    .query_opt(
                        "SELECT user_id FROM headgate_links WHERE headscale_user_id = $1",
                        &[&link.headscale_user_id],
                    )
                    .await?
                {
                    Some(r) => Ok(Some(uid(&r, "user_id")?)),
                    None => Ok(None),
                }
            };
            let outcome_for = |holder: UserId| {
                if holder != link.user_id {
                    LinkOutcome::AlreadyLinkedToOther(holder)
                } else {
                    LinkOutcome::UserAlreadyLinked
                }
            };
            if let Some(h) = holder(&t).await? {
                return Ok(outcome_for(h));
            }
            if t
                .query_opt("SELECT 1 FROM headgate_links WHERE user_id = $1", &[&id(link.user_id.0)])
                .await?
                .is_some()
            {
                return Ok(LinkOutcome::UserAlreadyLinked);
            }
            // Another replica may link either side at the same moment: the unique keys decide.
            let n = t
                .execute(
                    "INSERT INTO headgate_links (headscale_user_id, user_id, v, record) VALUES ($1, $2, $3, $4)
                     ON CONFLICT DO NOTHING",
                    &[&link.headscale_user_id, &id(link.user_id.0), &RECORD_V1, &Json(&link)],
                )
                .await?;
            if n == 0 {
                return Ok(match holder(&t).await? {
                    Some(h) => outcome_for(h),
                    None => LinkOutcome::UserAlreadyLinked,
                });
            }
            if link.state == LinkState::Approved {
                user.headscale_user_id = Some(link.headscale_user_id.clone());
                t.execute(
                    "UPDATE headgate_users SET v = $2, record = $3 WHERE id = $1",
                    &[&id(user.id.0), &RECORD_V1, &Json(&user)],
                )
                .await?;
            }
            notify(&t, &[user_tag(&link.user_id)]).await?;
            Ok(LinkOutcome::Linked)
        })?;
        if outcome == LinkOutcome::Linked {
            self.invalidated(&[user_tag(&link.user_id)]);
        }
        Ok(outcome)
    }

    pub(super) async fn link_of_user(&self, user_id: UserId) -> Result<Option<Link>, StoreError> {
        if let Some(hit) = self.cache.link(&user_id) {
            return Ok(hit);
        }
        let ticket = self.cache.ticket();
        let row = self
            .read_opt(
                "SELECT headscale_user_id, v, record FROM headgate_links WHERE user_id = $1",
                &[&id(user_id.0)],
            )
            .await?;
        let link: Option<Link> = match row {
            Some(r) => Some(
                decode(&r, || {
                    format!(
                        "link of Headscale user {:?}",
                        r.get::<_, String>("headscale_user_id")
                    )
                })
                .map_err(|f| self.fail(f))?,
            ),
            None => None,
        };
        self.cache.put_link(ticket, user_id, link.clone());
        Ok(link)
    }

    pub(super) async fn link_of_headscale_user(
        &self,
        hs: &str,
    ) -> Result<Option<Link>, StoreError> {
        let row = self
            .read_opt(
                "SELECT v, record FROM headgate_links WHERE headscale_user_id = $1",
                &[&hs],
            )
            .await?;
        match row {
            Some(r) => Ok(Some(
                decode(&r, || format!("link of Headscale user {hs:?}"))
                    .map_err(|f| self.fail(f))?,
            )),
            None => Ok(None),
        }
    }

    pub(super) async fn approve_link(&self, user_id: UserId) -> Result<Link, StoreError> {
        let link = transaction!(self, t => {
            let not_found = || Fail::Store(StoreError::NotFound(format!("a link of user {user_id}")));
            let row = t
                .query_opt(
                    "SELECT headscale_user_id, v, record FROM headgate_links WHERE user_id = $1 FOR UPDATE",
                    &[&id(user_id.0)],
                )
                .await?
                .ok_or_else(not_found)?;
            let hs: String = row.get("headscale_user_id");
            let mut link: Link = decode(&row, || format!("link of Headscale user {hs:?}"))?;
            link.state = LinkState::Approved;
            t.execute(
                "UPDATE headgate_links SET v = $2, record = $3 WHERE headscale_user_id = $1",
                &[&hs, &RECORD_V1, &Json(&link)],
            )
            .await?;
            let row = t
                .query_opt("SELECT v, record FROM headgate_users WHERE id = $1 FOR UPDATE", &[&id(user_id.0)])
                .await?
                .ok_or_else(|| user_not_found(user_id))?;
            let mut user: User = decode(&row, || format!("user {user_id}"))?;
            user.headscale_user_id = Some(hs);
            t.execute(
                "UPDATE headgate_users SET v = $2, record = $3 WHERE id = $1",
                &[&id(user_id.0), &RECORD_V1, &Json(&user)],
            )
            .await?;
            notify(&t, &[user_tag(&user_id)]).await?;
            Ok(link)
        })?;
        self.invalidated(&[user_tag(&user_id)]);
        Ok(link)
    }

    pub(super) async fn remove_link(&self, user_id: UserId) -> Result<Option<Link>, StoreError> {
        let link = transaction!(self, t => {
            let Some(row) = t
                .query_opt(
                    "DELETE FROM headgate_links WHERE user_id = $1 RETURNING headscale_user_id, v, record",
                    &[&id(user_id.0)],
                )
                .await?
            else {
                return Ok(None);
            };
            let hs: String = row.get("headscale_user_id");
            let link: Link = decode(&row, || format!("link of Headscale user {hs:?}"))?;
            if let Some(row) = t
                .query_opt("SELECT v, record FROM headgate_users WHERE id = $1 FOR UPDATE", &[&id(user_id.0)])
                .await?
            {
                let mut user: User = decode(&row, || format!("user {user_id}"))?;
                if user.headscale_user_id.is_some() {
                    user.headscale_user_id = None;
                    t.execute(
                        "UPDATE headgate_users SET v = $2, record = $3 WHERE id = $1",
                        &[&id(user_id.0), &RECORD_V1, &Json(&user)],
                    )
                    .await?;
                }
            }
            notify(&t, &[user_tag(&user_id)]).await?;
            Ok(Some(link))
        })?;
        self.invalidated(&[user_tag(&user_id)]);
        Ok(link)
    }

    pub(super) async fn links(&self) -> Result<Vec<Link>, StoreError> {
        let rows = self
            .read_all(
                "SELECT headscale_user_id, v, record FROM headgate_links ORDER BY headscale_user_id COLLATE \"C\"",
                &[],
            )
            .await?;
        self.decode_rows(&rows, |r| {
            format!(
                "link of Headscale user {:?}",
                r.get::<_, String>("headscale_user_id")
            )
        })
    }

    // ----- sessions -----

    pub(super) async fn create_session(
        &self,
        key: SessionKey,
        record: SessionRecord,
    ) -> Result<(), StoreError> {
        self.create_sessions(vec![(key, record)]).await
    }

    /// The session with its person and link, from the cache where it can (three cached reads, not one
    /// transaction: each entry is invalidated on its own change, within the cache bound).
    pub(super) async fn session_view(
        &self,
        key: SessionKey,
    ) -> Result<Option<Arc<super::SessionView>>, StoreError> {
        let Some(record) = self.session(key).await? else {
            return Ok(None);
        };
        let (user, link) = match record.user_id() {
            Some(uid) => (self.user(uid).await?, self.link_of_user(uid).await?),
            None => (None, None),
        };
        Ok(Some(Arc::new(super::SessionView { record, user, link })))
    }

    /// All or nothing: one transaction, a taken key or an unknown user refuses the batch.
    pub(super) async fn create_sessions(
        &self,
        batch: Vec<(SessionKey, SessionRecord)>,
    ) -> Result<(), StoreError> {
        let tags: Vec<_> = batch.iter().map(|(key, _)| session_tag(key)).collect();
        let r = self.insert_sessions(&batch).await;
        // Whatever the outcome (a commit whose answer was lost included): no cached absence survives it.
        self.invalidated(&tags);
        r
    }

    async fn insert_sessions(
        &self,
        batch: &[(SessionKey, SessionRecord)],
    ) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(|e| self.pg_err(e))?;
        for (key, record) in batch {
            let r = tx
                .execute(
                    "INSERT INTO headgate_sessions (key, user_id, expires, v, record) VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &key.as_bytes().as_slice(),
                        &record.user_id().map(|u| id(u.0)),
                        &record.expires,
                        &RECORD_V1,
                        &Json(record),
                    ],
                )
                .await;
            match r {
                Ok(_) => {}
                Err(e) if sql_state(&e) == Some("23505") => {
                    return Err(StoreError::Conflict(format!("{key:?} already exists")));
                }
                Err(e) if sql_state(&e) == Some("23503") => {
                    return Err(self.fail(user_not_found(record.user_id().unwrap_or(UserId(0)))));
                }
                Err(e) => return Err(self.pg_err(e)),
            }
        }
        tx.commit().await.map_err(|e| self.pg_err(e))
    }

    pub(super) async fn count_live_sessions(&self, now: i64) -> Result<u64, StoreError> {
        let row = self
            .read_opt(
                "SELECT count(*) AS n FROM headgate_sessions WHERE expires > $1",
                &[&now],
            )
            .await?;
        Ok(row.map(|r| r.get::<_, i64>("n")).unwrap_or(0).max(0) as u64)
    }

    pub(super) async fn api_key_sessions(&self) -> Result<Vec<(SessionKey, String)>, StoreError> {
        let rows = self
            .read_all(
                "SELECT key, v, record FROM headgate_sessions WHERE user_id IS NULL ORDER BY key",
                &[],
            )
            .await?;
        Ok(self
            .session_rows(rows)
            .await?
            .into_iter()
            .filter_map(|(k, r)| match r.subject {
                SessionSubject::ApiKey { prefix, .. } => Some((k, prefix)),
                _ => None,
            })
            .collect())
    }

    pub(super) async fn session(
        &self,
        key: SessionKey,
    ) -> Result<Option<SessionRecord>, StoreError> {
        if let Some(hit) = self.cache.session(&key) {
            return Ok(hit);
        }
        let ticket = self.cache.ticket();
        let row = self
            .read_opt(
                "SELECT v, record FROM headgate_sessions WHERE key = $1",
                &[&key.as_bytes().as_slice()],
            )
            .await?;
        let rec: Option<SessionRecord> = match row {
            Some(r) => Some(decode(&r, || format!("session {key:?}")).map_err(|f| self.fail(f))?),
            None => None,
        };
        self.cache.put_session(ticket, key, rec.clone());
        Ok(rec)
    }

    pub(super) async fn delete_session(&self, key: SessionKey) -> Result<bool, StoreError> {
        let tag = session_tag(&key);
        let c = self.client().await?;
        // One statement: the NOTIFY goes out exactly when the delete commits.
        let rows = c
            .query(
                "WITH d AS (DELETE FROM headgate_sessions WHERE key = $1 RETURNING 1)
                 SELECT pg_notify($2, $3) FROM d",
                &[&key.as_bytes().as_slice(), &CHANNEL, &hex(&tag)],
            )
            .await
            .map_err(|e| self.pg_err(e))?;
        self.invalidated(&[tag]);
        Ok(!rows.is_empty())
    }

    pub(super) async fn delete_sessions_of_user(&self, user_id: UserId) -> Result<u64, StoreError> {
        let tags = transaction!(self, t => {
            let rows = t
                .query("DELETE FROM headgate_sessions WHERE user_id = $1 RETURNING key", &[&id(user_id.0)])
                .await?;
            let tags = rows
                .iter()
                .map(|r| session_key(r).map(|k| session_tag(&k)))
                .collect::<Result<Vec<_>, _>>()?;
            notify(&t, &tags).await?;
            Ok(tags)
        })?;
        self.invalidated(&tags);
        Ok(tags.len() as u64)
    }

    /// Back-channel logout: every session that came from the IdP session `sid` (only `user`'s when given).
    pub(super) async fn delete_sessions_by_idp_sid(
        &self,
        sid: String,
        user: Option<UserId>,
    ) -> Result<u64, StoreError> {
        let user = user.map(|u| id(u.0));
        let tags = transaction!(self, t => {
            let rows = t
                .query(
                    "DELETE FROM headgate_sessions
                     WHERE record->>'idp_sid' = $1 AND ($2::bigint IS NULL OR user_id = $2)
                     RETURNING key",
                    &[&sid, &user],
                )
                .await?;
            let tags = rows
                .iter()
                .map(|r| session_key(r).map(|k| session_tag(&k)))
                .collect::<Result<Vec<_>, _>>()?;
            notify(&t, &tags).await?;
            Ok(tags)
        })?;
        self.invalidated(&tags);
        Ok(tags.len() as u64)
    }

    /// Mark `id` used in `scope` until `expires`: true for exactly one caller across every replica (the
    /// upsert only replaces a mark whose time has passed).
    pub(super) async fn use_replay_id(
        &self,
        scope: String,
        replay_id: String,
        expires: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "INSERT INTO headgate_replay (scope, id, expires) VALUES ($1, $2, $3)
                 ON CONFLICT (scope, id) DO UPDATE SET expires = EXCLUDED.expires
                 WHERE headgate_replay.expires <= $4
                 RETURNING 1",
                &[&scope, &replay_id, &expires, &now],
            )
            .await
            .map_err(|e| self.pg_err(e))?;
        Ok(!rows.is_empty())
    }

    pub(super) async fn forget_replay_id(
        &self,
        scope: String,
        replay_id: String,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM headgate_replay WHERE scope = $1 AND id = $2",
            &[&scope, &replay_id],
        )
        .await
        .map_err(|e| self.pg_err(e))?;
        Ok(())
    }

    pub(super) async fn prune_replay(&self, now: i64) -> Result<u64, StoreError> {
        let c = self.client().await?;
        c.execute("DELETE FROM headgate_replay WHERE expires <= $1", &[&now])
            .await
            .map_err(|e| self.pg_err(e))
    }

    async fn session_rows(
        &self,
        rows: Vec<Row>,
    ) -> Result<Vec<(SessionKey, SessionRecord)>, StoreError> {
        rows.iter()
            .map(|r| {
                let k = session_key(r)?;
                Ok((k, decode(r, || format!("session {k:?}"))?))
            })
            .collect::<Result<_, Fail>>()
            .map_err(|f| self.fail(f))
    }

    pub(super) async fn sessions_of_user(
        &self,
        user_id: UserId,
    ) -> Result<Vec<(SessionKey, SessionRecord)>, StoreError> {
        let rows = self
            .read_all(
                "SELECT key, v, record FROM headgate_sessions WHERE user_id = $1 ORDER BY key",
                &[&id(user_id.0)],
            )
            .await?;
        self.session_rows(rows).await
    }

    pub(super) async fn sessions(&self) -> Result<Vec<(SessionKey, SessionRecord)>, StoreError> {
        let rows = self
            .read_all(
                "SELECT key, v, record FROM headgate_sessions ORDER BY key",
                &[],
            )
            .await?;
        self.session_rows(rows).await
    }

    pub(super) async fn touch_sessions(
        &self,
        batch: Vec<(SessionKey, i64)>,
    ) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut newest: HashMap<SessionKey, i64> = HashMap::new();
        for (k, t) in batch {
            let e = newest.entry(k).or_insert(t);
            *e = (*e).max(t);
        }
        let keys: Vec<&[u8]> = newest.keys().map(|k| k.as_bytes().as_slice()).collect();
        let seen: Vec<i64> = newest.values().copied().collect();
        let c = self.client().await?;
        c.execute(
            "UPDATE headgate_sessions s SET record = jsonb_set(s.record, '{last_seen}', to_jsonb(b.seen))
             FROM unnest($1::bytea[], $2::bigint[]) AS b(key, seen)
             WHERE s.key = b.key AND (s.record->>'last_seen')::bigint < b.seen",
            &[&keys, &seen],
        )
        .await
        .map_err(|e| self.pg_err(e))?;
        // Only last_seen changed (nothing a decision rests on): no notification; this replica forgets its copies.
        let tags: Vec<Tag> = newest.keys().map(session_tag).collect();
        self.invalidated(&tags);
        Ok(())
    }

    pub(super) async fn update_session(
        &self,
        key: SessionKey,
        record: SessionRecord,
    ) -> Result<(), StoreError> {
        let tag = session_tag(&key);
        let c = self.client().await?;
        let r = c
            .query(
                "WITH u AS (
                    UPDATE headgate_sessions SET user_id = $2, expires = $3, v = $4, record = $5
                    WHERE key = $1 RETURNING 1
                 )
                 SELECT pg_notify($6, $7) FROM u",
                &[
                    &key.as_bytes().as_slice(),
                    &record.user_id().map(|u| id(u.0)),
                    &record.expires,
                    &RECORD_V1,
                    &Json(&record),
                    &CHANNEL,
                    &hex(&tag),
                ],
            )
            .await;
        self.invalidated(&[tag]);
        match r {
            Ok(rows) if rows.is_empty() => Err(StoreError::NotFound(format!("{key:?}"))),
            Ok(_) => Ok(()),
            Err(e) if sql_state(&e) == Some("23503") => {
                Err(self.fail(user_not_found(record.user_id().unwrap_or(UserId(0)))))
            }
            Err(e) => Err(self.pg_err(e)),
        }
    }

    // ----- rate limits -----

    pub(super) async fn record_failure(
        &self,
        key: String,
        now: i64,
        window: i64,
    ) -> Result<u32, StoreError> {
        transaction!(self, t => {
            t.execute(
                "INSERT INTO headgate_rate_limits (bucket, times) VALUES ($1, '{}') ON CONFLICT DO NOTHING",
                &[&key],
            )
            .await?;
            // The row lock makes concurrent failures (on any replica) count one after the other.
            let mut times: Vec<i64> = t
                .query_one("SELECT times FROM headgate_rate_limits WHERE bucket = $1 FOR UPDATE", &[&key])
                .await?
                .get(0);
            times.retain(|x| *x > now - window);
            times.push(now);
            let excess = times.len().saturating_sub(256);
            times.drain(..excess);
            t.execute("UPDATE headgate_rate_limits SET times = $2 WHERE bucket = $1", &[&key, &times])
                .await?;
            Ok(times.len() as u32)
        })
    }

    pub(super) async fn failures(
        &self,
        key: &str,
        now: i64,
        window: i64,
    ) -> Result<u32, StoreError> {
        let row = self
            .read_opt(
                "SELECT times FROM headgate_rate_limits WHERE bucket = $1",
                &[&key],
            )
            .await?;
        let times: Vec<i64> = row.map(|r| r.get(0)).unwrap_or_default();
        Ok(times.iter().filter(|x| **x > now - window).count() as u32)
    }

    pub(super) async fn prune_rate_limits(&self, now: i64, window: i64) -> Result<u64, StoreError> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM headgate_rate_limits
             WHERE NOT EXISTS (SELECT 1 FROM unnest(times) AS t(at) WHERE t.at > $1)",
            &[&(now - window)],
        )
        .await
        .map_err(|e| self.pg_err(e))
    }

    pub(super) async fn forget_failure(&self, key: String, at: i64) -> Result<(), StoreError> {
        transaction!(self, t => {
            let row = t
                .query_opt("SELECT times FROM headgate_rate_limits WHERE bucket = $1 FOR UPDATE", &[&key])
                .await?;
            let Some(row) = row else { return Ok(()) };
            let mut times: Vec<i64> = row.get(0);
            if let Some(i) = times.iter().rposition(|x| *x == at) {
                times.remove(i);
                t.execute("UPDATE headgate_rate_limits SET times = $2 WHERE bucket = $1", &[&key, &times])
                    .await?;
            }
            Ok(())
        })
    }

    pub(super) async fn clear_failures(&self, key: String) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM headgate_rate_limits WHERE bucket = $1",
            &[&key],
        )
        .await
        .map_err(|e| self.pg_err(e))?;
        Ok(())
    }

    pub(super) async fn prune_expired(&self, now: i64) -> Result<u64, StoreError> {
        let tags = transaction!(self, t => {
            let rows = t
                .query("DELETE FROM headgate_sessions WHERE expires <= $1 RETURNING key", &[&now])
                .await?;
            let tags = rows
                .iter()
                .map(|r| session_key(r).map(|k| session_tag(&k)))
                .collect::<Result<Vec<_>, _>>()?;
            notify(&t, &tags).await?;
            Ok(tags)
        })?;
        self.invalidated(&tags);
        Ok(tags.len() as u64)
    }

    // ----- signing keys -----

    pub(super) async fn signing_keys(&self) -> Result<Vec<SigningKey>, StoreError> {
        let rows = self
            .read_all(
                "SELECT kid, v, record FROM headgate_signing_keys ORDER BY kid COLLATE \"C\"",
                &[],
            )
            .await?;
        self.decode_rows(&rows, |r| {
            format!("signing key {:?}", r.get::<_, String>("kid"))
        })
    }

    pub(super) async fn put_signing_key(&self, key: SigningKey) -> Result<(), StoreError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "INSERT INTO headgate_signing_keys (kid, state, v, record) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kid) DO NOTHING",
                &[&key.kid, &key.state.as_str(), &RECORD_V1, &Json(&key)],
            )
            .await
            .map_err(|e| self.pg_err(e))?;
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "signing key {} already exists",
                key.kid
            )));
        }
        Ok(())
    }

    pub(super) async fn set_signing_key_state(
        &self,
        kid: String,
        state: SigningKeyState,
        now: i64,
    ) -> Result<SigningKey, StoreError> {
        use SigningKeyState as S;
        transaction!(self, t => {
            // Key moves are rare: one at a time, across every replica.
            t.batch_execute("LOCK TABLE headgate_signing_keys IN SHARE ROW EXCLUSIVE MODE").await?;
            let rows = t
                .query("SELECT kid, v, record FROM headgate_signing_keys", &[])
                .await?;
            let mut all: Vec<SigningKey> = Vec::new();
            for r in &rows {
                all.push(decode(r, || format!("signing key {:?}", r.get::<_, String>("kid")))?);
            }
            let mut key = all
                .iter()
                .find(|k| k.kid == kid)
                .cloned()
                .ok_or_else(|| signing_key_not_found(&kid))?;
            if key.state == state {
                return Ok(key);
            }
            let refuse = |why: &str| {
                Err(Fail::Store(StoreError::Conflict(format!(
                    "signing key {kid} is {}: {why}",
                    key.state
                ))))
            };
            let write = async |k: &SigningKey| -> Result<(), Fail> {
                t.execute(
                    "UPDATE headgate_signing_keys SET state = $2, v = $3, record = $4 WHERE kid = $1",
                    &[&k.kid, &k.state.as_str(), &RECORD_V1, &Json(k)],
                )
                .await?;
                Ok(())
            };
            match (key.state, state) {
                (S::Revoked, _) => return refuse("a revoked key never comes back"),
                (_, S::Next) => return refuse("only a new key waits to sign"),
                (S::Retired, S::Current) => return refuse("a retired key never signs again"),
                (_, S::Current) => {
                    for other in all.iter().filter(|o| o.state == S::Current && o.kid != kid) {
                        let mut other = other.clone();
                        other.state = S::Retired;
                        other.retired = Some(now);
                        write(&other).await?;
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
            write(&key).await?;
            Ok(key)
        })
    }

    pub(super) async fn mark_signing_key_published(
        &self,
        kid: String,
        now: i64,
    ) -> Result<SigningKey, StoreError> {
        transaction!(self, t => {
            let row = t
                .query_opt("SELECT v, record FROM headgate_signing_keys WHERE kid = $1 FOR UPDATE", &[&kid])
                .await?
                .ok_or_else(|| signing_key_not_found(&kid))?;
            let mut key: SigningKey = decode(&row, || format!("signing key {kid:?}"))?;
            if key.published.is_none() {
                key.published = Some(now);
                t.execute(
                    "UPDATE headgate_signing_keys SET v = $2, record = $3 WHERE kid = $1",
                    &[&kid, &RECORD_V1, &Json(&key)],
                )
                .await?;
            }
            Ok(key)
        })
    }

    pub(super) async fn reseal_signing_key(
        &self,
        kid: String,
        private_enc: Vec<u8>,
    ) -> Result<(), StoreError> {
        transaction!(self, t => {
            let row = t
                .query_opt("SELECT v, record FROM headgate_signing_keys WHERE kid = $1 FOR UPDATE", &[&kid])
                .await?
                .ok_or_else(|| signing_key_not_found(&kid))?;
            let mut key: SigningKey = decode(&row, || format!("signing key {kid:?}"))?;
            if key.state == SigningKeyState::Revoked {
                return Err(StoreError::Conflict(format!(
                    "signing key {kid} is revoked and keeps no private key"
                ))
                .into());
            }
            key.private_enc = private_enc.clone();
            t.execute(
                "UPDATE headgate_signing_keys SET v = $2, record = $3 WHERE kid = $1",
                &[&kid, &RECORD_V1, &Json(&key)],
            )
            .await?;
            Ok(())
        })
    }

    pub(super) async fn delete_signing_key(&self, kid: String) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = c
            .execute("DELETE FROM headgate_signing_keys WHERE kid = $1", &[&kid])
            .await
            .map_err(|e| self.pg_err(e))?;
        Ok(n > 0)
    }

    // ----- audit -----

    pub(super) async fn append_audit(&self, events: Vec<NewAuditEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        transaction!(self, t => {
            for e in &events {
                let n: i64 = t.query_one("SELECT nextval('headgate_audit_ids')", &[]).await?.get(0);
                let event = AuditEvent {
                    id: n as u64,
                    at: e.at,
                    actor: e.actor.clone(),
                    action: e.action.clone(),
                    target: e.target.clone(),
                    detail: e.detail.clone(),
                };
                t.execute(
                    "INSERT INTO headgate_audit (id, v, record) VALUES ($1, $2, $3)",
                    &[&n, &RECORD_V1, &Json(&event)],
                )
                .await?;
            }
            Ok(())
        })
    }

    pub(super) async fn audit(
        &self,
        limit: usize,
        before_id: Option<u64>,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let before = before_id.map(id).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .read_all(
                "SELECT id, v, record FROM headgate_audit WHERE id < $1 ORDER BY id DESC LIMIT $2",
                &[&before, &limit],
            )
            .await?;
        self.decode_rows(&rows, |r| format!("audit event {}", r.get::<_, i64>("id")))
    }

    // ----- whole-store copies -----

    pub(super) async fn export(&self) -> Result<Snapshot, StoreError> {
        let mut client = self.client().await?;
        let run = async {
            let t = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let mut snap = Snapshot::default();
            let meta: i64 = t
                .query_one(
                    "SELECT value FROM headgate_meta WHERE key = 'bootstrapped'",
                    &[],
                )
                .await?
                .get(0);
            snap.bootstrapped = meta != 0;
            let next = async |seq: &str| -> Result<u64, Fail> {
                let r = t
                    .query_one(&format!("SELECT last_value, is_called FROM {seq}"), &[])
                    .await?;
                let (last, called): (i64, bool) = (r.get(0), r.get(1));
                Ok(if called { last as u64 + 1 } else { last as u64 })
            };
            snap.next_user_id = next("headgate_user_ids").await?;
            snap.next_audit_id = next("headgate_audit_ids").await?;
            for r in t
                .query("SELECT id, v, record FROM headgate_users ORDER BY id", &[])
                .await?
            {
                snap.users
                    .push(decode(&r, || format!("user {}", r.get::<_, i64>("id")))?);
            }
            for r in t
                .query(
                    "SELECT headscale_user_id, v, record FROM headgate_links ORDER BY headscale_user_id COLLATE \"C\"",
                    &[],
                )
                .await?
            {
                snap.links.push(decode(&r, || {
                    format!("link of Headscale user {:?}", r.get::<_, String>("headscale_user_id"))
                })?);
            }
            for r in t
                .query(
                    "SELECT key, v, record FROM headgate_sessions ORDER BY key",
                    &[],
                )
                .await?
            {
                let k = session_key(&r)?;
                snap.sessions
                    .push((k, decode(&r, || format!("session {k:?}"))?));
            }
            for r in t
                .query(
                    "SELECT kid, v, record FROM headgate_signing_keys ORDER BY kid COLLATE \"C\"",
                    &[],
                )
                .await?
            {
                snap.signing_keys.push(decode(&r, || {
                    format!("signing key {:?}", r.get::<_, String>("kid"))
                })?);
            }
            for r in t
                .query("SELECT id, v, record FROM headgate_audit ORDER BY id", &[])
                .await?
            {
                snap.audit.push(decode(&r, || {
                    format!("audit event {}", r.get::<_, i64>("id"))
                })?);
            }
            for r in t
                .query(
                    "SELECT bucket, times FROM headgate_rate_limits ORDER BY bucket COLLATE \"C\"",
                    &[],
                )
                .await?
            {
                snap.rate_limits.push((r.get(0), r.get(1)));
            }
            t.commit().await?;
            Ok::<_, Fail>(snap)
        };
        run.await.map_err(|f| self.fail(f))
    }

    pub(super) async fn import(&self, snap: Snapshot) -> Result<u64, StoreError> {
        transaction!(self, t => {
            t.batch_execute(
                "LOCK TABLE headgate_users, headgate_links, headgate_sessions, headgate_audit,
                     headgate_signing_keys, headgate_rate_limits, headgate_meta IN EXCLUSIVE MODE",
            )
            .await?;
            let empty: bool = t
                .query_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM headgate_users)
                        AND NOT EXISTS (SELECT 1 FROM headgate_sessions)
                        AND NOT EXISTS (SELECT 1 FROM headgate_links)
                        AND NOT EXISTS (SELECT 1 FROM headgate_audit)
                        AND NOT EXISTS (SELECT 1 FROM headgate_signing_keys)",
                    &[],
                )
                .await?
                .get(0);
            if !empty {
                return Err(StoreError::Conflict(
                    "the target store already holds users, sessions, links, keys or audit records: nothing was \
                     copied (use an empty database)"
                        .into(),
                )
                .into());
            }
            for u in &snap.users {
                t.execute(
                    "INSERT INTO headgate_users (id, subject, role, v, record) VALUES ($1, $2, $3, $4, $5)",
                    &[&id(u.id.0), &u.subject, &u.role.as_str(), &RECORD_V1, &Json(u)],
                )
                .await?;
            }
            for l in &snap.links {
                t.execute(
                    "INSERT INTO headgate_links (headscale_user_id, user_id, v, record) VALUES ($1, $2, $3, $4)",
                    &[&l.headscale_user_id, &id(l.user_id.0), &RECORD_V1, &Json(l)],
                )
                .await?;
            }
            for (k, r) in &snap.sessions {
                t.execute(
                    "INSERT INTO headgate_sessions (key, user_id, expires, v, record) VALUES ($1, $2, $3, $4, $5)",
                    &[&k.as_bytes().as_slice(), &r.user_id().map(|u| id(u.0)), &r.expires, &RECORD_V1, &Json(r)],
                )
                .await?;
            }
            for k in &snap.signing_keys {
                t.execute(
                    "INSERT INTO headgate_signing_keys (kid, state, v, record) VALUES ($1, $2, $3, $4)",
                    &[&k.kid, &k.state.as_str(), &RECORD_V1, &Json(k)],
                )
                .await?;
            }
            for e in &snap.audit {
                t.execute(
                    "INSERT INTO headgate_audit (id, v, record) VALUES ($1, $2, $3)",
                    &[&id(e.id), &RECORD_V1, &Json(e)],
                )
                .await?;
            }
            for (bucket, times) in &snap.rate_limits {
                t.execute(
                    "INSERT INTO headgate_rate_limits (bucket, times) VALUES ($1, $2)
                     ON CONFLICT (bucket) DO UPDATE SET times = EXCLUDED.times",
                    &[bucket, times],
                )
                .await?;
            }
            let next_user = snap
                .users
                .iter()
                .map(|u| u.id.0 + 1)
                .max()
                .unwrap_or(1)
                .max(snap.next_user_id);
            let next_audit = snap.audit.iter().map(|e| e.id + 1).max().unwrap_or(1).max(snap.next_audit_id);
            t.execute("SELECT setval('headgate_user_ids', $1, false)", &[&id(next_user.max(1))])
                .await?;
            t.execute("SELECT setval('headgate_audit_ids', $1, false)", &[&id(next_audit.max(1))])
                .await?;
            if snap.bootstrapped || snap.users.iter().any(|u| u.role == Role::Owner) {
                t.execute("UPDATE headgate_meta SET value = 1 WHERE key = 'bootstrapped'", &[])
                    .await?;
            }
            t.execute("SELECT pg_notify($1, '*')", &[&CHANNEL]).await?;
            Ok(snap.rows())
        })
        .inspect(|_| self.cache.flush())
    }

    /// A consistent copy, as a redb file (restorable with `headgate restore`, or migrated back with
    /// `headgate store migrate`).
    pub(super) async fn backup_to(&self, dest: PathBuf) -> Result<u64, StoreError> {
        let snap = self.export().await?;
        super::redb::write_snapshot_file(dest, snap).await
    }
}

/// Announce, in transaction `t` (delivered when it commits), that the records of `tags` changed.
async fn notify(
    t: &deadpool_postgres::Transaction<'_>,
    tags: &[Tag],
) -> Result<(), tokio_postgres::Error> {
    for p in payloads(tags) {
        t.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &p])
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_opaque_and_round_trip() {
        let k = SessionKey::from_raw_id(b"raw-session-id");
        let t = session_tag(&k);
        let h = hex(&t);
        assert_eq!(h.len(), 24);
        assert!(
            !k.to_hex().contains(&h),
            "the tag is not a piece of the stored key"
        );
        assert_eq!(parse_tag(&h), Some(t));
        assert_ne!(user_tag(&UserId(1)), user_tag(&UserId(2)));
        assert_ne!(session_tag(&k), tag(b"user", k.as_bytes()));
        assert_eq!(parse_tag("zz"), None);
        let many: Vec<Tag> = (0..450).map(|i| user_tag(&UserId(i))).collect();
        let p = payloads(&many);
        assert_eq!(p.len(), 3);
        assert!(
            p.iter().all(|p| p.len() < 8000),
            "NOTIFY payloads stay under 8000 bytes"
        );
        assert_eq!(payloads(&vec![t; 2_001]), vec!["*".to_string()]);
    }

    fn user(id: u64) -> User {
        User {
            id: UserId(id),
            subject: format!("s{id}"),
            email: None,
            email_verified: false,
            name: None,
            picture: None,
            role: Role::Member,
            headscale_user_id: None,
            onboarded: false,
            created: 0,
            last_login: 0,
        }
    }

    #[test]
    fn the_cache_serves_only_while_listening_and_within_its_lifetime() {
        let c = Cache::new(
            Duration::from_millis(200),
            Arc::new(tokio::sync::Notify::new()),
        );
        // Off: nothing is kept.
        c.put_user(c.ticket(), UserId(1), Some(user(1)));
        assert!(c.user(&UserId(1)).is_none());
        c.set_listening(true);
        c.put_user(c.ticket(), UserId(1), Some(user(1)));
        assert_eq!(c.user(&UserId(1)), Some(Some(user(1))));
        assert!(
            c.link(&UserId(1)).is_none(),
            "another kind under the same tag"
        );
        // A notification drops it.
        c.on_notification(&hex(&user_tag(&UserId(1))));
        assert!(c.user(&UserId(1)).is_none());
        // A read that began before an invalidation does not fill the cache.
        let ticket = c.ticket();
        c.invalidate(&[user_tag(&UserId(9))]);
        c.put_user(ticket, UserId(1), Some(user(1)));
        assert!(c.user(&UserId(1)).is_none());
        // The hard lifetime, whatever else happens.
        c.put_user(c.ticket(), UserId(1), Some(user(1)));
        std::thread::sleep(Duration::from_millis(220));
        assert!(c.user(&UserId(1)).is_none());
        // Losing the listener flushes and turns it off.
        c.put_user(c.ticket(), UserId(2), None);
        assert_eq!(c.user(&UserId(2)), Some(None));
        c.set_listening(false);
        assert_eq!(c.state(), (false, 0));
        assert!(c.user(&UserId(2)).is_none());
        // "*" flushes everything.
        c.set_listening(true);
        c.put_user(c.ticket(), UserId(3), None);
        c.on_notification("*");
        assert_eq!(c.state(), (true, 0));
    }

    #[test]
    fn urls_are_checked_without_echoing_them() {
        assert!(check_postgres_url("postgresql://u:pw@db.example.com/headgate").is_ok());
        assert!(check_postgres_url("host=/run/postgresql user=headgate dbname=headgate").is_ok());
        let e = check_postgres_url("postgresql://u:SECRETPW@db/x?sslmode=verify-full").unwrap_err();
        assert!(!e.contains("SECRETPW"), "{e}");
        assert!(e.contains("sslmode"), "{e}");
        let e = check_postgres_url("postgresql://db.example.com/x").unwrap_err();
        assert!(e.contains("no user"), "{e}");
        let e = check_postgres_url("user=x dbname=y").unwrap_err();
        assert!(e.contains("no host"), "{e}");
        let cfg: tokio_postgres::Config = "postgresql://u:SECRETPW@db.example.com:6543/hg"
            .parse()
            .unwrap();
        assert_eq!(
            describe(&cfg),
            "PostgreSQL database hg on db.example.com:6543 as u"
        );
    }
}
