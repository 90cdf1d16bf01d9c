//! The command line: flags are parsed, then turned into ready objects; every failure becomes a message and
//! an exit code in `main`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::admin::commands::{self, Context, Output, Request};
use crate::admin::socket::{self, AdminSocket};
use crate::app::App;
use crate::check::{self, Status};
use crate::config::{Config, ConfigErrors, StoreConfig};
use crate::http_client::HttpClient;
use crate::server::{self, Server};
use crate::store::{Store, StoreError};

#[derive(Parser, Debug)]
#[command(
    name = "headgate",
    version,
    about = "OIDC sign-in gate and forward-auth server for Headplane and Headscale"
)]
pub struct Cli {
    /// Configuration file (default: $HEADGATE_CONFIG, ./headgate.toml, /etc/headgate/headgate.toml).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server.
    Serve,
    /// Validate the configuration, then probe the IdP, Headscale, the data directory and the store.
    CheckConfig,
    /// Ask the running server's `/_headgate/readyz` (exit 0 when ready, 1 otherwise): for container
    /// HEALTHCHECKs without curl in the image.
    Healthcheck {
        /// The URL to ask (default: server.listen, loopback for a wildcard address).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Ask `/_headgate/healthz` instead (the process answers; no dependency checked).
        #[arg(long)]
        live: bool,
    },
    /// People: list them, change roles and links, transfer ownership (for bootstrap and recovery).
    ///
    /// While `headgate serve` runs, commands go through its admin socket (<data_path>/admin/headgate.sock,
    /// only for headgate's own uid); when it is stopped, the store is opened directly. `<USER>` is an id, an
    /// email or an IdP subject.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Sessions: list them (never their ids), end them.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// The audit log, newest first.
    Audit {
        /// JSON for machines instead of a table.
        #[arg(long)]
        json: bool,
        /// How many events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only events with an id below this one (paging).
        #[arg(long, value_name = "ID")]
        before: Option<u64>,
    },
    /// A consistent copy of the store into a new file, while `serve` runs (through the admin socket) or
    /// while it is stopped.
    Backup {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Put a backup in place as the store. headgate must be stopped; a store that holds anything is
    /// refused (move it away first).
    Restore {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// The store itself: copy it from one backend into another (`store migrate --from redb --to postgres`).
    #[command(subcommand)]
    Store(StoreCommand),
    /// The signing keys of the signed assertion (X-Headgate-Assertion): list, rotate, revoke.
    Keys {
        #[command(subcommand)]
        cmd: crate::assertion::KeysCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Every user with role, link, last sign-in and active sessions.
    List {
        /// JSON for machines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change a user's role (never to owner: see transfer-ownership and make-owner; never the owner's).
    SetRole {
        #[arg(value_name = "USER")]
        user: String,
        /// admin, network_admin, it_admin, auditor, viewer or member.
        #[arg(value_name = "ROLE")]
        role: String,
    },
    /// Link a user to a Headscale user (by the Headscale user's id).
    Link {
        #[arg(value_name = "USER")]
        user: String,
        #[arg(value_name = "HEADSCALE_USER_ID")]
        headscale_user_id: String,
    },
    /// Remove a user's link (approved or pending).
    Unlink {
        #[arg(value_name = "USER")]
        user: String,
    },
    /// Approve a user's pending self-link.
    ApproveLink {
        #[arg(value_name = "USER")]
        user: String,
    },
    /// Make this user the owner; the current owner becomes admin. With no owner, see make-owner.
    TransferOwnership {
        #[arg(value_name = "USER")]
        user: String,
    },
    /// Make this user the owner while there is none (the owner was deleted, or to bootstrap without the
    /// first-sign-in rule). Refused while someone is owner: ownership then moves only by transfer-ownership.
    MakeOwner {
        #[arg(value_name = "USER")]
        user: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Copy every user, role, link, session, signing key, audit record and rate-limit counter from one backend
    /// into another, which must be empty (it is never overwritten). The redb side is
    /// <server.data_path>/headgate.redb (or --file); the PostgreSQL side is store.url. Stop headgate first
    /// when copying from redb.
    Migrate {
        #[arg(long, value_enum)]
        from: BackendName,
        #[arg(long, value_enum)]
        to: BackendName,
        /// The redb file to read or write instead of <server.data_path>/headgate.redb.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendName {
    Redb,
    Postgres,
}

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// Active sessions: a short prefix of each session's key hash, user, kind, times.
    List {
        /// JSON for machines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End every session of a user, or one session by its key prefix (from `sessions list`).
    Revoke {
        #[arg(value_name = "USER|SESSION")]
        target: String,
    },
}

/// A failure that ends the process: the message is for the operator, the code for the supervisor.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    fn config(e: ConfigErrors) -> Self {
        Failure {
            message: e.to_string(),
            code: 2,
        }
    }
    fn runtime(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 1,
        }
    }
}

pub fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let env: HashMap<String, String> = std::env::vars().collect();
    match cli.command {
        Command::Serve => serve(cli.config.as_deref(), &env),
        Command::CheckConfig => check_config(cli.config.as_deref(), &env),
        Command::Healthcheck { url, live } => {
            let url = match url {
                Some(u) => u,
                None => crate::healthcheck::default_url(&load(cli.config.as_deref(), &env)?, live),
            };
            let (code, line) = runtime()?.block_on(crate::healthcheck::probe(&url));
            println!("{line}");
            Ok(ExitCode::from(code))
        }
        Command::Users(c) => {
            let (req, json) = match c {
                UsersCommand::List { json } => (Request::UsersList, json),
                UsersCommand::SetRole { user, role } => {
                    (Request::UsersSetRole { user, role }, false)
                }
                UsersCommand::Link {
                    user,
                    headscale_user_id,
                } => (
                    Request::UsersLink {
                        user,
                        headscale_user_id,
                    },
                    false,
                ),
                UsersCommand::Unlink { user } => (Request::UsersUnlink { user }, false),
                UsersCommand::ApproveLink { user } => (Request::UsersApproveLink { user }, false),
                UsersCommand::TransferOwnership { user } => {
                    (Request::UsersTransferOwnership { user }, false)
                }
                UsersCommand::MakeOwner { user } => (Request::UsersMakeOwner { user }, false),
            };
            admin(cli.config.as_deref(), &env, req, json)
        }
        Command::Sessions(c) => {
            let (req, json) = match c {
                SessionsCommand::List { json } => (Request::SessionsList, json),
                SessionsCommand::Revoke { target } => (Request::SessionsRevoke { target }, false),
            };
            admin(cli.config.as_deref(), &env, req, json)
        }
        Command::Audit {
            json,
            limit,
            before,
        } => admin(
            cli.config.as_deref(),
            &env,
            Request::Audit { limit, before },
            json,
        ),
        Command::Backup { file } => {
            let path = absolute(&file)?;
            admin(
                cli.config.as_deref(),
                &env,
                Request::Backup {
                    path: path.display().to_string(),
                },
                false,
            )
        }
        Command::Restore { file } => restore(cli.config.as_deref(), &env, &file),
        Command::Store(StoreCommand::Migrate { from, to, file }) => {
            migrate(&load(cli.config.as_deref(), &env)?, from, to, file)
        }
        Command::Keys { cmd } => crate::assertion::run_cli(load(cli.config.as_deref(), &env)?, cmd)
            .map_err(Failure::runtime),
    }
}

/// `file` as an absolute path (the server resolves nothing relative to the CLI's directory).
fn absolute(file: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(file).map_err(|e| Failure::runtime(format!("{}: {e}", file.display())))
}

/// `headgate restore`: check the backup is a headgate store, refuse a running server or a target that holds
/// data, then put a copy in place (atomically: copied beside the target, checked, renamed).
fn restore(
    flag: Option<&Path>,
    env: &HashMap<String, String>,
    file: &Path,
) -> Result<ExitCode, Failure> {
    let config = load(flag, env)?;
    if let StoreConfig::Postgres(_) = config.store {
        return Err(Failure::runtime(format!(
            "headgate restore puts a redb backup in place of <server.data_path>/headgate.redb, but store.backend \
             is \"postgres\": copy the backup into the (empty) database with `headgate store migrate --from redb \
             --to postgres --file {}`",
            file.display()
        )));
    }
    let sock = socket::socket_path(&config.server.data_path);
    let target = config.store_path();
    runtime()?.block_on(async {
        if let Ok(()) | Err(socket::ClientError::Failed(_)) =
            socket::call(&sock, &Request::SessionsList).await.map(|_| ())
        {
            return Err(Failure::runtime(
                "headgate serve is running on this store: stop it before restoring",
            ));
        }
        if !file.is_file() {
            return Err(Failure::runtime(format!("{}: no such backup file", file.display())));
        }
        prepare_data_dir(&config.server.data_path)?;
        if target.exists() {
            let existing = Store::open_redb(&target, crate::store::DEFAULT_CACHE_BYTES)
                .map_err(|e| Failure::runtime(e.to_string()))?;
            let empty = existing
                .is_empty()
                .await
                .map_err(|e| Failure::runtime(e.to_string()))?;
            drop(existing);
            if !empty {
                return Err(Failure::runtime(format!(
                    "{} already holds users, sessions or keys: move it away first (restore never overwrites data)",
                    target.display()
                )));
            }
        }
        let staging = target.with_extension("restoring");
        let _ = std::fs::remove_file(&staging);
        {
            use std::io::Write;
            let bytes = std::fs::read(file)
                .map_err(|e| Failure::runtime(format!("{}: {e}", file.display())))?;
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create_new(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            let mut f = o
                .open(&staging)
                .map_err(|e| Failure::runtime(format!("{}: {e}", staging.display())))?;
            f.write_all(&bytes)
                .and_then(|()| f.sync_all())
                .map_err(|e| Failure::runtime(format!("{}: {e}", staging.display())))?;
        }
        // Opening checks it is a headgate store of a schema this binary understands (and migrates it).
        match Store::open_redb(&staging, crate::store::DEFAULT_CACHE_BYTES) {
            Ok(s) => drop(s),
            Err(e) => {
                let _ = std::fs::remove_file(&staging);
                return Err(Failure::runtime(format!(
                    "{} is not a usable headgate backup: {e}",
                    file.display()
                )));
            }
        }
        std::fs::rename(&staging, &target)
            .map_err(|e| Failure::runtime(format!("{}: {e}", target.display())))?;
        println!("restored {} to {}", file.display(), target.display());
        Ok(ExitCode::SUCCESS)
    })
}

/// `headgate store migrate`: export one backend, import into the other (empty) one.
fn migrate(
    config: &Config,
    from: BackendName,
    to: BackendName,
    file: Option<PathBuf>,
) -> Result<ExitCode, Failure> {
    if from == to {
        return Err(Failure::runtime(
            "--from and --to name the same backend: nothing to copy",
        ));
    }
    let StoreConfig::Postgres(pg) = &config.store else {
        return Err(Failure::runtime(
            "store.url is not configured: set [store] backend = \"postgres\" and url (or url_path) to the \
             PostgreSQL database to copy to or from",
        ));
    };
    let default_file = file.is_none();
    let path = match file {
        Some(f) => absolute(&f)?,
        None => config.store_path(),
    };
    let rt = runtime()?;
    rt.block_on(async {
        let fail = |e: StoreError| Failure::runtime(e.to_string());
        let open_redb = |path: &Path| match Store::open_redb(path, crate::store::DEFAULT_CACHE_BYTES) {
            Err(StoreError::Locked { .. }) => Err(Failure::runtime(format!(
                "{} is in use by a running headgate: stop headgate serve first, then migrate",
                path.display()
            ))),
            r => r.map_err(fail),
        };
        let (src, dst) = match from {
            BackendName::Redb => {
                if !path.is_file() {
                    return Err(Failure::runtime(format!(
                        "there is no redb store at {}: check server.data_path (or --file)",
                        path.display()
                    )));
                }
                refuse_shared_file(&path)?;
                let src = open_redb(&path)?;
                (src, Store::open_postgres(pg).await.map_err(fail)?)
            }
            BackendName::Postgres => {
                if default_file {
                    prepare_data_dir(&config.server.data_path)?;
                }
                refuse_shared_file(&path)?;
                (Store::open_postgres(pg).await.map_err(fail)?, open_redb(&path)?)
            }
        };
        if !dst.is_empty().await.map_err(fail)? {
            return Err(Failure::runtime(format!(
                "{} already holds users, sessions, links, keys or audit records: nothing was copied (migrate only \
                 into an empty store)",
                dst.location()
            )));
        }
        let snap = src.export().await.map_err(fail)?;
        let counts = format!(
            "{} users, {} links, {} sessions, {} signing keys, {} audit events, {} rate-limit counters",
            snap.users.len(),
            snap.links.len(),
            snap.sessions.len(),
            snap.signing_keys.len(),
            snap.audit.len(),
            snap.rate_limits.len()
        );
        dst.import(snap).await.map_err(|e| match e {
            StoreError::Conflict(m) => Failure::runtime(format!("{}: {m}", dst.location())),
            e => fail(e),
        })?;
        println!("copied {counts} from {} to {}", src.location(), dst.location());
        Ok(ExitCode::SUCCESS)
    })
}

/// Run an operator command: through the running server's admin socket when it answers, else on the store
/// directly. A refused command is exit code 1 with the reason.
fn admin(
    flag: Option<&Path>,
    env: &HashMap<String, String>,
    req: Request,
    json: bool,
) -> Result<ExitCode, Failure> {
    let config = load(flag, env)?;
    let sock = socket::socket_path(&config.server.data_path);
    let outcome = runtime()?.block_on(async {
        match socket::call(&sock, &req).await {
            Ok(answer) => Ok(answer),
            Err(socket::ClientError::Failed(m)) => Err(Failure::runtime(m)),
            Err(socket::ClientError::NoServer) => direct(&config, &sock, req).await,
        }
    })?;
    match outcome {
        Ok(out) => {
            let text = if json {
                commands::render_json(&out)
            } else {
                commands::render_text(&out)
            };
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(message) => Err(Failure::runtime(message)),
    }
}

/// headgate is stopped (nobody answers on the socket): open the store and run the command here.
async fn direct(
    config: &Config,
    sock: &Path,
    req: Request,
) -> Result<Result<Output, String>, Failure> {
    if let StoreConfig::Postgres(pg) = &config.store {
        let store = Store::open_postgres(pg)
            .await
            .map_err(|e| Failure::runtime(e.to_string()))?;
        return Ok(run_direct(config, store, req).await);
    }
    let path = config.store_path();
    if !path.exists() {
        return Err(Failure::runtime(format!(
            "there is no store at {} (and headgate serve is not running): check server.data_path, or start \
             `headgate serve` once so people can sign in",
            path.display()
        )));
    }
    prepare_data_dir(&config.server.data_path)?;
    refuse_shared_file(&path)?;
    let open = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            Store::open_redb(&path, crate::store::DEFAULT_CACHE_BYTES)
        })
        .await
        .map_err(|e| Failure::runtime(format!("opening the store failed: {e}")))?
    };
    let store = match open {
        Ok(s) => s,
        Err(StoreError::Locked { .. }) => {
            return Err(Failure::runtime(format!(
                "headgate serve is running but its admin socket at {} does not answer (the store {} is in \
                 use): restart headgate serve, then try again",
                sock.display(),
                path.display()
            )));
        }
        Err(e) => return Err(Failure::runtime(e.to_string())),
    };
    Ok(run_direct(config, store, req).await)
}

/// Run an operator command on an opened store (audited with this process's uid, like the socket's).
async fn run_direct(config: &Config, store: Store, req: Request) -> Result<Output, String> {
    let uid = match socket::own_uid() {
        Ok(u) => u,
        Err(e) => return Err(format!("cannot learn this process's uid: {e}")),
    };
    let ctx = Context::new(
        config,
        store,
        HttpClient::new(),
        Arc::new(crate::clock::SystemClock),
    );
    commands::execute(&ctx, uid, req).await
}

fn load(flag: Option<&Path>, env: &HashMap<String, String>) -> Result<Config, Failure> {
    let path = Config::locate(flag, env).map_err(Failure::config)?;
    Config::load(&path, env).map_err(Failure::config)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the async runtime: {e}")))
}

fn check_config(flag: Option<&Path>, env: &HashMap<String, String>) -> Result<ExitCode, Failure> {
    let path = Config::locate(flag, env).map_err(Failure::config)?;
    let config = match Config::load(&path, env) {
        Ok(c) => c,
        Err(e) => {
            println!("✗ configuration: {}", path.display());
            for err in &e.errors {
                println!("    {err}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    println!("✓ configuration: {} is valid", path.display());
    let lines = runtime()?.block_on(check::run(&config, &HttpClient::new()));
    let mut failed = 0;
    for line in &lines {
        println!("{line}");
        if line.status == Status::Fail {
            failed += 1;
        }
    }
    if failed == 0 {
        println!("all checks passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{failed} check{} failed",
            if failed == 1 { "" } else { "s" }
        );
        Ok(ExitCode::from(1))
    }
}

fn serve(flag: Option<&Path>, env: &HashMap<String, String>) -> Result<ExitCode, Failure> {
    let config = load(flag, env)?;
    crate::logging::init(config.server.log_format, &config.server.log_level);
    let _flush_logs = crate::logging::FlushOnDrop;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    prepare_data_dir(&config.server.data_path)?;
    let rt = runtime()?;
    let store = match &config.store {
        StoreConfig::Redb => {
            refuse_shared_file(&config.store_path())?;
            Store::open_redb(&config.store_path(), crate::store::DEFAULT_CACHE_BYTES)
        }
        StoreConfig::Postgres(pg) => rt.block_on(Store::open_postgres(pg)),
    }
    .map_err(|e| Failure::runtime(e.to_string()))?;
    tracing::info!("store: {}", store.location());
    rt.block_on(async move {
        let grace = Duration::from_secs(config.server.shutdown_timeout);
        let (app, background) = App::new(
            Arc::new(config),
            store,
            HttpClient::new(),
            Arc::new(crate::clock::SystemClock),
            Arc::new(crate::crypto::OsRandom),
        );
        let app = Arc::new(app);
        app.spawn_background(background);
        let shutdown = server::shutdown_signal()
            .map_err(|e| Failure::runtime(format!("cannot install signal handlers: {e}")))?;
        let mut hangup = server::reload_signal()
            .map_err(|e| Failure::runtime(format!("cannot install signal handlers: {e}")))?;
        let server = Server::bind(app.clone())
            .await
            .map_err(|e| Failure::runtime(e.to_string()))?;
        let live = server.live();
        // S17: the local admin socket for the CLI (the store is locked while serving). Each command runs
        // with the configuration current when it arrives (SIGHUP reloads included).
        let admin = AdminSocket::bind(&app.config().server.data_path)
            .map_err(Failure::runtime)?
            .spawn({
                let live = live.clone();
                move || Context::from_app(&live.app())
            })
            .map_err(|e| Failure::runtime(format!("cannot serve the admin socket: {e}")))?;
        tracing::info!("admin socket at {}", admin.path().display());
        if let Some(addr) = app.config().server.metrics_listen {
            let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Failure::runtime(format!(
                    "cannot listen on {addr} (server.metrics_listen): {e}"
                ))
            })?;
            tracing::info!("metrics on http://{addr}/_headgate/metrics");
            tokio::spawn(server::serve_metrics(l, live.clone()));
        }
        let (flag, env) = (flag.map(Path::to_path_buf), env.clone());
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading the configuration");
                let load = || {
                    let path = Config::locate(flag.as_deref(), &env)?;
                    Config::load(&path, &env)
                };
                if let Err(e) = server::reload::reload(&live, load) {
                    tracing::error!("{e}");
                }
            }
        });
        let tls = if app.config().server.tls.is_some() {
            " (TLS)"
        } else {
            ""
        };
        tracing::info!("headgate listening on {}{tls}", server.local_addr());
        server.run(shutdown, grace).await;
        drop(admin);
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Create the data directory 0700 when missing; refuse one that group or others can reach (S17).
pub fn prepare_data_dir(path: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !path.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(|e| {
            Failure::runtime(format!(
                "server.data_path {}: cannot create the directory ({e}); create it (mode 700) or choose another path",
                path.display()
            ))
        })?;
    }
    let meta = std::fs::metadata(path)
        .map_err(|e| Failure::runtime(format!("server.data_path {}: {e}", path.display())))?;
    if !meta.is_dir() {
        return Err(Failure::runtime(format!(
            "server.data_path {} is not a directory: point it at a directory headgate owns",
            path.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Failure::runtime(format!(
            "server.data_path {} is accessible by group or others (mode {mode:o}); it holds sessions and keys: run \
             `chmod 700 {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// S17: the store holds sessions and keys; a copy others can read is refused, not silently used.
pub fn refuse_shared_file(path: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Failure::runtime(format!(
                "{} is accessible by group or others (mode {mode:o}); it holds sessions and keys: run `chmod 600 {}`",
                path.display(),
                path.display()
            )));
        }
    }
    Ok(())
}
