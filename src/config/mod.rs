//! headgate's configuration: TOML (keys follow Headplane's where the concept is the same), overridden by
//! `HEADGATE_<SECTION>__<KEY>` environment variables, with secrets optionally read from `*_path` files.
//!
//! Parsing turns the file into ready, validated values ("parse, don't validate"): nothing downstream
//! re-checks a URL or a secret length. Every problem is collected and reported at once, each naming its key.

mod cidr;
mod error;
mod reader;
mod secret;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use cidr::Cidr;
pub use error::{ConfigError, ConfigErrors};
use reader::{Section, nearest};
pub use secret::Secret;
use url::Url;

/// The known name closest to `got`, when it is a plausible typo (for messages outside this module).
pub(crate) fn nearest_name<'a>(got: &str, known: &[&'a str]) -> Option<&'a str> {
    nearest(got, known)
}

/// Where `serve` and friends look for the file when `--config` is not given.
pub const DEFAULT_LOCATIONS: &[&str] = &["./headgate.toml", "/etc/headgate/headgate.toml"];

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub headscale: Option<HeadscaleConfig>,
    pub oidc: Option<OidcConfig>,
    pub onboarding: OnboardingConfig,
    pub policy: PolicyConfig,
    pub headers: HeadersConfig,
    pub forward_auth: ForwardAuthConfig,
    pub store: StoreConfig,
    /// Non-fatal findings (open-door defaults) shown by `serve` and `check-config`.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The public origin (scheme, host, port; no path).
    pub base_url: Url,
    pub cookie_secret: Secret,
    pub cookie_secret_previous: Option<Secret>,
    pub cookie_secure: bool,
    pub cookie_domain: Option<String>,
    pub cookie_max_age: u64,
    pub data_path: PathBuf,
    pub tls: Option<TlsFiles>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub shutdown_timeout: u64,
    pub allowed_redirect_domains: Vec<String>,
    pub api_key_login_cidrs: Vec<Cidr>,
    pub initial_owner: Option<String>,
    /// Hosts (`host[:port]`, lower case; no port = the base URL scheme's default) that requests may name
    /// besides `base_url`'s (policy.md section 1: anything else is 421).
    pub allowed_hosts: Vec<String>,
    /// Peers whose `X-Forwarded-*` headers count (default none).
    pub trusted_proxies: Vec<Cidr>,
    /// How often API-key sessions are re-checked at Headscale (S14).
    pub api_key_recheck_interval: u64,
    /// How often open event streams and websockets are re-checked against their session (S19, ≤ 30 s).
    pub stream_recheck_secs: u64,
    /// How long a client may take to send the body of a request headgate reads itself (its forms, the
    /// back-channel logout): 408 and the connection closed after that.
    pub body_read_timeout_secs: u64,
    /// A separate listener for `/_headgate/metrics` (then not served on `listen`).
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct OnboardingConfig {
    pub self_link: SelfLink,
    /// Longest expiry (seconds) of a pre-auth key people create for themselves.
    pub own_key_max_expiry: u64,
}

/// `[policy]`: extra route rules (`[[policy.rule]]`, policy.md section 5).
#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    pub rules: Vec<crate::policy::Rule>,
}

/// What headgate tells the upstream about the person (`[headers]`).
#[derive(Debug, Clone)]
pub struct HeadersConfig {
    /// The `aud` of the signed assertion (S15). Unset: the upstream's origin (see
    /// [`crate::assertion::default_audience`]).
    pub audience: Option<String>,
    /// Seconds the signed assertion is valid (at most 300).
    pub assertion_lifetime: u64,
    /// The names (lower case) of the four renamable identity headers.
    pub user_header: String,
    pub email_header: String,
    pub name_header: String,
    pub picture_header: String,
    /// What `Remote-User` carries (S11: only an immutable identifier).
    pub user_claim: UserClaim,
}

/// `headers.user_claim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserClaim {
    /// The OIDC subject.
    Sub,
    /// `<subject>@<issuer>`: unique across identity providers.
    SubAtIss,
}

/// `[forward_auth]`: the verdict endpoints (`/_headgate/auth/…`, `spec/forward-auth.md`).
#[derive(Debug, Clone)]
pub struct ForwardAuthConfig {
    /// Hosts (`host[:port]`, lower case; no port = the base URL scheme's default) the verdicts protect besides
    /// `server.base_url`'s; a verdict for any other host is 403.
    pub hosts: Vec<String>,
    /// Peers whose verdict requests count (their `X-Original-*`/`X-Forwarded-*` describe the original request);
    /// any other peer gets 403. Default: loopback.
    pub trusted_proxies: Vec<Cidr>,
}

/// `[store]`: where users, sessions, links, keys and the audit log live.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// The embedded redb file `<server.data_path>/headgate.redb` (default; one headgate process).
    Redb,
    /// A PostgreSQL database shared by several replicas.
    Postgres(PostgresConfig),
}

/// `[store] backend = "postgres"`.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `store.url` (or `store.url_path`): a libpq-style URL or key=value string. Holds the password: never
    /// printed (see [`PostgresConfig::describe`]).
    pub url: Secret,
    /// Connections in the pool (`store.pool_size`), besides the one that listens for cache invalidations.
    pub pool_size: usize,
    /// Seconds to wait for a connection (`store.connect_timeout`).
    pub connect_timeout: u64,
    /// Extra CA certificates (PEM) trusted for TLS to PostgreSQL (`store.tls_ca_path`), besides the public roots.
    pub tls_ca_path: Option<PathBuf>,
}

/// S4: what a person's own pick of a Headscale user does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfLink {
    Approve,
    Allow,
    Off,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: Option<Url>,
    pub headplane_login: HeadplaneLogin,
    /// Upstream `Set-Cookie` names that may reach the browser (`_hp_auth` never).
    pub pass_cookies: Vec<String>,
    /// Allow `proxy_auth` header mode to a non-loopback upstream (S11).
    pub allow_remote_header_mode: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadplaneLogin {
    ApiKey,
    ProxyAuth,
    None,
}

