//! An in-process fake of Headscale's REST API (v0.29 wire format, grpc-gateway style), faithful to
//! `../shared/spec/headscale.md`.
//!
//! * Binds `127.0.0.1:0` and runs on its own thread with its own tokio runtime, so it works from sync
//!   `#[test]`s and from `#[tokio::test]`s alike; it stops when the [`FakeHeadscale`] handle drops.
//! * All state (users, nodes, API keys, pre-auth keys, toggles, the call log) lives behind the handle, so a
//!   test changes it while the server runs.
//! * Every `/api/v1/*` request needs `Authorization` exactly `Bearer <known, unexpired key>`, checked before
//!   routing; otherwise `401` with the plain text body `Unauthorized` (see the toggles for the pre-0.27 `500`
//!   and the 0.30 problem+json variants).
//! * JSON as protojson with `EmitUnpopulated` writes it: lowerCamelCase, uint64 ids as strings, every field
//!   present, `null` for unset timestamps and sub-messages, RFC 3339 UTC timestamps with 0/3/6/9 fraction
//!   digits, and (by default) random spaces after commas so no client byte-compares.
//! * Errors: `{"code":<grpc>,"message":"…","details":[]}` with grpc-gateway's status mapping and
//!   `Content-Type: application/json`; unknown routes under `/api/v1/` answer like grpc-gateway's router
//!   (`404 {"code":5,"message":"Not Found","details":[]}`; a known path with another method
//!   `501 {"code":12,"message":"Method Not Allowed","details":[]}`).
//!
//! Served: `GET /health` (no auth), `GET /api/v1/health`, `GET /api/v1/user` (`?id=`, `?name=`, `?email=`),
//! `GET /api/v1/node` (`?user=`), `GET /api/v1/node/{id}`, `GET|POST /api/v1/preauthkey`,
//! `POST /api/v1/preauthkey/expire`, `GET /api/v1/apikey`. Other operations of the Swagger file answer
//! `501` with a message naming them (so a test that needs one notices at once).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use time::OffsetDateTime;

/// The synthetic user that tagged nodes are listed under in `GET /api/v1/node`.
pub const TAGGED_DEVICES_USER_ID: u64 = 2147455555;
pub const TAGGED_DEVICES_USER_NAME: &str = "tagged-devices";

/// Go's zero `time.Time`, which Headscale emits as `0001-01-01T00:00:00Z`.
pub fn zero_time() -> OffsetDateTime {
    time::macros::datetime!(0001-01-01 0:00 UTC)
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

// ---------------------------------------------------------------------------------------------------------
// State records (public so tests can read and edit them)
// ---------------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub display_name: String,
    pub email: String,
    /// `"oidc"` for users created by Headscale's own OIDC login, `""` for local users.
    pub provider: String,
    /// `<iss>/<sub>` in Headscale's normalised form (see [`headscale_provider_id`]), `""` for local users.
    pub provider_id: String,
    pub profile_pic_url: String,
    pub created_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub id: u64,
    pub machine_key: String,
    pub node_key: String,
    pub disco_key: String,
    pub ip_addresses: Vec<String>,
    pub name: String,
    /// The owning user; `None` for a node owned by tags only.
    pub user_id: Option<u64>,
    pub last_seen: Option<OffsetDateTime>,
    pub expiry: Option<OffsetDateTime>,
    /// The pre-auth key (by id) the node registered with, emitted as a masked `preAuthKey` object.
    pub pre_auth_key_id: Option<u64>,
    pub created_at: OffsetDateTime,
    /// `REGISTER_METHOD_UNSPECIFIED`, `REGISTER_METHOD_AUTH_KEY`, `REGISTER_METHOD_CLI` or `REGISTER_METHOD_OIDC`.
    pub register_method: String,
    pub given_name: String,
    pub online: bool,
    pub approved_routes: Vec<String>,
    pub available_routes: Vec<String>,
    pub subnet_routes: Vec<String>,
    /// A node with tags is a *tagged* node: listed under the synthetic `tagged-devices` user, and with
    /// `"user": null` in `GET /api/v1/node/{id}`.
    pub tags: Vec<String>,
}

impl Node {
    pub fn is_tagged(&self) -> bool {
        !self.tags.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ApiKey {
    pub id: u64,
    /// The full key (`hskey-api-<12>-<64>` or legacy `<7>.<32>`, or whatever a test inserted).
    pub key: String,
    /// `None` is emitted as `null` (real Headscale always sets one; useful for "missing expiration" tests).
    pub expiration: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub last_seen: Option<OffsetDateTime>,
}

impl ApiKey {
    /// The `prefix` field as `GET /api/v1/apikey` shows it: `hskey-api-<12 chars>-***`, or legacy `<7 chars>***`.
    pub fn masked_prefix(&self) -> String {
        mask_api_key(&self.key)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PreAuthKey {
    pub id: u64,
    /// The owning user; `None` for a tags-only key (emitted as `"user": null`).
    pub user_id: Option<u64>,
    /// The full key, `hskey-auth-<12>-<64>` (the list endpoint masks it).
    pub key: String,
    pub reusable: bool,
    pub ephemeral: bool,
    pub used: bool,
    /// Go's zero time when the create request had no expiration (so the key is born expired).
    pub expiration: Option<OffsetDateTime>,
    pub created_at: Option<OffsetDateTime>,
    pub acl_tags: Vec<String>,
}

impl PreAuthKey {
    pub fn masked_key(&self) -> String {
        mask_preauth_key(&self.key)
    }
    pub fn is_expired(&self) -> bool {
        self.expiration.is_some_and(|e| e <= now())
    }
}

/// One request the fake received (recorded on arrival; `status` is 0 until it has been answered).
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    pub authorization: Option<String>,
    pub body: String,
    pub status: u16,
}

impl Call {
    /// `path?query` as received.
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} -> {}", self.method, self.target(), self.status)
    }
}

#[derive(Clone, Debug)]
struct Options {
    legacy_500_unauthorized: bool,
    v030_errors: bool,
    random_spaces: bool,
    delay: Duration,
    fail_with: Option<u16>,
    no_health_endpoint: bool,
    go_content_sniffing: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            legacy_500_unauthorized: false,
            v030_errors: false,
            random_spaces: true,
            delay: Duration::ZERO,
            fail_with: None,
            no_health_endpoint: false,
            go_content_sniffing: false,
        }
    }
}

struct State {
    users: BTreeMap<u64, User>,
    nodes: BTreeMap<u64, Node>,
    api_keys: BTreeMap<u64, ApiKey>,
    preauth_keys: BTreeMap<u64, PreAuthKey>,
    next_user: u64,
    next_node: u64,
    next_api_key: u64,
    next_preauth: u64,
    calls: Vec<Call>,
    opts: Options,
    rng: Rng,
}

// ---------------------------------------------------------------------------------------------------------
// Builder and handle
// ---------------------------------------------------------------------------------------------------------

/// Builds a [`FakeHeadscale`]. Every toggle has a same-named method on the running handle too.
pub struct FakeHeadscaleBuilder {
    opts: Options,
    admin_key: bool,
    examples: bool,
}

