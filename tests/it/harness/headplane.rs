//! An in-process test double of **Headplane** (0.6.3 and 0.7 / main, optionally 0.7 with
//! `server.proxy_auth`), built from the transcripts of a real Headplane in
//! `../shared/headplane/observed/` (checked against them by `tests/it/headplane_double.rs`).
//!
//! * Same pattern as [`super::fake_headscale`]: binds `127.0.0.1:0`, runs on its own thread with its own
//!   tokio runtime, keeps all state behind the handle, stops when the [`FakeHeadplane`] drops (and prints
//!   the requests it received if the test is panicking).
//! * It talks to a (fake) Headscale over HTTP exactly where Headplane does: API keys are validated with
//!   `GET /api/v1/apikey` using the submitted key as Bearer (the listed key whose `*`-stripped prefix starts
//!   the submitted key; missing or past expiration refused), the key is re-checked the same way on page
//!   loads, page data is fetched with the session's key, actions call Headscale with it.
//! * Every "session gone" signal is answered as observed (see [`FakeHeadplane`] and the module's table in
//!   `headplane_double.rs`); single-fetch `.data` payloads are real turbo-stream encodings (0.7 breadth-first,
//!   0.6.3 depth-first), so the small ones are byte-identical to the transcripts.
//! * HTML pages are small but start with the same 300 bytes as Headplane's, and their visible text (scripts
//!   removed) follows the transcripts; each page also carries
//!   `<script type="application/json" id="hp-double">{…}</script>` naming the page, the identity Headplane
//!   used and the identity headers the request carried (see [`page_marker`]).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub const COOKIE: &str = "_hp_auth";
/// The clearing cookie of every "session gone" answer (with the default `cookie_max_age` and no `Secure`).
pub const CLEARING_COOKIE: &str =
    "_hp_auth=; Max-Age=86400; Path=/admin; Expires=Thu, 01 Jan 1970 00:00:00 GMT; SameSite=Lax";
/// 0.7 caps the session cookie's `Max-Age` at 400 days (browsers' limit).
pub const V07_MAX_AGE_CAP: i64 = 34_560_000;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

// ---------------------------------------------------------------------------------------------------------
// Versions, roles, configuration
// ---------------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Headplane 0.6.3 (current stable): stateless cookie sessions, `X-Forwarded-Host` honoured by the
    /// `Origin` check, no background cache, no `proxy_auth`.
    V063,
    /// Headplane 0.7.0-beta.4 (main): server-side sessions, `Host` only, background cache (stale data on
    /// leaf-only revalidations), optional `proxy_auth`.
    V07,
}

impl Version {
    pub fn label(self) -> &'static str {
        match self {
            Version::V063 => "0.6.3",
            Version::V07 => "0.7.0-beta.4",
        }
    }
}

/// Headplane 0.7's roles (spec "Roles and capabilities").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Owner,
    Admin,
    NetworkAdmin,
    ItAdmin,
    Auditor,
    Viewer,
    Member,
}

pub mod cap {
    pub const UI_ACCESS: u32 = 1;
    pub const READ_POLICY: u32 = 2;
    pub const WRITE_POLICY: u32 = 4;
    pub const READ_NETWORK: u32 = 8;
    pub const WRITE_NETWORK: u32 = 16;
    pub const READ_FEATURE: u32 = 32;
    pub const WRITE_FEATURE: u32 = 64;
    pub const CONFIGURE_IAM: u32 = 128;
    pub const READ_MACHINES: u32 = 256;
    pub const WRITE_MACHINES: u32 = 512;
    pub const READ_USERS: u32 = 1024;
    pub const WRITE_USERS: u32 = 2048;
    pub const GENERATE_AUTHKEYS: u32 = 4096;
    pub const USE_TAGS: u32 = 8192;
    pub const WRITE_TAILNET: u32 = 16384;
    pub const OWNER: u32 = 32768;
    pub const GENERATE_OWN_AUTHKEYS: u32 = 65536;
    /// What an API-key session has: everything (API-key sessions bypass roles).
    pub const ALL: u32 = 0x1_ffff;
}

impl Role {
    pub fn capabilities(self) -> u32 {
        match self {
            Role::Owner => 65535,
            Role::Admin => 32767,
            Role::NetworkAdmin => 30015,
            Role::ItAdmin => 8171,
            Role::Auditor => 66859,
            Role::Viewer => 66817,
            Role::Member => 0,
        }
    }
    /// As Headplane's users page shows it.
    pub fn label(self) -> &'static str {
        match self {
            Role::Owner => "Owner",
            Role::Admin => "Admin",
            Role::NetworkAdmin => "Network Admin",
            Role::ItAdmin => "IT Admin",
            Role::Auditor => "Auditor",
            Role::Viewer => "Viewer",
            Role::Member => "Member",
        }
    }
}

#[derive(Clone, Debug)]
struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    fn parse(s: &str) -> Cidr {
        let (ip, bits) = match s.split_once('/') {
            Some((ip, b)) => (ip, Some(b.parse::<u8>().expect("CIDR prefix length"))),
            None => (s, None),
        };
        let net: IpAddr = ip.parse().unwrap_or_else(|_| panic!("bad CIDR {s}"));
        let bits = bits.unwrap_or(if net.is_ipv4() { 32 } else { 128 });
        Cidr { net, bits }
    }
    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.bits.min(32))
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.bits.min(128))
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
struct ProxyCfg {
    cidrs: Vec<Cidr>,
    user_header: String,
    email_header: String,
    name_header: String,
    picture_header: String,
}

#[derive(Clone, Debug)]
struct Config {
    version: Version,
    headscale_url: String,
    cookie_secure: bool,
    cookie_domain: Option<String>,
    cookie_max_age: u64,
    proxy: Option<ProxyCfg>,
    server_api_key: Option<String>,
}

// ---------------------------------------------------------------------------------------------------------
// Test-visible records
// ---------------------------------------------------------------------------------------------------------

/// One request the double received (recorded on arrival; `status` is 0 until it has been answered).
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    /// `path?query` as received.
    pub target: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names lower-cased, in arrival order, repeated headers repeated.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
    pub status: u16,
    pub response_headers: Vec<(String, String)>,
}

impl Received {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    /// The value of cookie `name` in the request's `Cookie` header(s).
    pub fn cookie(&self, name: &str) -> Option<String> {
        cookie_from(self.header_all("cookie").into_iter(), name)
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn response_header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.response_headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn set_cookies(&self) -> Vec<&str> {
        self.response_headers
            .iter()
            .filter(|(n, _)| n == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

impl std::fmt::Display for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (from {}) -> {}",
            self.method, self.target, self.peer, self.status
        )?;
        for (n, v) in &self.headers {
            write!(f, "\n    > {n}: {v}")?;
        }
        if !self.body.is_empty() {
            write!(f, "\n    > [body] {}", self.body_str())?;
        }
        for (n, v) in &self.response_headers {
            write!(f, "\n    < {n}: {v}")?;
        }
        Ok(())
    }
}

/// A session Headplane handed out for an API-key sign-in.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// The `_hp_auth` cookie value.
    pub cookie: String,
    pub api_key: String,
    pub created: OffsetDateTime,
    /// The key's expiration at sign-in: 0.7 ends the session then (0.6.3 effectively never does).
    pub expires_at: OffsetDateTime,
    /// Logged out (0.7 refuses the cookie afterwards; 0.6.3 keeps accepting it).
    pub logged_out: bool,
    /// Made undecodable by [`FakeHeadplane::garble_session`].
    pub garbled: bool,
    /// The key this session acts with no longer works at Headscale ([`FakeHeadplane::kill_session_keys`]).
    pub key_dead: bool,
}

/// A Headplane user (0.7 `proxy_auth` only: API-key sessions have no user).
#[derive(Clone, Debug)]
pub struct HpUser {
    /// `proxy:<Remote-User value>`.
    pub id: String,
    /// The `Remote-User` value.
    pub name: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub picture: Option<String>,
    pub role: Role,
    pub headscale_user_id: Option<u64>,
    pub first_seen: OffsetDateTime,
    pub last_login: OffsetDateTime,
}

/// A form action the double ran (or refused).
#[derive(Clone, Debug)]
pub struct ActionRecord {
    /// `api-key:<masked prefix>` or `proxy:<name>`.
    pub by: String,
    /// The page route, e.g. `/users`.
    pub route: String,
    pub action_id: String,
    pub fields: Vec<(String, String)>,
    /// What Headscale answered the action's call (0 when refused before calling Headscale).
    pub headscale_status: u16,
    /// The action was carried out.
    pub ok: bool,
}

#[derive(Clone, Debug, Default)]
struct Cache {
    nodes: Option<Vec<Value>>,
    users: Option<Vec<Value>>,
}

struct State {
    requests: Vec<Received>,
    sessions: Vec<SessionInfo>,
    users: Vec<HpUser>,
    actions: Vec<ActionRecord>,
    logins: usize,
    login_attempts: usize,
    logouts: usize,
    stale_data: bool,
    /// Every new session is undecodable from birth ([`FakeHeadplane::garble_new_sessions`]).
    garble_new: bool,
    cache: Cache,
}

struct Shared {
    cfg: Config,
    state: Mutex<State>,
    http: reqwest::Client,
}

impl Shared {
    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Builder and handle
// ---------------------------------------------------------------------------------------------------------

pub struct FakeHeadplaneBuilder {
    cfg: Config,
    stale_data: bool,
    proxy: bool,
    cidrs: Vec<String>,
    headers: (String, String, String, String),
}

impl FakeHeadplaneBuilder {
    pub fn version(mut self, v: Version) -> Self {
        self.cfg.version = v;
        self
    }
    /// `server.cookie_secure` (default false here, as in the transcripts; Headplane's default is true).
    pub fn cookie_secure(mut self, on: bool) -> Self {
        self.cfg.cookie_secure = on;
        self
    }
    /// `server.cookie_domain`: adds `Domain=` to the session and clearing cookies.
    pub fn cookie_domain(mut self, domain: &str) -> Self {
        self.cfg.cookie_domain = Some(domain.into());
        self
    }
    /// `server.cookie_max_age` (default 86400): only shows as the clearing cookie's `Max-Age`.
    pub fn cookie_max_age(mut self, secs: u64) -> Self {
        self.cfg.cookie_max_age = secs;
        self
    }
    /// `headscale.api_key`: the key Headplane itself uses for `proxy_auth` users.
    pub fn headscale_api_key(mut self, key: &str) -> Self {
        self.cfg.server_api_key = Some(key.into());
        self
    }
    /// `server.proxy_auth.enabled` (0.7 only; needs [`headscale_api_key`](Self::headscale_api_key)).
    pub fn proxy_auth(mut self, on: bool) -> Self {
        self.proxy = on;
        self
    }
    /// `server.proxy_auth.allowed_cidrs` (default `127.0.0.1/32` and `::1/128`: a peer at `127.0.0.2` is
    /// not trusted, as observed in `main-proxy/g11`).
    pub fn allowed_cidrs(mut self, cidrs: &[&str]) -> Self {
        self.cidrs = cidrs.iter().map(|s| s.to_string()).collect();
        self
    }
    /// The header names of `proxy_auth` (default `Remote-User`, `Remote-Email`, `Remote-Name`,
    /// `Remote-Picture`).
    pub fn proxy_headers(mut self, user: &str, email: &str, name: &str, picture: &str) -> Self {
        self.headers = (user.into(), email.into(), name.into(), picture.into());
        self
    }
    /// 0.7: leaf-only revalidations (`.data?_routes=`) answer 200 with cached data even when the session's
    /// key no longer works at Headscale (default on, as observed; off: 502 with `"statusCode",401` as a
    /// cold cache would). No effect on 0.6.3.
    pub fn stale_data(mut self, on: bool) -> Self {
        self.stale_data = on;
        self
    }

