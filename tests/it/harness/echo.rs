//! An in-process upstream that answers every request with `200` and a JSON description of what it received,
//! so tests can see exactly what headgate forwarded (and that it forwarded nothing at all).
//!
//! * HTTP/1.1 and HTTP/2 (hyper-util auto: cleartext h2 with prior knowledge works too), on `127.0.0.1:0`,
//!   on its own thread and tokio runtime; stops when the [`Echo`] handle drops.
//! * For HTTP/1 the request line and header block are taken from the raw bytes on the wire, so the echoed
//!   target is exactly as sent and headers keep their order, case and repetitions. For HTTP/2 they come from
//!   hyper's header map (lower-case names, repeated names grouped), and `authority` holds `:authority`.
//! * Response body: `{"method","uri","version","authority","remote_addr","headers":[[name,value],…],
//!   "body","body_base64"}`; `body` is the body as UTF-8 (lossy), `body_base64` is set only when the body is
//!   not valid UTF-8.
//! * `GET /sse` streams server-sent events, one every 100 ms, until the client goes away.
//! * `GET /ws` (HTTP/1.1 `Upgrade: websocket`) does the RFC 6455 handshake and echoes frames back.
//! * Per-path canned replies ([`Reply`]) and a fixed delay, from the builder or at run time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One request as the echo received it.
#[derive(Clone, Debug)]
pub struct EchoRequest {
    pub method: String,
    /// The request target exactly as received (HTTP/1), or the `:path` (HTTP/2).
    pub uri: String,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// `:authority` for HTTP/2 (or an absolute-form HTTP/1 target's authority).
    pub authority: Option<String>,
    pub remote_addr: SocketAddr,
    /// All headers in order, names as sent (HTTP/1), repeated ones repeated.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub received_at: Instant,
}

impl EchoRequest {
    /// The path part of `uri` (no query).
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }
    /// The raw query, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.uri.split_once('?').map(|(_, q)| q)
    }
    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn to_json(&self) -> serde_json::Value {
        let utf8 = std::str::from_utf8(&self.body).is_ok();
        serde_json::json!({
            "method": self.method,
            "uri": self.uri,
            "version": self.version,
            "authority": self.authority,
            "remote_addr": self.remote_addr.to_string(),
            "headers": self.headers.iter().map(|(n, v)| serde_json::json!([n, v])).collect::<Vec<_>>(),
            "body": self.body_str(),
            "body_base64": if utf8 { None } else { Some(base64::engine::general_purpose::STANDARD.encode(&self.body)) },
        })
    }
}

/// A canned answer for a path: status, extra headers, and optionally a body instead of the echo JSON.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: None,
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn set_cookie(self, cookie: &str) -> Reply {
        self.header("Set-Cookie", cookie)
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = Some(body.into());
        self
    }
}

struct Config {
    delay: Duration,
    /// (path pattern, reply): exact path, or a prefix when the pattern ends with `*`.
    replies: Vec<(String, Reply)>,
}

struct Shared {
    config: Mutex<Config>,
    log: Mutex<Vec<EchoRequest>>,
    sse_open: AtomicUsize,
    ws_open: AtomicUsize,
}

pub struct EchoBuilder {
    config: Config,
}

