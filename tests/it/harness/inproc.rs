//! headgate's server run in-process on port 0, with a clock the test moves (the way to test expiry without
//! waiting).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use headgate::app::App;
use headgate::clock::ManualClock;
use headgate::config::Config;
use headgate::crypto::OsRandom;
use headgate::http_client::HttpClient;
use headgate::server::Server;
use headgate::store::Store;

use super::headgate::TEST_SECRET;

pub struct InProcess {
    pub addr: SocketAddr,
    pub clock: Arc<ManualClock>,
    pub store: Store,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    /// Start with `sections` appended after a `[server]` section that points at the bound port.
    pub fn start(sections: &str) -> InProcess {
        InProcess::start_with("", sections)
    }

    /// Like [`InProcess::start`], with `server_extra` lines added to the `[server]` section.
    pub fn start_with(server_extra: &str, sections: &str) -> InProcess {
        let dir = super::tempdir();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let text = format!(
            "[server]\nlisten = \"{addr}\"\nbase_url = \"http://{addr}\"\ncookie_secret = \"{TEST_SECRET}\"\ncookie_secure = false\ndata_path = \"{}\"\n{server_extra}\n\n{sections}\n{}\n",
            dir.path().join("data").display(),
            super::test_store_section().unwrap_or_default()
        );
        let config =
            Config::parse("in-process", &text, &HashMap::new()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let clock = Arc::new(ManualClock::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let clock2 = clock.clone();
        let (opened_tx, opened_rx) = std::sync::mpsc::channel::<Store>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            // Opened on the server's runtime (a PostgreSQL store's connections and listener live there).
            let store2 = rt.block_on(async {
                match &config.store {
                    headgate::config::StoreConfig::Redb => {
                        Store::open_redb(&config.store_path(), 4 << 20)
                    }
                    headgate::config::StoreConfig::Postgres(pg) => Store::open_postgres(pg).await,
                }
                .unwrap_or_else(|e| panic!("open the store: {e}"))
            });
            opened_tx.send(store2.clone()).unwrap();
            rt.block_on(async move {
                let (app, bg) = App::new(
                    Arc::new(config),
                    store2,
                    HttpClient::new(),
                    clock2,
                    Arc::new(OsRandom),
                );
                let app = Arc::new(app);
                app.spawn_background(bg);
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let server = Server::from_listener(app, listener).unwrap();
                server
                    .run(
                        async move {
                            let _ = stop_rx.await;
                        },
                        std::time::Duration::from_secs(1),
                    )
                    .await;
            });
        });
        let store = opened_rx
            .recv()
            .expect("the server thread opened the store");
        InProcess {
            addr,
            clock,
            store,
            _dir: dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
