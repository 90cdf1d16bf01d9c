//! The configuration-dependent part of a running server, swappable on SIGHUP: the `App` every new request
//! uses and the TLS acceptor every new connection uses. A request keeps the `App` it started with; a swap
//! never waits for it. The store, the clock, open streams and the metrics are shared across swaps, so
//! sessions, streams and counters survive a reload.

use std::sync::{Arc, RwLock};

use tokio_rustls::TlsAcceptor;

use crate::app::App;

pub struct Live {
    app: RwLock<Arc<App>>,
    tls: RwLock<Option<TlsAcceptor>>,
}

impl Live {
    pub fn new(app: Arc<App>, tls: Option<TlsAcceptor>) -> Arc<Live> {
        Arc::new(Live {
            app: RwLock::new(app),
            tls: RwLock::new(tls),
        })
    }

    /// The current application (a clone of the `Arc`; the lock is never held across an `.await`).
    pub fn app(&self) -> Arc<App> {
        self.app.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Make `app` (and `tls`) current; returns the previous application.
    pub fn replace(&self, app: Arc<App>, tls: Option<TlsAcceptor>) -> Arc<App> {
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = tls;
        std::mem::replace(
            &mut *self.app.write().unwrap_or_else(|e| e.into_inner()),
            app,
        )
    }
}
