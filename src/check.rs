//! `headgate check-config`: validate, then probe every dependency and print one line per check with a fix.

use std::fmt;
use std::path::Path;

use crate::config::Config;
use crate::headscale::{Headscale, HeadscaleError};
use crate::http_client::HttpClient;
use crate::oidc::discovery;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    Warn,
}

#[derive(Debug, Clone)]
pub struct CheckLine {
    pub status: Status,
    pub name: &'static str,
    pub detail: String,
    /// What to change when the check fails.
    pub fix: Option<String>,
}

impl CheckLine {
    fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        CheckLine {
            status: Status::Pass,
            name,
            detail: detail.into(),
            fix: None,
        }
    }
    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        CheckLine {
            status: Status::Fail,
            name,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn warn(name: &'static str, detail: impl Into<String>) -> Self {
        CheckLine {
            status: Status::Warn,
            name,
            detail: detail.into(),
            fix: None,
        }
    }
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.status {
            Status::Pass => "✓",
            Status::Fail => "✗",
            Status::Warn => "!",
        };
        write!(f, "{mark} {}: {}", self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n    fix: {fix}")?;
        }
        Ok(())
    }
}

/// Every probe, in a fixed order. The configuration itself has already been validated.
pub async fn run(config: &Config, http: &HttpClient) -> Vec<CheckLine> {
    let mut out = Vec::new();
    for w in &config.warnings {
        out.push(CheckLine::warn("warning", w.clone()));
    }
    out.push(match &config.oidc {
        None => CheckLine::warn(
            "identity provider",
            "no [oidc] section: only API-key sign-in is available",
        ),
        Some(oidc) => match discovery::discover(http, oidc).await {
            Ok((e, meta)) => {
                let source = if meta.is_some() {
                    "discovery document"
                } else {
                    "configured endpoints"
                };
                CheckLine::pass(
                    "identity provider",
                    format!(
                        "{} ({source}: authorization, token, jwks{}{})",
                        oidc.issuer,
                        if e.userinfo.is_some() {
                            ", userinfo"
                        } else {
                            ""
                        },
                        if e.end_session.is_some() {
                            ", end_session"
                        } else {
                            ""
                        },
                    ),
                )
            }
            Err(err) => CheckLine::fail("identity provider", err.to_string(), discovery_fix(&err)),
        },
    });
    out.push(match &config.headscale {
        None => CheckLine::warn("headscale", "no [headscale] section: API-key sign-in and linking are off"),
        Some(h) => {
            let client = Headscale::new(http.clone(), h.url.clone(), h.api_key.clone());
            match client.check_key().await {
                Ok(()) => CheckLine::pass("headscale", format!("{} reachable, API key accepted", trim(&h.url))),
                Err(e @ HeadscaleError::InvalidKey) => CheckLine::fail(
                    "headscale",
                    "headscale.api_key is invalid or expired",
                    format!("create one with `headscale apikeys create --expiration 90d` and set headscale.api_key ({e})"),
                ),
                Err(e @ HeadscaleError::Unreachable(..)) => CheckLine::fail(
                    "headscale",
                    e.to_string(),
                    "check headscale.url and that Headscale is running and reachable from here",
                ),
                Err(e) => CheckLine::fail("headscale", e.to_string(), "check headscale.url points at Headscale's API"),
            }
        }
    });
    out.push(check_data_dir(&config.server.data_path));
    out.push(match &config.store {
        crate::config::StoreConfig::Redb => check_store(&config.store_path()).await,
        crate::config::StoreConfig::Postgres(pg) => check_postgres(pg).await,
    });
    if let Some(tls) = &config.server.tls {
        out.push(match crate::server::tls::load(tls) {
            Ok(_) => CheckLine::pass(
                "tls",
                format!("certificate {} and key load", tls.cert_path.display()),
            ),
            Err(e) => CheckLine::fail(
                "tls",
                e.to_string(),
                "check server.tls_cert_path and server.tls_key_path",
            ),
        });
    }
    out
}

fn trim(u: &url::Url) -> &str {
    u.as_str().trim_end_matches('/')
}

