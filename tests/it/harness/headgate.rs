//! Running the real headgate binary for a test: a config file in a temp dir, port 0, the bound address read
//! from its log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::process::ChildProcess;

pub const TEST_SECRET: &str = "test-cookie-secret-0123456789abcdef0123456789";

/// A headgate configuration under construction: sections as TOML text.
pub struct HeadgateConfig {
    pub dir: tempfile::TempDir,
    pub server: Vec<String>,
    pub sections: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Default for HeadgateConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl HeadgateConfig {
    pub fn new() -> Self {
        let dir = super::tempdir();
        let data = dir.path().join("data");
        HeadgateConfig {
            server: vec![
                "listen = \"127.0.0.1:0\"".into(),
                "base_url = \"http://127.0.0.1:4180\"".into(),
                format!("cookie_secret = \"{TEST_SECRET}\""),
                "cookie_secure = false".into(),
                format!("data_path = \"{}\"", data.display()),
                "shutdown_timeout = 5".into(),
            ],
            sections: super::test_store_section().into_iter().collect(),
            env: Vec::new(),
            dir,
        }
    }

    /// Add (or replace) a `[server]` line `key = value`.
    pub fn server(mut self, key: &str, value: &str) -> Self {
        self.server.retain(|l| !l.starts_with(&format!("{key} =")));
        self.server.push(format!("{key} = {value}"));
        self
    }

    /// Add a whole section, e.g. `"[oidc]\nissuer = …"`.
    pub fn section(mut self, text: impl Into<String>) -> Self {
        self.sections.push(text.into());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn data_path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn text(&self) -> String {
        format!(
            "[server]\n{}\n\n{}\n",
            self.server.join("\n"),
            self.sections.join("\n\n")
        )
    }

    /// Write the file and return its path.
    pub fn write(&self) -> PathBuf {
        let p = self.dir.path().join("headgate.toml");
        std::fs::write(&p, self.text()).unwrap();
        p
    }

    /// A `headgate` command with this config (`--config` set, environment applied).
    pub fn command(&self, args: &[&str]) -> Command {
        let path = self.write();
        let mut cmd = Command::new(super::headgate_bin());
        cmd.arg("--config").arg(&path).args(args);
        cmd.env_remove("RUST_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run a command to completion: (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.command(args).output().expect("run headgate");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Start `headgate serve` and wait until it listens.
    pub fn start(self) -> Headgate {
        let mut process = ChildProcess::spawn("headgate", self.command(&["serve"]));
        let line = process.wait_for_line(Duration::from_secs(20), |l| {
            l.contains("headgate listening on ")
        });
        let addr = line
            .split("headgate listening on ")
            .nth(1)
            // The address ends at a space (human log) or a quote (JSON log).
            .and_then(|r| r.split(|c: char| c.is_whitespace() || c == '"').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the address from {line:?}"));
        Headgate {
            process,
            addr,
            config: self,
        }
    }
}

pub struct Headgate {
    pub process: ChildProcess,
    pub addr: SocketAddr,
    pub config: HeadgateConfig,
}

impl Headgate {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}