impl EchoBuilder {
    /// Wait this long before answering each request (the request is logged on arrival).
    pub fn delay(mut self, d: Duration) -> Self {
        self.config.delay = d;
        self
    }
    /// Answer `path` (exact, or a prefix when it ends with `*`) with `reply`. Later entries win.
    pub fn reply(mut self, path: &str, reply: Reply) -> Self {
        self.config.replies.push((path.into(), reply));
        self
    }
    /// The same echo listening on a unix socket at `path` (created here; removed when the echo drops).
    /// [`Echo::addr`] is then `0.0.0.0:0` and [`Echo::socket`] the path.
    pub fn start_unix(self, path: &std::path::Path) -> Echo {
        let shared = Arc::new(Shared {
            config: Mutex::new(self.config),
            log: Mutex::new(Vec::new()),
            sse_open: AtomicUsize::new(0),
            ws_open: AtomicUsize::new(0),
        });
        let listener =
            std::os::unix::net::UnixListener::bind(path).expect("echo: bind unix socket");
        listener.set_nonblocking(true).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("echo-unix".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        let l = tokio::net::UnixListener::from_std(listener).unwrap();
                        accept_loop_unix(l, shared, stop_rx).await
                    });
                })
                .unwrap()
        };
        Echo {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            socket: Some(path.to_path_buf()),
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn start(self) -> Echo {
        let shared = Arc::new(Shared {
            config: Mutex::new(self.config),
            log: Mutex::new(Vec::new()),
            sse_open: AtomicUsize::new(0),
            ws_open: AtomicUsize::new(0),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("echo: bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("echo-{}", addr.port()))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(accept_loop(listener, shared, stop_rx));
                })
                .unwrap()
        };
        Echo {
            addr,
            socket: None,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

/// A running echo upstream; stops when dropped.
pub struct Echo {
    addr: SocketAddr,
    /// The unix socket it listens on ([`EchoBuilder::start_unix`]).
    socket: Option<std::path::PathBuf>,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = &self.socket {
            let _ = std::fs::remove_file(p);
        }
        if std::thread::panicking() {
            let log = self
                .shared
                .log
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default();
            eprintln!(
                "----- echo upstream {} received {} request(s) -----",
                self.addr,
                log.len()
            );
            for r in log {
                eprintln!("{} {} {}", r.method, r.uri, r.version);
            }
            eprintln!("----- end of echo upstream requests -----");
        }
    }
}

impl Echo {
    pub fn builder() -> EchoBuilder {
        EchoBuilder {
            config: Config {
                delay: Duration::ZERO,
                replies: Vec::new(),
            },
        }
    }

    pub fn start() -> Echo {
        Self::builder().start()
    }

    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The unix socket path, for an echo started with [`EchoBuilder::start_unix`].
    pub fn socket(&self) -> Option<&std::path::Path> {
        self.socket.as_deref()
    }

    fn log(&self) -> MutexGuard<'_, Vec<EchoRequest>> {
        self.shared.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<EchoRequest> {
        self.log().clone()
    }
    pub fn last(&self) -> Option<EchoRequest> {
        self.log().last().cloned()
    }
    pub fn count(&self) -> usize {
        self.log().len()
    }
    pub fn clear(&self) {
        self.log().clear();
    }
    /// Wait until at least `n` requests were received; false on timeout.
    pub fn wait_for_count(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.count() < n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    pub fn set_delay(&self, d: Duration) {
        self.shared.config.lock().unwrap().delay = d;
    }
    pub fn set_reply(&self, path: &str, reply: Reply) {
        self.shared
            .config
            .lock()
            .unwrap()
            .replies
            .push((path.into(), reply));
    }
    pub fn clear_replies(&self) {
        self.shared.config.lock().unwrap().replies.clear();
    }

    /// Server-sent-event streams still being written (drops to 0 once clients have gone away).
    pub fn sse_open(&self) -> usize {
        self.shared.sse_open.load(Ordering::SeqCst)
    }
    /// WebSocket sessions still open.
    pub fn ws_open(&self) -> usize {
        self.shared.ws_open.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------------------

async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop_rx: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        tokio::select! {
            _ = &mut stop_rx => break,
            accepted = listener.accept() => {
                if let Ok((stream, peer)) = accepted {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_conn(stream, peer, shared.clone()));
                }
            }
        }
    }
}

/// The unix-socket variant: every peer shows as `0.0.0.0:0`.
async fn accept_loop_unix(
    listener: tokio::net::UnixListener,
    shared: Arc<Shared>,
    mut stop_rx: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop_rx => break,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let peer = SocketAddr::from(([0, 0, 0, 0], 0));
                    tokio::spawn(serve_conn(stream, peer, shared.clone()));
                }
            }
        }
    }
}

/// The bytes read from a connection so far (from `cursor` on: not yet attributed to a request).
#[derive(Default)]
struct Raw {
    buf: Vec<u8>,
    cursor: usize,
}