impl FakeHeadscaleBuilder {
    /// Pre-0.27 behaviour: a bad key that Headscale cannot even look up (unknown prefix, malformed, wrong
    /// secret) gets `500` with the body `Unauthorized`; expired keys and a missing/non-`Bearer ` header
    /// still get `401`.
    pub fn legacy_500_unauthorized(mut self, on: bool) -> Self {
        self.opts.legacy_500_unauthorized = on;
        self
    }
    /// 0.30 behaviour: errors are RFC 7807 `application/problem+json` `{title,status,detail,errors}` with
    /// corrected statuses (e.g. "user not found" is 404, not 500).
    pub fn v030_errors(mut self, on: bool) -> Self {
        self.opts.v030_errors = on;
        self
    }
    /// Randomly insert spaces after commas in JSON output (default on).
    pub fn random_spaces(mut self, on: bool) -> Self {
        self.opts.random_spaces = on;
        self
    }
    /// Wait this long before answering any request.
    pub fn delay(mut self, d: Duration) -> Self {
        self.opts.delay = d;
        self
    }
    /// Answer every request (health included) with this status; see [`FakeHeadscale::fail_with`].
    pub fn fail_with(mut self, status: Option<u16>) -> Self {
        self.opts.fail_with = status;
        self
    }
    /// Pre-0.27: no `/api/v1/health` (grpc-gateway's unknown-route 404 after the key check).
    pub fn no_health_endpoint(mut self, on: bool) -> Self {
        self.opts.no_health_endpoint = on;
        self
    }
    /// Send `Content-Type: text/plain; charset=utf-8` with the `Unauthorized` text, as Go's net/http really
    /// does (it sniffs the body when the handler sets no type). Off by default: the spec's contract is
    /// "no content type set", and clients must not depend on either.
    pub fn go_content_sniffing(mut self, on: bool) -> Self {
        self.opts.go_content_sniffing = on;
        self
    }
    /// Do not create the default admin API key.
    pub fn without_admin_key(mut self) -> Self {
        self.admin_key = false;
        self
    }
    /// Seed the users, nodes and pre-auth keys of `../shared/headscale/examples/*.json` with their ids.
    pub fn with_examples(mut self) -> Self {
        self.examples = true;
        self
    }

    pub fn start(self) -> FakeHeadscale {
        let state = State {
            users: BTreeMap::new(),
            nodes: BTreeMap::new(),
            api_keys: BTreeMap::new(),
            preauth_keys: BTreeMap::new(),
            next_user: 1,
            next_node: 1,
            next_api_key: 1,
            next_preauth: 1,
            calls: Vec::new(),
            opts: self.opts,
            rng: Rng::new(),
        };
        let shared = Arc::new(Mutex::new(state));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("fake headscale: bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (down_tx, down_rx) = tokio::sync::watch::channel(false);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let listening = Arc::new((Mutex::new(true), Condvar::new()));
        let thread = {
            let shared = shared.clone();
            let listening = listening.clone();
            std::thread::Builder::new()
                .name(format!("fake-headscale-{}", addr.port()))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(accept_loop(
                        listener, addr, shared, down_rx, stop_rx, listening,
                    ));
                })
                .unwrap()
        };
        let mut fake = FakeHeadscale {
            addr,
            state: shared,
            down_tx,
            listening,
            stop: Some(stop_tx),
            thread: Some(thread),
            admin_key: String::new(),
        };
        if self.examples {
            fake.load_examples();
        }
        if self.admin_key {
            fake.admin_key = fake.add_api_key(Some(now() + time::Duration::days(90)));
        }
        fake
    }
}

/// A running fake Headscale; stops when dropped.
pub struct FakeHeadscale {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    down_tx: tokio::sync::watch::Sender<bool>,
    listening: Arc<(Mutex<bool>, Condvar)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    admin_key: String,
}

impl Drop for FakeHeadscale {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if std::thread::panicking() {
            let calls = self
                .state
                .lock()
                .map(|s| s.calls.clone())
                .unwrap_or_default();
            eprintln!("----- fake headscale {} received -----", self.addr);
            for c in calls {
                eprintln!("{c}");
            }
            eprintln!("----- end of fake headscale calls -----");
        }
    }
}

impl FakeHeadscale {
    pub fn builder() -> FakeHeadscaleBuilder {
        FakeHeadscaleBuilder {
            opts: Options::default(),
            admin_key: true,
            examples: false,
        }
    }

    /// A fake with default options and an admin key.
    pub fn start() -> FakeHeadscale {
        Self::builder().start()
    }

    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API key created at start (valid for 90 days); panics with `without_admin_key()`.
    pub fn admin_key(&self) -> String {
        assert!(
            !self.admin_key.is_empty(),
            "this fake Headscale was built without an admin key"
        );
        self.admin_key.clone()
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ----- users -----

    /// A local user (`provider ""`, `providerId ""`), like `headscale users create <name> --email <email>`.
    pub fn add_user(&self, name: &str, email: &str) -> u64 {
        let mut st = self.st();
        let id = st.next_user;
        st.next_user += 1;
        st.users.insert(
            id,
            User {
                id,
                name: name.into(),
                display_name: String::new(),
                email: email.into(),
                provider: String::new(),
                provider_id: String::new(),
                profile_pic_url: String::new(),
                created_at: now(),
            },
        );
        id
    }

    /// A user as Headscale's own OIDC login creates it: `provider "oidc"`, `providerId` normalised from
    /// `issuer` and `sub` exactly as Headscale does, `email` as given (pass `""` for an unverified email).
    pub fn add_oidc_user(&self, name: &str, issuer: &str, sub: &str, email: &str) -> u64 {
        let id = self.add_user(name, email);
        self.edit_user(id, |u| {
            u.provider = "oidc".into();
            u.provider_id = headscale_provider_id(issuer, sub);
            u.display_name = name.into();
        });
        id
    }

    /// Change a user in place. Panics for an unknown id.
    pub fn edit_user(&self, id: u64, f: impl FnOnce(&mut User)) {
        let mut st = self.st();
        let u = st
            .users
            .get_mut(&id)
            .unwrap_or_else(|| panic!("fake headscale: no user {id}"));
        f(u);
        u.id = id;
    }

    /// Simulate Headscale being reinstalled or restored: the user keeps its id but gets a new (later)
    /// `createdAt`. Returns the new `createdAt`. Use [`edit_user`](Self::edit_user) for other changes.
    pub fn recreate_user(&self, id: u64) -> OffsetDateTime {
        let mut st = self.st();
        let u = st
            .users
            .get_mut(&id)
            .unwrap_or_else(|| panic!("fake headscale: no user {id}"));
        let mut t = now();
        if t <= u.created_at {
            t = u.created_at + time::Duration::seconds(1);
        }
        u.created_at = t;
        t
    }

    /// Remove a user together with its nodes and pre-auth keys.
    pub fn remove_user(&self, id: u64) {
        let mut st = self.st();
        st.users.remove(&id);
        st.nodes
            .retain(|_, n| n.user_id != Some(id) || n.is_tagged());
        st.preauth_keys.retain(|_, k| k.user_id != Some(id));
    }

    pub fn user(&self, id: u64) -> Option<User> {
        self.st().users.get(&id).cloned()
    }

    pub fn users(&self) -> Vec<User> {
        self.st().users.values().cloned().collect()
    }

    // ----- nodes -----

    /// A node owned by `user_id` (which must exist), with fresh keys and addresses.
    pub fn add_node(&self, user_id: u64, name: &str) -> u64 {
        let oidc = {
            let st = self.st();
            let u = st
                .users
                .get(&user_id)
                .unwrap_or_else(|| panic!("fake headscale: no user {user_id}"));
            u.provider == "oidc"
        };
        let method = if oidc {
            "REGISTER_METHOD_OIDC"
        } else {
            "REGISTER_METHOD_CLI"
        };
        self.insert_node(Some(user_id), name, method, Vec::new())
    }

    /// A node owned by tags only (listed under `tagged-devices`, `"user": null` in `GET /node/{id}`).
    pub fn add_tagged_node(&self, name: &str, tags: &[&str]) -> u64 {
        assert!(!tags.is_empty(), "a tagged node needs at least one tag");
        self.insert_node(
            None,
            name,
            "REGISTER_METHOD_AUTH_KEY",
            tags.iter().map(|t| t.to_string()).collect(),
        )
    }

    fn insert_node(
        &self,
        user_id: Option<u64>,
        name: &str,
        method: &str,
        tags: Vec<String>,
    ) -> u64 {
        let mut st = self.st();
        let id = st.next_node;
        st.next_node += 1;
        let node = Node {
            id,
            machine_key: format!("mkey:{}", st.rng.hex(64)),
            node_key: format!("nodekey:{}", st.rng.hex(64)),
            disco_key: format!("discokey:{}", st.rng.hex(64)),
            ip_addresses: vec![
                format!("100.64.{}.{}", id / 256, id % 256),
                format!("fd7a:115c:a1e0::{:x}", id),
            ],
            name: name.into(),
            user_id,
            last_seen: None,
            expiry: None,
            pre_auth_key_id: None,
            created_at: now(),
            register_method: method.into(),
            given_name: name.into(),
            online: false,
            approved_routes: Vec::new(),
            available_routes: Vec::new(),
            subnet_routes: Vec::new(),
            tags,
        };
        st.nodes.insert(id, node);
        id
    }

    /// Change a node in place. Panics for an unknown id.
    pub fn edit_node(&self, id: u64, f: impl FnOnce(&mut Node)) {
        let mut st = self.st();
        let n = st
            .nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("fake headscale: no node {id}"));
        f(n);
        n.id = id;
    }