#[derive(Debug, Clone)]
pub struct HeadscaleConfig {
    pub url: Url,
    pub public_url: Url,
    pub api_key: Secret,
    /// The issuer Headscale's own OIDC uses, when it differs from oidc.issuer (for subject linking, S3).
    pub oidc_issuer: Option<String>,
}

#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub use_pkce: bool,
    pub scope: String,
    pub extra_params: BTreeMap<String, String>,
    pub endpoints: ManualEndpoints,
    pub token_endpoint_auth_method: Option<TokenAuthMethod>,
    pub subject_claims: Vec<String>,
    pub disable_api_key_login: bool,
    pub use_end_session: bool,
    pub post_logout_redirect_uri: Option<Url>,
    pub callback_path: String,
    pub allowed_email_domains: Vec<String>,
    pub allowed_groups: Vec<String>,
    pub groups_claim: String,
    pub allowed_subjects: Vec<String>,
    pub trust_unverified_email: bool,
    /// The role of people who are not owner and get none from a claim (never owner).
    pub default_role: crate::store::Role,
    /// A claim that carries the role (S13); the IdP then owns roles.
    pub role_claim: Option<String>,
    pub role_map: BTreeMap<String, crate::store::Role>,
    /// Seconds after which a session is refreshed with its refresh token.
    pub refresh_interval: u64,
}

/// Endpoints set in the configuration; each one overrides discovery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManualEndpoints {
    pub authorization_endpoint: Option<Url>,
    pub token_endpoint: Option<Url>,
    pub userinfo_endpoint: Option<Url>,
    pub end_session_endpoint: Option<Url>,
    pub jwks_uri: Option<Url>,
}

impl ManualEndpoints {
    /// Enough to sign in without a discovery document.
    pub fn complete(&self) -> bool {
        self.authorization_endpoint.is_some()
            && self.token_endpoint.is_some()
            && self.jwks_uri.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
}

impl OidcConfig {
    /// `<issuer>/.well-known/openid-configuration`, the issuer's path kept and its trailing slash dropped.
    pub fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        )
    }
}

