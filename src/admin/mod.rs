//! User administration: domain operations (shared by the users page, the admin socket and the CLI), the
//! operator's commands, and the local admin socket that carries them while `headgate serve` runs.

pub mod commands;
pub mod ops;
pub mod socket;
pub mod users_page;
