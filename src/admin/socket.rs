//! The local admin socket (S17): while `headgate serve` runs it holds the store's lock, so the CLI hands its
//! commands to the server through a unix socket at `<server.data_path>/admin/headgate.sock`.
//!
//! - The `admin` directory is created mode 0700 (a mode given to `mkdir` can only be narrowed by the umask,
//!   so it is never wider) and refused at start when it exists group- or world-accessible, is not a
//!   directory, or belongs to another uid. The socket itself is made 0600 right after `bind`.
//! - A stale socket file (nobody answers on it) is removed at start; one that answers is refused. The file is
//!   removed again when the server stops.
//! - Every connection's peer uid (`SO_PEERCRED`) must be headgate's own effective uid; any other uid gets an
//!   error line, a warning in the log and an audit record, and nothing it sent is executed.
//! - Wire protocol: one JSON request line ([`Request`]) per connection, answered by one JSON line:
//!   `{"ok":true,"result":<Output>}` or `{"ok":false,"error":"…"}`. Requests are bounded ([`MAX_LINE`]) and
//!   timed ([`READ_TIMEOUT`], [`COMMAND_TIMEOUT`]); a few connections at once at most.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::commands::{self, Context, Output, Request};
use super::ops::{self, Actor};

/// The longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;
/// The longest response line the client reads (a large user or audit list).
pub const MAX_RESPONSE: usize = 32 * 1024 * 1024;
/// How long the server waits for a request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one command may run (a Headscale call included).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the client waits to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the backlog.
pub const MAX_CONNECTIONS: usize = 8;

/// The socket's path for a data directory.
pub fn socket_path(data_path: &Path) -> PathBuf {
    data_path.join("admin").join("headgate.sock")
}

/// This process's effective uid, from `/proc/self/status` (the crate forbids `unsafe`, so no `geteuid`).
/// The kernel reports a peer's effective uid in `SO_PEERCRED`, so this is what it is compared with.
pub fn own_uid() -> io::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| io::Error::other("no effective uid in /proc/self/status"))
}

/// One response line.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Output>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    fn from(r: Result<Output, String>) -> Reply {
        match r {
            Ok(o) => Reply {
                ok: true,
                result: Some(o),
                error: None,
            },
            Err(e) => Reply::error(e),
        }
    }
    fn error(e: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            result: None,
            error: Some(e.into()),
        }
    }
}

/// A bound admin socket, not yet serving.
pub struct AdminSocket {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    uid: u32,
}