/// A stream that keeps a copy of everything read from it.
struct Recording<S> {
    inner: S,
    raw: Arc<Mutex<Raw>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recording<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                self.raw.lock().unwrap().buf.extend_from_slice(new);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recording<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

async fn serve_conn<S>(stream: S, peer: SocketAddr, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let raw = Arc::new(Mutex::new(Raw::default()));
    let io = TokioIo::new(Recording {
        inner: stream,
        raw: raw.clone(),
    });
    let svc = hyper::service::service_fn(move |req| handle(req, peer, shared.clone(), raw.clone()));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let _ = builder.serve_connection_with_upgrades(io, svc).await;
}

/// The request line and headers of an HTTP/1 request head at the start of `buf`, and the head's length.
/// (method, request target, headers, head length)
type Head = (String, String, Vec<(String, String)>, usize);

fn parse_head(buf: &[u8]) -> Option<Head> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &buf[..end - 4];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = String::from_utf8_lossy(lines.next()?).into_owned();
    let mut parts = request_line.splitn(3, ' ');
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    for line in lines {
        let i = line.iter().position(|&b| b == b':')?;
        let name = String::from_utf8_lossy(&line[..i]).into_owned();
        let value = String::from_utf8_lossy(&line[i + 1..])
            .trim_matches([' ', '\t'])
            .to_string();
        headers.push((name, value));
    }
    Some((method, target, headers, end))
}

/// The length on the wire of a chunked body at the start of `buf` (trailers included), if complete.
fn chunked_len(buf: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let line_end = pos + buf[pos..].windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&buf[pos..line_end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let e = pos + buf[pos..].windows(2).position(|w| w == b"\r\n")?;
                let empty = e == pos;
                pos = e + 2;
                if empty {
                    return Some(pos);
                }
            }
        }
        pos += size + 2;
        if pos > buf.len() {
            return None;
        }
    }
}

/// What the echo knows about a request before reading its body.
fn describe(
    parts: &http::request::Parts,
    peer: SocketAddr,
    raw: &Mutex<Raw>,
) -> (EchoRequest, Option<usize>) {
    let version = match parts.version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    };
    let from_map = || -> Vec<(String, String)> {
        parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect()
    };
    let mut req = EchoRequest {
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        version: version.into(),
        authority: parts.uri.authority().map(|a| a.to_string()),
        remote_addr: peer,
        headers: from_map(),
        body: Vec::new(),
        received_at: Instant::now(),
    };
    let mut head_end = None;
    if parts.version != http::Version::HTTP_2 {
        let raw = raw.lock().unwrap();
        if let Some((method, target, headers, len)) = parse_head(&raw.buf[raw.cursor..])
            && method == req.method
            && headers.len() == parts.headers.len()
        {
            req.uri = target;
            req.headers = headers;
            head_end = Some(raw.cursor + len);
        }
    }
    (req, head_end)
}