    pub fn remove_node(&self, id: u64) {
        self.st().nodes.remove(&id);
    }

    pub fn nodes(&self) -> Vec<Node> {
        self.st().nodes.values().cloned().collect()
    }

    // ----- API keys -----

    /// A new-format key `hskey-api-<12>-<64>`; returns the full key.
    pub fn add_api_key(&self, expiration: Option<OffsetDateTime>) -> String {
        let key = {
            let mut st = self.st();
            format!("hskey-api-{}-{}", st.rng.alnum(12), st.rng.alnum(64))
        };
        self.insert_api_key(&key, expiration);
        key
    }

    /// A legacy key `<7>.<32>` (Headscale before 0.28); returns the full key.
    pub fn add_legacy_api_key(&self, expiration: Option<OffsetDateTime>) -> String {
        let key = {
            let mut st = self.st();
            format!("{}.{}", st.rng.alnum(7), st.rng.alnum(32))
        };
        self.insert_api_key(&key, expiration);
        key
    }

    /// Register an exact key string (any format); returns its id.
    pub fn insert_api_key(&self, key: &str, expiration: Option<OffsetDateTime>) -> u64 {
        let mut st = self.st();
        let id = st.next_api_key;
        st.next_api_key += 1;
        st.api_keys.insert(
            id,
            ApiKey {
                id,
                key: key.into(),
                expiration,
                created_at: now(),
                last_seen: None,
            },
        );
        id
    }

    /// Like `headscale apikeys expire`: the key's expiration becomes now (it stays listed).
    pub fn expire_api_key(&self, key: &str) {
        let mut st = self.st();
        let k = st
            .api_keys
            .values_mut()
            .find(|k| k.key == key)
            .expect("fake headscale: no such API key");
        k.expiration = Some(now() - time::Duration::milliseconds(1));
    }

    /// Like `headscale apikeys delete`: the key is gone (no longer listed, no longer accepted).
    pub fn revoke_api_key(&self, key: &str) {
        let mut st = self.st();
        let before = st.api_keys.len();
        st.api_keys.retain(|_, k| k.key != key);
        assert!(
            st.api_keys.len() < before,
            "fake headscale: no such API key"
        );
    }

    pub fn edit_api_key(&self, key: &str, f: impl FnOnce(&mut ApiKey)) {
        let mut st = self.st();
        let k = st
            .api_keys
            .values_mut()
            .find(|k| k.key == key)
            .expect("fake headscale: no such API key");
        f(k);
    }

    pub fn api_keys(&self) -> Vec<ApiKey> {
        self.st().api_keys.values().cloned().collect()
    }

    // ----- pre-auth keys -----

    /// A pre-auth key created directly (not through the API); returns it with its full key.
    pub fn add_preauth_key(
        &self,
        user_id: Option<u64>,
        expiration: Option<OffsetDateTime>,
    ) -> PreAuthKey {
        let mut st = self.st();
        let id = st.next_preauth;
        st.next_preauth += 1;
        let key = PreAuthKey {
            id,
            user_id,
            key: format!("hskey-auth-{}-{}", st.rng.alnum(12), st.rng.alnum(64)),
            reusable: false,
            ephemeral: false,
            used: false,
            expiration,
            created_at: Some(now()),
            acl_tags: Vec::new(),
        };
        st.preauth_keys.insert(id, key.clone());
        key
    }

    pub fn edit_preauth_key(&self, id: u64, f: impl FnOnce(&mut PreAuthKey)) {
        let mut st = self.st();
        let k = st
            .preauth_keys
            .get_mut(&id)
            .unwrap_or_else(|| panic!("fake headscale: no pre-auth key {id}"));
        f(k);
        k.id = id;
    }

    /// All pre-auth keys, with their full keys (to inspect what the API created).
    pub fn preauth_keys(&self) -> Vec<PreAuthKey> {
        self.st().preauth_keys.values().cloned().collect()
    }

    // ----- call log -----

    /// Every request received so far, in order (unauthorised ones included).
    pub fn calls(&self) -> Vec<Call> {
        self.st().calls.clone()
    }