impl Config {
    /// Which file to read: `--config`, then `$HEADGATE_CONFIG`, then the default locations.
    pub fn locate(
        flag: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<PathBuf, ConfigErrors> {
        if let Some(p) = flag {
            return Ok(p.to_path_buf());
        }
        if let Some(p) = env.get("HEADGATE_CONFIG").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        for p in DEFAULT_LOCATIONS {
            if Path::new(p).is_file() {
                return Ok(PathBuf::from(p));
            }
        }
        Err(ConfigErrors {
            source_name: "configuration".into(),
            errors: vec![ConfigError::new(
                "--config",
                format!(
                    "no configuration file found: pass --config <file>, set HEADGATE_CONFIG, or create one of {} \
                     (config/headgate.example.toml documents every key)",
                    DEFAULT_LOCATIONS.join(", ")
                ),
            )],
        })
    }

    /// Read and validate a file, with environment overrides.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Config, ConfigErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source_name: name.clone(),
            errors: vec![ConfigError::new(
                name.clone(),
                format!("cannot read the configuration file: {e}"),
            )],
        })?;
        Self::parse(&name, &text, env)
    }

    /// Validate TOML text (`source_name` is used in messages).
    pub fn parse(
        source_name: &str,
        text: &str,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            source_name: source_name.to_string(),
            errors,
        };
        let mut root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let msg = e.message().to_string();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: ")
                })
                .unwrap_or_default();
            fail(vec![ConfigError::new(
                source_name,
                format!("{at}not valid TOML: {msg}"),
            )])
        })?;
        let mut errors = Vec::new();
        let env_keys = apply_env_overrides(&mut root, env, &mut errors);

        let take_section =
            |root: &mut toml::Table, name: &str, errors: &mut Vec<ConfigError>| match root
                .remove(name)
            {
                None => None,
                Some(toml::Value::Table(t)) => Some(t),
                Some(other) => {
                    errors.push(ConfigError::new(
                        name,
                        format!(
                            "expected a [{name}] table, found {}",
                            reader::describe(&other)
                        ),
                    ));
                    None
                }
            };
        let server_t = take_section(&mut root, "server", &mut errors);
        let upstream_t = take_section(&mut root, "upstream", &mut errors);
        let headscale_t = take_section(&mut root, "headscale", &mut errors);
        let oidc_t = take_section(&mut root, "oidc", &mut errors);
        let onboarding_t = take_section(&mut root, "onboarding", &mut errors);
        let policy_t = take_section(&mut root, "policy", &mut errors);
        let headers_t = take_section(&mut root, "headers", &mut errors);
        let forward_auth_t = take_section(&mut root, "forward_auth", &mut errors);
        let store_t = take_section(&mut root, "store", &mut errors);
        for key in root.keys() {
            let mut msg = "unknown section".to_string();
            if let Some(s) = nearest(key, SECTIONS) {
                msg.push_str(&format!(": did you mean [{s}]?"));
            }
            errors.push(ConfigError::new(key.clone(), msg));
        }
        let env_of = |s: &str| env_keys.get(s).cloned().unwrap_or_default();

        if server_t.is_none() {
            errors.push(ConfigError::new(
                "server",
                "missing: [server] needs at least base_url and cookie_secret",
            ));
        }
        let server = {
            let mut s = Section::new(
                "server",
                server_t.unwrap_or_default(),
                env_of("server"),
                &mut errors,
            );
            let r = read_server(&mut s, env);
            s.finish();
            r
        };
        let upstream = {
            let mut s = Section::new(
                "upstream",
                upstream_t.unwrap_or_default(),
                env_of("upstream"),
                &mut errors,
            );
            let r = read_upstream(&mut s);
            s.finish();
            r
        };
        let headscale = headscale_t.map(|t| {
            let mut s = Section::new("headscale", t, env_of("headscale"), &mut errors);
            let r = read_headscale(&mut s, env);
            s.finish();
            r
        });
        let oidc = oidc_t.map(|t| {
            let mut s = Section::new("oidc", t, env_of("oidc"), &mut errors);
            let r = read_oidc(&mut s, env);
            s.finish();
            r
        });

        let onboarding = {
            let mut s = Section::new(
                "onboarding",
                onboarding_t.unwrap_or_default(),
                env_of("onboarding"),
                &mut errors,
            );
            let r = read_onboarding(&mut s);
            s.finish();
            r
        };
        let policy = {
            let mut s = Section::new(
                "policy",
                policy_t.unwrap_or_default(),
                env_of("policy"),
                &mut errors,
            );
            let r = read_policy(&mut s, upstream.headplane_login);
            s.finish();
            r
        };
        let headers = {
            let mut s = Section::new(
                "headers",
                headers_t.unwrap_or_default(),
                env_of("headers"),
                &mut errors,
            );
            let r = read_headers(&mut s);
            s.finish();
            r
        };
        let forward_auth = {
            let mut s = Section::new(
                "forward_auth",
                forward_auth_t.unwrap_or_default(),
                env_of("forward_auth"),
                &mut errors,
            );
            let r = read_forward_auth(&mut s);
            s.finish();
            r
        };
        let store = {
            let mut s = Section::new(
                "store",
                store_t.unwrap_or_default(),
                env_of("store"),
                &mut errors,
            );
            let r = read_store(&mut s, env);
            s.finish();
            r
        };
        if !errors.is_empty() {
            return Err(fail(errors));
        }
        let server = server.expect("no errors means every required server key was read");
        let headscale = match headscale {
            Some(Some(h)) => Some(h),
            Some(None) => unreachable!("a section that failed to read has recorded an error"),
            None => None,
        };
        let oidc = match oidc {
            Some(Some(o)) => Some(o),
            Some(None) => unreachable!("a section that failed to read has recorded an error"),
            None => None,
        };
        let mut config = Config {
            server,
            upstream,
            headscale,
            oidc,
            onboarding,
            policy,
            headers,
            forward_auth,
            store: store.expect("no errors means the store section was read"),
            warnings: Vec::new(),
        };
        config.warnings = open_door_warnings(&config);
        Ok(config)
    }

    /// Every key headgate reads, as `section.key` (what `config/headgate.example.toml` must document).
    pub fn known_keys() -> Vec<String> {
        let env = HashMap::new();
        let mut errors = Vec::new();
        let mut keys = Vec::new();
        let mut collect = |name: &str, read: &dyn Fn(&mut Section<'_>)| {
            let mut s = Section::new(name, toml::Table::new(), HashSet::new(), &mut errors);
            read(&mut s);
            keys.extend(s.known_keys().into_iter().map(|k| format!("{name}.{k}")));
        };
        collect("server", &|s| {
            read_server(s, &env);
        });
        collect("upstream", &|s| {
            read_upstream(s);
        });
        collect("headscale", &|s| {
            read_headscale(s, &env);
        });
        collect("oidc", &|s| {
            read_oidc(s, &env);
        });
        collect("onboarding", &|s| {
            read_onboarding(s);
        });
        collect("policy", &|s| {
            read_policy(s, HeadplaneLogin::ApiKey);
        });
        collect("policy.rule", &|s| {
            read_rule(s, HeadplaneLogin::ApiKey);
        });
        collect("headers", &|s| {
            read_headers(s);
        });
        collect("forward_auth", &|s| {
            read_forward_auth(s);
        });
        collect("store", &|s| {
            read_store(s, &env);
        });
        keys.sort();
        keys.dedup();
        keys
    }

    /// The path of the embedded store.
    pub fn store_path(&self) -> PathBuf {
        self.server.data_path.join("headgate.redb")
    }
}

const SECTIONS: &[&str] = &[
    "server",
    "upstream",
    "headscale",
    "oidc",
    "onboarding",
    "policy",
    "headers",
    "forward_auth",
    "store",
];

/// Apply `HEADGATE_<SECTION>__<KEY>[__<SUBKEY>]` variables; returns, per section, the keys they set.
fn apply_env_overrides(
    root: &mut toml::Table,
    env: &HashMap<String, String>,
    errors: &mut Vec<ConfigError>,
) -> HashMap<String, HashSet<String>> {
    let mut set: HashMap<String, HashSet<String>> = HashMap::new();
    let mut vars: Vec<_> = env
        .iter()
        .filter(|(k, _)| k.starts_with("HEADGATE_") && k.contains("__"))
        .collect();
    vars.sort();
    for (var, value) in vars {
        let parts: Vec<String> = var["HEADGATE_".len()..]
            .split("__")
            .map(|p| p.to_ascii_lowercase())
            .collect();
        if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
            errors.push(ConfigError::new(
                var.clone(),
                "expected HEADGATE_<SECTION>__<KEY>",
            ));
            continue;
        }
        let section = &parts[0];
        if !SECTIONS.contains(&section.as_str()) {
            let mut msg = format!("[{section}] is not a configuration section");
            if let Some(s) = nearest(section, SECTIONS) {
                msg.push_str(&format!(
                    ": did you mean HEADGATE_{}__…?",
                    s.to_ascii_uppercase()
                ));
            }
            errors.push(ConfigError::new(var.clone(), msg));
            continue;
        }
        let entry = root
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        let Some(mut table) = entry.as_table_mut() else {
            continue;
        };
        for (i, part) in parts[1..].iter().enumerate() {
            if i == parts.len() - 2 {
                table.insert(part.clone(), toml::Value::String(value.clone()));
            } else {
                let next = table
                    .entry(part.clone())
                    .or_insert_with(|| toml::Value::Table(Default::default()));
                match next.as_table_mut() {
                    Some(t) => table = t,
                    None => break,
                }
            }
        }
        set.entry(section.clone())
            .or_default()
            .insert(parts[1].clone());
    }
    set
}

