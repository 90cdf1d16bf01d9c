//! HTTP/1.1 framing watch (`policy.md` section 1, "Framing": conflicting `Content-Length` and
//! `Transfer-Encoding` → 400).
//!
//! hyper resolves that conflict itself before a handler sees the request: it drops `Content-Length`, reads
//! the body as chunked and closes the connection afterwards. So the conflict is invisible to admission,
//! which decides on the header map. This wrapper reads along on the raw bytes of a connection (it never
//! changes them), finds each request head, and records the index of a request whose head carried both
//! fields; the server marks that request with [`FramingConflict`] and headgate refuses it.
//!
//! The reader follows HTTP/1.1 message framing (RFC 9112 section 6) to skip bodies. When the bytes stop
//! making sense to it (something hyper would refuse anyway, or a stream it cannot follow) it gives up and
//! every later request on the connection is refused: it fails closed. An HTTP/2 connection (its preface)
//! turns it off; upgraded connections carry no more requests.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Marks a request whose head had both `Content-Length` and `Transfer-Encoding` (or that came after bytes
/// the watch could not follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingConflict;

/// Longest request head or chunk line followed (hyper refuses longer heads itself).
const MAX_LINE_BYTES: usize = super::MAX_HEADER_BYTES + 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request head (until the empty line).
    Head,
    /// Skipping this many body bytes.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    ChunkEnd(u8),
    /// Reading trailer lines until the empty one.
    Trailers,
    /// HTTP/2: nothing to watch.
    Http2,
    /// A conflict was found (hyper closes the connection after that request), or the bytes could not be
    /// followed: every request from `heads` on is refused.
    Stopped,
}

#[derive(Debug)]
struct Tracker {
    state: State,
    buf: Vec<u8>,
    /// Request heads completed so far.
    heads: u64,
    /// Requests with this index or later are refused.
    refuse_from: Option<u64>,
}

impl Tracker {
    fn new() -> Tracker {
        Tracker {
            state: State::Head,
            buf: Vec::new(),
            heads: 0,
            refuse_from: None,
        }
    }

    fn stop(&mut self, from: u64) {
        self.state = State::Stopped;
        self.buf = Vec::new();
        self.refuse_from = Some(self.refuse_from.map_or(from, |f| f.min(from)));
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Http2 | State::Stopped => return,
                State::Body(n) | State::ChunkData(n) => {
                    let take = (n as usize).min(data.len());
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), l) => State::Body(l),
                        (_, 0) => State::ChunkEnd(2),
                        (_, l) => State::ChunkData(l),
                    };
                }
                State::ChunkEnd(k) => {
                    let want: &[u8] = if k == 2 { b"\r\n" } else { b"\n" };
                    if data[0] != want[0] {
                        let from = self.heads;
                        return self.stop(from);
                    }
                    data = &data[1..];
                    self.state = if k == 2 {
                        State::ChunkEnd(1)
                    } else {
                        State::ChunkSize
                    };
                }
                State::Head if self.buf.is_empty() && (data[0] == b'\r' || data[0] == b'\n') => {
                    // Empty lines before a request line are ignored (RFC 9112 section 2.2).
                    data = &data[1..];
                }
                State::Head | State::ChunkSize | State::Trailers => {
                    // Only the bytes up to the end of the line (or head) are copied: a read full of tiny
                    // chunks costs one pass, not one copy of the rest per chunk.
                    let found = if self.state == State::Head {
                        head_end(&self.buf, data)
                    } else {
                        data.iter().position(|b| *b == b'\n').map(|p| p + 1)
                    };
                    let Some(used) = found else {
                        self.buf.extend_from_slice(data);
                        data = &[];
                        if self.buf.len() > MAX_LINE_BYTES {
                            let from = self.heads;
                            self.stop(from);
                        }
                        continue;
                    };
                    self.buf.extend_from_slice(&data[..used]);
                    // Bytes after the line belong to what follows.
                    data = &data[used..];
                    let mut line = std::mem::take(&mut self.buf);
                    match self.state {
                        State::Head => self.head(&line),
                        State::ChunkSize => self.chunk_size(&line),
                        _ => {
                            if line == b"\r\n" {
                                self.state = State::Head;
                            } else if !line.ends_with(b"\r\n") || line.len() > MAX_LINE_BYTES {
                                let from = self.heads;
                                self.stop(from);
                            }
                        }
                    }
                    // The buffer is kept for the next head (one allocation per connection, not per request).
                    if !matches!(self.state, State::Stopped | State::Http2)
                        && line.capacity() <= 4096
                    {
                        line.clear();
                        self.buf = line;
                    }
                }
            }
        }
    }

    fn head(&mut self, head: &[u8]) {
        let index = self.heads;
        self.heads += 1;
        let mut lines = head
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let request_line = lines.next().unwrap_or_default();
        if request_line.starts_with(b"PRI * HTTP/2.0") && index == 0 {
            self.state = State::Http2;
            return;
        }
        let (mut cl, mut te) = (Vec::new(), false);
        for line in lines {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let name = line[..colon].trim_ascii();
            let value = line[colon + 1..].trim_ascii();
            if name.eq_ignore_ascii_case(b"content-length") {
                cl.push(value.to_vec());
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                te = true;
            }
        }
        if te && !cl.is_empty() {
            return self.stop(index);
        }
        if te {
            self.state = State::ChunkSize;
            return;
        }
        let len = match cl.first() {
            None => 0,
            Some(v) => match std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                // Several equal values are one length to hyper; different ones it refuses.
                Some(n) if cl.iter().all(|o| o == v) => n,
                _ => return self.stop(index + 1),
            },
        };
        self.state = if len == 0 {
            State::Head
        } else {
            State::Body(len)
        };
    }

    fn chunk_size(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r\n").unwrap_or(line);
        let size = line
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        match std::str::from_utf8(size)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 16)
            .and_then(|s| u64::from_str_radix(s, 16).ok())
        {
            Some(0) => self.state = State::Trailers,
            Some(n) => self.state = State::ChunkData(n),
            None => {
                let from = self.heads;
                self.stop(from);
            }
        }
    }
}

