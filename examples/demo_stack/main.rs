//! The two stand-ins `deploy/demo/run` starts beside the test IdP and headgate (not part of headgate itself):
//!
//! * a Headscale stand-in: the integration tests' fake Headscale (`tests/it/harness/fake_headscale.rs`,
//!   included as is), seeded with a few users and nodes and an admin API key;
//! * the demo upstream: a small page showing who headgate says is there ("signed in as …, role …, Headscale
//!   user …") and every identity header it received.
//!
//! Both are in `upstream.rs`, which the browser test (`tests/it/browser_e2e.rs`) includes too, so it signs in
//! against the very same pages.
//!
//! Usage: `demo_stack --api-key-file <file>`. Writes the Headscale API key to the file (mode 0600), prints
//! `HEADSCALE_URL=…`, `UPSTREAM_URL=…`, then `READY`, and runs until SIGINT or SIGTERM. Both listen on
//! 127.0.0.1 only, on ports the OS picks.

use std::io::Write;
use std::path::PathBuf;

#[allow(dead_code)]
#[path = "../../tests/it/harness/fake_headscale.rs"]
mod fake_headscale;
mod upstream;

/// The reference folder beside the repository (only the fake's `with_examples()` reads it; the demo does not).
#[allow(dead_code)]
fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

fn main() {
    let mut api_key_file: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--api-key-file" => api_key_file = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("usage: demo_stack --api-key-file <file>");
                return;
            }
            other => {
                eprintln!(
                    "demo_stack: unknown argument {other:?} (usage: demo_stack --api-key-file <file>)"
                );
                std::process::exit(2);
            }
        }
    }
    let Some(api_key_file) = api_key_file else {
        eprintln!("demo_stack: --api-key-file <file> is required");
        std::process::exit(2);
    };

    let hs = upstream::headscale_stand_in();
    write_private(&api_key_file, &hs.admin_key());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let hs_url = hs.url();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("demo upstream: bind 127.0.0.1");
        let upstream_addr = listener.local_addr().unwrap();
        println!("HEADSCALE_URL={hs_url}");
        println!("UPSTREAM_URL=http://{upstream_addr}");
        println!("READY");
        std::io::stdout().flush().ok();

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = upstream::serve(listener) => {}
        }
    });
    drop(hs);
}

fn write_private(path: &PathBuf, value: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    f.write_all(value.as_bytes()).expect("write the API key");
}
