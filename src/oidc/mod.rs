//! OpenID Connect relying party: discovery, authorization URL, callback, token exchange, ID-token checks,
//! userinfo, back-channel logout.

pub mod backchannel;
pub mod discovery;
pub mod flow;
pub mod identity;
pub mod rp;
