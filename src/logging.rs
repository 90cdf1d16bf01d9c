//! Logging: human or JSON lines on stderr; values that may carry control characters are escaped (S20).
//!
//! Lines are not written by the thread that logs them: they are copied into one buffer that a background
//! thread writes out a few milliseconds later, so a request's log line costs a copy, not a `write(2)` on the
//! request path. The buffer is bounded ([`BUFFER_MAX_BYTES`]): past it the logging thread writes itself, so
//! a stalled stderr slows requests down instead of growing memory. [`FlushOnDrop`] (held by `serve`) and the
//! panic hook write out what is left; a `kill -9` loses at most the last few milliseconds of lines.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::config::LogFormat;

/// Past this many buffered bytes a logging thread writes to stderr itself.
const BUFFER_MAX_BYTES: usize = 1 << 20;
/// How long the writer waits after the first line of a batch, so one `write(2)` carries many lines.
const BATCH_WAIT: Duration = Duration::from_millis(2);

/// Install the global subscriber. `RUST_LOG` wins over `server.log_level` when set.
pub fn init(format: LogFormat, level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(SinkWriter(sink().clone()));
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Human => builder.with_ansi(false).try_init(),
    };
    // A panic's message goes to stderr directly: the lines logged before it go first.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            flush();
            previous(info);
        }));
    });
}

/// Write out every buffered line now.
pub fn flush() {
    if let Some(s) = SINK.get() {
        let pending = std::mem::take(&mut *s.lock());
        write_stderr(&pending);
    }
}

/// Flushes the log buffer when dropped (at the end of `serve`, whatever way it ends).
pub struct FlushOnDrop;

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        flush();
    }
}

struct Sink {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
    /// No writer thread could be started: each line is written by the thread that logs it.
    direct: std::sync::atomic::AtomicBool,
}

impl Sink {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }
}

static SINK: OnceLock<Arc<Sink>> = OnceLock::new();

fn sink() -> &'static Arc<Sink> {
    SINK.get_or_init(|| {
        let sink = Arc::new(Sink {
            buf: Mutex::new(Vec::with_capacity(64 * 1024)),
            wake: Condvar::new(),
            direct: std::sync::atomic::AtomicBool::new(false),
        });
        let writer = sink.clone();
        let spawned = std::thread::Builder::new()
            .name("headgate-log".into())
            .spawn(move || write_out(&writer));
        if spawned.is_err() {
            sink.direct
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        sink
    })
}

/// The writer thread: wait for a first line, let a batch gather, write it with one call.
fn write_out(sink: &Sink) {
    let mut spare = Vec::with_capacity(64 * 1024);
    loop {
        {
            let mut buf = sink.lock();
            while buf.is_empty() {
                buf = sink.wake.wait(buf).unwrap_or_else(|p| p.into_inner());
            }
        }
        std::thread::sleep(BATCH_WAIT);
        std::mem::swap(&mut *sink.lock(), &mut spare);
        write_stderr(&spare);
        spare.clear();
        if spare.capacity() > 4 * BUFFER_MAX_BYTES {
            spare = Vec::with_capacity(64 * 1024);
        }
    }
}

fn write_stderr(bytes: &[u8]) {
    if !bytes.is_empty() {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(bytes);
        let _ = err.flush();
    }
}

/// What the subscriber writes each formatted line to (the whole line in one `write_all`).
#[derive(Clone)]
struct SinkWriter(Arc<Sink>);

impl Write for SinkWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut buf = self.0.lock();
        if buf.len() + line.len() > BUFFER_MAX_BYTES
            || self.0.direct.load(std::sync::atomic::Ordering::Relaxed)
        {
            // stderr does not keep up: write the backlog and this line here (in order, under the lock).
            let pending = std::mem::take(&mut *buf);
            write_stderr(&pending);
            write_stderr(line);
            return Ok(line.len());
        }
        let was_empty = buf.is_empty();
        buf.extend_from_slice(line);
        drop(buf);
        if was_empty {
            self.0.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for SinkWriter {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Escape control characters (and backslashes) so a logged value cannot forge or break log lines.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_control_characters() {
        assert_eq!(super::escape("/a\nb\x1b[31m\\"), "/a\\nb\\u{1b}[31m\\\\");
        assert!(matches!(
            super::escape("/plain"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