fn read_server(s: &mut Section<'_>, env: &HashMap<String, String>) -> Option<ServerConfig> {
    let listen = match s.string("listen") {
        None => Some(SocketAddr::from(([0, 0, 0, 0], 4180))),
        Some(v) => match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                s.error(
                    "listen",
                    format!(
                        "{v:?} is not an address:port (e.g. \"0.0.0.0:4180\" or \"[::]:4180\")"
                    ),
                );
                None
            }
        },
    };
    let base_url = match s.string("base_url") {
        None => {
            s.error(
                "base_url",
                "missing: set the public origin people use, e.g. \"https://headplane.example.com\"",
            );
            None
        }
        Some(v) => match parse_origin(&v) {
            Ok(u) => Some(u),
            Err(e) => {
                s.error("base_url", e);
                None
            }
        },
    };
    let secret_given = s.is_set("cookie_secret") || s.is_set("cookie_secret_path");
    let cookie_secret = s.secret("cookie_secret", "cookie_secret_path", env);
    let previous = s.secret("cookie_secret_previous", "cookie_secret_previous_path", env);
    let cookie_secure = s.bool("cookie_secure", true);
    let cookie_domain = s.non_empty_string("cookie_domain");
    let cookie_max_age = s.u64_in("cookie_max_age", 86400, 60, 400 * 86400);
    let data_path = PathBuf::from(
        s.non_empty_string("data_path")
            .unwrap_or_else(|| "/var/lib/headgate".into()),
    );
    let cert = s.non_empty_string("tls_cert_path");
    let key = s.non_empty_string("tls_key_path");
    let tls = match (cert, key) {
        (Some(c), Some(k)) => Some(TlsFiles {
            cert_path: c.into(),
            key_path: k.into(),
        }),
        (None, None) => None,
        (Some(_), None) => {
            s.error(
                "tls_key_path",
                "missing: server.tls_cert_path is set, so the private key is needed too",
            );
            None
        }
        (None, Some(_)) => {
            s.error(
                "tls_cert_path",
                "missing: server.tls_key_path is set, so the certificate is needed too",
            );
            None
        }
    };
    let log_format = match s.string("log_format").as_deref() {
        None | Some("human") => LogFormat::Human,
        Some("json") => LogFormat::Json,
        Some(other) => {
            s.error(
                "log_format",
                format!("{other:?} is not a log format: use \"human\" or \"json\""),
            );
            LogFormat::Human
        }
    };
    let log_level = s.string("log_level").unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        s.error(
            "log_level",
            format!("{log_level:?} is not a level or filter (use error, warn, info, debug, trace)"),
        );
    }
    let shutdown_timeout = s.u64_in("shutdown_timeout", 30, 0, 3600);
    let allowed_redirect_domains = s
        .string_list("allowed_redirect_domains")
        .unwrap_or_default();
    for (i, d) in allowed_redirect_domains.iter().enumerate() {
        let bare = d.strip_prefix('.').unwrap_or(d);
        if bare.is_empty()
            || bare.contains(['/', ':', '@', ' ', '*'])
            || bare != bare.to_ascii_lowercase()
        {
            s.error(
                &format!("allowed_redirect_domains[{i}]"),
                format!("{d:?} is not a lower-case host name (\".example.com\" also allows its subdomains)"),
            );
        }
    }
    let mut api_key_login_cidrs = Vec::new();
    for (i, c) in s
        .string_list("api_key_login_cidrs")
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match c.parse::<Cidr>() {
            Ok(c) => api_key_login_cidrs.push(c),
            Err(e) => s.error(&format!("api_key_login_cidrs[{i}]"), e),
        }
    }
    let initial_owner = s.non_empty_string("initial_owner");
    let allowed_hosts: Vec<String> = s.string_list("allowed_hosts").unwrap_or_default();
    for (i, h) in allowed_hosts.iter().enumerate() {
        if crate::policy::parse_host_port(h).is_err() || *h != h.to_ascii_lowercase() {
            s.error(
                &format!("allowed_hosts[{i}]"),
                format!("{h:?} is not a lower-case host[:port] (e.g. \"headplane.internal:4180\")"),
            );
        }
    }
    let mut trusted_proxies = Vec::new();
    for (i, c) in s
        .string_list("trusted_proxies")
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match c.parse::<Cidr>() {
            Ok(c) => trusted_proxies.push(c),
            Err(e) => s.error(&format!("trusted_proxies[{i}]"), e),
        }
    }
    let api_key_recheck_interval = s.u64_in("api_key_recheck_interval", 300, 1, 300);
    let stream_recheck_secs = s.u64_in("stream_recheck_secs", 15, 1, 30);
    let body_read_timeout_secs = s.u64_in("body_read_timeout_secs", 10, 1, 300);
    let metrics_listen = s
        .string("metrics_listen")
        .and_then(|v| match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                s.error(
                    "metrics_listen",
                    format!("{v:?} is not an address:port (e.g. \"127.0.0.1:9180\")"),
                );
                None
            }
        });

    if let Some(secret) = &cookie_secret {
        if secret.len() < 32 {
            s.error(
                "cookie_secret",
                format!(
                    "is {} bytes; it must be at least 32 (generate one with `openssl rand -base64 48`)",
                    secret.len()
                ),
            );
        }
    } else if !secret_given {
        s.error(
            "cookie_secret",
            "missing: set server.cookie_secret or server.cookie_secret_path (at least 32 bytes)",
        );
    }
    if let Some(p) = &previous
        && p.len() < 32
    {
        s.error(
            "cookie_secret_previous",
            "must be at least 32 bytes, like server.cookie_secret",
        );
    }
    Some(ServerConfig {
        listen: listen?,
        base_url: base_url?,
        cookie_secret: cookie_secret?,
        cookie_secret_previous: previous,
        cookie_secure,
        cookie_domain,
        cookie_max_age,
        data_path,
        tls,
        log_format,
        log_level,
        shutdown_timeout,
        allowed_redirect_domains,
        api_key_login_cidrs,
        initial_owner,
        allowed_hosts,
        trusted_proxies,
        api_key_recheck_interval,
        stream_recheck_secs,
        body_read_timeout_secs,
        metrics_listen,
    })
}

