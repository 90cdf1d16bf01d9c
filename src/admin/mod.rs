//! User administration: domain operations (shared by the users page, the admin socket and the CLI).

pub mod ops;
pub mod users_page;
