//! SIGHUP: re-read the configuration (secret files included) and the TLS certificate, and swap them in
//! without a restart. Sessions survive: the store is the same, and a new `cookie_secret` keeps old cookies
//! valid while the old secret is `cookie_secret_previous` (S6). A configuration with errors is refused as a
//! whole and the running one keeps serving.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use super::live::Live;
use crate::config::{Config, ConfigErrors};

/// Why a reload was refused (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the new configuration has errors; the running one stays:\n{0}")]
    Config(ConfigErrors),
    #[error("the new TLS certificate cannot be used; the running configuration stays: {0}")]
    Tls(#[from] super::tls::TlsError),
}

/// Keys a running server cannot change (they need a restart); named in a warning when they differ.
fn restart_only(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.server.listen != new.server.listen {
        keys.push("server.listen");
    }
    if old.server.data_path != new.server.data_path {
        keys.push("server.data_path");
    }
    if old.server.metrics_listen != new.server.metrics_listen {
        keys.push("server.metrics_listen");
    }
    if old.server.tls.is_some() != new.server.tls.is_some() {
        keys.push("server.tls (turning TLS on or off)");
    }
    keys
}

/// Load the configuration again with `load` and make it current.
pub fn reload(
    live: &Live,
    load: impl FnOnce() -> Result<Config, ConfigErrors>,
) -> Result<(), ReloadError> {
    let config = load().map_err(ReloadError::Config)?;
    let old = live.app();
    let tls = match (&config.server.tls, old.config().server.tls.is_some()) {
        (Some(files), true) => Some(TlsAcceptor::from(super::tls::load(files)?)),
        // TLS cannot be turned on or off on a bound listener: keep what runs.
        (_, _) => live.tls(),
    };
    for key in restart_only(old.config(), &config) {
        tracing::warn!("{key} changed: it takes effect after a restart");
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let (app, background) = old.reloaded(Arc::new(config));
    let app = Arc::new(app);
    app.spawn_background(background);
    let previous = live.replace(app, tls);
    previous.stop_background();
    tracing::info!("configuration reloaded");
    Ok(())
}
