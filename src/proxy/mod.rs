//! Forwarding to the upstream: header hygiene, identity headers, streaming, upgrades, the API-key bridge.

pub mod bridge;
pub mod forward;
pub mod hygiene;
pub mod scrub;
pub mod websocket;
