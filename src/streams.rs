//! Long-lived responses (server-sent events, websocket tunnels) tracked per session (S19): each is closed
//! when its session is revoked, its person's role changes, or the session expires.
//!
//! A stream is re-checked against the store every `server.stream_recheck_secs` (≤ 30 s) and at once when
//! this process changes sessions or users (the store signals it). The check is a store read done by the
//! background task, never by a request, and no lock is held across an `.await`: the open streams are
//! copied out, checked, and the ones to close removed afterwards. A store error closes every stream
//! (fail closed: nobody keeps a live view of the application on a session nobody could check).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{Notify, mpsc};

use crate::app::{Body, BoxError};
use crate::clock::Clock;
use crate::session::VerifiedSession;
use crate::store::{Role, SessionKey, SessionSubject, Store};

/// What kind of stream, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    EventStream,
    WebSocket,
}

struct Tracked {
    session: SessionKey,
    /// The person's role when the stream opened (None: an API-key session).
    role: Option<Role>,
    kind: Kind,
    /// Dropping the sender tells the stream to close.
    _stop: mpsc::Sender<()>,
}

/// The open streams of this process.
#[derive(Default)]
pub struct Streams {
    open: Mutex<HashMap<u64, Tracked>>,
    next: std::sync::atomic::AtomicU64,
}

/// Why a stream was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Revoked,
    Expired,
    RoleChanged,
    StoreFailure,
}

/// Held by the stream: dropping it (the stream ended on its own) forgets it.
pub struct StreamGuard {
    streams: Arc<Streams>,
    id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.streams.lock().remove(&self.id);
    }
}

/// The stream's side: ready once the stream must close.
pub struct StopSignal(mpsc::Receiver<()>);

impl StopSignal {
    /// Resolves when the stream must close.
    pub async fn stopped(&mut self) {
        // Nothing is ever sent: the sender is dropped to close.
        while self.0.recv().await.is_some() {}
    }
    fn poll_stopped(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.poll_recv(cx) {
            Poll::Ready(None) => Poll::Ready(()),
            Poll::Ready(Some(())) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and removes).
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Track a new stream of `session`.
    pub fn open(
        self: &Arc<Self>,
        session: &VerifiedSession,
        kind: Kind,
    ) -> (StreamGuard, StopSignal) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(1);
        self.lock().insert(
            id,
            Tracked {
                session: *session.key(),
                role: session.user().map(|u| u.role),
                kind,
                _stop: tx,
            },
        );
        (
            StreamGuard {
                streams: self.clone(),
                id,
            },
            StopSignal(rx),
        )
    }

    /// How many streams of `kind` are open.
    pub fn count(&self, kind: Kind) -> usize {
        self.lock().values().filter(|t| t.kind == kind).count()
    }

    /// Check every open stream's session against the store; close those that must end. Returns how many
    /// were closed.
    pub async fn recheck(&self, store: &Store, now: i64) -> usize {
        let snapshot: Vec<(u64, SessionKey, Option<Role>)> = self
            .lock()
            .iter()
            .map(|(id, t)| (*id, t.session, t.role))
            .collect();
        if snapshot.is_empty() {
            return 0;
        }
        let mut verdicts: HashMap<(SessionKey, Option<Role>), Option<CloseReason>> = HashMap::new();
        let mut close = Vec::new();
        for (id, key, role) in snapshot {
            let verdict = match verdicts.get(&(key, role)) {
                Some(v) => *v,
                None => {
                    let v = still_valid(store, &key, role, now).await;
                    verdicts.insert((key, role), v);
                    v
                }
            };
            if let Some(reason) = verdict {
                close.push((id, reason));
            }
        }
        let mut open = self.lock();
        let mut n = 0;
        for (id, reason) in close {
            if let Some(t) = open.remove(&id) {
                tracing::info!(kind = ?t.kind, reason = ?reason, "stream closed");
                n += 1;
            }
        }
        n
    }

    /// Re-check every `every`, and at once whenever the store says sessions or users changed.
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        clock: Arc<dyn Clock>,
        every: Duration,
        changed: Arc<Notify>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = changed.notified() => {}
            }
            self.recheck(&store, clock.now()).await;
        }
    }
}

/// None when the stream may stay open; otherwise why it must close.
async fn still_valid(
    store: &Store,
    key: &SessionKey,
    role: Option<Role>,
    now: i64,
) -> Option<CloseReason> {
    let record = match store.session(key).await {
        Ok(Some(r)) => r,
        Ok(None) => return Some(CloseReason::Revoked),
        Err(e) => {
            tracing::error!(error = %e, "store failure while re-checking open streams: closing them");
            return Some(CloseReason::StoreFailure);
        }
    };
    if now >= record.expires {
        return Some(CloseReason::Expired);
    }
    match (&record.subject, role) {
        (SessionSubject::User(id), Some(was)) => match store.user(*id).await {
            Ok(Some(u)) if u.role == was => None,
            Ok(Some(_)) => Some(CloseReason::RoleChanged),
            Ok(None) => Some(CloseReason::Revoked),
            Err(e) => {
                tracing::error!(error = %e, "store failure while re-checking open streams: closing them");
                Some(CloseReason::StoreFailure)
            }
        },
        (SessionSubject::ApiKey { .. }, None) => None,
        // The session's subject changed kind: not the session the stream was opened on.
        _ => Some(CloseReason::Revoked),
    }
}

/// A response body that ends when its stream is told to stop (the client sees the stream end, and an
/// `EventSource` reconnecting meets the sign-in).
pub struct TrackedBody {
    inner: Body,
    stop: StopSignal,
    _guard: StreamGuard,
    done: bool,
}

impl TrackedBody {
    pub fn new(inner: Body, guard: StreamGuard, stop: StopSignal) -> Self {
        TrackedBody {
            inner,
            stop,
            _guard: guard,
            done: false,
        }
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.stop.poll_stopped(cx).is_ready() {
            self.done = true;
            return Poll::Ready(None);
        }
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.done = true;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
