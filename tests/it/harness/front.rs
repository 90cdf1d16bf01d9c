//! Real front proxies for forward-auth tests: Debian's nginx and Caddy as child processes on free ports,
//! configured from the exact files in `examples/` (only addresses, ports and the host name are replaced), so
//! the examples are the configurations that are tested. A missing binary fails the test with the command
//! that installs it (tests/run installs both); nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::ChildProcess;

/// headgate's address in the examples.
pub const EXAMPLE_HEADGATE: &str = "127.0.0.1:4180";
/// Headplane's address in the examples.
pub const EXAMPLE_UPSTREAM: &str = "127.0.0.1:3000";
/// The public host name in the examples.
pub const EXAMPLE_HOST: &str = "headplane.example.com";

/// The text of `examples/<rel>`.
pub fn example(rel: &str) -> String {
    let p = super::root().join("examples").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// `text` with each `(from, to)` replaced; every `from` must occur (a changed example fails loudly instead of
/// silently testing something else).
pub fn templated(text: &str, replacements: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (from, to) in replacements {
        assert!(
            out.contains(from),
            "the example no longer contains {from:?}: update the test's templating"
        );
        out = out.replace(from, to);
    }
    out
}

/// The path of a front proxy's binary, or a panic that says how to install it.
fn require(name: &str, candidates: &[&str], package: &str) -> PathBuf {
    for c in candidates {
        if Path::new(c).is_file() {
            return PathBuf::from(c);
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in path.split(':') {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "{name} is not installed, and the forward-auth tests run it for real: install it with \
         `sudo apt-get install -y --no-install-recommends {package}` (tests/run does this)"
    )
}

pub struct FrontProxy {
    pub name: &'static str,
    pub port: u16,
    pub process: ChildProcess,
    /// The configuration as run.
    pub config: String,
    _dir: tempfile::TempDir,
}

impl FrontProxy {
    /// nginx with `examples/nginx/headgate.conf` listening on `port`, asking headgate at `headgate`
    /// (`host:port`) and proxying to `upstream`.
    pub fn nginx(port: u16, headgate: &str, upstream: &str) -> FrontProxy {
        let bin = require("nginx", &["/usr/sbin/nginx"], "nginx-light");
        let dir = super::tempdir();
        let d = dir.path();
        let site = templated(
            &example("nginx/headgate.conf"),
            &[
                ("listen 80;", &format!("listen 127.0.0.1:{port};")),
                (EXAMPLE_HEADGATE, headgate),
                (EXAMPLE_UPSTREAM, upstream),
            ],
        );
        std::fs::write(d.join("headgate.conf"), &site).unwrap();
        // The smallest main file around the example (which is what goes into conf.d/).
        let main = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr info;\n\
             events {{ worker_connections 128; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             include {d}/headgate.conf;\n}}\n",
            d = d.display()
        );
        std::fs::write(d.join("nginx.conf"), main).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-e")
            .arg("stderr");
        FrontProxy::spawn("nginx", port, cmd, site, dir)
    }

    /// Caddy with `examples/caddy/Caddyfile` serving `http://127.0.0.1:<port>`.
    pub fn caddy(port: u16, headgate: &str, upstream: &str) -> FrontProxy {
        let bin = require("caddy", &["/usr/bin/caddy"], "caddy");
        let dir = super::tempdir();
        let d = dir.path();
        let site = templated(
            &example("caddy/Caddyfile"),
            &[
                (
                    &format!("{EXAMPLE_HOST} {{"),
                    &format!("http://127.0.0.1:{port} {{"),
                ),
                (EXAMPLE_HEADGATE, headgate),
                (EXAMPLE_UPSTREAM, upstream),
            ],
        );
        // No admin endpoint (it would take a fixed port); the example itself is unchanged below.
        let file = format!("{{\n\tadmin off\n}}\n\n{site}");
        std::fs::write(d.join("Caddyfile"), &file).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(d.join("Caddyfile"))
            .arg("--adapter")
            .arg("caddyfile")
            .env("HOME", d)
            .env("XDG_DATA_HOME", d.join("data"))
            .env("XDG_CONFIG_HOME", d.join("config"));
        FrontProxy::spawn("caddy", port, cmd, file, dir)
    }

    fn spawn(
        name: &'static str,
        port: u16,
        cmd: Command,
        config: String,
        dir: tempfile::TempDir,
    ) -> FrontProxy {
        let mut process = ChildProcess::spawn(name, cmd);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if process.has_exited() || Instant::now() > deadline {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "{name} did not start listening on 127.0.0.1:{port}; its output:\n{}\nits configuration:\n{config}",
                    process.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        FrontProxy {
            name,
            port,
            process,
            config,
            _dir: dir,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }
}