    /// The calls whose path starts with `prefix` (e.g. `"/api/v1/preauthkey"`).
    pub fn calls_to(&self, prefix: &str) -> Vec<Call> {
        self.st()
            .calls
            .iter()
            .filter(|c| c.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    pub fn clear_calls(&self) {
        self.st().calls.clear();
    }

    // ----- toggles -----

    pub fn legacy_500_unauthorized(&self, on: bool) {
        self.st().opts.legacy_500_unauthorized = on;
    }
    pub fn v030_errors(&self, on: bool) {
        self.st().opts.v030_errors = on;
    }
    pub fn random_spaces(&self, on: bool) {
        self.st().opts.random_spaces = on;
    }
    pub fn delay(&self, d: Duration) {
        self.st().opts.delay = d;
    }
    /// `Some(status)`: every request, `/health` included and before the key check, answers `status` as a
    /// broken Headscale or a proxy in front of it would: JSON `{"code","message","details"}` on `/api/v1/*`
    /// (code 14 "unavailable" for 502/503/504, 13 "internal" for 500, else 2), and
    /// `{"status":"fail","output":…}` on `/health`. `None` heals it.
    pub fn fail_with(&self, status: Option<u16>) {
        self.st().opts.fail_with = status;
    }
    pub fn no_health_endpoint(&self, on: bool) {
        self.st().opts.no_health_endpoint = on;
    }
    pub fn go_content_sniffing(&self, on: bool) {
        self.st().opts.go_content_sniffing = on;
    }

    /// `down(true)`: Headscale is not running. The listening socket is closed (new connections are
    /// refused, `ECONNREFUSED`) and open keep-alive connections are dropped, as when the process dies.
    /// `down(false)`: listen again on the same port. Returns once the change has taken effect.
    pub fn down(&self, down: bool) {
        let _ = self.down_tx.send(down);
        let (m, c) = &*self.listening;
        let g = m.lock().unwrap();
        let (_g, t) = c
            .wait_timeout_while(g, Duration::from_secs(10), |listening| *listening == down)
            .unwrap();
        assert!(
            !t.timed_out(),
            "fake headscale did not go {}",
            if down { "down" } else { "up" }
        );
    }

    // ----- seeding from the shared examples -----

    fn load_examples(&self) {
        let dir = super::shared().join("headscale/examples");
        let users: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("list_users.json")).unwrap())
                .unwrap();
        let nodes: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("list_nodes.json")).unwrap())
                .unwrap();
        let mut st = self.st();
        let put_user = |st: &mut State, u: &serde_json::Value| {
            let u = user_from_json(u);
            if u.id != TAGGED_DEVICES_USER_ID {
                st.next_user = st.next_user.max(u.id + 1);
                st.users.insert(u.id, u);
            }
        };
        for u in users["users"].as_array().unwrap() {
            put_user(&mut st, u);
        }
        for n in nodes["nodes"].as_array().unwrap() {
            if !n["user"].is_null() {
                put_user(&mut st, &n["user"]);
            }
            let pak_id = if n["preAuthKey"].is_null() {
                None
            } else {
                let k = &n["preAuthKey"];
                let masked = k["key"].as_str().unwrap();
                let secret = st.rng.alnum(64);
                let id = json_u64(&k["id"]);
                let key = PreAuthKey {
                    id,
                    user_id: if k["user"].is_null() {
                        None
                    } else {
                        Some(json_u64(&k["user"]["id"]))
                    },
                    key: format!("{}{}", masked.trim_end_matches('*'), secret),
                    reusable: k["reusable"].as_bool().unwrap(),
                    ephemeral: k["ephemeral"].as_bool().unwrap(),
                    used: k["used"].as_bool().unwrap(),
                    expiration: json_time(&k["expiration"]),
                    created_at: json_time(&k["createdAt"]),
                    acl_tags: json_strings(&k["aclTags"]),
                };
                st.next_preauth = st.next_preauth.max(id + 1);
                st.preauth_keys.insert(id, key);
                Some(id)
            };
            let id = json_u64(&n["id"]);
            let user_id = match json_u64(&n["user"]["id"]) {
                TAGGED_DEVICES_USER_ID => None,
                uid => Some(uid),
            };
            let node = Node {
                id,
                machine_key: n["machineKey"].as_str().unwrap().into(),
                node_key: n["nodeKey"].as_str().unwrap().into(),
                disco_key: n["discoKey"].as_str().unwrap().into(),
                ip_addresses: json_strings(&n["ipAddresses"]),
                name: n["name"].as_str().unwrap().into(),
                user_id,
                last_seen: json_time(&n["lastSeen"]),
                expiry: json_time(&n["expiry"]),
                pre_auth_key_id: pak_id,
                created_at: json_time(&n["createdAt"]).unwrap(),
                register_method: n["registerMethod"].as_str().unwrap().into(),
                given_name: n["givenName"].as_str().unwrap().into(),
                online: n["online"].as_bool().unwrap(),
                approved_routes: json_strings(&n["approvedRoutes"]),
                available_routes: json_strings(&n["availableRoutes"]),
                subnet_routes: json_strings(&n["subnetRoutes"]),
                tags: json_strings(&n["tags"]),
            };
            st.next_node = st.next_node.max(id + 1);
            st.nodes.insert(id, node);
        }
    }
}

fn json_u64(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::String(s) => s.parse().unwrap(),
        v => v.as_u64().unwrap(),
    }
}

fn json_time(v: &serde_json::Value) -> Option<OffsetDateTime> {
    v.as_str()
        .map(|s| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap())
}

fn json_strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn user_from_json(u: &serde_json::Value) -> User {
    let s = |k: &str| u[k].as_str().unwrap_or_default().to_string();
    User {
        id: json_u64(&u["id"]),
        name: s("name"),
        display_name: s("displayName"),
        email: s("email"),
        provider: s("provider"),
        provider_id: s("providerId"),
        profile_pic_url: s("profilePicUrl"),
        created_at: json_time(&u["createdAt"]).unwrap_or_else(zero_time),
    }
}

fn mask_api_key(key: &str) -> String {
    if let Some(rest) = key.strip_prefix("hskey-api-") {
        let prefix = match rest.find('-') {
            Some(i) => &rest[..i],
            None => &rest[..rest.len().min(12)],
        };
        format!("hskey-api-{prefix}-***")
    } else if let Some((prefix, _)) = key.split_once('.') {
        format!("{prefix}***")
    } else {
        format!("{}***", key.chars().take(7).collect::<String>())
    }
}

fn mask_preauth_key(key: &str) -> String {
    if let Some(rest) = key.strip_prefix("hskey-auth-") {
        let prefix = match rest.find('-') {
            Some(i) => &rest[..i],
            None => &rest[..rest.len().min(12)],
        };
        format!("hskey-auth-{prefix}-***")
    } else {
        // Keys from before 0.28 (48 hex characters) are listed in full.
        key.to_string()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Server loop
// ---------------------------------------------------------------------------------------------------------

async fn accept_loop(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    shared: Arc<Mutex<State>>,
    mut down_rx: tokio::sync::watch::Receiver<bool>,
    mut stop_rx: tokio::sync::oneshot::Receiver<()>,
    listening: Arc<(Mutex<bool>, Condvar)>,
) {
    let mut listener = Some(tokio::net::TcpListener::from_std(listener).unwrap());
    let set_listening = |on: bool| {
        let (m, c) = &*listening;
        *m.lock().unwrap() = on;
        c.notify_all();
    };
    loop {
        let is_down = *down_rx.borrow_and_update();
        if is_down {
            listener = None;
        } else if listener.is_none() {
            // Same port again (mio sets SO_REUSEADDR); retry briefly in case the OS is slow to release it.
            let mut tries = 0;
            listener = loop {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => break Some(l),
                    Err(e) if tries < 100 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("fake headscale: cannot listen on {addr} again: {e}"),
                }
            };
        }
        set_listening(listener.is_some());
        tokio::select! {
            _ = &mut stop_rx => break,
            changed = down_rx.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            accepted = async { listener.as_ref().unwrap().accept().await }, if listener.is_some() => {
                if let Ok((stream, _peer)) = accepted {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_conn(stream, shared.clone(), down_rx.clone()));
                }
            }
        }
    }
}

async fn serve_conn(
    stream: tokio::net::TcpStream,
    shared: Arc<Mutex<State>>,
    mut down_rx: tokio::sync::watch::Receiver<bool>,
) {
    let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        gone = async { down_rx.wait_for(|d| *d).await.is_ok() } => {
            if !gone {
                std::future::pending::<()>().await;
            }
            // Going down: the connection is dropped without a response, like a dying process.
        }
    }
}