    pub fn start(mut self) -> FakeHeadplane {
        if self.proxy {
            assert_eq!(
                self.cfg.version,
                Version::V07,
                "proxy_auth exists in Headplane 0.7 only"
            );
            assert!(
                self.cfg.server_api_key.is_some(),
                "proxy_auth needs headscale_api_key(…)"
            );
            let cidrs = if self.cidrs.is_empty() {
                vec!["127.0.0.1/32".to_string(), "::1/128".to_string()]
            } else {
                self.cidrs.clone()
            };
            self.cfg.proxy = Some(ProxyCfg {
                cidrs: cidrs.iter().map(|c| Cidr::parse(c)).collect(),
                user_header: self.headers.0.to_ascii_lowercase(),
                email_header: self.headers.1.to_ascii_lowercase(),
                name_header: self.headers.2.to_ascii_lowercase(),
                picture_header: self.headers.3.to_ascii_lowercase(),
            });
        }
        let shared = Arc::new(Shared {
            cfg: self.cfg,
            state: Mutex::new(State {
                requests: Vec::new(),
                sessions: Vec::new(),
                users: Vec::new(),
                actions: Vec::new(),
                logins: 0,
                login_attempts: 0,
                logouts: 0,
                stale_data: self.stale_data,
                garble_new: false,
                cache: Cache::default(),
            }),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("fake headplane: bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("fake-headplane-{}", addr.port()))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(accept_loop(listener, shared, stop_rx));
                })
                .unwrap()
        };
        FakeHeadplane {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

/// A running Headplane double; stops when dropped.
pub struct FakeHeadplane {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FakeHeadplane {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if std::thread::panicking() {
            let reqs = self.shared.st().requests.clone();
            eprintln!("----- fake headplane {} received -----", self.addr);
            for r in reqs {
                eprintln!("{r}");
            }
            eprintln!("----- end of fake headplane requests -----");
        }
    }
}

impl FakeHeadplane {
    /// A builder for a double that validates keys at `headscale_url` (e.g. `FakeHeadscale::url()`).
    pub fn builder(headscale_url: &str) -> FakeHeadplaneBuilder {
        FakeHeadplaneBuilder {
            cfg: Config {
                version: Version::V07,
                headscale_url: headscale_url.trim_end_matches('/').to_string(),
                cookie_secure: false,
                cookie_domain: None,
                cookie_max_age: 86400,
                proxy: None,
                server_api_key: None,
            },
            stale_data: true,
            proxy: false,
            cidrs: Vec::new(),
            headers: (
                "Remote-User".into(),
                "Remote-Email".into(),
                "Remote-Name".into(),
                "Remote-Picture".into(),
            ),
        }
    }

    pub fn start(version: Version, headscale_url: &str) -> FakeHeadplane {
        Self::builder(headscale_url).version(version).start()
    }

    /// `http://127.0.0.1:<port>` (no trailing slash; Headplane lives under `/admin`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// `http://127.0.0.1:<port>/admin`.
    pub fn admin_url(&self) -> String {
        format!("{}/admin", self.url())
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn version(&self) -> Version {
        self.shared.cfg.version
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.shared.st()
    }

    // ----- what the double saw -----

    pub fn requests(&self) -> Vec<Received> {
        self.st().requests.clone()
    }
    /// The requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Received> {
        self.st()
            .requests
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .cloned()
            .collect()
    }
    pub fn last_request(&self) -> Option<Received> {
        self.st().requests.last().cloned()
    }
    pub fn clear_requests(&self) {
        self.st().requests.clear();
    }
    /// Whether any request carried `_hp_auth=<cookie>` (e.g. "the browser never sent Headplane's cookie").
    pub fn saw_cookie_value(&self, cookie: &str) -> bool {
        self.st()
            .requests
            .iter()
            .any(|r| r.cookie(COOKIE).as_deref() == Some(cookie))
    }

    // ----- counters -----

    /// Successful API-key sign-ins.
    pub fn logins(&self) -> usize {
        self.st().logins
    }
    /// `POST /admin/login[.data]` that got past the `Origin` check.
    pub fn login_attempts(&self) -> usize {
        self.st().login_attempts
    }
    pub fn failed_logins(&self) -> usize {
        let st = self.st();
        st.login_attempts - st.logins
    }
    /// `POST /admin/logout[.data]`.
    pub fn logouts(&self) -> usize {
        self.st().logouts
    }
    pub fn actions(&self) -> Vec<ActionRecord> {
        self.st().actions.clone()
    }

    // ----- sessions -----

    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.st().sessions.clone()
    }
    /// Sessions the double would still accept by its own bookkeeping (the key may be dead at Headscale).
    pub fn live_sessions(&self) -> Vec<SessionInfo> {
        let v = self.version();
        self.st()
            .sessions
            .iter()
            .filter(|s| session_state(v, s) == CookieState::Valid)
            .cloned()
            .collect()
    }
    /// The cookie of the latest session for `api_key`.
    pub fn cookie_for_key(&self, api_key: &str) -> Option<String> {
        self.st()
            .sessions
            .iter()
            .rev()
            .find(|s| s.api_key == api_key)
            .map(|s| s.cookie.clone())
    }

    /// 0.7: the session's own lifetime ends now (what happens when its key's expiry passes). 0.6.3 never
    /// ends a session on its own (its cookie lifetime is the key's expiry counted in milliseconds), so this
    /// panics there: expire the key at Headscale instead, which is what `v063/e13`–`e15` show.
    pub fn expire_session(&self, cookie: &str) {
        assert_eq!(
            self.version(),
            Version::V07,
            "Headplane 0.6.3 sessions do not expire on their own; expire or revoke the key at Headscale"
        );
        let mut st = self.st();
        let s = st
            .sessions
            .iter_mut()
            .find(|s| s.cookie == cookie)
            .expect("fake headplane: no such session");
        s.expires_at = now() - time::Duration::seconds(1);
    }
    pub fn expire_all_sessions(&self) {
        assert_eq!(
            self.version(),
            Version::V07,
            "Headplane 0.6.3 sessions do not expire on their own; expire or revoke the key at Headscale"
        );
        for s in self.st().sessions.iter_mut() {
            s.expires_at = now() - time::Duration::seconds(1);
        }
    }
    /// The stored cookie stops decoding (as after a `cookie_secret` change): answers as for a garbled cookie.
    pub fn garble_session(&self, cookie: &str) {
        let mut st = self.st();
        let s = st
            .sessions
            .iter_mut()
            .find(|s| s.cookie == cookie)
            .expect("fake headplane: no such session");
        s.garbled = true;
    }
    /// Every existing cookie stops decoding (a `cookie_secret` rotation).
    pub fn garble_all_sessions(&self) {
        for s in self.st().sessions.iter_mut() {
            s.garbled = true;
        }
    }
    /// A tampered copy of `cookie` that the double cannot decode (same length, as in the transcripts).
    pub fn garbled_cookie(&self, cookie: &str) -> String {
        let head = match self.version() {
            Version::V07 => "ik",
            Version::V063 => "D3%",
        };
        let rest: String = cookie.chars().skip(head.len()).collect();
        let g = format!("{head}{rest}");
        assert_ne!(g, cookie);
        g
    }

    /// 0.7: every session is logged out (as `POST /admin/logout` with its cookie would; 0.7 then refuses the
    /// cookie with the "session gone" answers). Panics on 0.6.3, whose logout does not end a session.
    pub fn log_out_all_sessions(&self) {
        assert_eq!(
            self.version(),
            Version::V07,
            "Headplane 0.6.3 keeps accepting a logged-out cookie"
        );
        for s in self.st().sessions.iter_mut() {
            s.logged_out = true;
        }
    }
    /// Every existing session's key stops working at Headscale (as if the key each was signed in with had
    /// been revoked or had expired), while a new sign-in with a valid key works: Headplane then answers as
    /// in the `e07`–`e11`, `e13`–`e15`, `x6`, `x9` transcripts (the key re-check on page loads ends the
    /// session; leaf-only loads and `.data` posts report Headscale's 401; 0.7 leaf-only loads serve cached
    /// data while [`stale_data`](Self::stale_data) is on).
    pub fn kill_session_keys(&self) {
        for s in self.st().sessions.iter_mut() {
            s.key_dead = true;
        }
    }
    /// Sessions are undecodable from birth (as behind a load balancer whose Headplane replicas have
    /// different `cookie_secret`s): every sign-in "succeeds", and the cookie is refused on first use.
    pub fn garble_new_sessions(&self, on: bool) {
        self.st().garble_new = on;
    }

    /// 0.7: flip the stale-data behaviour of leaf-only revalidations (see the builder).
    pub fn stale_data(&self, on: bool) {
        self.st().stale_data = on;
    }

    // ----- proxy_auth users -----

    pub fn users(&self) -> Vec<HpUser> {
        self.st().users.clone()
    }
    /// Set a user's role (as Headplane's own users page would). Panics for an unknown name.
    pub fn set_role(&self, name: &str, role: Role) {
        let mut st = self.st();
        let u = st
            .users
            .iter_mut()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("fake headplane: no user {name}"));
        u.role = role;
    }
    pub fn link_user(&self, name: &str, headscale_user_id: Option<u64>) {
        let mut st = self.st();
        let u = st
            .users
            .iter_mut()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("fake headplane: no user {name}"));
        u.headscale_user_id = headscale_user_id;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Server loop
// ---------------------------------------------------------------------------------------------------------

async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop_rx: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        tokio::select! {
            _ = &mut stop_rx => break,
            accepted = listener.accept() => {
                if let Ok((stream, peer)) = accepted {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| handle(shared.clone(), peer, req));
                        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    });
                }
            }
        }
    }
}

struct Ctx {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
    peer: SocketAddr,
}

impl Ctx {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn is_post(&self) -> bool {
        self.method != Method::GET && self.method != Method::HEAD
    }
    fn query_has(&self, key: &str) -> bool {
        self.query
            .as_deref()
            .is_some_and(|q| url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == key))
    }
}

async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let ctx = Ctx {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers.clone(),
        body,
        peer,
    };
    let index = {
        let mut st = shared.st();
        st.requests.push(Received {
            method: ctx.method.to_string(),
            target: match &ctx.query {
                Some(q) => format!("{}?{}", ctx.path, q),
                None => ctx.path.clone(),
            },
            path: ctx.path.clone(),
            query: ctx.query.clone(),
            headers: ctx
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: ctx.body.to_vec(),
            peer,
            status: 0,
            response_headers: Vec::new(),
        });
        st.requests.len() - 1
    };
    let reply = route(&shared, &ctx).await;
    {
        let mut st = shared.st();
        if let Some(r) = st.requests.get_mut(index) {
            r.status = reply.status;
            r.response_headers = reply
                .headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                .collect();
        }
    }
    let mut resp = Response::builder().status(reply.status);
    for (n, v) in &reply.headers {
        resp = resp.header(n.as_str(), v.as_str());
    }
    let mut resp = resp.body(Full::new(Bytes::from(reply.body))).unwrap();
    if shared.cfg.version == Version::V07 && !reply.canonical_reason {
        // 0.7 (Node's React Router server) answers `HTTP/1.1 302 ` without a reason phrase.
        resp.extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(b""));
    }
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------------------

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    canonical_reason: bool,
}

impl Reply {
    fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            canonical_reason: false,
        }
    }
    fn header(mut self, n: &str, v: &str) -> Reply {
        self.headers.push((n.to_string(), v.to_string()));
        self
    }
    fn body(mut self, b: impl Into<Vec<u8>>) -> Reply {
        self.body = b.into();
        self
    }
}

fn set_cookie_attrs(cfg: &Config, max_age: i64, clearing: bool) -> String {
    let mut s = format!("; Max-Age={max_age}");
    if let Some(d) = &cfg.cookie_domain {
        s.push_str(&format!("; Domain={d}"));
    }
    s.push_str("; Path=/admin");
    if clearing {
        s.push_str("; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
    }
    if cfg.cookie_secure {
        s.push_str("; Secure");
    }
    s.push_str("; SameSite=Lax");
    s
}

fn clearing_cookie(cfg: &Config) -> String {
    format!(
        "{COOKIE}={}",
        set_cookie_attrs(cfg, cfg.cookie_max_age as i64, true)
    )
}

/// A redirect as each version writes it (`clear`: with the clearing cookie).
fn redirect(cfg: &Config, location: &str, clear: bool) -> Reply {
    let mut r = Reply::new(302).header("location", location);
    if clear {
        r = r.header("set-cookie", &clearing_cookie(cfg));
    }
    if cfg.version == Version::V063 {
        r = r.header("content-type", "text/plain; charset=UTF-8");
    }
    r
}

fn data_reply(cfg: &Config, status: u16, v: &V, clear: bool) -> Reply {
    let mut r = Reply::new(status).header("content-type", "text/x-script");
    if clear {
        r = r.header("set-cookie", &clearing_cookie(cfg));
    }
    r.header("x-remix-response", "yes")
        .body(turbo_stream(v, cfg.version))
}

fn html_reply(status: u16, html: String) -> Reply {
    Reply::new(status)
        .header("content-type", "text/html")
        .body(html)
}

fn bad_request(cfg: &Config, data: bool) -> Reply {
    if data {
        return data_reply(cfg, 400, &sanitized_error(), false);
    }
    let ct = match cfg.version {
        Version::V07 => "text/plain;charset=UTF-8",
        Version::V063 => "text/plain; charset=UTF-8",
    };
    Reply::new(400)
        .header("content-type", ct)
        .body("Bad Request")
}

// ---------------------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Page {
    Home,
    Machines,
    Machine,
    Users,
    Acls,
    Dns,
    Settings,
    AuthKeys,
    Restrictions,
    Agent,
    Ssh,
    Onboarding,
    OnboardingSkip,
    PendingApproval,
}

