//! The command line: flags are parsed, then turned into ready objects; every failure becomes a message and
//! an exit code in `main`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::App;
use crate::check::{self, Status};
use crate::config::{Config, ConfigErrors};
use crate::http_client::HttpClient;
use crate::server::{self, Server};
use crate::store::Store;

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
    /// The signing keys of the signed assertion (X-Headgate-Assertion): list, rotate, revoke.
    Keys {
        #[command(subcommand)]
        cmd: crate::assertion::KeysCmd,
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
        Command::Keys { cmd } => crate::assertion::run_cli(load(cli.config.as_deref(), &env)?, cmd)
            .map_err(Failure::runtime),
    }
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
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    prepare_data_dir(&config.server.data_path)?;
    refuse_shared_file(&config.store_path())?;
    let store = Store::open_redb(&config.store_path(), crate::store::DEFAULT_CACHE_BYTES)
        .map_err(|e| Failure::runtime(e.to_string()))?;
    let rt = runtime()?;
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
        let server = Server::bind(app.clone())
            .await
            .map_err(|e| Failure::runtime(e.to_string()))?;
        let tls = if app.config().server.tls.is_some() {
            " (TLS)"
        } else {
            ""
        };
        tracing::info!("headgate listening on {}{tls}", server.local_addr());
        server.run(shutdown, grace).await;
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