async fn handle(
    shared: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (index, delay) = {
        let mut st = shared.lock().unwrap_or_else(|e| e.into_inner());
        st.calls.push(Call {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            authorization: parts
                .headers
                .get(http::header::AUTHORIZATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            body: String::from_utf8_lossy(&body).into_owned(),
            status: 0,
        });
        (st.calls.len() - 1, st.opts.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let reply = {
        let mut st = shared.lock().unwrap_or_else(|e| e.into_inner());
        let reply = st.respond(&parts, &body);
        if let Some(c) = st.calls.get_mut(index) {
            c.status = reply.status;
        }
        reply
    };
    let mut resp = Response::builder().status(reply.status);
    if let Some(ct) = reply.content_type {
        resp = resp.header(http::header::CONTENT_TYPE, ct);
    }
    Ok(resp.body(Full::new(Bytes::from(reply.body))).unwrap())
}

struct Reply {
    status: u16,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

const JSON: &str = "application/json";
const PROBLEM_JSON: &str = "application/problem+json";

/// The routes grpc-gateway knows (from the v0.29.2 Swagger file): `{}` matches one path segment.
const KNOWN_ROUTES: &[(&str, &[&str])] = &[
    ("/api/v1/apikey", &["GET", "POST"]),
    ("/api/v1/apikey/expire", &["POST"]),
    ("/api/v1/apikey/{}", &["DELETE"]),
    ("/api/v1/auth/approve", &["POST"]),
    ("/api/v1/auth/register", &["POST"]),
    ("/api/v1/auth/reject", &["POST"]),
    ("/api/v1/debug/node", &["POST"]),
    ("/api/v1/health", &["GET"]),
    ("/api/v1/node", &["GET"]),
    ("/api/v1/node/backfillips", &["POST"]),
    ("/api/v1/node/register", &["POST"]),
    ("/api/v1/node/{}", &["GET", "DELETE"]),
    ("/api/v1/node/{}/approve_routes", &["POST"]),
    ("/api/v1/node/{}/expire", &["POST"]),
    ("/api/v1/node/{}/rename/{}", &["POST"]),
    ("/api/v1/node/{}/tags", &["POST"]),
    ("/api/v1/policy", &["GET", "PUT"]),
    ("/api/v1/policy/check", &["POST"]),
    ("/api/v1/preauthkey", &["GET", "DELETE", "POST"]),
    ("/api/v1/preauthkey/expire", &["POST"]),
    ("/api/v1/user", &["GET", "POST"]),
    ("/api/v1/user/{}", &["DELETE"]),
    ("/api/v1/user/{}/rename/{}", &["POST"]),
];

fn route_matches(pattern: &str, path: &str) -> bool {
    let (p, s): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    p.len() == s.len()
        && p.iter()
            .zip(&s)
            .all(|(p, s)| if *p == "{}" { !s.is_empty() } else { p == s })
}

/// grpc code → HTTP status, as grpc-gateway's `HTTPStatusFromCode`.
fn grpc_http_status(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        2 => 500,
        3 => 400,
        4 => 504,
        5 => 404,
        6 => 409,
        7 => 403,
        8 => 429,
        9 => 400,
        10 => 409,
        11 => 400,
        12 => 501,
        13 => 500,
        14 => 503,
        15 => 500,
        16 => 401,
        _ => 500,
    }
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

enum Auth {
    Ok,
    /// Missing header, not `Bearer `, expired key: 401 on every version.
    Rejected,
    /// A key Headscale cannot find or whose secret does not match: 500 before 0.27.
    Unknown,
}

impl State {
    fn json(&mut self, v: J) -> Reply {
        let mut out = String::new();
        let mode = if self.opts.random_spaces {
            self.rng.below(3)
        } else {
            0
        };
        let rng = &mut self.rng;
        let mut space = move || match mode {
            1 => true,
            2 => rng.below(2) == 0,
            _ => false,
        };
        v.write(&mut out, &mut space);
        Reply {
            status: 200,
            content_type: Some(JSON),
            body: out.into_bytes(),
        }
    }

    /// An error as v0.29 (grpc-gateway) or, with `v030_errors`, as 0.30 (problem+json) answers it.
    fn error(&mut self, code: u32, status_030: u16, message: &str) -> Reply {
        if self.opts.v030_errors {
            return self.problem(status_030, message);
        }
        let mut r = self.json(J::obj(vec![
            ("code", J::Num(code as i64)),
            ("message", J::str(message)),
            ("details", J::Arr(vec![])),
        ]));
        r.status = grpc_http_status(code);
        r
    }

    fn problem(&mut self, status: u16, detail: &str) -> Reply {
        let mut r = self.json(J::obj(vec![
            ("title", J::str(reason(status))),
            ("status", J::Num(status as i64)),
            ("detail", J::str(detail)),
            ("errors", J::Arr(vec![])),
        ]));
        r.status = status;
        r.content_type = Some(PROBLEM_JSON);
        r
    }

    fn unauthorized(&mut self, status: u16) -> Reply {
        if self.opts.v030_errors {
            return self.problem(401, "invalid or missing API key");
        }
        let content_type = if self.opts.go_content_sniffing {
            Some("text/plain; charset=utf-8")
        } else {
            None
        };
        Reply {
            status,
            content_type,
            body: b"Unauthorized".to_vec(),
        }
    }

    fn check_auth(&self, headers: &http::HeaderMap) -> Auth {
        // Go's Header.Get: the first value.
        let Some(h) = headers.get(http::header::AUTHORIZATION) else {
            return Auth::Rejected;
        };
        let Some(key) = h.as_bytes().strip_prefix(b"Bearer ") else {
            return Auth::Rejected;
        };
        match self.api_keys.values().find(|k| k.key.as_bytes() == key) {
            None => Auth::Unknown,
            Some(k) if k.expiration.is_some_and(|e| e <= now()) => Auth::Rejected,
            Some(_) => Auth::Ok,
        }
    }

    fn respond(&mut self, parts: &http::request::Parts, body: &[u8]) -> Reply {
        let method = parts.method.as_str();
        let path = parts.uri.path();
        if let Some(status) = self.opts.fail_with {
            return self.failure(status, path);
        }
        if path == "/health" {
            if method != "GET" {
                return Reply {
                    status: 405,
                    content_type: None,
                    body: Vec::new(),
                };
            }
            return Reply {
                status: 200,
                content_type: Some("application/health+json; charset=utf-8"),
                body: br#"{"status":"pass"}"#.to_vec(),
            };
        }
        if !path.starts_with("/api/v1/") {
            return Reply {
                status: 404,
                content_type: None,
                body: Vec::new(),
            };
        }
        match self.check_auth(&parts.headers) {
            Auth::Ok => {}
            Auth::Rejected => return self.unauthorized(401),
            Auth::Unknown => {
                let status = if self.opts.legacy_500_unauthorized {
                    500
                } else {
                    401
                };
                return self.unauthorized(status);
            }
        }
        let query = match Query::parse(parts.uri.query()) {
            Ok(q) => q,
            Err(msg) => return self.error(3, 400, &msg),
        };
        match (method, path) {
            ("GET", "/api/v1/health") if !self.opts.no_health_endpoint => {
                self.json(J::obj(vec![("databaseConnectivity", J::Bool(true))]))
            }
            ("GET", "/api/v1/user") => self.list_users(&query),
            ("GET", "/api/v1/node") => self.list_nodes(&query),
            ("GET", p) if route_matches("/api/v1/node/{}", p) => {
                self.get_node(&p["/api/v1/node/".len()..])
            }
            ("GET", "/api/v1/preauthkey") => self.list_preauth_keys(),
            ("POST", "/api/v1/preauthkey") => self.create_preauth_key(body),
            ("POST", "/api/v1/preauthkey/expire") => self.expire_preauth_key(body),
            ("GET", "/api/v1/apikey") => self.list_api_keys(),
            _ => self.unrouted(method, path),
        }
    }

    fn unrouted(&mut self, method: &str, path: &str) -> Reply {
        let known = |p: &str| !(self.opts.no_health_endpoint && p == "/api/v1/health");
        let matching: Vec<&(&str, &[&str])> = KNOWN_ROUTES
            .iter()
            .filter(|(p, _)| known(p) && route_matches(p, path))
            .collect();
        if matching.iter().any(|(_, ms)| ms.contains(&method)) {
            let msg = format!("the fake Headscale does not implement {method} {path}");
            return self.error(12, 501, &msg);
        }
        if !matching.is_empty() {
            return self.error(12, 405, "Method Not Allowed");
        }
        self.error(5, 404, "Not Found")
    }

    fn failure(&mut self, status: u16, path: &str) -> Reply {
        if path == "/health" {
            let body = format!(r#"{{"status":"fail","output":"fake failure ({status})"}}"#);
            return Reply {
                status,
                content_type: Some("application/health+json; charset=utf-8"),
                body: body.into_bytes(),
            };
        }
        let (code, msg) = match status {
            502..=504 => (14, "unavailable"),
            500 => (13, "internal"),
            _ => (2, "fake failure"),
        };
        if self.opts.v030_errors {
            return self.problem(status, msg);
        }
        let mut r = self.json(J::obj(vec![
            ("code", J::Num(code)),
            ("message", J::str(msg)),
            ("details", J::Arr(vec![])),
        ]));
        r.status = status;
        r
    }

    // ----- operations -----

    fn user_json(&self, u: &User) -> J {
        J::obj(vec![
            ("id", J::id(u.id)),
            ("name", J::str(&u.name)),
            ("createdAt", J::time(Some(u.created_at))),
            ("displayName", J::str(&u.display_name)),
            ("email", J::str(&u.email)),
            ("providerId", J::str(&u.provider_id)),
            ("provider", J::str(&u.provider)),
            ("profilePicUrl", J::str(&u.profile_pic_url)),
        ])
    }

    fn tagged_devices_user(&self) -> J {
        self.user_json(&User {
            id: TAGGED_DEVICES_USER_ID,
            name: TAGGED_DEVICES_USER_NAME.into(),
            display_name: "Tagged Devices".into(),
            email: String::new(),
            provider: String::new(),
            provider_id: String::new(),
            profile_pic_url: String::new(),
            created_at: zero_time(),
        })
    }

    fn preauth_json(&self, k: &PreAuthKey, full_key: bool) -> J {
        let user = k
            .user_id
            .and_then(|id| self.users.get(&id))
            .map(|u| self.user_json(u))
            .unwrap_or(J::Null);
        J::obj(vec![
            ("user", user),
            ("id", J::id(k.id)),
            (
                "key",
                J::str(&if full_key {
                    k.key.clone()
                } else {
                    k.masked_key()
                }),
            ),
            ("reusable", J::Bool(k.reusable)),
            ("ephemeral", J::Bool(k.ephemeral)),
            ("used", J::Bool(k.used)),
            ("expiration", J::time(k.expiration)),
            ("createdAt", J::time(k.created_at)),
            ("aclTags", J::strs(&k.acl_tags)),
        ])
    }

    /// `listing`: in `ListNodes` a tagged node shows the synthetic `tagged-devices` user; in `GetNode` null.
    fn node_json(&self, n: &Node, listing: bool) -> J {
        let user = if n.is_tagged() {
            if listing {
                self.tagged_devices_user()
            } else {
                J::Null
            }
        } else {
            n.user_id
                .and_then(|id| self.users.get(&id))
                .map(|u| self.user_json(u))
                .unwrap_or(J::Null)
        };
        let pak = n
            .pre_auth_key_id
            .and_then(|id| self.preauth_keys.get(&id))
            .map(|k| self.preauth_json(k, false));
        J::obj(vec![
            ("id", J::id(n.id)),
            ("machineKey", J::str(&n.machine_key)),
            ("nodeKey", J::str(&n.node_key)),
            ("discoKey", J::str(&n.disco_key)),
            ("ipAddresses", J::strs(&n.ip_addresses)),
            ("name", J::str(&n.name)),
            ("user", user),
            ("lastSeen", J::time(n.last_seen)),
            ("expiry", J::time(n.expiry)),
            ("preAuthKey", pak.unwrap_or(J::Null)),
            ("createdAt", J::time(Some(n.created_at))),
            ("registerMethod", J::str(&n.register_method)),
            ("givenName", J::str(&n.given_name)),
            ("online", J::Bool(n.online)),
            ("approvedRoutes", J::strs(&n.approved_routes)),
            ("availableRoutes", J::strs(&n.available_routes)),
            ("subnetRoutes", J::strs(&n.subnet_routes)),
            ("tags", J::strs(&n.tags)),
        ])
    }

    fn list_users(&mut self, q: &Query) -> Reply {
        // Headscale applies one filter: name, else email, else a non-zero id.
        let name = q.get("name").unwrap_or_default();
        let email = q.get("email").unwrap_or_default();
        let id = match q.uint64("id") {
            Ok(id) => id,
            Err(msg) => return self.error(3, 400, &msg),
        };
        let users: Vec<J> = self
            .users
            .values()
            .filter(|u| {
                if !name.is_empty() {
                    u.name == name
                } else if !email.is_empty() {
                    u.email == email
                } else if id != 0 {
                    u.id == id
                } else {
                    true
                }
            })
            .map(|u| self.user_json(u))
            .collect();
        self.json(J::obj(vec![("users", J::Arr(users))]))
    }

    fn list_nodes(&mut self, q: &Query) -> Reply {
        let user = q.get("user").unwrap_or_default();
        let owner = if user.is_empty() {
            None
        } else {
            let found: Vec<u64> = self
                .users
                .values()
                .filter(|u| u.name == user)
                .map(|u| u.id)
                .collect();
            match found.as_slice() {
                [] => return self.error(2, 404, "user not found"),
                [id] => Some(*id),
                _ => return self.error(2, 409, "expected exactly one user"),
            }
        };
        let nodes: Vec<J> = self
            .nodes
            .values()
            .filter(|n| owner.is_none() || (!n.is_tagged() && n.user_id == owner))
            .map(|n| self.node_json(n, true))
            .collect();
        self.json(J::obj(vec![("nodes", J::Arr(nodes))]))
    }

    fn get_node(&mut self, raw_id: &str) -> Reply {
        let id = match parse_uint64(raw_id) {
            Ok(id) => id,
            Err(e) => {
                let msg = format!("type mismatch, parameter: node_id, error: {e}");
                return self.error(3, 400, &msg);
            }
        };
        match self.nodes.get(&id) {
            Some(n) => {
                let j = self.node_json(n, false);
                self.json(J::obj(vec![("node", j)]))
            }
            None => self.error(5, 404, "node not found"),
        }
    }

    fn list_preauth_keys(&mut self) -> Reply {
        let keys: Vec<J> = self
            .preauth_keys
            .values()
            .map(|k| self.preauth_json(k, false))
            .collect();
        self.json(J::obj(vec![("preAuthKeys", J::Arr(keys))]))
    }

    fn create_preauth_key(&mut self, body: &[u8]) -> Reply {
        let req = match parse_body(body) {
            Ok(v) => v,
            Err(msg) => return self.error(3, 400, &msg),
        };
        let user = match body_uint64(&req, "user") {
            Ok(u) => u,
            Err(msg) => return self.error(3, 400, &msg),
        };
        let bool_field = |k: &str| -> Result<bool, String> {
            match req.get(k) {
                None | Some(serde_json::Value::Null) => Ok(false),
                Some(serde_json::Value::Bool(b)) => Ok(*b),
                Some(v) => Err(format!("proto: invalid value for bool field {k}: {v}")),
            }
        };
        let (reusable, ephemeral) = match (bool_field("reusable"), bool_field("ephemeral")) {
            (Ok(r), Ok(e)) => (r, e),
            (Err(m), _) | (_, Err(m)) => return self.error(3, 400, &m),
        };
        let expiration = match req.get("expiration") {
            None | Some(serde_json::Value::Null) => zero_time(),
            Some(serde_json::Value::String(s)) => {
                match OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
                    Ok(t) => t.to_offset(time::UtcOffset::UTC),
                    Err(_) => {
                        let msg = format!(
                            "proto: invalid value for google.protobuf.Timestamp type: \"{s}\""
                        );
                        return self.error(3, 400, &msg);
                    }
                }
            }
            Some(v) => {
                let msg = format!("proto: invalid value for google.protobuf.Timestamp type: {v}");
                return self.error(3, 400, &msg);
            }
        };
        let acl_tags = match req.get("aclTags") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(a)) if a.iter().all(|t| t.is_string()) => {
                a.iter().map(|t| t.as_str().unwrap().to_string()).collect()
            }
            Some(v) => {
                return self.error(
                    3,
                    400,
                    &format!("proto: invalid value for string field aclTags: {v}"),
                );
            }
        };
        for tag in &acl_tags {
            let problem = if !tag.starts_with("tag:") {
                Some("tag must start with the string 'tag:'")
            } else if tag.to_lowercase() != *tag {
                Some("tag should be lowercase")
            } else if tag.split_whitespace().count() > 1 {
                Some("tag should not contains space")
            } else {
                None
            };
            if let Some(p) = problem {
                return self.error(3, 400, p);
            }
        }
        if user != 0 && !self.users.contains_key(&user) {
            return self.error(2, 404, "user not found");
        }
        if user == 0 && acl_tags.is_empty() {
            return self.error(3, 400, "pre-auth key must have either a user or tags");
        }
        let id = self.next_preauth;
        self.next_preauth += 1;
        let key = PreAuthKey {
            id,
            user_id: if user == 0 { None } else { Some(user) },
            key: format!("hskey-auth-{}-{}", self.rng.alnum(12), self.rng.alnum(64)),
            reusable,
            ephemeral,
            used: false,
            expiration: Some(expiration),
            created_at: Some(now()),
            acl_tags,
        };
        self.preauth_keys.insert(id, key.clone());
        let j = self.preauth_json(&key, true);
        self.json(J::obj(vec![("preAuthKey", j)]))
    }

    fn expire_preauth_key(&mut self, body: &[u8]) -> Reply {
        let req = match parse_body(body) {
            Ok(v) => v,
            Err(msg) => return self.error(3, 400, &msg),
        };
        let id = match body_uint64(&req, "id") {
            Ok(id) => id,
            Err(msg) => return self.error(3, 400, &msg),
        };
        // 0.29: `UPDATE … SET expiration = now WHERE id = ?`; no such row is not an error.
        if let Some(k) = self.preauth_keys.get_mut(&id) {
            k.expiration = Some(now());
        }
        self.json(J::obj(vec![]))
    }

    fn list_api_keys(&mut self) -> Reply {
        let keys: Vec<J> = self
            .api_keys
            .values()
            .map(|k| {
                J::obj(vec![
                    ("id", J::id(k.id)),
                    ("prefix", J::str(&k.masked_prefix())),
                    ("expiration", J::time(k.expiration)),
                    ("createdAt", J::time(Some(k.created_at))),
                    ("lastSeen", J::time(k.last_seen)),
                ])
            })
            .collect();
        self.json(J::obj(vec![("apiKeys", J::Arr(keys))]))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Request parsing as grpc-gateway does it
// ---------------------------------------------------------------------------------------------------------

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Result<Query, String> {
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        for (k, _) in &pairs {
            let values: Vec<&str> = pairs
                .iter()
                .filter(|(k2, _)| k2 == k)
                .map(|(_, v)| v.as_str())
                .collect();
            if values.len() > 1 {
                return Err(format!(
                    "too many values for field \"{k}\": {}",
                    values.join(", ")
                ));
            }
        }
        Ok(Query(pairs))
    }

    fn get(&self, k: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k2, _)| k2 == k)
            .map(|(_, v)| v.clone())
    }

    fn uint64(&self, k: &str) -> Result<u64, String> {
        match self.get(k) {
            None => Ok(0),
            Some(v) => parse_uint64(&v).map_err(|e| format!("parsing field \"{k}\": {e}")),
        }
    }
}

/// Go's `strconv.ParseUint(s, 10, 64)` with its error text.
fn parse_uint64(s: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "strconv.ParseUint: parsing \"{s}\": invalid syntax"
        ));
    }
    s.parse::<u64>()
        .map_err(|_| format!("strconv.ParseUint: parsing \"{s}\": value out of range"))
}

