//! Listeners: TCP (optionally TLS), HTTP/1.1 and HTTP/2 (also cleartext h2 with prior knowledge), bounded
//! header reads, graceful shutdown.

pub mod framing;
pub mod live;
pub mod reload;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::app::App;

/// How long a client may take to send its request headers (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head headgate reads (HTTP/1.1 buffer, HTTP/2 header list).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

pub struct Server {
    listener: TcpListener,
    live: Arc<live::Live>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} (server.listen): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

impl Server {
    pub async fn bind(app: Arc<App>) -> Result<Server, ServeError> {
        let addr = app.config().server.listen;
        let tls = match &app.config().server.tls {
            Some(files) => Some(TlsAcceptor::from(tls::load(files)?)),
            None => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Server {
            listener,
            live: live::Live::new(app, tls),
        })
    }

    /// Serve on a listener the caller bound (in-process tests bind port 0 first to learn the address).
    pub fn from_listener(app: Arc<App>, listener: TcpListener) -> Result<Server, ServeError> {
        let tls = match &app.config().server.tls {
            Some(files) => Some(TlsAcceptor::from(tls::load(files)?)),
            None => None,
        };
        Ok(Server {
            listener,
            live: live::Live::new(app, tls),
        })
    }

    /// What a reload swaps.
    pub fn live(&self) -> Arc<live::Live> {
        self.live.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serve until `shutdown` resolves, then stop accepting and give in-flight requests `grace` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>, grace: Duration) {
        let Server { listener, live } = self;
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .max_concurrent_streams(256);
        let builder = Arc::new(builder);
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let live = live.clone();
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let tls = live.tls();
            let conn = crate::app::Conn {
                peer,
                tls: tls.is_some(),
            };
            tokio::spawn(async move {
                // HTTP/1.1 requests are served one after the other; the watch has read each request's head
                // before hyper hands it over, so the n-th call is the n-th head.
                let watch = framing::Watch::default();
                let served = AtomicU64::new(0);
                let watched = watch.clone();
                let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let app = live.app();
                    if req.version() != http::Version::HTTP_2
                        && watched.refuses(served.fetch_add(1, Ordering::SeqCst))
                    {
                        req.extensions_mut().insert(framing::FramingConflict);
                    }
                    async move { Ok::<_, std::convert::Infallible>(app.handle(req, conn).await) }
                });
                match tls {
                    None => {
                        let stream = framing::Watched::new(stream, watch);
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                    Some(acceptor) => {
                        let tls_stream = match tokio::time::timeout(
                            HEADER_READ_TIMEOUT,
                            acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                        let tls_stream = framing::Watched::new(tls_stream, watch);
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(tls_stream), service);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                }
            });
        }
        drop(listener);
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: finishing in-flight requests"
        );
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                "server.shutdown_timeout passed with requests still running; closing them"
            );
        }
    }
}

/// Install SIGTERM and SIGINT handlers now (before the listener is announced, so a signal that arrives
/// right after can never hit the default action) and return a future that resolves on either.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// Install the SIGHUP handler now; the returned stream yields once per SIGHUP.
pub fn reload_signal() -> std::io::Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
}

/// Serve only `/_headgate/metrics` on `listener` (server.metrics_listen), until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, live: Arc<live::Live>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let live = live.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let app = live.app();
                async move {
                    let r = if req.uri().path() == "/_headgate/metrics" {
                        app.metrics_response()
                    } else {
                        crate::respond::json(
                            http::StatusCode::NOT_FOUND,
                            serde_json::json!({"error": "not_found"}),
                        )
                    };
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