/// Where a request head ends within `data`, given the head's bytes so far in `prev`: the number of bytes
/// of `data` up to and including the empty line, with CRLF or bare LF line endings as hyper accepts them
/// (`\n\n`, `\n\r\n`).
fn head_end(prev: &[u8], data: &[u8]) -> Option<usize> {
    let at = |j: isize| -> Option<u8> {
        if j >= 0 {
            data.get(j as usize).copied()
        } else {
            let k = prev.len() as isize + j;
            (k >= 0).then(|| prev[k as usize])
        }
    };
    data.iter().enumerate().find_map(|(i, b)| {
        let i = i as isize;
        let end = *b == b'\n'
            && (at(i - 1) == Some(b'\n') || (at(i - 1) == Some(b'\r') && at(i - 2) == Some(b'\n')));
        end.then_some(i as usize + 1)
    })
}

/// What the server asks about each request of a connection.
#[derive(Debug, Clone)]
pub struct Watch(Arc<Mutex<Tracker>>);

impl Default for Watch {
    fn default() -> Self {
        Watch(Arc::new(Mutex::new(Tracker::new())))
    }
}

impl Watch {
    /// Whether the `index`-th request (0-based, in arrival order) of this HTTP/1.1 connection must be
    /// refused. Always false on HTTP/2.
    pub fn refuses(&self, index: u64) -> bool {
        let t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        t.state != State::Http2 && t.refuse_from.is_some_and(|f| index >= f)
    }

    pub fn is_http2(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).state == State::Http2
    }

    fn feed(&self, data: &[u8]) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).feed(data);
    }
}

/// A connection whose incoming bytes the [`Watch`] reads along.
pub struct Watched<S> {
    inner: S,
    watch: Watch,
}

impl<S> Watched<S> {
    pub fn new(inner: S, watch: Watch) -> Self {
        Watched { inner, watch }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                self.watch.feed(new);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `bytes` in pieces of `step` and return which of the first `n` requests are refused.
    fn refused(bytes: &[u8], step: usize, n: u64) -> Vec<bool> {
        let w = Watch::default();
        for piece in bytes.chunks(step.max(1)) {
            w.feed(piece);
        }
        (0..n).map(|i| w.refuses(i)).collect()
    }

    fn all_steps(bytes: &[u8], n: u64) -> Vec<bool> {
        let whole = refused(bytes, bytes.len(), n);
        for step in [1, 2, 3, 5, 7, 64] {
            assert_eq!(refused(bytes, step, n), whole, "step {step}");
        }
        whole
    }

    #[test]
    fn clean_requests_pass_whatever_their_framing() {
        let s = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n\
                  POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
                  POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n\n\r\n0\r\nX-Trailer: y\r\n\r\n\
                  \r\nGET /d HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n\
                  GET /e HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(all_steps(s, 6), vec![false; 6]);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused_in_either_order() {
        for conflict in [
            &b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"POST /x HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
            b"POST /x HTTP/1.1\r\nHost: h\r\nTRANSFER-ENCODING: chunked\r\nCONTENT-LENGTH : 5\r\n\r\n",
        ] {
            let mut s = b"GET /ok HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc".to_vec();
            s.extend_from_slice(conflict);
            s.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n");
            assert_eq!(
                all_steps(&s, 3),
                vec![false, true, true],
                "{}",
                String::from_utf8_lossy(conflict)
            );
        }
        // Bare LF line endings (hyper accepts them).
        let s = b"GET /ok HTTP/1.1\nHost: h\n\nPOST /x HTTP/1.1\nContent-Length: 3\nTransfer-Encoding: chunked\n\n0\r\n\r\n";
        assert_eq!(all_steps(s, 2), vec![false, true]);
        // Header text inside a body is not a head.
        let body = b"\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut s = format!(
            "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        s.extend_from_slice(body);
        s.extend_from_slice(b"GET /y HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(all_steps(&s, 2), vec![false, false]);
    }

    #[test]
    fn bytes_it_cannot_follow_refuse_what_comes_after() {
        // A chunk without its CRLF.
        let s = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(all_steps(s, 2), vec![false, true]);
        // A chunk size that is not hex.
        let s = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(all_steps(s, 2), vec![false, true]);
        // Different Content-Lengths.
        let s = b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(all_steps(s, 2), vec![false, true]);
        // A head longer than headgate reads.
        let mut s = b"GET / HTTP/1.1\r\nX: ".to_vec();
        s.resize(MAX_LINE_BYTES + 10, b'a');
        assert_eq!(all_steps(&s, 1), vec![true]);
    }

    #[test]
    fn many_tiny_chunks_are_followed_in_one_pass() {
        let mut s = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..100_000 {
            s.extend_from_slice(b"1\r\na\r\n");
        }
        s.extend_from_slice(b"0\r\n\r\nGET /y HTTP/1.1\r\n\r\n");
        let started = std::time::Instant::now();
        assert_eq!(refused(&s, 64 * 1024, 2), vec![false, false]);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn http2_is_not_watched() {
        let s = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00content-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        let w = Watch::default();
        w.feed(s);
        assert!(w.is_http2());
        assert!(!w.refuses(0) && !w.refuses(5));
    }
}