struct PageInfo {
    /// The route path after `/admin`, for records.
    path: &'static str,
    leaf_v07: &'static str,
    leaf_v063: &'static str,
    /// The capability a GET needs (0: any signed-in user); any bit of `get_any` also suffices.
    get_cap: u32,
    get_any: u32,
    post_cap: u32,
    post_any: u32,
    deny: &'static str,
    heading: &'static str,
}

fn page_info(p: Page) -> PageInfo {
    use cap::*;
    let pi = |path, leaf_v07, leaf_v063, get_cap, post_cap, deny, heading| PageInfo {
        path,
        leaf_v07,
        leaf_v063,
        get_cap,
        get_any: 0,
        post_cap,
        post_any: 0,
        deny,
        heading,
    };
    match p {
        Page::Home => pi(
            "/",
            "routes/home/overview",
            "routes/home/overview",
            0,
            0,
            "",
            "Home",
        ),
        Page::Machines => pi(
            "/machines",
            "routes/machines/overview",
            "routes/machines/overview",
            READ_MACHINES,
            WRITE_MACHINES,
            "You do not have permission to update machines",
            "Machines",
        ),
        Page::Machine => pi(
            "/machines/:id",
            "routes/machines/machine",
            "routes/machines/machine",
            READ_MACHINES,
            WRITE_MACHINES,
            "You do not have permission to update machines",
            "Machine",
        ),
        Page::Users => pi(
            "/users",
            "routes/users/overview",
            "routes/users/overview",
            READ_USERS,
            WRITE_USERS,
            "You do not have permission to update users",
            "Users",
        ),
        Page::Acls => pi(
            "/acls",
            "routes/acls/overview",
            "routes/acls/overview",
            READ_POLICY,
            WRITE_POLICY,
            "You do not have permission to update the ACL policy",
            "Access Control List (ACL)",
        ),
        Page::Dns => pi(
            "/dns",
            "routes/dns/overview",
            "routes/dns/overview",
            READ_NETWORK,
            WRITE_NETWORK,
            "You do not have permission to update DNS settings",
            "DNS",
        ),
        Page::Settings => pi(
            "/settings",
            "routes/settings/overview",
            "routes/settings/overview",
            UI_ACCESS,
            UI_ACCESS,
            "You do not have permission to update settings",
            "Settings",
        ),
        Page::AuthKeys => PageInfo {
            get_cap: 0,
            get_any: GENERATE_AUTHKEYS | GENERATE_OWN_AUTHKEYS,
            post_cap: 0,
            post_any: GENERATE_AUTHKEYS | GENERATE_OWN_AUTHKEYS,
            ..pi(
                "/settings/auth-keys",
                "routes/settings/auth-keys/overview",
                "routes/settings/auth-keys/overview",
                0,
                0,
                "You do not have permission to manage pre-auth keys",
                "Pre-Auth Keys",
            )
        },
        Page::Restrictions => pi(
            "/settings/restrictions",
            "routes/settings/restrictions/overview",
            "",
            READ_USERS,
            CONFIGURE_IAM,
            "You do not have permission to update restrictions",
            "Restrictions",
        ),
        Page::Agent => pi(
            "/settings/agent",
            "routes/settings/agent/overview",
            "",
            UI_ACCESS,
            WRITE_FEATURE,
            "You do not have permission to update agent settings",
            "Agent",
        ),
        Page::Ssh => pi(
            "/ssh/:id",
            "routes/ssh/console",
            "",
            UI_ACCESS,
            UI_ACCESS,
            "You do not have permission to use SSH",
            "SSH",
        ),
        Page::Onboarding => pi(
            "/onboarding",
            "",
            "routes/users/onboarding",
            0,
            0,
            "",
            "Welcome!",
        ),
        Page::OnboardingSkip => pi(
            "/onboarding/skip",
            "",
            "routes/users/onboarding-skip",
            0,
            0,
            "",
            "Onboarding",
        ),
        Page::PendingApproval => pi(
            "/pending-approval",
            "",
            "routes/auth/pending-approval",
            0,
            0,
            "",
            "Pending approval",
        ),
    }
}

enum Route {
    Login,
    Logout,
    Page(Page, Option<String>),
}

fn match_route(v: Version, sub: &str) -> Option<Route> {
    let sub = if sub.len() > 1 {
        sub.trim_end_matches('/')
    } else {
        sub
    };
    let segs: Vec<&str> = sub.trim_start_matches('/').split('/').collect();
    let page = |p| Some(Route::Page(p, None));
    match (v, segs.as_slice()) {
        (_, [""]) => page(Page::Home),
        (_, ["login"]) => Some(Route::Login),
        (_, ["logout"]) => Some(Route::Logout),
        (_, ["machines"]) => page(Page::Machines),
        (_, ["machines", id]) => Some(Route::Page(Page::Machine, Some(id.to_string()))),
        (_, ["users"]) => page(Page::Users),
        (_, ["acls"]) => page(Page::Acls),
        (_, ["dns"]) => page(Page::Dns),
        (_, ["settings"]) => page(Page::Settings),
        (_, ["settings", "auth-keys"]) => page(Page::AuthKeys),
        (Version::V07, ["settings", "restrictions"]) => page(Page::Restrictions),
        (Version::V07, ["settings", "agent"]) => page(Page::Agent),
        (Version::V07, ["ssh", id]) => Some(Route::Page(Page::Ssh, Some(id.to_string()))),
        (Version::V063, ["onboarding"]) => page(Page::Onboarding),
        (Version::V063, ["onboarding", "skip"]) => page(Page::OnboardingSkip),
        (Version::V063, ["pending-approval"]) => page(Page::PendingApproval),
        _ => None,
    }
}

async fn route(sh: &Shared, ctx: &Ctx) -> Reply {
    let cfg = &sh.cfg;
    let v = cfg.version;
    let path = ctx.path.as_str();
    if path == "/admin" {
        let mut r = redirect(cfg, "/admin/", false);
        r.canonical_reason = true; // `302 Found` on both versions
        return r;
    }
    let Some(sub) = path.strip_prefix("/admin") else {
        return Reply::new(404)
            .header("content-type", "text/plain")
            .body("Not Found");
    };
    // Public files and endpoints (no session needed).
    match sub {
        "/healthz" => return healthz(sh).await,
        "/favicon.ico" => {
            return Reply::new(200)
                .header("content-type", "image/x-icon")
                .body(vec![0u8; 16]);
        }
        "/wasm_exec.js" if v == Version::V07 => {
            return Reply::new(200)
                .header("content-type", "text/javascript")
                .body("// wasm_exec.js (fake headplane)\n");
        }
        "/hp_ssh.wasm" if v == Version::V07 => {
            return Reply::new(200)
                .header("content-type", "application/wasm")
                .body(b"\0asm\x01\0\0\0".to_vec());
        }
        "/__manifest" if v == Version::V07 => {
            return Reply::new(200)
                .header("content-type", "application/json")
                .body("{}");
        }
        _ => {}
    }
    if sub.starts_with("/assets/") {
        let ct = if sub.ends_with(".css") {
            "text/css"
        } else {
            "text/javascript"
        };
        return Reply::new(200)
            .header("content-type", ct)
            .body(format!("/* {sub} (fake headplane) */\n"));
    }
    if v == Version::V07 && sub == "/events/live" {
        return match resolve(sh, ctx) {
            Who::None => redirect(cfg, "/admin/login", true),
            _ => Reply::new(200)
                .header("content-type", "text/event-stream")
                .body(": fake headplane\n\n"),
        };
    }
    let (sub, data) = match sub.strip_suffix(".data") {
        Some(s) => (s, true),
        None => (sub, false),
    };
    let sub = if data && sub == "/_root" {
        if v == Version::V07 {
            // Observed (main-proxy/g08): 0.7 under `/admin` has no route for its own index `.data`.
            return not_found(sh, ctx, "/admin/_root", true);
        }
        "/"
    } else {
        sub
    };
    let leaf_only = data && ctx.query_has("_routes");
    match match_route(v, sub) {
        Some(Route::Login) => login(sh, ctx, data).await,
        Some(Route::Logout) => logout(sh, ctx, data),
        Some(Route::Page(p, param)) => page(sh, ctx, p, param, data, leaf_only).await,
        None => not_found(sh, ctx, &format!("/admin{sub}"), data),
    }
}

fn not_found(sh: &Shared, _ctx: &Ctx, url_path: &str, data: bool) -> Reply {
    let cfg = &sh.cfg;
    if data {
        let v = obj(vec![(
            "root",
            obj(vec![(
                "error",
                error_response(
                    V::Str(format!("Error: No route matches URL \"{url_path}\"")),
                    404,
                    "Not Found",
                ),
            )]),
        )]);
        return data_reply(cfg, 404, &v, false);
    }
    html_reply(
        404,
        html_doc(
            cfg,
            "error",
            &error_body(404, "Not Found"),
            &marker_json(cfg, "error", &Who::None, None),
        ),
    )
}