/// A JSON request body (protojson: unknown fields ignored, an empty body is an empty message).
fn parse_body(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err("proto: syntax error (line 1:1): unexpected token".into()),
        Err(e) => Err(format!("proto: syntax error: {e}")),
    }
}

/// A uint64 field of a JSON body: protojson accepts a string or a number; absent or null is 0.
fn body_uint64(m: &serde_json::Map<String, serde_json::Value>, k: &str) -> Result<u64, String> {
    match m.get(k) {
        None | Some(serde_json::Value::Null) => Ok(0),
        Some(serde_json::Value::String(s)) => parse_uint64(s)
            .map_err(|_| format!("proto: invalid value for uint64 field {k}: \"{s}\"")),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("proto: invalid value for uint64 field {k}: {n}")),
        Some(v) => Err(format!("proto: invalid value for uint64 field {k}: {v}")),
    }
}

// ---------------------------------------------------------------------------------------------------------
// JSON output (ordered like the proto fields, with optional random spaces after commas)
// ---------------------------------------------------------------------------------------------------------

enum J {
    Null,
    Bool(bool),
    Num(i64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(&'static str, J)>),
}

impl J {
    fn obj(fields: Vec<(&'static str, J)>) -> J {
        J::Obj(fields)
    }
    fn str(s: &str) -> J {
        J::Str(s.to_string())
    }
    fn id(id: u64) -> J {
        J::Str(id.to_string())
    }
    fn strs(v: &[String]) -> J {
        J::Arr(v.iter().map(|s| J::str(s)).collect())
    }
    fn time(t: Option<OffsetDateTime>) -> J {
        t.map(|t| J::Str(protojson_timestamp(t))).unwrap_or(J::Null)
    }

    fn write(&self, out: &mut String, space: &mut dyn FnMut() -> bool) {
        let comma = |out: &mut String, space: &mut dyn FnMut() -> bool| {
            out.push(',');
            if space() {
                out.push(' ');
            }
        };
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(&n.to_string()),
            J::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        comma(out, space);
                    }
                    item.write(out, space);
                }
                out.push(']');
            }
            J::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        comma(out, space);
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    v.write(out, space);
                }
                out.push('}');
            }
        }
    }
}