fn read_upstream(s: &mut Section<'_>) -> UpstreamConfig {
    let url = s.string("url").and_then(|v| match Url::parse(&v) {
        Ok(u) if u.scheme() == "http" && u.host().is_some() => Some(u),
        Ok(u) if u.scheme() == "unix" => match check_unix_url(&u) {
            Ok(()) => Some(u),
            Err(m) => {
                s.error("url", format!("{v:?}: {m}"));
                None
            }
        },
        Ok(_) => {
            s.error(
                "url",
                format!("{v:?} must be http://host:port or unix:/absolute/path.sock"),
            );
            None
        }
        Err(e) => {
            s.error("url", format!("{v:?} is not a URL ({e})"));
            None
        }
    });
    let headplane_login = match s.string("headplane_login").as_deref() {
        None | Some("api_key") => HeadplaneLogin::ApiKey,
        Some("proxy_auth") => HeadplaneLogin::ProxyAuth,
        Some("none") => HeadplaneLogin::None,
        Some(other) => {
            s.error(
                "headplane_login",
                format!("{other:?} is not one of \"api_key\", \"proxy_auth\", \"none\""),
            );
            HeadplaneLogin::ApiKey
        }
    };
    let allow_remote_header_mode = s.bool("allow_remote_header_mode", false);
    // S11: Headplane trusts Remote-User from its peer, so in header mode that peer must be headgate on the
    // same host (loopback), unless the operator says the network path is private.
    if headplane_login == HeadplaneLogin::ProxyAuth
        && !allow_remote_header_mode
        && let Some(u) = &url
    {
        let loopback = match u.host() {
            // A unix socket is local by construction (S11).
            _ if u.scheme() == "unix" => true,
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        if !loopback {
            s.error(
                "url",
                "with headplane_login = \"proxy_auth\" Headplane trusts identity headers from its peer: run it on \
                 loopback next to headgate (e.g. http://127.0.0.1:3000), or set upstream.allow_remote_header_mode = \
                 true if only headgate can reach it",
            );
        }
    }
    UpstreamConfig {
        url,
        headplane_login,
        allow_remote_header_mode,
        pass_cookies: {
            let list = s
                .string_list("pass_cookies")
                .unwrap_or_else(|| vec!["color_scheme".to_string()]);
            if list.iter().any(|c| c == "_hp_auth") {
                s.error(
                    "pass_cookies",
                    "_hp_auth never reaches the browser: remove it",
                );
            }
            list
        },
    }
}

fn read_onboarding(s: &mut Section<'_>) -> OnboardingConfig {
    let self_link = match s.string("self_link").as_deref() {
        None | Some("approve") => SelfLink::Approve,
        Some("allow") => SelfLink::Allow,
        Some("off") => SelfLink::Off,
        Some(other) => {
            s.error(
                "self_link",
                format!("{other:?} is not one of \"approve\", \"allow\", \"off\""),
            );
            SelfLink::Approve
        }
    };
    let own_key_max_expiry = s.u64_in("own_key_max_expiry", 86400, 300, 7 * 86400);
    OnboardingConfig {
        self_link,
        own_key_max_expiry,
    }
}

fn read_policy(s: &mut Section<'_>, login: HeadplaneLogin) -> PolicyConfig {
    let read = s.table_array("rule", |r| read_rule(r, login));
    let built: Vec<(usize, crate::policy::Rule)> = read
        .into_iter()
        .filter_map(|(i, r)| r.map(|r| (i, r)))
        .collect();
    let rules: Vec<crate::policy::Rule> = built.iter().map(|(_, r)| r.clone()).collect();
    for (first, dup) in crate::policy::duplicate_rules(&rules) {
        let (i, j) = (built[first].0, built[dup].0);
        let key = match rules[dup].path {
            crate::policy::PathMatch::Exact(_) => "path",
            crate::policy::PathMatch::Prefix(_) => "path_prefix",
        };
        s.error(
            &format!("rule[{j}].{key}"),
            format!(
                "{:?} is already covered by policy.rule[{i}]: merge the two rules",
                rules[dup].path.as_str()
            ),
        );
    }
    PolicyConfig { rules }
}

/// One `[[policy.rule]]` (its section is named `policy.rule[<i>]`).
fn read_rule(s: &mut Section<'_>, login: HeadplaneLogin) -> Option<crate::policy::Rule> {
    let public_set = s.is_set("public");
    let spec = crate::policy::RuleSpec {
        path: s.non_empty_string("path"),
        path_prefix: s.non_empty_string("path_prefix"),
        methods: s.string_list("methods"),
        capabilities: s.string_list("capabilities"),
        public: {
            let p = s.bool("public", false);
            public_set.then_some(p)
        },
        websocket: s.bool("websocket", false),
    };
    match crate::policy::Rule::build(&spec, login.into()) {
        Ok(r) => Some(r),
        Err(errors) => {
            for (key, msg) in errors {
                s.error(&key, msg);
            }
            None
        }
    }
}

fn read_headers(s: &mut Section<'_>) -> HeadersConfig {
    let audience = s.non_empty_string("audience");
    let assertion_lifetime = s.u64_in(
        "assertion_lifetime",
        60,
        10,
        crate::assertion::MAX_LIFETIME as u64,
    );
    let mut names: Vec<(&'static str, String)> = Vec::new();
    for (key, default) in [
        ("user_header", "remote-user"),
        ("email_header", "remote-email"),
        ("name_header", "remote-name"),
        ("picture_header", "remote-picture"),
    ] {
        let name = match s.non_empty_string(key) {
            None => default.to_string(),
            Some(v) => match identity_header_name(&v) {
                Ok(n) => n,
                Err(e) => {
                    s.error(key, e);
                    default.to_string()
                }
            },
        };
        let folded = name.replace('_', "-");
        if let Some((other, _)) = names.iter().find(|(_, n)| n.replace('_', "-") == folded) {
            s.error(
                key,
                format!(
                    "{name:?} is already the name of headers.{other}: give each header its own name"
                ),
            );
        }
        names.push((key, name));
    }
    let user_claim = match s.string("user_claim").as_deref() {
        None | Some("sub") => UserClaim::Sub,
        Some("sub@iss") => UserClaim::SubAtIss,
        Some(other) => {
            s.error(
                "user_claim",
                format!(
                    "{other:?} is not \"sub\" or \"sub@iss\": the user header must carry an identifier the identity \
                     provider never gives to someone else (an email address or a username can change hands)"
                ),
            );
            UserClaim::Sub
        }
    };
    let mut names = names.into_iter().map(|(_, n)| n);
    HeadersConfig {
        audience,
        assertion_lifetime,
        user_header: names.next().unwrap_or_default(),
        email_header: names.next().unwrap_or_default(),
        name_header: names.next().unwrap_or_default(),
        picture_header: names.next().unwrap_or_default(),
        user_claim,
    }
}

/// A renamed identity header: a valid field name (RFC 9110 token), lower-cased, that is not one headgate or
/// HTTP already gives a meaning.
fn identity_header_name(v: &str) -> Result<String, String> {
    let name = v.trim().to_ascii_lowercase();
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!(
            "{v:?} is not a valid header name (letters, digits and -)"
        ));
    }
    let folded = name.replace('_', "-");
    if folded.starts_with("x-headgate-") {
        return Err(format!(
            "{v:?}: names starting with X-Headgate- are headgate's own"
        ));
    }
    const TAKEN: &[&str] = &[
        "host",
        "cookie",
        "authorization",
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
        "proxy-authorization",
        "origin",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "accept",
    ];
    if TAKEN.contains(&folded.as_str()) {
        return Err(format!(
            "{v:?} is a standard HTTP header: pick another name"
        ));
    }
    Ok(name)
}

