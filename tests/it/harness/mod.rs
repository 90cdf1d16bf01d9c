//! Building blocks the tests share: child processes, the real test IdP, a browser that plays a person, a real
//! headless Chromium driven over the DevTools protocol, a rogue token endpoint, a fake Headscale, a Headplane
//! double, an echo upstream and the demo's upstream page.

#![allow(dead_code)]

pub mod browser;
pub mod chromium;
/// The demo's Headscale stand-in and upstream page (`examples/demo_stack/upstream.rs`), as the demo runs them.
#[path = "../../../examples/demo_stack/upstream.rs"]
pub mod demo_upstream;
pub mod echo;
pub mod fake_headscale;
pub mod front;
pub mod headgate;
pub mod headplane;
pub mod idp;
pub mod inproc;
pub mod leaks;
pub mod postgres;
pub mod process;
pub mod rogue;
pub mod stack;

use std::path::PathBuf;

/// The environment switch that runs the integration tests on PostgreSQL: `HEADGATE_TEST_STORE=postgres` gives
/// every headgate a `[store]` section naming a new database on the shared test server (default: redb).
pub const STORE_SWITCH: &str = "HEADGATE_TEST_STORE";

/// The `[store]` section for this test's headgate under the switch, if it asks for PostgreSQL.
pub fn test_store_section() -> Option<String> {
    match std::env::var(STORE_SWITCH).as_deref() {
        Ok("postgres") => {
            let server = postgres::PgServer::shared();
            Some(format!(
                "[store]\nbackend = \"postgres\"\nurl = \"{}\"\npool_size = 4",
                server.url(&server.database())
            ))
        }
        Ok("redb") | Ok("") | Err(_) => None,
        Ok(other) => panic!("{STORE_SWITCH}={other:?}: use redb or postgres"),
    }
}

/// The package root (where `Cargo.toml` is).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `../shared` reference folder beside the repository.
pub fn shared() -> PathBuf {
    let p = root().join("../shared");
    assert!(
        p.is_dir(),
        "the reference folder ../shared is missing next to {}",
        root().display()
    );
    p
}

/// The headgate binary that cargo built for this test run.
pub fn headgate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_headgate"))
}

/// A fresh temporary directory, removed when the guard drops.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("headgate-it-")
        .tempdir()
        .expect("create temp dir")
}

/// A port the OS just handed out and released: good enough for a child process that must be told its port
/// on the command line (in-process servers bind port 0 directly instead).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