/// A timestamp as protojson writes `google.protobuf.Timestamp`: UTC, `Z`, and 0, 3, 6 or 9 fraction digits.
pub fn protojson_timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let year = t.year();
    let base = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        year,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let nanos = t.nanosecond();
    let frac = if nanos == 0 {
        String::new()
    } else if nanos.is_multiple_of(1_000_000) {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{:09}", nanos)
    };
    format!("{base}{frac}Z")
}

// ---------------------------------------------------------------------------------------------------------
// providerId normalisation, as Headscale's `OIDCClaims.Identifier()` + `CleanIdentifier()` (Go net/url)
// ---------------------------------------------------------------------------------------------------------

/// The `providerId` Headscale stores for an OIDC user: `url.JoinPath(iss, sub)` (or `iss + "/" + sub` when
/// the issuer is not a URL), then `CleanIdentifier`: scheme lower-cased, empty path segments (`//`) dropped,
/// whitespace around segments trimmed, and the path escaped as Go's `URL.String()` does (so `auth0|x`
/// becomes `auth0%7Cx`, a space `%20`).
pub fn headscale_provider_id(iss: &str, sub: &str) -> String {
    if iss.is_empty() && sub.is_empty() {
        return String::new();
    }
    if iss.is_empty() {
        return clean_identifier(sub);
    }
    if sub.is_empty() {
        return clean_identifier(iss);
    }
    let mut result = String::new();
    if let Ok(u) = GoUrl::parse(iss)
        && !u.scheme.is_empty()
    {
        result = u.join_path(sub).to_string();
    }
    if result.is_empty() {
        let iss = iss.strip_suffix('/').unwrap_or(iss);
        let sub = sub.strip_prefix('/').unwrap_or(sub);
        result = format!("{iss}/{sub}");
    }
    clean_identifier(&result)
}