fn read_forward_auth(s: &mut Section<'_>) -> ForwardAuthConfig {
    let hosts: Vec<String> = s.string_list("hosts").unwrap_or_default();
    for (i, h) in hosts.iter().enumerate() {
        if crate::policy::parse_host_port(h).is_err() || *h != h.to_ascii_lowercase() {
            s.error(
                &format!("hosts[{i}]"),
                format!("{h:?} is not a lower-case host[:port] (e.g. \"app.example.com\")"),
            );
        }
    }
    let trusted_proxies = match s.string_list("trusted_proxies") {
        None => vec![
            "127.0.0.0/8".parse().expect("a valid network"),
            "::1/128".parse().expect("a valid network"),
        ],
        Some(list) => {
            let mut out = Vec::new();
            for (i, raw) in list.iter().enumerate() {
                match raw.parse::<Cidr>() {
                    Ok(c) if c.is_everyone() => s.error(
                        &format!("trusted_proxies[{i}]"),
                        format!(
                            "{raw:?}: anyone could then describe the request headgate decides on; list your front \
                             proxies' addresses"
                        ),
                    ),
                    Ok(c) => out.push(c),
                    Err(e) => s.error(&format!("trusted_proxies[{i}]"), e),
                }
            }
            out
        }
    };
    ForwardAuthConfig {
        hosts,
        trusted_proxies,
    }
}

fn read_store(s: &mut Section<'_>, env: &HashMap<String, String>) -> Option<StoreConfig> {
    let backend = s.string("backend");
    let url_given = s.is_set("url") || s.is_set("url_path");
    let url_key = if s.is_set("url") { "url" } else { "url_path" };
    let url = s.secret("url", "url_path", env);
    let pool_size = s.u64_in("pool_size", 8, 1, 100) as usize;
    let connect_timeout = s.u64_in("connect_timeout", 5, 1, 120);
    let tls_ca_path = s.non_empty_string("tls_ca_path").map(PathBuf::from);
    match backend.as_deref() {
        None | Some("redb") => {
            if url_given {
                s.error(
                    url_key,
                    "is set, but store.backend is \"redb\": set store.backend = \"postgres\" to use PostgreSQL, or \
                     remove it",
                );
                return None;
            }
            Some(StoreConfig::Redb)
        }
        Some("postgres") => {
            if !url_given {
                s.error(
                    "url",
                    "missing: store.backend = \"postgres\" needs store.url (or store.url_path), e.g. \
                     \"postgresql://headgate@db.example.com/headgate\"",
                );
                return None;
            }
            let url = url?;
            if let Err(e) = crate::store::check_postgres_url(url.expose()) {
                s.error(url_key, e);
                return None;
            }
            if let Some(p) = &tls_ca_path
                && let Err(e) = crate::store::load_ca_file(p)
            {
                s.error("tls_ca_path", e);
                return None;
            }
            Some(StoreConfig::Postgres(PostgresConfig {
                url,
                pool_size,
                connect_timeout,
                tls_ca_path,
            }))
        }
        Some(other) => {
            let mut msg = format!("{other:?} is not a store backend: use \"redb\" or \"postgres\"");
            if let Some(n) = nearest(other, &["redb", "postgres"]) {
                msg.push_str(&format!(" (did you mean {n:?}?)"));
            }
            s.error("backend", msg);
            None
        }
    }
}

