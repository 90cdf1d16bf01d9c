//! A real PostgreSQL server for tests: Debian's `postgresql` package, `initdb` into a temp directory and
//! started on a free port (TCP on 127.0.0.1 and a unix socket in that directory), trust authentication,
//! durability off (fsync) for speed. As root it runs as the `postgres` user (PostgreSQL refuses root).
//!
//! [`PgServer::shared`] is started once per test binary and gives every test its own database
//! ([`PgServer::database`]); a test that stops or restarts the server starts its own with [`PgServer::start`].
//! The server is started by a keeper thread that lives as long as the `PgServer`, with the parent-death
//! signal set to SIGINT (`setpriv --pdeathsig`): when the test binary exits, however it exits, PostgreSQL
//! shuts down fast instead of lingering. Data directories of earlier runs whose process is gone are removed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::process::ChildProcess;

enum Cmd {
    Start(mpsc::Sender<Result<(), String>>),
    Stop(mpsc::Sender<()>),
}

pub struct PgServer {
    pub port: u16,
    /// The data directory's parent: also the unix socket directory.
    pub dir: PathBuf,
    keeper: Mutex<mpsc::Sender<Cmd>>,
    next_db: AtomicU64,
    /// Removed when the server is dropped (the shared one is swept by the next run).
    remove_on_drop: bool,
}

/// The directory of PostgreSQL's binaries (the newest installed version), or a panic that says how to install.
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, b)) => b,
        None => panic!(
            "PostgreSQL is not installed, and the PostgreSQL store tests run it for real: install it with \
             `sudo apt-get install -y --no-install-recommends postgresql` (tests/run does this)"
        ),
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `(uid, gid)` of the `postgres` user.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "there is no postgres user: install Debian's postgresql package"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// A command that runs `bin` as the user PostgreSQL runs as (the `postgres` user when we are root), dying
/// with SIGINT when the thread that spawned it ends.
fn as_postgres(bin: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    if is_root() {
        cmd.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]);
    }
    cmd.args(["--pdeathsig", "INT"]).arg(bin);
    cmd
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            chown_tree(&e.path(), uid, gid);
        }
    }
}

