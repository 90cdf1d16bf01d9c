//! Sessions: the cookie codec (opaque random id + MAC, S6), creation, and the lookup that is the only way
//! to obtain a `VerifiedSession`. Looking a session up is a store read only; last-seen updates are batched
//! off the request path.

use std::sync::Arc;

use http::HeaderMap;
use tokio::sync::mpsc;

use crate::cookies::{self, CookieSettings};
use crate::crypto::{self, Keys, Purpose, Random};
use crate::store::{Link, SessionKey, SessionRecord, SessionSubject, Store, StoreError, User};

pub const COOKIE_BASE: &str = "headgate_session";
/// last_seen is written at most this often per session.
pub const TOUCH_EVERY_SECS: i64 = 300;

/// A session whose cookie verified and whose record exists and has not expired. Only `Sessions::lookup`
/// creates one.
#[derive(Debug, Clone)]
pub struct VerifiedSession {
    key: SessionKey,
    /// The session, its person and their link (any state), as read in one transaction (shared with the
    /// store's cache of session views).
    view: Arc<crate::store::SessionView>,
}

impl VerifiedSession {
    pub fn key(&self) -> &SessionKey {
        &self.key
    }
    pub fn record(&self) -> &SessionRecord {
        &self.view.record
    }
    /// The signed-in person (None for API-key sessions).
    pub fn user(&self) -> Option<&User> {
        self.view.user.as_ref()
    }
    /// The person's link to a Headscale user, pending or approved, as read in the same transaction as the
    /// session (so a request sees one consistent state).
    pub fn link(&self) -> Option<&Link> {
        self.view.link.as_ref()
    }
    pub fn is_api_key(&self) -> bool {
        matches!(self.view.record.subject, SessionSubject::ApiKey { .. })
    }
}

/// What the request's cookies say.
#[derive(Debug)]
pub enum Lookup {
    /// No session cookie.
    None,
    Valid(Box<VerifiedSession>),
    /// A session cookie that is forged, unknown, expired or whose user is gone: clear it.
    Invalid,
    /// More than one session cookie (S6): refuse with 401 and clear.
    Ambiguous,
}

pub struct Sessions {
    keys: Arc<Keys>,
    cookies: CookieSettings,
    /// The session cookie's name (fixed by the settings; looked up on every request).
    name: String,
    store: Store,
    random: Arc<dyn Random>,
    touch: mpsc::Sender<(SessionKey, i64)>,
    /// Sessions due for a refresh at the IdP, handled off the request path.
    refresh: Option<(mpsc::Sender<SessionKey>, i64)>,
}

impl Sessions {
    /// `touch` receives last-seen updates; the caller batches them into the store.
    pub fn new(
        keys: Arc<Keys>,
        cookies: CookieSettings,
        store: Store,
        random: Arc<dyn Random>,
        touch: mpsc::Sender<(SessionKey, i64)>,
    ) -> Self {
        Sessions {
            keys,
            name: cookies.name(COOKIE_BASE, "/"),
            cookies,
            store,
            random,
            touch,
            refresh: None,
        }
    }

    /// Ask for sessions with a refresh token to be refreshed once they are `interval` seconds old.
    pub fn with_refresh(mut self, tx: mpsc::Sender<SessionKey>, interval: i64) -> Self {
        self.refresh = Some((tx, interval));
        self
    }

    pub fn cookie_name(&self) -> String {
        self.name.clone()
    }

    /// A fresh random session id: the cookie value to send and the key to store it under.
    pub fn new_id(&self) -> (String, SessionKey) {
        let mut id = [0u8; 32];
        self.random.fill(&mut id);
        let tag = self.keys.mac(Purpose::SessionMac, &id);
        (
            format!("{}.{}", crypto::b64(&id), crypto::b64(&tag)),
            SessionKey::from_raw_id(&id),
        )
    }

    /// The cookie value's session key, when its MAC verifies (current or previous secret).
    pub fn verify_cookie(&self, value: &str) -> Option<SessionKey> {
        decode_cookie(&self.keys, value)
    }

    /// Store a new session and return its `Set-Cookie` value.
    pub async fn create(&self, record: SessionRecord, now: i64) -> Result<String, StoreError> {
        let (value, key) = self.new_id();
        let max_age = (record.expires - now).max(0) as u64;
        self.store.create_session(key, record).await?;
        Ok(self.cookies.set(COOKIE_BASE, &value, "/", Some(max_age)))
    }

    pub fn clear_cookie(&self) -> String {
        self.cookies.clear(COOKIE_BASE, "/")
    }

    /// Read the request's session. A store failure is an error (fail closed), never "no session".
    pub async fn lookup(&self, headers: &HeaderMap, now: i64) -> Result<Lookup, StoreError> {
        let mut values = cookies::request_cookies(headers)
            .filter(|(n, _)| *n == self.name)
            .map(|(_, v)| v);
        let value = match (values.next(), values.next()) {
            (None, _) => return Ok(Lookup::None),
            (Some(one), None) => one,
            (Some(_), Some(_)) => return Ok(Lookup::Ambiguous),
        };
        let Some(key) = self.verify_cookie(value) else {
            return Ok(Lookup::Invalid);
        };
        // One read transaction: the session, its person and their link.
        let Some(view) = self.store.session_view(&key).await? else {
            return Ok(Lookup::Invalid);
        };
        let record = &view.record;
        if now >= record.expires {
            return Ok(Lookup::Invalid);
        }
        if matches!(record.subject, SessionSubject::User(_)) && view.user.is_none() {
            return Ok(Lookup::Invalid);
        }
        if let Some((tx, interval)) = &self.refresh
            && record.refresh_token_enc.is_some()
            && now - record.refreshed >= *interval
        {
            let _ = tx.try_send(key);
        }
        if now - record.last_seen >= TOUCH_EVERY_SECS {
            // Best effort and never blocking: a full queue just skips this update.
            let _ = self.touch.try_send((key, now));
        }
        Ok(Lookup::Valid(Box::new(VerifiedSession { key, view })))
    }

    pub async fn delete(&self, key: &SessionKey) -> Result<bool, StoreError> {
        self.store.delete_session(key).await
    }
}

/// Batch last-seen updates into one write transaction every `every`; runs until the sender side closes.
pub async fn run_touch_batcher(
    store: Store,
    mut rx: mpsc::Receiver<(SessionKey, i64)>,
    every: std::time::Duration,
) {
    let mut batch: Vec<(SessionKey, i64)> = Vec::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some(x) => batch.push(x),
                None => break,
            },
            _ = tick.tick() => {
                if !batch.is_empty() {
                    let b = std::mem::take(&mut batch);
                    if let Err(e) = store.touch_sessions(b).await {
                        tracing::warn!(error = %e, "could not record last-seen times");
                    }
                }
            }
        }
    }
    if !batch.is_empty() {
        let _ = store.touch_sessions(batch).await;
    }
}

/// A session cookie value's session key, when it is `<b64 id>.<b64 MAC>` with a 32-byte id whose MAC
/// verifies (current or previous secret). Pure: the fuzz target and property tests drive it.
pub fn decode_cookie(keys: &Keys, value: &str) -> Option<SessionKey> {
    if value.len() > 100 {
        return None;
    }
    let (id, tag) = value.split_once('.')?;
    let id = crypto::unb64_32(id)?;
    let tag = crypto::unb64_32(tag)?;
    keys.verify_mac(Purpose::SessionMac, &id, &tag)
        .then(|| SessionKey::from_raw_id(&id))
}