fn read_headscale(s: &mut Section<'_>, env: &HashMap<String, String>) -> Option<HeadscaleConfig> {
    let url = match s.string("url") {
        None => {
            s.error(
                "url",
                "missing: where headgate reaches Headscale's API, e.g. \"http://headscale:8080\"",
            );
            None
        }
        Some(v) => http_url(s, "url", &v),
    };
    let public_url = s
        .string("public_url")
        .and_then(|v| http_url(s, "public_url", &v));
    let key_given = s.is_set("api_key") || s.is_set("api_key_path");
    let api_key = s.secret("api_key", "api_key_path", env);
    if api_key.is_none() && !key_given {
        s.error(
            "api_key",
            "missing: create one with `headscale apikeys create --expiration 90d`",
        );
    }
    let oidc_issuer = s.non_empty_string("oidc_issuer");
    let url = url?;
    Some(HeadscaleConfig {
        public_url: public_url.unwrap_or_else(|| url.clone()),
        url,
        api_key: api_key?,
        oidc_issuer,
    })
}

fn read_oidc(s: &mut Section<'_>, env: &HashMap<String, String>) -> Option<OidcConfig> {
    let issuer = match s.string("issuer") {
        None => {
            s.error(
                "issuer",
                "missing: the IdP's issuer URL, e.g. \"https://idp.example.com/realms/main\"",
            );
            None
        }
        Some(v) => match Url::parse(&v) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(v),
            _ => {
                s.error("issuer", format!("{v:?} is not a URL (expected https://…)"));
                None
            }
        },
    };
    let client_id_given = s.is_set("client_id");
    let client_id = s.non_empty_string("client_id");
    if client_id.is_none() && !client_id_given {
        s.error(
            "client_id",
            "missing: the client id registered for headgate at the IdP",
        );
    }
    let secret_given = s.is_set("client_secret") || s.is_set("client_secret_path");
    let client_secret = s.secret("client_secret", "client_secret_path", env);
    let use_pkce = s.bool("use_pkce", false);
    if client_secret.is_none() && !secret_given && !use_pkce {
        s.error(
            "client_secret",
            "missing: set oidc.client_secret or oidc.client_secret_path (or oidc.use_pkce = true for a public client)",
        );
    }
    let scope = s
        .string("scope")
        .unwrap_or_else(|| "openid email profile".into());
    if !scope.split_whitespace().any(|x| x == "openid") {
        s.error("scope", format!("{scope:?} must include \"openid\""));
    }
    let extra_params = s.string_map("extra_params");
    let endpoint =
        |s: &mut Section<'_>, key: &'static str| s.string(key).and_then(|v| http_url(s, key, &v));
    let endpoints = ManualEndpoints {
        authorization_endpoint: endpoint(s, "authorization_endpoint"),
        token_endpoint: endpoint(s, "token_endpoint"),
        userinfo_endpoint: endpoint(s, "userinfo_endpoint"),
        end_session_endpoint: endpoint(s, "end_session_endpoint"),
        jwks_uri: endpoint(s, "jwks_uri"),
    };
    let token_endpoint_auth_method = match s.string("token_endpoint_auth_method").as_deref() {
        None => None,
        Some("client_secret_basic") => Some(TokenAuthMethod::ClientSecretBasic),
        Some("client_secret_post") => Some(TokenAuthMethod::ClientSecretPost),
        Some(other) => {
            s.error(
                "token_endpoint_auth_method",
                format!("{other:?} is not supported: use \"client_secret_basic\" or \"client_secret_post\", or leave it unset"),
            );
            None
        }
    };
    let subject_claims = s.string_list("subject_claims").unwrap_or_default();
    let disable_api_key_login = s.bool("disable_api_key_login", false);
    let use_end_session = s.bool("use_end_session", false);
    let post_logout_redirect_uri = s
        .string("post_logout_redirect_uri")
        .and_then(|v| http_url(s, "post_logout_redirect_uri", &v));
    let callback_path = s
        .string("callback_path")
        .unwrap_or_else(|| "/admin/oidc/callback".into());
    if !callback_path.starts_with('/')
        || callback_path.starts_with("//")
        || callback_path.contains(['?', '#', ' '])
    {
        s.error(
            "callback_path",
            format!("{callback_path:?} must be a path starting with one /"),
        );
    }
    let allowed_email_domains: Vec<String> = s
        .string_list("allowed_email_domains")
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
        .collect();
    let allowed_groups = s.string_list("allowed_groups").unwrap_or_default();
    let groups_claim = s.string("groups_claim").unwrap_or_else(|| "groups".into());
    let allowed_subjects = s.string_list("allowed_subjects").unwrap_or_default();
    let trust_unverified_email = s.bool("trust_unverified_email", false);
    let default_role = match s.string("default_role") {
        None => crate::store::Role::Member,
        Some(r) => match crate::store::Role::from_name(&r) {
            Some(crate::store::Role::Owner) => {
                s.error("default_role", "cannot be \"owner\": the owner is bootstrapped (server.initial_owner) or transferred");
                crate::store::Role::Member
            }
            Some(role) => role,
            None => {
                s.error("default_role", format!("{r:?} is not a role (admin, network_admin, it_admin, auditor, viewer, member)"));
                crate::store::Role::Member
            }
        },
    };
    let role_claim = s.non_empty_string("role_claim");
    let mut role_map = BTreeMap::new();
    for (k, v) in s.string_map("role_map") {
        match crate::store::Role::from_name(&v) {
            Some(crate::store::Role::Owner) => s.error(
                &format!("role_map.{k}"),
                "cannot map to \"owner\": owner never comes from the IdP",
            ),
            Some(r) => {
                role_map.insert(k, r);
            }
            None => s.error(
                &format!("role_map.{k}"),
                format!(
                    "{v:?} is not a role (admin, network_admin, it_admin, auditor, viewer, member)"
                ),
            ),
        }
    }
    let refresh_interval = s.u64_in("refresh_interval", 3600, 60, 30 * 86400);
    Some(OidcConfig {
        issuer: issuer?,
        client_id: client_id?,
        client_secret,
        use_pkce,
        scope,
        extra_params,
        endpoints,
        token_endpoint_auth_method,
        subject_claims,
        disable_api_key_login,
        use_end_session,
        post_logout_redirect_uri,
        callback_path,
        allowed_email_domains,
        allowed_groups,
        groups_claim,
        allowed_subjects,
        trust_unverified_email,
        default_role,
        role_claim,
        role_map,
        refresh_interval,
    })
}