/// Remove data directories of earlier test processes that are gone.
fn sweep(base: &Path) {
    for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.split('-').next()) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl PgServer {
    /// The server every test in this binary shares (started at first use).
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(|| PgServer::start_inner(false, None))
    }

    /// A server of this test's own (stopped and removed when dropped).
    pub fn start() -> PgServer {
        PgServer::start_inner(true, None)
    }

    /// A server of this test's own that offers TLS with this certificate chain and key (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> PgServer {
        PgServer::start_inner(true, Some((cert_pem.to_string(), key_pem.to_string())))
    }

    fn start_inner(remove_on_drop: bool, tls: Option<(String, String)>) -> PgServer {
        static N: AtomicU64 = AtomicU64::new(0);
        let bin = bin_dir();
        let base = std::env::temp_dir().join("headgate-it-pg");
        std::fs::create_dir_all(&base).unwrap();
        sweep(&base);
        let dir = base.join(format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        if is_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let data = dir.join("data");
        let out = as_postgres(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-N",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
            ])
            .current_dir(&dir)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut extra: Vec<String> = Vec::new();
        if let Some((cert, key)) = &tls {
            std::fs::write(dir.join("server.crt"), cert).unwrap();
            std::fs::write(dir.join("server.key"), key).unwrap();
            std::fs::set_permissions(
                dir.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            extra.extend([
                "ssl=on".to_string(),
                format!("ssl_cert_file={}", dir.join("server.crt").display()),
                format!("ssl_key_file={}", dir.join("server.key").display()),
            ]);
        }
        if is_root() {
            let (uid, gid) = postgres_ids();
            chown_tree(&dir, uid, gid);
        }
        let port = super::free_port();
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (bin2, dir2) = (bin.clone(), dir.clone());
        // The keeper: the parent of PostgreSQL for the server's whole life (see the module doc).
        std::thread::Builder::new()
            .name(format!("postgres-{port}"))
            .spawn(move || {
                let mut child: Option<ChildProcess> = None;
                let stop = |child: &mut Option<ChildProcess>| {
                    if let Some(mut c) = child.take() {
                        c.signal(2); // SIGINT: fast shutdown (connections are ended)
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            c.wait_exit(Duration::from_secs(20))
                        }))
                        .is_err()
                        {
                            c.kill();
                        }
                    }
                };
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Cmd::Start(reply) => {
                            let mut cmd = as_postgres(&bin2.join("postgres"));
                            cmd.arg("-D")
                                .arg(dir2.join("data"))
                                .arg("-k")
                                .arg(&dir2)
                                .args(["-p", &port.to_string()])
                                .args(["-c", "listen_addresses=127.0.0.1"])
                                .args(["-c", "fsync=off"])
                                .args(["-c", "synchronous_commit=off"])
                                .args(["-c", "full_page_writes=off"])
                                .args(["-c", "max_connections=300"])
                                .args(["-c", "shared_buffers=32MB"])
                                .current_dir(&dir2);
                            for e in &extra {
                                cmd.args(["-c", e]);
                            }
                            let mut c = ChildProcess::spawn("postgres", cmd);
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                c.wait_for_line(Duration::from_secs(60), |l| {
                                    l.contains("ready to accept connections")
                                });
                            }));
                            let _ = reply.send(r.map_err(|_| c.output()));
                            child = Some(c);
                        }
                        Cmd::Stop(reply) => {
                            stop(&mut child);
                            let _ = reply.send(());
                        }
                    }
                }
                stop(&mut child);
            })
            .unwrap();
        let server = PgServer {
            port,
            dir,
            keeper: Mutex::new(tx),
            next_db: AtomicU64::new(0),
            remove_on_drop,
        };
        server.start_again();
        server
    }

    /// Start the (stopped) server again, on the same port and data.
    pub fn start_again(&self) {
        let (tx, rx) = mpsc::channel();
        self.keeper.lock().unwrap().send(Cmd::Start(tx)).unwrap();
        if let Err(log) = rx.recv().unwrap() {
            panic!("PostgreSQL did not start; its output:\n{log}");
        }
    }

    /// Stop the server (fast shutdown: every connection is ended).
    pub fn stop(&self) {
        let (tx, rx) = mpsc::channel();
        self.keeper.lock().unwrap().send(Cmd::Stop(tx)).unwrap();
        rx.recv().unwrap();
    }

    /// The URL of database `db` over TCP.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The URL of database `db` over the unix socket.
    pub fn socket_url(&self, db: &str) -> String {
        let dir: String =
            url::form_urlencoded::byte_serialize(self.dir.to_str().unwrap().as_bytes()).collect();
        format!("postgresql://postgres@{dir}:{}/{db}", self.port)
    }

    /// A new, empty database; returns its name.
    pub fn database(&self) -> String {
        let name = format!("hg_{}", self.next_db.fetch_add(1, Ordering::SeqCst));
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// Run `sql` (simple query protocol, several statements allowed) in database `db`; the rows as text.
    pub fn sql(&self, db: &str, sql: &str) -> Vec<Vec<Option<String>>> {
        let url = self.url(db);
        let sql = sql.to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
                let task = tokio::spawn(conn);
                let msgs = client
                    .simple_query(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                drop(client);
                let _ = task.await;
                msgs.into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                        }
                        _ => None,
                    })
                    .collect()
            })
        })
        .join()
        .unwrap()
    }

    /// End the connections of `db` whose application_name is `app` (e.g. the cache listener); returns how many.
    pub fn terminate(&self, db: &str, app: &str) -> usize {
        let rows = self.sql(
            "postgres",
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{db}' AND application_name = '{app}'"
            ),
        );
        rows.len()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        if self.remove_on_drop {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