impl AdminSocket {
    /// Prepare `<data_path>/admin` (0700, ours), clear a stale socket, bind, make the socket 0600. The data
    /// directory itself is checked by the caller (`cli::prepare_data_dir`). Errors are for the operator.
    pub fn bind(data_path: &Path) -> Result<AdminSocket, String> {
        let uid = own_uid().map_err(|e| format!("cannot learn headgate's own uid: {e}"))?;
        let path = socket_path(data_path);
        let dir = path.parent().expect("the socket path has a directory");
        prepare_dir(dir, uid)?;
        clear_stale(&path)?;
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .map_err(|e| format!("cannot create the admin socket {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot restrict the admin socket {}: {e}", path.display()))?;
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| format!("admin socket {}: {e}", path.display()))?;
        if meta.mode() & 0o077 != 0 || meta.uid() != uid {
            let _ = std::fs::remove_file(&path);
            return Err(format!(
                "the admin socket {} is accessible by group or others (mode {:o}): refusing to serve it",
                path.display(),
                meta.mode() & 0o777
            ));
        }
        Ok(AdminSocket {
            listener,
            path,
            uid,
        })
    }

    /// For tests only: bind at `path` without any directory checks and without narrowing the socket's mode,
    /// so a test can make it reachable by another uid and show the peer-uid check refuses that uid.
    #[doc(hidden)]
    pub fn bind_unchecked_for_tests(path: &Path) -> io::Result<AdminSocket> {
        Ok(AdminSocket {
            listener: std::os::unix::net::UnixListener::bind(path)?,
            path: path.to_path_buf(),
            uid: own_uid()?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serve in the background (call inside a tokio runtime). Dropping the guard stops accepting and removes
    /// the socket file. `ctx` gives the context each command runs with; `serve` builds it from the current
    /// configuration ([`crate::server::live::Live::app`]), so a SIGHUP reload changes what the next command
    /// sees (its Headscale key, whether the IdP owns roles).
    pub fn spawn(
        self,
        ctx: impl Fn() -> Context + Send + Sync + 'static,
    ) -> io::Result<SocketGuard> {
        self.listener.set_nonblocking(true)?;
        let ino = std::fs::symlink_metadata(&self.path).map(|m| (m.dev(), m.ino()))?;
        let listener = tokio::net::UnixListener::from_std(self.listener)?;
        let uid = self.uid;
        let ctx = Arc::new(ctx);
        let task = tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let ctx = ctx();
                        tokio::spawn(async move {
                            handle(stream, &ctx, uid).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(SocketGuard {
            path: self.path,
            ino,
            task,
        })
    }
}

/// The serving admin socket; dropping it stops it and removes its file (when it is still ours).
pub struct SocketGuard {
    path: PathBuf,
    ino: (u64, u64),
    task: tokio::task::JoinHandle<()>,
}

impl SocketGuard {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.task.abort();
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// S17: the socket's directory: created 0700 when missing; refused when it is not a plain directory of
/// ours or group/others have any access.
fn prepare_dir(dir: &Path, uid: u32) -> Result<(), String> {
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                format!(
                    "cannot create the admin socket directory {}: {e}",
                    dir.display()
                )
            })?;
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("admin socket directory {}: {e}", dir.display()))?;
    if !meta.file_type().is_dir() {
        return Err(format!(
            "{} is not a directory (a symlink or a file): remove it so headgate can create its admin socket \
             directory there",
            dir.display()
        ));
    }
    if meta.uid() != uid {
        return Err(format!(
            "the admin socket directory {} belongs to uid {}, not to headgate's uid {uid}: remove it or \
             `chown {uid} {}`",
            dir.display(),
            meta.uid(),
            dir.display()
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the admin socket directory {} is accessible by group or others (mode {mode:o}); anyone who \
             reaches the socket could ask for changes: run `chmod 700 {}`",
            dir.display(),
            dir.display()
        ));
    }
    Ok(())
}

/// Remove a socket file nobody answers on; refuse one that answers or anything that is not a socket.
fn clear_stale(path: &Path) -> Result<(), String> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "{} exists and is not a socket: remove it so headgate can create its admin socket",
            path.display()
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(format!(
            "another process answers on the admin socket {}: is another headgate serving this data \
             directory?",
            path.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|e| {
                format!(
                    "cannot remove the stale admin socket {}: {e}",
                    path.display()
                )
            }),
        Err(e) => Err(format!("admin socket {}: {e}", path.display())),
    }
}

/// Read one line of at most `max` bytes (the newline excluded); `None` when it is longer.
async fn read_line<R: tokio::io::AsyncRead + Unpin>(
    r: R,
    max: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    BufReader::new(r.take(max as u64 + 1))
        .read_until(b'\n', &mut buf)
        .await?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > max {
        return Ok(None);
    }
    Ok(Some(buf))
}

async fn write_reply(stream: &mut UnixStream, reply: &Reply) {
    let mut line = serde_json::to_vec(reply)
        .unwrap_or_else(|_| br#"{"ok":false,"error":"the answer could not be encoded"}"#.to_vec());
    line.push(b'\n');
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        stream.write_all(&line).await?;
        stream.shutdown().await
    })
    .await;
}

async fn handle(mut stream: UnixStream, ctx: &Context, own_uid: u32) {
    let peer = stream.peer_cred().map(|c| c.uid());
    // The request line is read either way (so a refused client gets the refusal, not a reset), but it is
    // parsed and executed only for headgate's own uid.
    let line = tokio::time::timeout(READ_TIMEOUT, read_line(&mut stream, MAX_LINE)).await;
    let uid = match peer {
        Ok(uid) if uid == own_uid => uid,
        Ok(uid) => {
            tracing::warn!(
                peer_uid = uid,
                own_uid,
                "admin socket: refused a connection from another uid"
            );
            let _ = ops::audit(
                &ctx.store,
                ctx.clock.now(),
                &Actor::Operator { uid },
                "admin_socket_refused",
                String::new(),
                format!("peer uid {uid} is not headgate's uid {own_uid}"),
            )
            .await;
            let msg = format!(
                "refused: uid {uid} is not headgate's uid {own_uid}; run the command as headgate's user \
                 (e.g. `runuser -u <user> -- headgate …`)"
            );
            write_reply(&mut stream, &Reply::error(msg)).await;
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin socket: cannot read the peer's credentials; refused");
            write_reply(
                &mut stream,
                &Reply::error("refused: the peer's credentials are unknown"),
            )
            .await;
            return;
        }
    };
    let req = match line {
        Err(_) => {
            write_reply(&mut stream, &Reply::error("no request within 10 s")).await;
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "admin socket: read failed");
            return;
        }
        Ok(Ok(None)) => {
            write_reply(
                &mut stream,
                &Reply::error(format!("request longer than {MAX_LINE} bytes")),
            )
            .await;
            return;
        }
        Ok(Ok(Some(bytes))) => match serde_json::from_slice::<Request>(&bytes) {
            Ok(r) => r,
            Err(e) => {
                write_reply(&mut stream, &Reply::error(format!("bad request: {e}"))).await;
                return;
            }
        },
    };
    tracing::info!(uid, command = ?RequestName(&req), "admin socket command");
    let result = match tokio::time::timeout(COMMAND_TIMEOUT, commands::execute(ctx, uid, req)).await
    {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the command did not finish within {} s",
            COMMAND_TIMEOUT.as_secs()
        )),
    };
    write_reply(&mut stream, &Reply::from(result)).await;
}

