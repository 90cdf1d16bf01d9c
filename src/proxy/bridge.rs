//! The API-key bridge (`upstream.headplane_login = "api_key"`): headgate signs in to Headplane itself with
//! `headscale.api_key`, keeps the `_hp_auth` session server-side, attaches it only to allowed requests on
//! non-public rows, and signs in again — single-flight, with backoff — when Headplane says the session is
//! gone. `_hp_auth` never reaches the browser (the response hygiene drops it).
//!
//! No lock is held across an `.await`: the state is a std mutex touched only between awaits; waiters for a
//! sign-in in progress wait on a `watch` channel.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::watch;

use super::forward::Upstream;
use crate::config::Secret;

/// How long a sign-in to Headplane may take.
const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(15);
/// Backoff after a failed sign-in: doubles from 1 s up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, thiserror::Error)]
pub enum BridgeError {
    #[error(
        "Headplane refused headscale.api_key at POST /admin/login (is the key valid and unexpired? `headscale apikeys list`)"
    )]
    Refused,
    #[error("Headplane could not be reached for the bridge sign-in: {0}")]
    Unreachable(String),
    #[error("the bridge sign-in is backing off after a failure ({0} s left)")]
    BackingOff(u64),
}

struct State {
    /// `_hp_auth=<value>` and the generation it belongs to.
    cookie: Option<(String, u64)>,
    generation: u64,
    signing_in: bool,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<BridgeError>,
}

pub struct Bridge {
    upstream: Upstream,
    api_key: Secret,
    /// The `Host` Headplane sees for the sign-in (the public one, so its `Origin` logic stays consistent).
    host: String,
    state: Mutex<State>,
    done: watch::Sender<u64>,
}

/// The session cookie to attach, and which generation it is (to invalidate exactly that one).
#[derive(Debug, Clone)]
pub struct Ticket {
    pub cookie: String,
    pub generation: u64,
}

impl Bridge {
    pub fn new(upstream: Upstream, api_key: Secret, host: String) -> Self {
        let (done, _) = watch::channel(0);
        Bridge {
            upstream,
            api_key,
            host,
            state: Mutex::new(State {
                cookie: None,
                generation: 0,
                signing_in: false,
                failures: 0,
                retry_at: None,
                last_error: None,
            }),
            done,
        }
    }

    /// The current session, signing in first when there is none (one sign-in at a time; others wait).
    pub async fn ticket(&self) -> Result<Ticket, BridgeError> {
        loop {
            let mut rx = self.done.subscribe();
            let lead = {
                let mut st = self.state.lock().unwrap();
                if let Some((c, g)) = &st.cookie {
                    return Ok(Ticket {
                        cookie: c.clone(),
                        generation: *g,
                    });
                }
                if let Some(at) = st.retry_at
                    && Instant::now() < at
                {
                    return Err(BridgeError::BackingOff(
                        (at - Instant::now()).as_secs().max(1),
                    ));
                }
                if st.signing_in {
                    false
                } else {
                    st.signing_in = true;
                    true
                }
            };
            if lead {
                let result = self.sign_in().await;
                let mut st = self.state.lock().unwrap();
                st.signing_in = false;
                st.generation += 1;
                let generation = st.generation;
                match result {
                    Ok(c) => {
                        st.cookie = Some((c, generation));
                        st.failures = 0;
                        st.retry_at = None;
                        st.last_error = None;
                        tracing::info!("the bridge signed in to Headplane");
                    }
                    Err(e) => {
                        st.failures += 1;
                        let backoff =
                            Duration::from_secs(1u64 << st.failures.min(6)).min(MAX_BACKOFF);
                        st.retry_at = Some(Instant::now() + backoff);
                        tracing::error!("{e}; retrying in {} s", backoff.as_secs());
                        st.last_error = Some(e.clone());
                        drop(st);
                        let _ = self.done.send(generation);
                        return Err(e);
                    }
                }
                drop(st);
                let _ = self.done.send(generation);
                continue;
            }
            // Someone else is signing in: wait for them, then look again.
            let _ = rx.changed().await;
            if let Some(e) = self.state.lock().unwrap().last_error.clone()
                && self.state.lock().unwrap().cookie.is_none()
            {
                return Err(e);
            }
        }
    }

    /// Forget the session of `generation` (Headplane said it is gone); a newer one is kept.
    pub fn invalidate(&self, generation: u64) {
        let mut st = self.state.lock().unwrap();
        if st.cookie.as_ref().is_some_and(|(_, g)| *g == generation) {
            st.cookie = None;
            tracing::info!(
                "Headplane ended the bridge session; signing in again on the next request"
            );
        }
    }

    /// Forget any session (the key changed or was re-checked as invalid).
    pub fn reset(&self) {
        self.state.lock().unwrap().cookie = None;
    }

    async fn sign_in(&self) -> Result<String, BridgeError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("api_key", self.api_key.expose())
            .finish();
        let req = Request::builder()
            .method(Method::POST)
            .header(
                header::HOST,
                HeaderValue::from_str(&self.host).unwrap_or(HeaderValue::from_static("localhost")),
            )
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::CONTENT_LENGTH, body.len())
            .body(())
            .map_err(|e| BridgeError::Unreachable(e.to_string()))?;
        let (parts, ()) = req.into_parts();
        let body = Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed();
        let resp = tokio::time::timeout(
            SIGN_IN_TIMEOUT,
            self.upstream.send(parts, "/admin/login", body),
        )
        .await
        .map_err(|_| {
            BridgeError::Unreachable(format!("no answer within {} s", SIGN_IN_TIMEOUT.as_secs()))
        })?
        .map_err(|e| BridgeError::Unreachable(e.to_string()))?;
        let cookie = resp
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|c| c.split(';').next())
            .find(|c| c.starts_with("_hp_auth=") && c.len() > "_hp_auth=".len())
            .map(str::to_string);
        match (resp.status(), cookie) {
            (s, Some(c)) if s.is_redirection() || s == StatusCode::ACCEPTED => Ok(c),
            _ => Err(BridgeError::Refused),
        }
    }
}

/// Whether an upstream answer says the bridge session is gone (`spec/headplane.md`): every such answer
/// (page 302 to the login, the single-fetch redirect of a `.data` load) clears `_hp_auth`.
pub fn session_gone<B>(resp: &Response<B>) -> bool {
    resp.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|c| {
            let first = c.split(';').next().unwrap_or("").trim();
            first == "_hp_auth=" || first == "_hp_auth=\"\""
        })
}