async fn healthz(sh: &Shared) -> Reply {
    let mut req = sh.http.get(format!("{}/health", sh.cfg.headscale_url));
    if sh.cfg.version == Version::V063 {
        req = req.bearer_auth("fake-api-key");
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Reply::new(200)
            .header("content-type", "application/json")
            .body(r#"{"status":"OK"}"#),
        _ => Reply::new(500)
            .header("content-type", "application/json")
            .body(r#"{"status":"ERROR"}"#),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Who is asking
// ---------------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum CookieState {
    Valid,
    Expired,
    LoggedOut,
    Garbled,
}

fn session_state(v: Version, s: &SessionInfo) -> CookieState {
    if s.garbled {
        return CookieState::Garbled;
    }
    match v {
        // Stateless: a logged-out or "expired" cookie still decodes.
        Version::V063 => CookieState::Valid,
        Version::V07 if s.logged_out => CookieState::LoggedOut,
        Version::V07 if s.expires_at <= now() => CookieState::Expired,
        Version::V07 => CookieState::Valid,
    }
}

#[derive(Clone, Debug)]
enum Who {
    None,
    Session(SessionInfo),
    Proxy(HpUser),
}

impl Who {
    fn caps(&self) -> u32 {
        match self {
            Who::None => 0,
            Who::Session(_) => cap::ALL,
            Who::Proxy(u) => u.role.capabilities(),
        }
    }
    fn label(&self) -> String {
        match self {
            Who::None => "none".into(),
            Who::Session(s) => format!("api-key:{}", mask_key(&s.api_key)),
            Who::Proxy(u) => u.id.clone(),
        }
    }
}

fn cookie_from<'a>(headers: impl Iterator<Item = &'a str>, name: &str) -> Option<String> {
    for h in headers {
        for part in h.split(';') {
            if let Some((n, v)) = part.trim().split_once('=')
                && n.trim() == name
            {
                return Some(v.trim().to_string());
            }
        }
    }
    None
}

fn request_cookie(ctx: &Ctx) -> Option<String> {
    cookie_from(
        ctx.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
        COOKIE,
    )
}

fn proxy_header(ctx: &Ctx, name: &str) -> Option<String> {
    ctx.header(name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// The identity Headplane acts for: a trusted `Remote-User` (0.7 `proxy_auth`, wins over the cookie), else
/// the `_hp_auth` session if it decodes and is alive by Headplane's own bookkeeping.
fn resolve(sh: &Shared, ctx: &Ctx) -> Who {
    if let Some(p) = &sh.cfg.proxy
        && p.cidrs.iter().any(|c| c.contains(ctx.peer.ip()))
        && let Some(name) = proxy_header(ctx, &p.user_header)
    {
        let mut st = sh.st();
        let email = proxy_header(ctx, &p.email_header);
        let display = proxy_header(ctx, &p.name_header);
        let picture = proxy_header(ctx, &p.picture_header);
        let id = format!("proxy:{name}");
        let first = st.users.is_empty();
        let u = match st.users.iter_mut().position(|u| u.id == id) {
            Some(i) => &mut st.users[i],
            None => {
                st.users.push(HpUser {
                    id: id.clone(),
                    name: name.clone(),
                    email: None,
                    display_name: None,
                    picture: None,
                    role: if first { Role::Owner } else { Role::Member },
                    headscale_user_id: None,
                    first_seen: now(),
                    last_login: now(),
                });
                st.users.last_mut().unwrap()
            }
        };
        u.last_login = now();
        if email.is_some() {
            u.email = email;
        }
        if display.is_some() {
            u.display_name = display;
        }
        if picture.is_some() {
            u.picture = picture;
        }
        return Who::Proxy(u.clone());
    }
    let Some(cookie) = request_cookie(ctx) else {
        return Who::None;
    };
    let st = sh.st();
    match st.sessions.iter().rev().find(|s| s.cookie == cookie) {
        Some(s) if session_state(sh.cfg.version, s) == CookieState::Valid => {
            Who::Session(s.clone())
        }
        _ => Who::None,
    }
}

fn origin_ok(cfg: &Config, ctx: &Ctx) -> bool {
    let Some(origin) = ctx.header("origin") else {
        return true;
    };
    let host = match cfg.version {
        Version::V063 => ctx
            .header("x-forwarded-host")
            .and_then(|x| x.split(',').next())
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .or_else(|| ctx.header("host")),
        Version::V07 => ctx.header("host"),
    };
    let Some(host) = host else {
        return false;
    };
    let Ok(u) = url::Url::parse(origin) else {
        return false;
    };
    let Some(h) = u.host_str() else {
        return false;
    };
    let origin_host = match u.port() {
        Some(p) => format!("{h}:{p}"),
        None => h.to_string(),
    };
    origin_host.eq_ignore_ascii_case(host)
}

// ---------------------------------------------------------------------------------------------------------
// Headscale calls
// ---------------------------------------------------------------------------------------------------------

/// A failed Headscale call as Headplane reports it.
#[derive(Clone, Debug)]
struct HsError {
    /// e.g. `GET v1/node`.
    request_url: String,
    status: u16,
    raw: String,
}

async fn hs_call(
    sh: &Shared,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> Result<Value, HsError> {
    let url = format!("{}/api/{}", sh.cfg.headscale_url, path);
    let request_url = format!("{method} {path}");
    let mut req = sh.http.request(method, &url).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let raw = r.text().await.unwrap_or_default();
            // The fake Headscale answers 501 for operations it does not implement (after the key check):
            // the double counts that as success so actions can be exercised against it.
            if (200..300).contains(&status) || status == 501 {
                Ok(serde_json::from_str(&raw).unwrap_or(Value::Null))
            } else {
                Err(HsError {
                    request_url,
                    status,
                    raw,
                })
            }
        }
        Err(e) => Err(HsError {
            request_url,
            status: 0,
            raw: e.to_string(),
        }),
    }
}

#[derive(Debug)]
enum KeyCheck {
    Valid(OffsetDateTime),
    Invalid,
}

/// Headplane's API-key validation: `GET /api/v1/apikey` with the key as Bearer, the listed key whose
/// `*`-stripped prefix starts the submitted key, refused without or past its expiration.
async fn check_key(sh: &Shared, key: &str) -> KeyCheck {
    let Ok(v) = hs_call(sh, Method::GET, "v1/apikey", key, None).await else {
        return KeyCheck::Invalid;
    };
    let Some(keys) = v["apiKeys"].as_array() else {
        return KeyCheck::Invalid;
    };
    let found = keys.iter().find(|k| {
        let prefix = k["prefix"].as_str().unwrap_or_default().replace('*', "");
        !prefix.is_empty() && key.starts_with(&prefix)
    });
    let Some(k) = found else {
        return KeyCheck::Invalid;
    };
    match k["expiration"]
        .as_str()
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
    {
        Some(exp) if exp > now() => KeyCheck::Valid(exp),
        _ => KeyCheck::Invalid,
    }
}

fn server_key(sh: &Shared) -> String {
    sh.cfg.server_api_key.clone().unwrap_or_default()
}

/// What a session with a dead key sends Headscale: a key Headscale does not know (answered 401, as a
/// revoked key is).
const DEAD_KEY: &str =
    "hskey-api-deadsession0-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

fn key_of(sh: &Shared, who: &Who) -> String {
    match who {
        Who::Session(s) if s.key_dead => DEAD_KEY.to_string(),
        Who::Session(s) => s.api_key.clone(),
        _ => server_key(sh),
    }
}

/// `hskey-api-<prefix>-***` style, never the secret.
fn mask_key(key: &str) -> String {
    if let Some(rest) = key.strip_prefix("hskey-api-") {
        let p = rest.split('-').next().unwrap_or_default();
        format!("hskey-api-{p}-***")
    } else {
        format!(
            "{}***",
            key.split('.')
                .next()
                .unwrap_or_default()
                .chars()
                .take(7)
                .collect::<String>()
        )
    }
}

#[derive(Clone, Debug, Default)]
struct PageData {
    nodes: Vec<Value>,
    users: Vec<Value>,
}

/// The Headscale data a page's loaders fetch (nodes before users, as the first failing call is reported).
async fn fetch_data(sh: &Shared, p: Page, key: &str) -> Result<PageData, HsError> {
    let mut d = PageData::default();
    let (nodes, users) = match p {
        Page::Machines | Page::Users => (true, true),
        Page::Machine => (true, false),
        Page::Home => (false, true),
        _ => (false, false),
    };
    if nodes {
        let v = hs_call(sh, Method::GET, "v1/node", key, None).await?;
        d.nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        sh.st().cache.nodes = Some(d.nodes.clone());
    }
    if users {
        let v = hs_call(sh, Method::GET, "v1/user", key, None).await?;
        d.users = v["users"].as_array().cloned().unwrap_or_default();
        sh.st().cache.users = Some(d.users.clone());
    }
    Ok(d)
}

fn cached_data(sh: &Shared) -> PageData {
    let st = sh.st();
    PageData {
        nodes: st.cache.nodes.clone().unwrap_or_default(),
        users: st.cache.users.clone().unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Login and logout
// ---------------------------------------------------------------------------------------------------------

enum Form {
    Fields(Vec<(String, String)>),
    Unsupported,
}

impl Form {
    fn get(&self, k: &str) -> Option<&str> {
        match self {
            Form::Fields(f) => f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()),
            Form::Unsupported => None,
        }
    }
    fn fields(&self) -> Vec<(String, String)> {
        match self {
            Form::Fields(f) => f.clone(),
            Form::Unsupported => Vec::new(),
        }
    }
}

fn parse_form(ctx: &Ctx) -> Form {
    let ct = ctx.header("content-type").unwrap_or_default();
    let mime = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-www-form-urlencoded" => Form::Fields(
            url::form_urlencoded::parse(&ctx.body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ),
        "multipart/form-data" => {
            let boundary = ct.split(';').find_map(|p| {
                p.trim()
                    .strip_prefix("boundary=")
                    .map(|b| b.trim_matches('"').to_string())
            });
            match boundary {
                Some(b) => Form::Fields(parse_multipart(&ctx.body, &b)),
                None => Form::Unsupported,
            }
        }
        _ => Form::Unsupported,
    }
}

fn parse_multipart(body: &[u8], boundary: &str) -> Vec<(String, String)> {
    let body = String::from_utf8_lossy(body);
    let delim = format!("--{boundary}");
    let mut out = Vec::new();
    for part in body.split(delim.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let Some((head, value)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let name = head.lines().find_map(|l| {
            let l = l.trim();
            if !l.to_ascii_lowercase().starts_with("content-disposition:") {
                return None;
            }
            l.split(';').find_map(|p| {
                p.trim()
                    .strip_prefix("name=")
                    .map(|n| n.trim_matches('"').to_string())
            })
        });
        if let Some(name) = name {
            let value = value.strip_suffix("\r\n").unwrap_or(value);
            out.push((name, value.to_string()));
        }
    }
    out
}

fn new_cookie(v: Version, key: &str) -> String {
    let mut rnd = [0u8; 32];
    getrandom::fill(&mut rnd).unwrap();
    let inner = match v {
        Version::V07 => {
            // A server-side session id, signed: `"<base64url({"sid":…})>.<sig>"`, base64.
            const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
            let sid: String = rnd[..26]
                .iter()
                .map(|b| CROCKFORD[(*b as usize) % 32] as char)
                .collect();
            let mut sig = [0u8; 32];
            getrandom::fill(&mut sig).unwrap();
            format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(format!(r#"{{"sid":"01{sid}"}}"#)),
                URL_SAFE_NO_PAD.encode(sig)
            )
        }
        Version::V063 => {
            // Stateless, and (as the spec says of 0.6.x) the API key readable inside.
            let payload = serde_json::json!({
                "user": {"subject": "unknown-non-oauth", "name": key.split('.').next().unwrap_or_default()},
                "api_key": key,
                "nonce": URL_SAFE_NO_PAD.encode(rnd),
            });
            format!(
                "{}..{}.{}.{}",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"dir","enc":"A256GCM"}"#),
                URL_SAFE_NO_PAD.encode(&rnd[..12]),
                URL_SAFE_NO_PAD.encode(payload.to_string()),
                URL_SAFE_NO_PAD.encode(&rnd[12..28]),
            )
        }
    };
    STANDARD.encode(format!("\"{inner}\""))
}

async fn login(sh: &Shared, ctx: &Ctx, data: bool) -> Reply {
    let cfg = &sh.cfg;
    let v = cfg.version;
    if !ctx.is_post() {
        let who = resolve(sh, ctx);
        let signed_in = !matches!(who, Who::None);
        return match (signed_in, data) {
            (true, false) => redirect(cfg, "/admin/machines", false),
            (true, true) => data_reply(cfg, 202, &single_fetch_redirect("/machines", false), false),
            (false, false) => html_reply(200, login_page(cfg, None)),
            (false, true) => data_reply(cfg, 200, &login_data(cfg), false),
        };
    }
    if !origin_ok(cfg, ctx) {
        return bad_request(cfg, data);
    }
    sh.st().login_attempts += 1;
    let form = parse_form(ctx);
    if matches!(form, Form::Unsupported) {
        return unexpected_error(cfg, data, None);
    }
    let fail = |msg: &str| -> Reply {
        if data {
            let d = obj(vec![(
                "data",
                obj(vec![
                    ("success", V::Bool(false)),
                    ("message", V::Str(msg.into())),
                ]),
            )]);
            data_reply(cfg, 200, &d, false)
        } else {
            html_reply(200, login_page(cfg, Some(msg)))
        }
    };
    let key = match form.get("api_key") {
        None => {
            return match v {
                Version::V07 => fail("Missing API key. Please enter your API key."),
                Version::V063 => error_400(cfg, data, "Missing `api_key`"),
            };
        }
        Some("") => {
            return match v {
                Version::V07 => fail("API key cannot be empty. Please enter a valid API key."),
                Version::V063 => error_400(cfg, data, "Received an empty `api_key`"),
            };
        }
        Some(k) => k.to_string(),
    };
    let KeyCheck::Valid(expires_at) = check_key(sh, &key).await else {
        return fail("API key is invalid (it may be incorrect or expired)");
    };
    let cookie = new_cookie(v, &key);
    let remaining = expires_at - now();
    let max_age = match v {
        Version::V07 => remaining.whole_seconds().min(V07_MAX_AGE_CAP),
        // 0.6.3 writes the key's remaining lifetime in milliseconds where seconds belong.
        Version::V063 => remaining.whole_milliseconds() as i64,
    };
    {
        let mut st = sh.st();
        st.logins += 1;
        let garbled = st.garble_new;
        st.sessions.push(SessionInfo {
            cookie: cookie.clone(),
            api_key: key,
            created: now(),
            expires_at,
            logged_out: false,
            garbled,
            key_dead: false,
        });
    }
    let set_cookie = format!("{COOKIE}={cookie}{}", set_cookie_attrs(cfg, max_age, false));
    if data {
        data_reply(cfg, 202, &redirect_payload("/machines"), false)
            .header("set-cookie", &set_cookie)
    } else {
        let mut r = Reply::new(302)
            .header("location", "/admin/machines")
            .header("set-cookie", &set_cookie);
        if v == Version::V063 {
            r = r.header("content-type", "text/plain; charset=UTF-8");
        }
        r
    }
}

fn logout(sh: &Shared, ctx: &Ctx, data: bool) -> Reply {
    let cfg = &sh.cfg;
    if !ctx.is_post() {
        // Observed: a GET only redirects to the machines page.
        return if data {
            data_reply(cfg, 202, &single_fetch_redirect("/machines", false), false)
        } else {
            redirect(cfg, "/admin/machines", false)
        };
    }
    // No `Origin` check here: cross-site logout posts are not blocked (f6).
    sh.st().logouts += 1;
    let clear = match cfg.version {
        // Stateless: nothing to destroy, always the clearing cookie (f5 without a cookie too).
        Version::V063 => true,
        Version::V07 => {
            let who = resolve(sh, ctx);
            if let Who::Session(s) = &who {
                let mut st = sh.st();
                if let Some(x) = st.sessions.iter_mut().find(|x| x.cookie == s.cookie) {
                    x.logged_out = true;
                }
            }
            !matches!(who, Who::None)
        }
    };
    if data {
        data_reply(cfg, 202, &redirect_payload("/login"), clear)
    } else {
        redirect(cfg, "/admin/login", clear)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Pages: loaders and actions
// ---------------------------------------------------------------------------------------------------------

fn leaf_id(cfg: &Config, p: Page) -> &'static str {
    let i = page_info(p);
    match cfg.version {
        Version::V07 => i.leaf_v07,
        Version::V063 => i.leaf_v063,
    }
}

fn allowed(caps: u32, need: u32, any: u32) -> bool {
    caps & need == need && (any == 0 || caps & any != 0)
}

/// "Session gone" for a request without a usable session.
fn no_session(cfg: &Config, ctx: &Ctx, p: Page, data: bool, leaf_only: bool) -> Reply {
    match (ctx.is_post(), data, leaf_only) {
        (_, false, _) => redirect(cfg, "/admin/login", true),
        (false, true, false) => data_reply(cfg, 202, &single_fetch_redirect("/login", true), true),
        (false, true, true) => {
            let v = obj(vec![(
                leaf_id(cfg, p),
                obj(vec![("error", sanitized_error_v())]),
            )]);
            data_reply(cfg, 500, &v, false)
        }
        (true, true, _) => data_reply(cfg, 500, &sanitized_error(), false),
    }
}

/// "Session gone" found by re-checking the key at Headscale (page loads).
fn key_gone(cfg: &Config, data: bool) -> Reply {
    if data {
        data_reply(cfg, 202, &single_fetch_redirect("/login", true), true)
    } else {
        redirect(cfg, "/admin/login", true)
    }
}

async fn page(
    sh: &Shared,
    ctx: &Ctx,
    p: Page,
    param: Option<String>,
    data: bool,
    leaf_only: bool,
) -> Reply {
    let cfg = &sh.cfg;
    if ctx.is_post() && !origin_ok(cfg, ctx) {
        return bad_request(cfg, data);
    }
    let who = resolve(sh, ctx);
    if matches!(who, Who::None) {
        return no_session(cfg, ctx, p, data, leaf_only);
    }
    if ctx.is_post() {
        action(sh, ctx, p, param, &who, data).await
    } else {
        load(sh, ctx, p, param, &who, data, leaf_only).await
    }
}

async fn load(
    sh: &Shared,
    ctx: &Ctx,
    p: Page,
    param: Option<String>,
    who: &Who,
    data: bool,
    leaf_only: bool,
) -> Reply {
    let cfg = &sh.cfg;
    let key = key_of(sh, who);
    if !leaf_only {
        // The layout loader re-checks the key at Headscale on every page load and full `.data` load.
        if let KeyCheck::Invalid = check_key(sh, &key).await {
            return match who {
                Who::Session(_) => key_gone(cfg, data),
                _ => unexpected_error(cfg, data, Some(who)),
            };
        }
    }
    let info = page_info(p);
    if !allowed(who.caps(), info.get_cap, info.get_any) {
        // A role without the capability: the loader throws (observed 500 for members).
        if data {
            return data_reply(cfg, 500, &denied_data(cfg, sh, p, who, leaf_only), false);
        }
        return unexpected_error(cfg, false, Some(who));
    }
    let fetched = fetch_data(sh, p, &key).await;
    let d = match fetched {
        Ok(d) => d,
        Err(_) if leaf_only && cfg.version == Version::V07 && sh.st().stale_data => cached_data(sh),
        Err(e) => {
            if data {
                let err = headscale_error_v(&e);
                let v = if leaf_only {
                    obj(vec![(leaf_id(cfg, p), obj(vec![("error", err)]))])
                } else {
                    obj(vec![("error", err)])
                };
                return data_reply(cfg, 502, &v, false);
            }
            return html_reply(502, headscale_error_page(cfg, who, ctx, &e));
        }
    };
    if data {
        let v = page_payload(cfg, sh, p, who, &d, leaf_only);
        return data_reply(cfg, 200, &v, false);
    }
    html_reply(200, render_page(cfg, sh, ctx, p, param.as_deref(), who, &d))
}

async fn action(
    sh: &Shared,
    ctx: &Ctx,
    p: Page,
    param: Option<String>,
    who: &Who,
    data: bool,
) -> Reply {
    let cfg = &sh.cfg;
    let v = cfg.version;
    let form = parse_form(ctx);
    if matches!(form, Form::Unsupported) {
        return unexpected_error(cfg, data, Some(who));
    }
    let key = key_of(sh, who);
    let info = page_info(p);
    if p == Page::Home {
        // The index action links the signed-in user to a Headscale user (no `action_id`).
        let hs_id = form
            .get("headscale_user_id")
            .and_then(|s| s.parse::<u64>().ok());
        if let (Who::Proxy(u), Some(id)) = (who, hs_id) {
            let mut st = sh.st();
            if let Some(x) = st.users.iter_mut().find(|x| x.id == u.id) {
                x.headscale_user_id = Some(id);
            }
            st.actions.push(ActionRecord {
                by: who.label(),
                route: "/".into(),
                action_id: "link_user".into(),
                fields: form.fields(),
                headscale_status: 0,
                ok: true,
            });
        }
        return if data {
            data_reply(cfg, 202, &redirect_payload("/"), false)
        } else {
            redirect(cfg, "/admin/", false)
        };
    }
    let Some(action_id) = form.get("action_id").map(str::to_string) else {
        let msg = "Missing `action_id` in the form data.";
        if data {
            return data_reply(
                cfg,
                404,
                &obj(vec![(
                    "error",
                    error_response(V::Str(msg.into()), 404, "Not Found"),
                )]),
                false,
            );
        }
        if v == Version::V07
            && matches!(who, Who::Session(_))
            && let KeyCheck::Invalid = check_key(sh, &key).await
        {
            return key_gone(cfg, false);
        }
        return html_reply(404, in_app_error_page(cfg, who, 404, msg, "action"));
    };
    let mut need = info.post_cap;
    if p == Page::Users && action_id == "transfer_ownership" {
        need |= cap::OWNER;
    }
    if !allowed(who.caps(), need, info.post_any) {
        sh.st().actions.push(ActionRecord {
            by: who.label(),
            route: info.path.into(),
            action_id: action_id.clone(),
            fields: form.fields(),
            headscale_status: 0,
            ok: false,
        });
        if data {
            let e = error_response(V::Str(info.deny.into()), 403, "Internal Server Error");
            return data_reply(cfg, 403, &obj(vec![("error", e)]), false);
        }
        return html_reply(403, in_app_error_page(cfg, who, 403, info.deny, "action"));
    }
    let result = run_action(sh, p, param.as_deref(), &action_id, &form, &key).await;
    sh.st().actions.push(ActionRecord {
        by: who.label(),
        route: info.path.into(),
        action_id: action_id.clone(),
        fields: form.fields(),
        headscale_status: match &result {
            Ok(s) => *s,
            Err(e) => e.status,
        },
        ok: result.is_ok(),
    });
    if data {
        return match result {
            Ok(_) => {
                let msg = if action_id == "create_user" {
                    "User created successfully".to_string()
                } else {
                    format!("Action {action_id} completed successfully")
                };
                data_reply(
                    cfg,
                    200,
                    &obj(vec![("data", obj(vec![("message", V::Str(msg))]))]),
                    false,
                )
            }
            Err(e) => data_reply(
                cfg,
                502,
                &obj(vec![("error", headscale_error_v(&e))]),
                false,
            ),
        };
    }
    if let Who::Proxy(_) = who {
        // Observed (main-proxy/g14): a plain form post runs the action, then redirects to the login page.
        return match result {
            Ok(_) => redirect(cfg, "/admin/login", true),
            Err(e) => html_reply(502, headscale_error_page(cfg, who, ctx, &e)),
        };
    }
    match (v, result) {
        (Version::V063, Err(e)) => html_reply(502, headscale_error_page(cfg, who, ctx, &e)),
        (_, result) => {
            // The document re-render runs the layout loader, which re-checks the key.
            if let KeyCheck::Invalid = check_key(sh, &key).await {
                return key_gone(cfg, false);
            }
            match result {
                Err(e) => html_reply(502, headscale_error_page(cfg, who, ctx, &e)),
                Ok(_) => match fetch_data(sh, p, &key).await {
                    Ok(d) => {
                        html_reply(200, render_page(cfg, sh, ctx, p, param.as_deref(), who, &d))
                    }
                    Err(e) => html_reply(502, headscale_error_page(cfg, who, ctx, &e)),
                },
            }
        }
    }
}

/// The Headscale call(s) an action makes with the acting key; `Ok(status)` when it went through.
async fn run_action(
    sh: &Shared,
    p: Page,
    param: Option<&str>,
    action_id: &str,
    form: &Form,
    key: &str,
) -> Result<u16, HsError> {
    let f = |k: &str| form.get(k).unwrap_or_default().to_string();
    match (p, action_id) {
        (Page::Users, "create_user") => {
            let body = serde_json::json!({
                "name": f("username"),
                "displayName": f("display_name"),
                "email": f("email"),
                "pictureUrl": "",
            });
            hs_call(sh, Method::POST, "v1/user", key, Some(body)).await?;
            // The re-render lists the users again.
            hs_call(sh, Method::GET, "v1/user", key, None).await?;
            Ok(200)
        }
        (Page::Machines | Page::Machine, _) => {
            let id = form
                .get("node_id")
                .map(str::to_string)
                .or(param.map(str::to_string))
                .unwrap_or_default();
            hs_call(sh, Method::GET, &format!("v1/node/{id}"), key, None).await?;
            let (m, path, body) = match action_id {
                "rename" => (
                    Method::POST,
                    format!("v1/node/{id}/rename/{}", f("name")),
                    None,
                ),
                "delete" => (Method::DELETE, format!("v1/node/{id}"), None),
                "expire" => (Method::POST, format!("v1/node/{id}/expire"), None),
                "update_tags" => (
                    Method::POST,
                    format!("v1/node/{id}/tags"),
                    Some(
                        serde_json::json!({"tags": form.fields().into_iter().filter(|(k, _)| k == "tags").map(|(_, v)| v).collect::<Vec<_>>()}),
                    ),
                ),
                "update_routes" => (
                    Method::POST,
                    format!("v1/node/{id}/approve_routes"),
                    Some(serde_json::json!({"routes": []})),
                ),
                _ => (Method::GET, format!("v1/node/{id}"), None),
            };
            hs_call(sh, m, &path, key, body).await?;
            Ok(200)
        }
        _ => {
            // Other actions: one authenticated call stands for whatever Headplane would do.
            hs_call(sh, Method::GET, "v1/user", key, None).await?;
            Ok(200)
        }
    }
}

fn error_400(cfg: &Config, data: bool, msg: &str) -> Reply {
    if data {
        let e = error_response(V::Str(msg.into()), 400, "Bad Request");
        return data_reply(cfg, 400, &obj(vec![("error", e)]), false);
    }
    html_reply(
        400,
        html_doc(
            cfg,
            "error",
            &error_body(400, msg),
            &marker_json(cfg, "error", &Who::None, None),
        ),
    )
}

/// 500 "Unexpected Server Error": bare for signed-out pages (c6), inside the app layout otherwise (g06).
fn unexpected_error(cfg: &Config, data: bool, who: Option<&Who>) -> Reply {
    if data {
        return data_reply(cfg, 500, &sanitized_error(), false);
    }
    let body = match who {
        None => "<main data-hp-page=\"error\"><h1>Error</h1><p>Unexpected Server Error</p></main>"
            .to_string(),
        Some(w) => layout(
            cfg,
            w.caps(),
            "<main data-hp-page=\"error\"><h1>Error</h1><p>Unexpected Server Error</p></main>",
        ),
    };
    let w = who.cloned().unwrap_or(Who::None);
    html_reply(
        500,
        html_doc(cfg, "error", &body, &marker_json(cfg, "error", &w, None)),
    )
}

// ---------------------------------------------------------------------------------------------------------
// turbo-stream (React Router single fetch)
// ---------------------------------------------------------------------------------------------------------

/// A value to encode. `Late(rank, v)`: a loader promise that settles after everything else (lower ranks
/// first), as 0.7's root and layout loaders do in full `.data` loads; `Deferred(rank, container)`: the
/// container gets its index at once but its contents only then (a route object whose loader threw, g27).
#[derive(Clone, Debug)]
pub enum V {
    Undef,
    Null,
    Bool(bool),
    Num(i64),
    Str(String),
    Arr(Vec<V>),
    Obj(Vec<(String, V)>),
    Plugin(&'static str, Vec<V>),
    Late(u8, Box<V>),
    Deferred(u8, Box<V>),
}

fn obj(fields: Vec<(&str, V)>) -> V {
    V::Obj(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn s(x: &str) -> V {
    V::Str(x.to_string())
}

fn from_json(v: &Value) -> V {
    match v {
        Value::Null => V::Null,
        Value::Bool(b) => V::Bool(*b),
        Value::Number(n) => V::Num(n.as_i64().unwrap_or_default()),
        Value::String(x) => V::Str(x.clone()),
        Value::Array(a) => V::Arr(a.iter().map(from_json).collect()),
        Value::Object(m) => V::Obj(m.iter().map(|(k, v)| (k.clone(), from_json(v))).collect()),
    }
}

enum Node {
    Leaf(String),
    Obj(Vec<(i64, i64)>),
    Arr(Vec<i64>),
    Plugin(&'static str, Vec<i64>),
    Pending,
}

struct Enc {
    breadth: bool,
    nodes: Vec<Node>,
    prims: HashMap<String, i64>,
    queue: VecDeque<(usize, V)>,
    late: Vec<LateItem>,
}

struct LateItem {
    rank: u8,
    order: usize,
    what: LateWhat,
}

enum LateWhat {
    /// Assign `val` an index, then patch it into child `pos` of node `parent`.
    Patch { parent: usize, pos: usize, val: V },
    /// Process the contents of container node `idx`.
    Process { idx: usize, val: V },
}

const LATE: i64 = i64::MIN;

impl Enc {
    fn index_of(&mut self, v: &V) -> i64 {
        let prim = |tag: &str, json: String| (format!("{tag}{json}"), json);
        let (key, json) = match v {
            V::Undef => return -7,
            V::Null => return -5,
            V::Late(..) => return LATE,
            V::Deferred(rank, inner) => {
                let i = self.nodes.len();
                self.nodes.push(Node::Pending);
                let order = self.late.len();
                self.late.push(LateItem {
                    rank: *rank,
                    order,
                    what: LateWhat::Process {
                        idx: i,
                        val: (**inner).clone(),
                    },
                });
                return i as i64;
            }
            V::Bool(b) => prim("b", b.to_string()),
            V::Num(n) => prim("n", n.to_string()),
            V::Str(x) => prim("s", serde_json::to_string(x).unwrap()),
            V::Arr(_) | V::Obj(_) | V::Plugin(..) => {
                let i = self.nodes.len();
                self.nodes.push(Node::Pending);
                if self.breadth {
                    self.queue.push_back((i, v.clone()));
                } else {
                    self.process(i, v);
                }
                return i as i64;
            }
        };
        if let Some(i) = self.prims.get(&key) {
            return *i;
        }
        let i = self.nodes.len() as i64;
        self.nodes.push(Node::Leaf(json));
        self.prims.insert(key, i);
        i
    }

    fn child(&mut self, parent: usize, pos: usize, v: &V) -> i64 {
        if let V::Late(rank, inner) = v {
            let order = self.late.len();
            self.late.push(LateItem {
                rank: *rank,
                order,
                what: LateWhat::Patch {
                    parent,
                    pos,
                    val: (**inner).clone(),
                },
            });
            return LATE;
        }
        self.index_of(v)
    }

    fn process(&mut self, i: usize, v: &V) {
        let node = match v {
            V::Obj(fields) => {
                let mut pairs = Vec::new();
                for (n, (k, val)) in fields.iter().enumerate() {
                    let ki = self.index_of(&V::Str(k.clone()));
                    let vi = self.child(i, n, val);
                    pairs.push((ki, vi));
                }
                Node::Obj(pairs)
            }
            V::Arr(items) => {
                let mut out = Vec::new();
                for (n, item) in items.iter().enumerate() {
                    out.push(self.child(i, n, item));
                }
                Node::Arr(out)
            }
            V::Plugin(name, args) => {
                let mut out = Vec::new();
                for (n, a) in args.iter().enumerate() {
                    out.push(self.child(i, n, a));
                }
                Node::Plugin(name, out)
            }
            _ => unreachable!(),
        };
        self.nodes[i] = node;
    }

    fn drain(&mut self) {
        while let Some((i, v)) = self.queue.pop_front() {
            self.process(i, &v);
        }
    }
}

/// `v` as React Router's single-fetch turbo-stream: 0.7 assigns indices breadth-first, 0.6.3 depth-first.
pub fn turbo_stream(v: &V, version: Version) -> String {
    let mut e = Enc {
        breadth: version == Version::V07,
        nodes: Vec::new(),
        prims: HashMap::new(),
        queue: VecDeque::new(),
        late: Vec::new(),
    };
    e.index_of(v);
    e.drain();
    while !e.late.is_empty() {
        let pos = (0..e.late.len())
            .min_by_key(|&j| (e.late[j].rank, e.late[j].order))
            .unwrap();
        match e.late.remove(pos).what {
            LateWhat::Patch { parent, pos, val } => {
                let idx = e.index_of(&val);
                e.drain();
                match &mut e.nodes[parent] {
                    Node::Obj(pairs) => pairs[pos].1 = idx,
                    Node::Arr(items) | Node::Plugin(_, items) => items[pos] = idx,
                    _ => unreachable!(),
                }
            }
            LateWhat::Process { idx, val } => {
                e.process(idx, &val);
                e.drain();
            }
        }
    }
    let parts: Vec<String> = e
        .nodes
        .iter()
        .map(|n| match n {
            Node::Leaf(j) => j.clone(),
            Node::Obj(pairs) => format!(
                "{{{}}}",
                pairs
                    .iter()
                    .map(|(k, v)| format!("\"_{k}\":{v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Node::Arr(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Node::Plugin(name, items) => {
                let mut s = format!("[\"{name}\"");
                for i in items {
                    s.push_str(&format!(",{i}"));
                }
                s.push(']');
                s
            }
            Node::Pending => "null".into(),
        })
        .collect();
    format!("[{}]\n", parts.join(","))
}

fn sanitized_error_v() -> V {
    V::Plugin(
        "SanitizedError",
        vec![s("Error"), s("Unexpected Server Error"), V::Undef],
    )
}

fn sanitized_error() -> V {
    obj(vec![("error", sanitized_error_v())])
}

fn error_response(data: V, status: u16, status_text: &str) -> V {
    V::Plugin(
        "ErrorResponse",
        vec![data, V::Num(status as i64), s(status_text)],
    )
}

/// A failed Headscale call as Headplane's `.data` error: 502 with the call, its status and raw body.
fn headscale_error_v(e: &HsError) -> V {
    let data = match serde_json::from_str::<Value>(&e.raw) {
        Ok(j) if j.is_object() || j.is_array() => from_json(&j),
        _ => V::Null,
    };
    error_response(
        obj(vec![
            ("requestUrl", s(&e.request_url)),
            ("statusCode", V::Num(e.status as i64)),
            ("rawData", s(&e.raw)),
            ("data", data),
        ]),
        502,
        "Bad Gateway",
    )
}

fn redirect_payload(to: &str) -> V {
    obj(vec![
        ("redirect", s(to)),
        ("status", V::Num(302)),
        ("revalidate", V::Bool(true)),
        ("reload", V::Bool(false)),
        ("replace", V::Bool(false)),
    ])
}

/// `revalidate`: true for "session gone" redirects, false for the signed-in `/login.data` probe (x2).
fn single_fetch_redirect(to: &str, revalidate: bool) -> V {
    V::Plugin(
        "SingleFetchRedirect",
        vec![obj(vec![
            ("redirect", s(to)),
            ("status", V::Num(302)),
            ("revalidate", V::Bool(revalidate)),
            ("reload", V::Bool(false)),
            ("replace", V::Bool(false)),
        ])],
    )
}

fn login_data(cfg: &Config) -> V {
    let leaf = obj(vec![
        ("isCookieSecureEnabled", V::Bool(cfg.cookie_secure)),
        ("isOidcConnectorEnabled", V::Bool(false)),
        ("oidcErrorCodes", V::Arr(vec![])),
        ("urlState", V::Undef),
    ]);
    match cfg.version {
        Version::V07 => obj(vec![
            (
                "root",
                obj(vec![("data", V::Late(1, Box::new(root_data())))]),
            ),
            ("routes/auth/login/page", obj(vec![("data", leaf)])),
        ]),
        Version::V063 => obj(vec![("routes/auth/login", obj(vec![("data", leaf)]))]),
    }
}

fn root_data() -> V {
    obj(vec![("colorScheme", s("system"))])
}

fn hs_user_v(u: &Value) -> V {
    let f = |k: &str| u.get(k).map(from_json).unwrap_or(V::Undef);
    obj(vec![
        ("id", f("id")),
        ("name", f("name")),
        ("createdAt", f("createdAt")),
        ("displayName", f("displayName")),
        ("email", f("email")),
        ("providerId", f("providerId")),
        ("provider", f("provider")),
        ("profilePicUrl", f("profilePicUrl")),
    ])
}

fn access_v(caps: u32) -> V {
    let b = |c: u32| V::Bool(caps & c == c);
    obj(vec![
        ("ui", b(cap::UI_ACCESS)),
        ("machines", b(cap::READ_MACHINES)),
        ("users", b(cap::READ_USERS)),
        ("policy", b(cap::READ_POLICY)),
        ("dns", b(cap::READ_NETWORK)),
        ("settings", b(cap::UI_ACCESS)),
    ])
}

fn user_v(who: &Who) -> V {
    match who {
        Who::Proxy(u) => obj(vec![
            ("subject", s(&u.id)),
            ("name", s(&u.name)),
            ("email", u.email.as_deref().map(s).unwrap_or(V::Undef)),
            ("role", s(u.role.label())),
        ]),
        Who::Session(x) => obj(vec![
            ("subject", s("unknown-non-oauth")),
            // 0.6.3 names an API-key user after the key up to its first dot (the whole key, for new keys).
            ("name", s(x.api_key.split('.').next().unwrap_or_default())),
            ("email", s("")),
        ]),
        Who::None => V::Undef,
    }
}

fn layout_data(cfg: &Config, who: &Who) -> V {
    obj(vec![
        ("access", access_v(who.caps())),
        ("baseUrl", s(&cfg.headscale_url)),
        ("configAvailable", V::Bool(false)),
        ("isDebug", V::Bool(false)),
        ("isHealthy", V::Bool(true)),
        ("user", user_v(who)),
    ])
}

fn shell_data(cfg: &Config, who: &Who) -> V {
    obj(vec![
        ("config", V::Undef),
        ("url", s(&cfg.headscale_url)),
        ("configAvailable", V::Bool(false)),
        ("debug", V::Bool(false)),
        ("user", user_v(who)),
        ("access", V::Bool(true)),
    ])
}

fn leaf_data(cfg: &Config, sh: &Shared, p: Page, who: &Who, d: &PageData) -> V {
    let nodes = V::Arr(d.nodes.iter().map(from_json).collect());
    let users = V::Arr(d.users.iter().map(hs_user_v).collect());
    match (cfg.version, p) {
        (Version::V07, Page::Machines) => obj(vec![
            ("agent", V::Undef),
            ("headscaleUserId", V::Undef),
            ("existingTags", V::Arr(vec![])),
            ("magic", V::Undef),
            ("nodes", nodes.clone()),
            ("populatedNodes", nodes),
            ("preAuth", V::Bool(true)),
            ("publicServer", V::Undef),
            ("server", s(&cfg.headscale_url)),
            ("users", users),
            ("writable", V::Bool(who.caps() & cap::WRITE_MACHINES != 0)),
        ]),
        (Version::V07, Page::Users) => {
            let (linked, hp): (Vec<u64>, Vec<V>) = {
                let st = sh.st();
                (
                    st.users
                        .iter()
                        .filter_map(|u| u.headscale_user_id)
                        .collect(),
                    st.users
                        .iter()
                        .map(|u| {
                            obj(vec![
                                ("id", s(&u.id)),
                                ("name", s(&u.name)),
                                ("role", s(u.role.label())),
                                (
                                    "headscaleUserId",
                                    u.headscale_user_id
                                        .map(|i| s(&i.to_string()))
                                        .unwrap_or(V::Undef),
                                ),
                            ])
                        })
                        .collect(),
                )
            };
            let unlinked: Vec<V> = d
                .users
                .iter()
                .filter(|u| !linked.contains(&hs_id(u)))
                .map(hs_user_v)
                .collect();
            let (current, is_owner) = match who {
                Who::Proxy(u) => (s(&u.id), u.role == Role::Owner),
                _ => (V::Undef, false),
            };
            obj(vec![
                ("writable", V::Bool(who.caps() & cap::WRITE_USERS != 0)),
                ("currentUserId", current),
                ("isOwner", V::Bool(is_owner)),
                ("oidc", V::Undef),
                ("magic", V::Undef),
                ("apiError", V::Undef),
                ("headplaneUsers", V::Arr(hp)),
                ("unlinkedHeadscaleUsers", V::Arr(unlinked)),
                ("headscaleUsersForLink", users),
            ])
        }
        (Version::V063, Page::Machines) => obj(vec![
            ("populatedNodes", nodes.clone()),
            ("nodes", nodes),
            ("users", users),
            ("magic", V::Undef),
            ("server", s(&cfg.headscale_url)),
            ("publicServer", V::Undef),
        ]),
        (Version::V063, Page::Users) => obj(vec![
            ("users", users),
            ("nodes", nodes),
            ("oidc", V::Undef),
            ("magic", V::Undef),
        ]),
        (_, Page::Home) => obj(vec![("user", user_v(who)), ("headscaleUsers", users)]),
        _ => obj(vec![("page", s(page_info(p).heading))]),
    }
}

fn hs_id(u: &Value) -> u64 {
    match &u["id"] {
        Value::String(x) => x.parse().unwrap_or_default(),
        v => v.as_u64().unwrap_or_default(),
    }
}

fn page_payload(cfg: &Config, sh: &Shared, p: Page, who: &Who, d: &PageData, leaf_only: bool) -> V {
    let leaf = leaf_data(cfg, sh, p, who, d);
    let leaf_entry = (leaf_id(cfg, p), obj(vec![("data", leaf)]));
    if leaf_only {
        return obj(vec![leaf_entry]);
    }
    match cfg.version {
        Version::V07 => obj(vec![
            (
                "root",
                obj(vec![("data", V::Late(2, Box::new(root_data())))]),
            ),
            (
                "layout/app",
                obj(vec![("data", V::Late(1, Box::new(layout_data(cfg, who))))]),
            ),
            leaf_entry,
        ]),
        Version::V063 => obj(vec![
            ("layouts/shell", obj(vec![("data", shell_data(cfg, who))])),
            leaf_entry,
        ]),
    }
}

/// A role without the page's capability, `.data` (observed for a full load in main-proxy/g27: the layout
/// data first, the leaf's error last).
fn denied_data(cfg: &Config, _sh: &Shared, p: Page, who: &Who, leaf_only: bool) -> V {
    let err = || obj(vec![("error", sanitized_error_v())]);
    if leaf_only {
        return obj(vec![(leaf_id(cfg, p), err())]);
    }
    obj(vec![
        (leaf_id(cfg, p), V::Deferred(3, Box::new(err()))),
        (
            "root",
            obj(vec![("data", V::Late(2, Box::new(root_data())))]),
        ),
        ("layout/app", obj(vec![("data", layout_data(cfg, who))])),
    ])
}

// ---------------------------------------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------------------------------------

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn el(tag: &str, text: &str) -> String {
    format!("<{tag}>{}</{tag}>", esc(text))
}

fn head(v: Version) -> &'static str {
    match v {
        Version::V07 => concat!(
            "<!DOCTYPE html><html lang=\"en\" class=\"\"><head><meta charSet=\"utf-8\"/>",
            "<meta content=\"width=device-width, initial-scale=1\" name=\"viewport\"/><title>Headplane</title>",
            "<meta name=\"description\" content=\"A frontend for the headscale coordination server\"/>",
            "<link href=\"/admin/favicon.ico\" rel=\"icon\"/><link rel=\"stylesheet\" href=\"/admin/assets/root.css\"/>",
            "</head>"
        ),
        Version::V063 => concat!(
            "<!DOCTYPE html><html lang=\"en\"><head><meta charSet=\"utf-8\"/>",
            "<meta content=\"width=device-width, initial-scale=1\" name=\"viewport\"/><title>Headplane</title>",
            "<meta name=\"description\" content=\"A frontend for the headscale coordination server\"/>",
            "<link href=\"/admin/favicon.ico\" rel=\"icon\"/><link rel=\"modulepreload\" href=\"/admin/assets/entry.client.js\"/>",
            "</head>"
        ),
    }
}

/// The machine-readable marker every page carries (scripts are not visible text):
/// `{"double":"headplane","version","page","auth":"api_key"|"proxy"|"none","user","role",
/// "identity_headers":{lower-cased name: value}}`. Identity headers are `remote-*`, `x-forwarded-*`,
/// `x-auth-request-*`, `x-webauth-*`, `x-headgate-*` and the configured `proxy_auth` header names.
pub fn page_marker(html: &str) -> Option<Value> {
    let start = html.find("<script type=\"application/json\" id=\"hp-double\">")?;
    let rest = &html[start..];
    let open = rest.find('>')? + 1;
    let close = rest.find("</script>")?;
    serde_json::from_str(&rest[open..close].replace("<\\/", "</")).ok()
}

fn marker_json(cfg: &Config, page: &str, who: &Who, ctx: Option<&Ctx>) -> Value {
    let mut ids = serde_json::Map::new();
    if let Some(ctx) = ctx {
        let proxy_names: Vec<&str> = cfg
            .proxy
            .iter()
            .flat_map(|p| {
                [
                    p.user_header.as_str(),
                    p.email_header.as_str(),
                    p.name_header.as_str(),
                    p.picture_header.as_str(),
                ]
            })
            .collect();
        for (n, v) in ctx.headers.iter() {
            let n = n.as_str();
            let identity = [
                "remote-",
                "x-forwarded-",
                "x-auth-request-",
                "x-webauth-",
                "x-headgate-",
            ]
            .iter()
            .any(|p| n.starts_with(p))
                || proxy_names.contains(&n);
            if identity && !ids.contains_key(n) {
                ids.insert(
                    n.to_string(),
                    Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
                );
            }
        }
    }
    let (auth, user, role) = match who {
        Who::None => ("none", Value::Null, Value::Null),
        Who::Session(s) => ("api_key", Value::String(mask_key(&s.api_key)), Value::Null),
        Who::Proxy(u) => (
            "proxy",
            Value::String(u.id.clone()),
            Value::String(u.role.label().into()),
        ),
    };
    serde_json::json!({
        "double": "headplane",
        "version": cfg.version.label(),
        "page": page,
        "auth": auth,
        "user": user,
        "role": role,
        "identity_headers": ids,
    })
}

fn html_doc(cfg: &Config, page: &str, body: &str, marker: &Value) -> String {
    format!(
        "{}<body data-hp-page=\"{page}\">{}<script type=\"application/json\" id=\"hp-double\">{}</script></body></html>",
        head(cfg.version),
        body,
        marker.to_string().replace("</", "<\\/")
    )
}

fn footer(cfg: &Config) -> String {
    match cfg.version {
        Version::V07 => format!(
            "<footer><p>Headplane is free and open-source. Please consider <a href=\"https://github.com/sponsors/tale\">sponsoring</a> to support development.</p><p>{}</p><span>·</span><span>•••••</span></footer>",
            esc(Version::V07.label())
        ),
        Version::V063 => format!(
            "<footer><p>Headplane is free. Please consider <a href=\"https://github.com/sponsors/tale\">donating</a> to support development.</p><p>Version: <b>{}</b></p><span>—</span><p>Connecting to <code>{}</code></p></footer>",
            esc(Version::V063.label()),
            esc(&cfg.headscale_url)
        ),
    }
}

/// The app layout: brand, the nav links the capabilities allow (0.7; 0.6.3 shows all), content, footer.
fn layout(cfg: &Config, caps: u32, content: &str) -> String {
    let mut nav = String::new();
    match cfg.version {
        Version::V07 => {
            for (c, label, href) in [
                (cap::READ_MACHINES, "Machines", "/admin/machines"),
                (cap::READ_USERS, "Users", "/admin/users"),
                (cap::READ_POLICY, "Access Control", "/admin/acls"),
            ] {
                if caps & c == c {
                    nav.push_str(&format!("<a href=\"{href}\">{label}</a>"));
                }
            }
        }
        Version::V063 => {
            nav.push_str("<a href=\"https://tailscale.com/download\">Download</a><a href=\"https://github.com/tale/headplane\">GitHub</a><a href=\"https://github.com/juanfont/headscale\">Headscale</a>");
            nav.push_str("<a href=\"/admin/machines\">Machines</a><a href=\"/admin/users\">Users</a><a href=\"/admin/acls\">Access Control</a>");
        }
    }
    let nav = if nav.is_empty() {
        String::new()
    } else {
        format!("<nav>{nav}</nav>")
    };
    format!(
        "<header><a href=\"/admin/\">headplane</a>{nav}</header>{content}{}",
        footer(cfg)
    )
}

fn login_page(cfg: &Config, error: Option<&str>) -> String {
    let err = error
        .map(|e| format!("<p role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "<main data-hp-page=\"login\"><h1>Welcome to Headplane</h1><p>Enter an API key to authenticate with Headplane. You can generate one by running <code>headscale apikeys create</code> in your terminal.</p><form method=\"post\" action=\"/admin/login\"><label for=\"api_key\">API Key</label><input id=\"api_key\" name=\"api_key\" type=\"password\"/>{err}<button type=\"submit\">Sign In</button></form></main>"
    );
    html_doc(
        cfg,
        "login",
        &body,
        &marker_json(cfg, "login", &Who::None, None),
    )
}

fn error_body(status: u16, text: &str) -> String {
    format!(
        "<main data-hp-page=\"error\"><h1>Error {status}</h1><p>There was an error processing your request.</p><dl><dt>Status Code:</dt><dd>{status}</dd><dt>Status Text:</dt><dd>{}</dd></dl></main>",
        esc(text)
    )
}

fn in_app_error_page(cfg: &Config, who: &Who, status: u16, text: &str, page: &str) -> String {
    html_doc(
        cfg,
        page,
        &layout(cfg, who.caps(), &error_body(status, text)),
        &marker_json(cfg, "error", who, None),
    )
}

/// `JSON.stringify(x, null, 2)` of raw JSON text, keeping its key order.
fn pretty_json(raw: &str) -> String {
    let mut out = String::new();
    let mut indent = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    let chars: Vec<char> = raw.chars().collect();
    let mut i = 0;
    let nl = |out: &mut String, n: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(n));
    };
    while i < chars.len() {
        let c = chars[i];
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push(c);
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                let mut j = i + 1;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                if j < chars.len() && chars[j] == close {
                    out.push(c);
                    out.push(close);
                    i = j + 1;
                    continue;
                }
                out.push(c);
                indent += 1;
                nl(&mut out, indent);
            }
            '}' | ']' => {
                indent = indent.saturating_sub(1);
                nl(&mut out, indent);
                out.push(c);
            }
            ',' => {
                out.push(',');
                nl(&mut out, indent);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn headscale_error_page(cfg: &Config, who: &Who, _ctx: &Ctx, e: &HsError) -> String {
    let data = match serde_json::from_str::<Value>(&e.raw) {
        Ok(j) if j.is_object() || j.is_array() => pretty_json(&e.raw),
        _ => "null".into(),
    };
    let details = format!(
        "{{\n  \"requestUrl\": {},\n  \"statusCode\": {},\n  \"rawData\": {},\n  \"data\": {}\n}}",
        serde_json::to_string(&e.request_url).unwrap(),
        e.status,
        serde_json::to_string(&e.raw).unwrap(),
        data.replace('\n', "\n  ")
    );
    let (hint, status_text) = if e.status == 401 || e.status == 403 {
        (
            "The status code indicates an authentication error. Please verify your API key and Headplane configuration.",
            "Unauthorized",
        )
    } else {
        (
            "You may be using an unsupported version of Headscale or this may be a bug.",
            "Bad Gateway",
        )
    };
    let content = format!(
        "<main data-hp-page=\"error\"><h1>Invalid response from Headscale API</h1><p>The Headscale API returned an unexpected response.</p><p>{}</p><dl><dt>Request URL:</dt><dd>{}</dd><dt>Status Code:</dt><dd>{}</dd><dd>{}</dd></dl><details><summary>Error Details</summary><pre>{}</pre></details></main>",
        esc(hint),
        esc(&e.request_url),
        e.status,
        status_text,
        esc(&details)
    );
    html_doc(
        cfg,
        "error",
        &layout(cfg, who.caps(), &content),
        &marker_json(cfg, "error", who, None),
    )
}

fn us_date(t: &str) -> String {
    match OffsetDateTime::parse(t, &Rfc3339) {
        Ok(t) => format!("{}/{}/{}", u8::from(t.month()), t.day(), t.year()),
        Err(_) => String::new(),
    }
}

fn str_of<'a>(u: &'a Value, k: &str) -> &'a str {
    u[k].as_str().unwrap_or_default()
}

fn machines_for(d: &PageData, user_id: u64) -> usize {
    d.nodes
        .iter()
        .filter(|n| hs_id(&n["user"]) == user_id)
        .count()
}

fn machines_label(n: usize) -> String {
    match n {
        0 => "No machines".into(),
        1 => "1 machine".into(),
        n => format!("{n} machines"),
    }
}

fn render_page(
    cfg: &Config,
    sh: &Shared,
    ctx: &Ctx,
    p: Page,
    param: Option<&str>,
    who: &Who,
    d: &PageData,
) -> String {
    let v = cfg.version;
    let name = match p {
        Page::Home => "home",
        Page::Machines => "machines",
        Page::Machine => "machine",
        Page::Users => "users",
        Page::Acls => "acls",
        Page::Dns => "dns",
        Page::Settings => "settings",
        Page::AuthKeys => "auth-keys",
        Page::Restrictions => "restrictions",
        Page::Agent => "agent",
        Page::Ssh => "ssh",
        Page::Onboarding => "onboarding",
        Page::OnboardingSkip => "onboarding-skip",
        Page::PendingApproval => "pending-approval",
    };
    let mut c = format!("<main data-hp-page=\"{name}\">");
    let mut with_layout = true;
    match p {
        Page::Machines => {
            c.push_str(&el("p", "Manage the devices connected to your Tailnet."));
            c.push_str("<a href=\"https://tailscale.com/kb/1372/manage-devices\">Learn more</a><button>Add Device</button><input placeholder=\"Search machines\"/><label>Search machines</label>");
            if v == Version::V07 {
                c.push_str(
                    "<div><button>User</button><button>Status</button><button>Route</button></div>",
                );
            }
            let count = d.nodes.len();
            c.push_str(&el(
                "p",
                &format!(
                    "{count} {}",
                    if count == 1 { "machine" } else { "machines" }
                ),
            ));
            c.push_str("<table><thead><tr><th>Name</th><th>Addresses</th><th>Last Seen</th>");
            if v == Version::V07 {
                c.push_str("<th>Actions</th>");
            }
            c.push_str("</tr></thead><tbody>");
            for n in &d.nodes {
                let addrs: Vec<&str> = n["ipAddresses"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                c.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(str_of(n, "givenName")),
                    esc(&addrs.join(" ")),
                    if n["online"].as_bool() == Some(true) {
                        "Connected"
                    } else {
                        "Offline"
                    }
                ));
            }
            c.push_str("</tbody></table>");
            if d.nodes.is_empty() {
                match v {
                    Version::V07 => c.push_str(&el("p", "No machines match the current filters")),
                    Version::V063 => {
                        c.push_str("<p>No machines found matching &quot;<b></b>&quot;</p>")
                    }
                }
            }
        }
        Page::Users => {
            c.push_str(&el(
                "p",
                "Manage the users in your network and their permissions.",
            ));
            match v {
                Version::V07 => {
                    c.push_str("<p>Users are managed locally.</p><a href=\"https://headplane.net/features/sso\">Set up OIDC</a><button>Add user</button>");
                    c.push_str(&el("h2", "Headplane Users"));
                    let hp = sh.st().users.clone();
                    if hp.is_empty() {
                        c.push_str(&el("p", "No users have signed into Headplane yet."));
                    } else {
                        c.push_str("<table><thead><tr><th>User</th><th>Role</th><th>Last Login</th><th>Status</th><th>Actions</th></tr></thead><tbody>");
                        for u in &hp {
                            let link = match u.headscale_user_id {
                                None => "Not linked".to_string(),
                                Some(id) => d
                                    .users
                                    .iter()
                                    .find(|x| hs_id(x) == id)
                                    .map(|x| str_of(x, "name").to_string())
                                    .unwrap_or_else(|| format!("user {id}")),
                            };
                            let machines = u
                                .headscale_user_id
                                .map(|id| machines_for(d, id))
                                .unwrap_or(0);
                            let last = u.last_login;
                            c.push_str(&format!(
                                "<tr><td><b>{}</b><span>{}</span></td><td>{}</td><td>{}/{}/{}</td><td>{}</td><td></td></tr>",
                                esc(&u.name),
                                esc(&link),
                                u.role.label(),
                                u8::from(last.month()),
                                last.day(),
                                last.year(),
                                machines_label(machines)
                            ));
                        }
                        c.push_str("</tbody></table>");
                    }
                    c.push_str(&el("h2", "Unlinked Headscale Users"));
                    c.push_str(&el("p", "These Headscale users are not linked to a Headplane account and cannot be managed through Headplane."));
                    let linked: Vec<u64> = hp.iter().filter_map(|u| u.headscale_user_id).collect();
                    c.push_str("<table><thead><tr><th>User</th><th>Created At</th><th>Status</th><th>Actions</th></tr></thead><tbody>");
                    for u in d.users.iter().filter(|u| !linked.contains(&hs_id(u))) {
                        c.push_str("<tr><td>");
                        if !str_of(u, "displayName").is_empty() {
                            c.push_str(&el("b", str_of(u, "displayName")));
                        }
                        c.push_str(&el("span", str_of(u, "name")));
                        if !str_of(u, "email").is_empty() {
                            c.push_str(&el("span", str_of(u, "email")));
                        }
                        c.push_str(&format!(
                            "</td><td>{}</td><td>{}</td><td></td></tr>",
                            us_date(str_of(u, "createdAt")),
                            machines_label(machines_for(d, hs_id(u)))
                        ));
                    }
                    c.push_str("</tbody></table>");
                }
                Version::V063 => {
                    c.push_str("<h2>User Authentication</h2><p>Users are not managed externally. Using OpenID Connect can create a better experience when using Headscale.</p><a href=\"https://headscale.net/stable/ref/oidc\">Learn more</a>");
                    c.push_str("<h2>User Management</h2><p>You can add, remove, and rename users here.</p><button>Add a new user</button>");
                    c.push_str("<table><thead><tr><th>User</th><th>Role</th><th>Created At</th><th>Last Seen</th></tr></thead><tbody>");
                    for u in &d.users {
                        c.push_str(&format!(
                            "<tr><td><b>{}</b><span>{}</span></td><td>Unmanaged</td><td>{}</td><td><span>Offline</span><span>1/1/1970, 12:00:00 AM</span></td></tr>",
                            esc(str_of(u, "name")),
                            esc(str_of(u, "email")),
                            us_date(str_of(u, "createdAt")),
                        ));
                    }
                    c.push_str("</tbody></table>");
                }
            }
        }
        Page::Home => {
            match who {
                Who::Proxy(u) => {
                    let claimed: Vec<u64> = sh
                        .st()
                        .users
                        .iter()
                        .filter_map(|x| x.headscale_user_id)
                        .collect();
                    match u.headscale_user_id {
                        None => {
                            c.push_str(&el("h1", "Link your Headscale account"));
                            c.push_str(&el("p", "Headplane could not automatically match your SSO identity to an existing Headscale user. Please select your user from the list below to link your account and continue."));
                            c.push_str("<form method=\"post\" action=\"/admin/?index\"><select name=\"headscale_user_id\"><option value=\"\">Select a user...</option>");
                            for x in d.users.iter().filter(|x| !claimed.contains(&hs_id(x))) {
                                c.push_str(&format!(
                                    "<option value=\"{}\">{}</option>",
                                    hs_id(x),
                                    esc(str_of(x, "name"))
                                ));
                            }
                            c.push_str("</select><button type=\"submit\">Link and Continue</button></form>");
                            c.push_str(&el("p", "If you don't see your user listed, please contact your administrator. To automatically link new users in the future, ensure that the Headscale user has the same email address as the SSO identity."));
                        }
                        Some(id) => {
                            let hs_name = d
                                .users
                                .iter()
                                .find(|x| hs_id(x) == id)
                                .map(|x| str_of(x, "name").to_string())
                                .unwrap_or_else(|| id.to_string());
                            c.push_str(&format!(
                                "<p>Your account is linked to Headscale user <b>{}</b>.</p>",
                                esc(&hs_name)
                            ));
                            if u.role.capabilities() & cap::UI_ACCESS == 0 {
                                c.push_str("<h1>Access your network via Tailscale</h1><p>You've successfully authenticated but don't have access to the dashboard. You can still connect to your Headscale network by installing Tailscale.</p>");
                                c.push_str("<h2>Linux</h2><pre>curl -fsSL https://tailscale.com/install.sh | sh</pre><button>Click to copy</button><a href=\"https://tailscale.com/install.sh\">View script source</a>");
                                c.push_str("<h2>Windows</h2><p>Windows 10+</p><h2>macOS</h2><p>macOS Big Sur+</p><h2>iOS</h2><p>iOS 15+</p><h2>Android</h2><p>Android 8+</p>");
                                c.push_str(&el(
                                    "p",
                                    "Need access to the dashboard? Contact your administrator.",
                                ));
                            }
                        }
                    }
                }
                _ => {
                    c.push_str(&el("h1", "Home"));
                    c.push_str(&el("p", "Signed in with an API key."));
                }
            }
        }
        Page::Machine => {
            c.push_str(&el("h1", &format!("Machine {}", param.unwrap_or_default())));
        }
        _ => {
            c.push_str(&el("h1", page_info(p).heading));
        }
    }
    if matches!(p, Page::Onboarding | Page::PendingApproval) {
        with_layout = false;
    }
    c.push_str("</main>");
    let body = if with_layout {
        layout(cfg, who.caps(), &c)
    } else {
        c
    };
    html_doc(cfg, name, &body, &marker_json(cfg, name, who, Some(ctx)))
}