/// The socket path of a `unix:` upstream URL (`unix:/abs/path.sock` or `unix:///abs/path.sock`),
/// percent-decoded; `None` for any other URL.
pub fn unix_socket_path(u: &Url) -> Option<PathBuf> {
    if u.scheme() != "unix" || u.cannot_be_a_base() {
        return None;
    }
    let p = percent_encoding::percent_decode_str(u.path())
        .decode_utf8()
        .ok()?;
    Some(PathBuf::from(p.into_owned()))
}

/// `upstream.url = "unix:…"`: an absolute socket path whose directory exists, nothing else in the URL.
fn check_unix_url(u: &Url) -> Result<(), String> {
    const FORM: &str = "write unix:/absolute/path.sock or unix:///absolute/path.sock";
    if u.cannot_be_a_base() {
        return Err(format!("the socket path must be absolute: {FORM}"));
    }
    if u.host_str().is_some_and(|h| !h.is_empty()) || u.port().is_some() {
        return Err(format!("a unix-socket URL names no host: {FORM}"));
    }
    if !u.username().is_empty()
        || u.password().is_some()
        || u.query().is_some()
        || u.fragment().is_some()
    {
        return Err(format!(
            "a unix-socket URL is only a path (no credentials, query or fragment): {FORM}"
        ));
    }
    let path =
        unix_socket_path(u).ok_or_else(|| format!("the socket path is not UTF-8: {FORM}"))?;
    if !path.is_absolute() || path.file_name().is_none() {
        return Err(format!("the socket path must be absolute: {FORM}"));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(format!(
            "the socket's directory {} does not exist (start the upstream first, or fix the path)",
            dir.display()
        ));
    }
    if let Ok(m) = std::fs::metadata(&path) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_socket() {
            return Err(format!(
                "{} exists but is not a unix socket",
                path.display()
            ));
        }
    }
    Ok(())
}

fn http_url(s: &mut Section<'_>, key: &'static str, v: &str) -> Option<Url> {
    match Url::parse(v) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
        Ok(_) => {
            s.error(key, format!("{v:?} is not an http(s) URL"));
            None
        }
        Err(e) => {
            s.error(key, format!("{v:?} is not a URL ({e})"));
            None
        }
    }
}

/// An absolute http(s) origin: scheme, host and optional port; no path, query, fragment or credentials.
fn parse_origin(v: &str) -> Result<Url, String> {
    let u = Url::parse(v).map_err(|e| {
        format!("{v:?} is not a URL ({e}): use e.g. \"https://headplane.example.com\"")
    })?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(format!(
            "{v:?} is not an absolute http(s) origin: use e.g. \"https://headplane.example.com\""
        ));
    }
    if u.path() != "/"
        || u.query().is_some()
        || u.fragment().is_some()
        || !u.username().is_empty()
        || u.password().is_some()
    {
        return Err(format!(
            "{v:?} must be an origin only (scheme://host[:port]); headgate serves Headplane's /admin paths itself"
        ));
    }
    Ok(u)
}

/// The open-door defaults of S1 (anyone the IdP accepts) and S2 (first sign-in becomes owner), and the
/// cookie_secure-over-plain-HTTP trap.
fn open_door_warnings(c: &Config) -> Vec<String> {
    let mut w = Vec::new();
    if c.upstream.url.is_some()
        && c.upstream.headplane_login == HeadplaneLogin::ApiKey
        && c.headscale.is_none()
    {
        w.push(
            "upstream.headplane_login = \"api_key\" (the default) signs in to Headplane with headscale.api_key, but \
             there is no [headscale] section: Headplane will see no session; add [headscale] or choose another mode"
                .into(),
        );
    }
    if let Some(o) = &c.oidc {
        if o.allowed_email_domains.is_empty()
            && o.allowed_groups.is_empty()
            && o.allowed_subjects.is_empty()
        {
            w.push(
                "anyone the IdP accepts can sign in: set oidc.allowed_email_domains, oidc.allowed_groups or \
                 oidc.allowed_subjects to restrict who gets in"
                    .into(),
            );
        }
        if c.server.initial_owner.is_none() {
            w.push(
                "the first person to sign in with SSO becomes owner: set server.initial_owner to the owner's email or \
                 subject"
                    .into(),
            );
        }
    }
    if c.server.cookie_secure && c.server.base_url.scheme() == "http" {
        w.push(format!(
            "server.base_url {} is plain http but server.cookie_secure is true: browsers will not send the session \
             cookie (login loops, \"Session cookie is empty\"); serve over https or set server.cookie_secure = false \
             for local testing",
            c.server.base_url.as_str().trim_end_matches('/')
        ));
    }
    if c.server.cookie_domain.is_some() {
        w.push("server.cookie_domain is set, so cookies use the weaker __Secure- prefix instead of __Host-".into());
    }
    w
}
