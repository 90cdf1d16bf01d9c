//! OpenID Connect relying party: discovery, authorization URL, callback, token exchange, ID-token checks,
//! userinfo.

pub mod discovery;
pub mod flow;
pub mod identity;
pub mod rp;