/// After the body was read: move the cursor past this request so the next head is found.
fn advance(raw: &Mutex<Raw>, head_end: usize, headers: &[(String, String)], body_len: usize) {
    let mut raw = raw.lock().unwrap();
    let chunked = headers
        .iter()
        .rfind(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .is_some_and(|(_, v)| v.to_ascii_lowercase().trim_end().ends_with("chunked"));
    let end = if chunked {
        match raw.buf.get(head_end..).and_then(chunked_len) {
            Some(n) => head_end + n,
            None => raw.buf.len(),
        }
    } else {
        head_end + body_len
    };
    let end = end.min(raw.buf.len());
    raw.buf.drain(..end);
    raw.cursor = 0;
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    raw: Arc<Mutex<Raw>>,
) -> Result<Response<Body>, Infallible> {
    let is_ws = req.uri().path() == "/ws"
        && req.version() == http::Version::HTTP_11
        && req
            .headers()
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let upgrade = if is_ws {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    let (parts, body) = req.into_parts();
    let (mut echo_req, head_end) = describe(&parts, peer, &raw);
    let body = if is_ws {
        Bytes::new()
    } else {
        body.collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default()
    };
    if let (Some(h), false) = (head_end, is_ws) {
        advance(&raw, h, &echo_req.headers, body.len());
    }
    echo_req.body = body.to_vec();
    shared
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(echo_req.clone());

    let (delay, reply) = {
        let cfg = shared.config.lock().unwrap();
        let path = parts.uri.path();
        let reply = cfg
            .replies
            .iter()
            .rev()
            .find(|(p, _)| match p.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => p == path,
            })
            .map(|(_, r)| r.clone());
        (cfg.delay, reply)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    if let Some(reply) = reply {
        let mut resp = Response::builder().status(reply.status);
        let has_ct = reply
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
        for (n, v) in &reply.headers {
            resp = resp.header(n.as_str(), v.as_str());
        }
        let body = match reply.body {
            Some(b) => b,
            None => {
                if !has_ct {
                    resp = resp.header(http::header::CONTENT_TYPE, "application/json");
                }
                serde_json::to_vec(&echo_req.to_json()).unwrap()
            }
        };
        return Ok(resp.body(full(body)).unwrap());
    }

    if let Some(upgrade) = upgrade {
        let key = parts
            .headers
            .get("sec-websocket-key")
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                shared.ws_open.fetch_add(1, Ordering::SeqCst);
                let _ = ws_echo(TokioIo::new(upgraded)).await;
                shared.ws_open.fetch_sub(1, Ordering::SeqCst);
            }
        });
        let resp = Response::builder()
            .status(101)
            .header(http::header::UPGRADE, "websocket")
            .header(http::header::CONNECTION, "Upgrade")
            .header("Sec-WebSocket-Accept", websocket_accept(&key))
            .body(full(Bytes::new()))
            .unwrap();
        return Ok(resp);
    }

    if parts.uri.path() == "/sse" && parts.method == http::Method::GET {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let shared = shared.clone();
        shared.sse_open.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let event = format!("id: {n}\nevent: tick\ndata: {{\"n\":{n}}}\n\n");
                if tx.send(Bytes::from(event)).await.is_err() {
                    break;
                }
                n += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = tx.closed() => break,
                }
            }
            shared.sse_open.fetch_sub(1, Ordering::SeqCst);
        });
        let resp = Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "text/event-stream")
            .header(http::header::CACHE_CONTROL, "no-cache")
            .body(ChannelBody(rx).boxed_unsync())
            .unwrap();
        return Ok(resp);
    }

    let resp = Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full(serde_json::to_vec(&echo_req.to_json()).unwrap()))
        .unwrap();
    Ok(resp)
}

/// A response body fed by a channel (ends when the sender is dropped).
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

// ---------------------------------------------------------------------------------------------------------
// WebSocket (RFC 6455), just enough to echo
// ---------------------------------------------------------------------------------------------------------

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn websocket_accept(key: &[u8]) -> String {
    let mut input = key.to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1(&input))
}

/// Echo data frames back (unmasked, same opcode and FIN bit), answer pings, echo a close and stop.
async fn ws_echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    loop {
        let (b0, payload) = match read_ws_frame(&mut s).await {
            Ok(f) => f,
            Err(_) => return Ok(()),
        };
        let opcode = b0 & 0x0f;
        match opcode {
            0x8 => {
                write_ws_frame(&mut s, 0x88, &payload).await?;
                let _ = s.shutdown().await;
                return Ok(());
            }
            0x9 => write_ws_frame(&mut s, 0x8A, &payload).await?,
            0xA => {}
            _ => write_ws_frame(&mut s, b0 & 0x8f, &payload).await?,
        }
    }
}

/// Read one frame: (first byte, unmasked payload).
pub async fn read_ws_frame<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await?;
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await?;
            u16::from_be_bytes(b) as u64
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await?;
            u64::from_be_bytes(b)
        }
        n => n as u64,
    };
    if len > 16 * 1024 * 1024 {
        return Err(std::io::Error::other("websocket frame too large"));
    }
    let mut mask = [0u8; 4];
    if masked {
        s.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((h[0], payload))
}

/// Write one frame with first byte `b0`, unmasked (as a server does).
pub async fn write_ws_frame<S: AsyncWrite + Unpin>(
    s: &mut S,
    b0: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    s.write_all(&ws_frame(b0, payload, None)).await?;
    s.flush().await
}

/// Encode a frame; with `mask` the payload is masked (as a client must).
pub fn ws_frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![b0];
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mbit | n as u8),
        n if n <= 0xffff => {
            out.push(mbit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mbit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// SHA-1 (FIPS 180-4), only for the WebSocket handshake.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hv, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hv = hv.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (i, v) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}
