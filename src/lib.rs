//! headgate: OpenID Connect sign-in, Headscale-aware identity and Headplane's role model in front of
//! Headplane (or any web app), as a reverse proxy, a forward-auth server or a Kubernetes sidecar.
//!
//! The dependency arrows point one way: `cli` → `server` → handlers → domain → `store`.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod assertion;
pub mod auth;
pub mod check;
pub mod cli;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod cookies;
pub mod crypto;
pub mod csrf;
pub mod forward_auth;
#[doc(hidden)]
pub mod fuzz;
pub mod gate;
pub mod headscale;
pub mod health;
pub mod healthcheck;
pub mod http_client;
pub mod linking;
pub mod logging;
pub mod metrics;
pub mod oidc;
pub mod onboarding;
pub mod pages;
pub mod policy;
pub mod proxy;
pub mod rate_limit;
pub mod redirect;
pub mod refresh;
pub mod respond;
pub mod roles;
pub mod server;
pub mod session;
pub mod store;
pub mod streams;

/// rustls needs one process-wide crypto provider; headgate uses ring (no C build step). Safe to call often.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
