//! headgate: OpenID Connect sign-in, Headscale-aware identity and Headplane's role model in front of
//! Headplane (or any web app), as a reverse proxy, a forward-auth server or a Kubernetes sidecar.
//!
//! The dependency arrows point one way: `cli` → `server` → handlers → domain → `store`.

#![forbid(unsafe_code)]

pub mod check;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod headscale;
pub mod http_client;
pub mod logging;
pub mod oidc;
pub mod server;
pub mod store;