/// Logs a command by name only (its arguments may carry names from the IdP).
struct RequestName<'a>(&'a Request);

impl std::fmt::Debug for RequestName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = serde_json::to_value(self.0).unwrap_or_default();
        f.write_str(v["command"].as_str().unwrap_or("?"))
    }
}

/// Why the client could not get an answer.
#[derive(Debug)]
pub enum ClientError {
    /// Nobody serves the socket (no file, or a stale one): the caller may open the store itself.
    NoServer,
    /// The socket exists but talking to it failed; the message is for the operator.
    Failed(String),
}

/// Send one command to the running server and return its answer (`Err(message)` when it refused).
pub async fn call(path: &Path, req: &Request) -> Result<Result<Output, String>, ClientError> {
    let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path)).await {
        Err(_) => {
            return Err(ClientError::Failed(format!(
                "headgate serve's admin socket at {} does not answer (connecting timed out)",
                path.display()
            )));
        }
        Ok(Err(e))
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NoServer);
        }
        Ok(Err(e)) => {
            let hint = if e.kind() == io::ErrorKind::PermissionDenied {
                ": run the command as the user headgate runs as"
            } else {
                ""
            };
            return Err(ClientError::Failed(format!(
                "cannot reach the admin socket at {}: {e}{hint}",
                path.display()
            )));
        }
        Ok(Ok(s)) => s,
    };
    let mut line = serde_json::to_vec(req).expect("requests encode");
    line.push(b'\n');
    let silent = || {
        ClientError::Failed(format!(
            "headgate serve's admin socket at {} does not answer",
            path.display()
        ))
    };
    let exchange = async {
        stream.write_all(&line).await?;
        read_line(&mut stream, MAX_RESPONSE).await
    };
    let answer = match tokio::time::timeout(COMMAND_TIMEOUT + READ_TIMEOUT, exchange).await {
        Err(_) => return Err(silent()),
        Ok(Err(e)) => {
            return Err(ClientError::Failed(format!(
                "the admin socket at {} closed the connection: {e}",
                path.display()
            )));
        }
        Ok(Ok(None)) => {
            return Err(ClientError::Failed(
                "the admin socket's answer is too long".into(),
            ));
        }
        Ok(Ok(Some(a))) if a.is_empty() => return Err(silent()),
        Ok(Ok(Some(a))) => a,
    };
    let reply: Reply = serde_json::from_slice(&answer).map_err(|e| {
        ClientError::Failed(format!(
            "the admin socket at {} answered something unexpected ({e})",
            path.display()
        ))
    })?;
    Ok(match (reply.ok, reply.result, reply.error) {
        (true, Some(o), _) => Ok(o),
        (_, _, Some(e)) => Err(e),
        _ => Err("the admin socket's answer has neither a result nor an error".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_uid_matches_a_file_we_create() {
        let dir = std::env::temp_dir().join(format!("headgate-uid-{}", std::process::id()));
        std::fs::write(&dir, b"x").unwrap();
        let uid = std::fs::metadata(&dir).unwrap().uid();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(own_uid().unwrap(), uid);
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        b.write_all(&[b'a'; 100]).await.unwrap();
        b.write_all(b"\n").await.unwrap();
        assert_eq!(read_line(a, 100).await.unwrap(), Some(vec![b'a'; 100]));
        let (a, mut b) = tokio::io::duplex(1 << 20);
        b.write_all(&[b'a'; 101]).await.unwrap();
        drop(b);
        assert_eq!(read_line(a, 100).await.unwrap(), None);
    }
}