/// Headscale's `util.CleanIdentifier`.
pub fn clean_identifier(identifier: &str) -> String {
    if identifier.is_empty() {
        return String::new();
    }
    let identifier = identifier.trim();
    if let Ok(mut u) = GoUrl::parse(identifier)
        && !u.scheme.is_empty()
    {
        let parts: Vec<&str> = u
            .path
            .split('/')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        u.path = if parts.is_empty() {
            String::new()
        } else {
            format!("/{}", parts.join("/"))
        };
        u.scheme = u.scheme.to_lowercase();
        return u.to_string();
    }
    let parts: Vec<&str> = identifier
        .split('/')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    parts.join("/")
}

/// The parts of Go's `net/url.URL` that `JoinPath`, `CleanIdentifier` and `String` touch.
#[derive(Clone, Debug, Default)]
struct GoUrl {
    scheme: String,
    opaque: String,
    /// userinfo@host[:port], kept as written.
    authority: Option<String>,
    omit_host: bool,
    path: String,
    raw_path: String,
    force_query: bool,
    raw_query: String,
    fragment: String,
}

impl GoUrl {
    fn parse(raw: &str) -> Result<GoUrl, ()> {
        let (u, frag) = match raw.split_once('#') {
            Some((u, f)) => (u, Some(f)),
            None => (raw, None),
        };
        if u.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(());
        }
        let mut url = GoUrl::default();
        let (scheme, mut rest) = go_get_scheme(u)?;
        url.scheme = scheme.to_lowercase();
        if rest.ends_with('?') && rest.matches('?').count() == 1 {
            url.force_query = true;
            rest = &rest[..rest.len() - 1];
        } else if let Some((r, q)) = rest.split_once('?') {
            rest = r;
            url.raw_query = q.to_string();
        }
        if !rest.starts_with('/') {
            if !url.scheme.is_empty() {
                url.opaque = rest.to_string();
                return url.with_fragment(frag);
            }
            let segment = rest.split('/').next().unwrap_or_default();
            if segment.contains(':') {
                return Err(());
            }
        }
        if (!url.scheme.is_empty() || !rest.starts_with("///")) && rest.starts_with("//") {
            let after = &rest[2..];
            let (authority, r) = match after.find('/') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            };
            if authority.contains('%') && go_unescape(authority).is_err() {
                return Err(());
            }
            url.authority = Some(authority.to_string());
            rest = r;
        } else if !url.scheme.is_empty() && rest.starts_with('/') {
            url.omit_host = true;
        }
        url.set_path(rest)?;
        url.with_fragment(frag)
    }

    fn with_fragment(mut self, frag: Option<&str>) -> Result<GoUrl, ()> {
        if let Some(f) = frag {
            self.fragment = String::from_utf8_lossy(&go_unescape(f)?).into_owned();
        }
        Ok(self)
    }

    fn set_path(&mut self, p: &str) -> Result<(), ()> {
        let path = String::from_utf8_lossy(&go_unescape(p)?).into_owned();
        self.raw_path = if go_escape_path(&path) == p {
            String::new()
        } else {
            p.to_string()
        };
        self.path = path;
        Ok(())
    }

    fn escaped_path(&self) -> String {
        if !self.raw_path.is_empty()
            && go_valid_encoded_path(&self.raw_path)
            && go_unescape(&self.raw_path).is_ok_and(|p| p == self.path.as_bytes())
        {
            return self.raw_path.clone();
        }
        if self.path == "*" {
            return "*".into();
        }
        go_escape_path(&self.path)
    }

    fn join_path(&self, elem: &str) -> GoUrl {
        let first = self.escaped_path();
        let p = if !first.starts_with('/') {
            go_path_join(&[&format!("/{first}"), elem])[1..].to_string()
        } else {
            go_path_join(&[&first, elem])
        };
        let mut p = p;
        if elem.ends_with('/') && !p.ends_with('/') {
            p.push('/');
        }
        let mut u = self.clone();
        let _ = u.set_path(&p); // Go ignores the error (the path stays the issuer's).
        u
    }
}

impl std::fmt::Display for GoUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut buf = String::new();
        if !self.scheme.is_empty() {
            buf.push_str(&self.scheme);
            buf.push(':');
        }
        if !self.opaque.is_empty() {
            buf.push_str(&self.opaque);
        } else {
            let host = self.authority.as_deref().unwrap_or_default();
            if !self.scheme.is_empty() || !host.is_empty() {
                if self.omit_host && host.is_empty() {
                } else {
                    if !host.is_empty() || !self.path.is_empty() || self.authority.is_some() {
                        buf.push_str("//");
                    }
                    buf.push_str(host);
                }
            }
            let path = self.escaped_path();
            if !path.is_empty() && !path.starts_with('/') && !host.is_empty() {
                buf.push('/');
            }
            if buf.is_empty() && path.split('/').next().unwrap_or_default().contains(':') {
                buf.push_str("./");
            }
            buf.push_str(&path);
        }
        if self.force_query || !self.raw_query.is_empty() {
            buf.push('?');
            buf.push_str(&self.raw_query);
        }
        if !self.fragment.is_empty() {
            buf.push('#');
            buf.push_str(&go_escape(&self.fragment, |c| {
                go_should_escape_path(c) && !b"!()*".contains(&c)
            }));
        }
        f.write_str(&buf)
    }
}

fn go_get_scheme(raw: &str) -> Result<(&str, &str), ()> {
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' => {
                if i == 0 {
                    return Ok(("", raw));
                }
            }
            b':' => {
                if i == 0 {
                    return Err(()); // missing protocol scheme
                }
                return Ok((&raw[..i], &raw[i + 1..]));
            }
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

fn go_should_escape_path(c: u8) -> bool {
    if c.is_ascii_alphanumeric() {
        return false;
    }
    match c {
        b'-' | b'_' | b'.' | b'~' => false,
        b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'?' | b'@' => c == b'?',
        _ => true,
    }
}

fn go_escape(s: &str, should: impl Fn(u8) -> bool) -> String {
    let mut out = String::new();
    for &b in s.as_bytes() {
        if should(b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

fn go_escape_path(s: &str) -> String {
    go_escape(s, go_should_escape_path)
}

fn go_valid_encoded_path(s: &str) -> bool {
    s.bytes()
        .all(|b| b"!$&'()*+,;=:@[]%".contains(&b) || !go_should_escape_path(b))
}

fn go_unescape(s: &str) -> Result<Vec<u8>, ()> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            ) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(()),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Go's `path.Join`: join the non-empty elements with `/` and `path.Clean` the result.
fn go_path_join(elems: &[&str]) -> String {
    match elems.iter().position(|e| !e.is_empty()) {
        Some(i) => go_path_clean(&elems[i..].join("/")),
        None => String::new(),
    }
}

/// Go's `path.Clean`.
fn go_path_clean(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("getrandom");
        Rng(u64::from_le_bytes(seed) | 1)
    }
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| alphabet[self.below(alphabet.len() as u64) as usize] as char)
            .collect()
    }
    fn alnum(&mut self, n: usize) -> String {
        self.pick(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            n,
        )
    }
    fn hex(&mut self, n: usize) -> String {
        self.pick(b"0123456789abcdef", n)
    }
}