fn discovery_fix(e: &discovery::DiscoveryError) -> String {
    use discovery::DiscoveryError as D;
    match e {
        D::Fetch { .. } | D::Status { .. } | D::Json { .. } | D::Cached(_) => {
            "check oidc.issuer and that the IdP is reachable from here, or configure oidc.authorization_endpoint, \
             oidc.token_endpoint and oidc.jwks_uri"
                .into()
        }
        D::IssuerMismatch { found, .. } => format!("set oidc.issuer = {found:?}"),
        D::Missing { field, .. } => format!("set oidc.{field}"),
        D::BadUrl { field, .. } => format!("set oidc.{field} to the right URL"),
    }
}

/// S17: the data directory must be a directory (or creatable) and not group- or world-accessible.
pub fn check_data_dir(path: &Path) -> CheckLine {
    use std::os::unix::fs::PermissionsExt;
    const NAME: &str = "data directory";
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => CheckLine::fail(
            NAME,
            format!("{} is not a directory", path.display()),
            "set server.data_path to a directory headgate owns",
        ),
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                CheckLine::fail(
                    NAME,
                    format!(
                        "{} is accessible by group or others (mode {mode:o})",
                        path.display()
                    ),
                    format!("chmod 700 {}", path.display()),
                )
            } else {
                CheckLine::pass(NAME, format!("{} (mode {mode:o})", path.display()))
            }
        }
        Err(_) => {
            // Prove it can be created (as `serve` will), then leave no trace.
            let mut first_missing = path.to_path_buf();
            while let Some(parent) = first_missing.parent() {
                if parent.as_os_str().is_empty() || parent.exists() {
                    break;
                }
                first_missing = parent.to_path_buf();
            }
            match std::fs::create_dir_all(path) {
                Ok(()) => {
                    let _ = std::fs::remove_dir_all(&first_missing);
                    CheckLine::pass(
                        NAME,
                        format!(
                            "{} does not exist yet; serve will create it (mode 700)",
                            path.display()
                        ),
                    )
                }
                Err(e) => CheckLine::fail(
                    NAME,
                    format!("{} cannot be created: {e}", path.display()),
                    "set server.data_path to a directory headgate can create, or create it (mode 700)",
                ),
            }
        }
    }
}

/// Connect to PostgreSQL and read the schema version, changing nothing (`serve` migrates).
async fn check_postgres(pg: &crate::config::PostgresConfig) -> CheckLine {
    const NAME: &str = "store";
    match crate::store::probe_postgres(pg).await {
        Ok((location, 0)) => CheckLine::pass(
            NAME,
            format!("{location} is reachable; headgate creates its tables at first start"),
        ),
        Ok((location, v)) if v > crate::store::SCHEMA_VERSION => CheckLine::fail(
            NAME,
            format!(
                "{location} was set up by a newer headgate (schema {v}, this binary understands {})",
                crate::store::SCHEMA_VERSION
            ),
            "upgrade headgate",
        ),
        Ok((location, v)) => CheckLine::pass(NAME, format!("{location} is reachable (schema {v})")),
        Err(e) => CheckLine::fail(
            NAME,
            e.to_string(),
            "check store.url (host, port, database, user, password) and that PostgreSQL accepts connections from here",
        ),
    }
}

async fn check_store(path: &Path) -> CheckLine {
    const NAME: &str = "store";
    if !path.exists() {
        return CheckLine::pass(
            NAME,
            format!("{} will be created at first start", path.display()),
        );
    }
    let p = path.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || Store::open_redb(&p, 16 * 1024 * 1024)).await;
    let Ok(opened) = opened else {
        return CheckLine::fail(NAME, "opening the store panicked", "report this as a bug");
    };
    match opened {
        Ok(store) => {
            drop(store);
            CheckLine::pass(NAME, format!("{} opens", path.display()))
        }
        Err(StoreError::Locked { .. }) => CheckLine::pass(
            NAME,
            format!("{} is in use by a running headgate (fine)", path.display()),
        ),
        Err(e) => CheckLine::fail(
            NAME,
            e.to_string(),
            "restore the store from a backup, or move it away to start empty",
        ),
    }
}
