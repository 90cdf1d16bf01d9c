//! A real browser for end-to-end tests: Debian's headless Chromium, driven over the Chrome DevTools Protocol
//! (CDP) from Rust.
//!
//! Chromium starts with `--remote-debugging-port=0` and prints `DevTools listening on ws://127.0.0.1:<port>/…`;
//! the page target's websocket comes from `http://127.0.0.1:<port>/json/list`. The CDP client is a minimal
//! RFC 6455 client on a plain `TcpStream` (the frame helpers of `harness::echo`): one request at a time, each
//! answered by the message with its `id`; events are read and dropped (no domain is enabled). The calls used:
//! `Page.navigate`, `Runtime.evaluate` (read the page, fill and submit forms), `Page.getLayoutMetrics`,
//! `Page.captureScreenshot`, `Emulation.setDeviceMetricsOverride` / `setEmulatedMedia` (a phone in dark mode),
//! `Browser.close`.
//!
//! Why not Playwright: `playwright-core` would add an npm dependency, a Node script between the test and the
//! browser, and a protocol version pinned to Playwright's own Chromium builds rather than Debian's; the few
//! calls above are stable CDP and need nothing but a socket.
//!
//! Chromium is required, never skipped: without it [`Chromium::launch`] panics with the install command.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::echo::{read_ws_frame, websocket_accept, ws_frame};
use super::process::ChildProcess;

/// How long one CDP call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The desktop viewport.
pub const DESKTOP: (u32, u32) = (1280, 900);
/// The phone viewport (CSS pixels) and its device scale factor.
pub const PHONE: (u32, u32, f64) = (390, 844, 2.0);

/// The install command printed when Chromium is missing.
pub const INSTALL: &str = "apt-get update && apt-get install -y --no-install-recommends chromium";

/// The Chromium binary: `$HEADGATE_CHROMIUM`, else `/usr/bin/chromium` (Debian's package), else `chromium` or
/// `chromium-browser` on `PATH`. Panics with the install command when there is none.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("HEADGATE_CHROMIUM") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "HEADGATE_CHROMIUM={} is not a file",
            p.display()
        );
        return p;
    }
    let debian = PathBuf::from("/usr/bin/chromium");
    if debian.is_file() {
        return debian;
    }
    for name in ["chromium", "chromium-browser"] {
        if let Ok(o) = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {name}"))
            .output()
            && o.status.success()
        {
            let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if !p.is_empty() {
                return PathBuf::from(p);
            }
        }
    }
    panic!(
        "\n\nThe browser test needs Chromium (Debian package `chromium`), and it is not installed.\n\
         Fix: sudo sh -c '{INSTALL}'   (tests/run installs it when run as root)\n\
         Or point HEADGATE_CHROMIUM at a Chromium or Chrome binary.\n\n"
    );
}

fn running_as_root() -> bool {
    headgate::admin::socket::own_uid().is_ok_and(|u| u == 0)
}

/// A headless Chromium with a throw-away profile; killed when dropped.
pub struct Chromium {
    process: ChildProcess,
    /// `ws://127.0.0.1:<port>/devtools/browser/<id>`.
    browser_ws: String,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Start Chromium and wait until its DevTools endpoint listens.
    pub fn launch() -> Chromium {
        let bin = binary();
        let profile = super::tempdir();
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--headless=new",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-features=Translate,MediaRouter,OptimizationHints",
            "--password-store=basic",
            "--use-mock-keychain",
            "--hide-scrollbars",
            "--mute-audio",
            "--force-color-profile=srgb",
            &format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
            &format!("--user-data-dir={}", profile.path().display()),
        ]);
        if running_as_root() {
            // Chromium refuses to run as root with its sandbox.
            cmd.arg("--no-sandbox");
        }
        cmd.arg("about:blank");
        // Its own crash reporter and D-Bus lookups only make noise in a test.
        cmd.env("DBUS_SESSION_BUS_ADDRESS", "disabled:")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY");
        let mut process = ChildProcess::spawn(&format!("chromium ({})", bin.display()), cmd);
        let line = process.wait_for_line(Duration::from_secs(30), |l| {
            l.contains("DevTools listening on ws://")
        });
        let browser_ws = line
            .split("DevTools listening on ")
            .nth(1)
            .unwrap()
            .trim()
            .to_string();
        let port = url::Url::parse(&browser_ws)
            .ok()
            .and_then(|u| u.port())
            .unwrap_or_else(|| panic!("no port in {browser_ws:?}"));
        Chromium {
            process,
            browser_ws,
            port,
            _profile: profile,
        }
    }

    /// The browser's version line (`Browser.getVersion`).
    pub async fn version(&self) -> String {
        let mut c = Cdp::connect(&self.browser_ws).await;
        let v = c.call("Browser.getVersion", json!({})).await.unwrap();
        format!(
            "{} (protocol {})",
            v["product"].as_str().unwrap_or("?"),
            v["protocolVersion"].as_str().unwrap_or("?")
        )
    }

    /// The first page (tab) Chromium opened, connected.
    pub async fn tab(&self) -> Tab {
        let deadline = Instant::now() + Duration::from_secs(10);
        let list_url = format!("http://127.0.0.1:{}/json/list", self.port);
        loop {
            let targets: Value = reqwest::get(&list_url)
                .await
                .unwrap_or_else(|e| panic!("GET {list_url}: {e}"))
                .json()
                .await
                .unwrap();
            if let Some(ws) = targets.as_array().and_then(|a| {
                a.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            }) {
                return Tab {
                    cdp: Cdp::connect(ws).await,
                };
            }
            assert!(
                Instant::now() < deadline,
                "Chromium has no page target: {targets}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ask Chromium to quit, and kill it when it does not within a few seconds.
    pub async fn close(mut self) {
        if let Ok(mut c) =
            tokio::time::timeout(Duration::from_secs(5), Cdp::try_connect(&self.browser_ws)).await
            && let Ok(c) = c.as_mut()
        {
            let _ = c.send("Browser.close", json!({})).await;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.process.has_exited() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.process.kill();
    }

    pub fn output(&self) -> String {
        self.process.output()
    }
}

/// One CDP websocket connection (a target: the browser, or one page).
pub struct Cdp {
    stream: TcpStream,
    next_id: u64,
    url: String,
}

impl Cdp {
    pub async fn connect(ws_url: &str) -> Cdp {
        Cdp::try_connect(ws_url)
            .await
            .unwrap_or_else(|e| panic!("CDP websocket {ws_url}: {e}"))
    }

    /// The websocket handshake (RFC 6455 section 4.1).
    pub async fn try_connect(ws_url: &str) -> Result<Cdp, String> {
        let u = url::Url::parse(ws_url).map_err(|e| e.to_string())?;
        let host = u.host_str().ok_or("no host")?.to_string();
        let port = u.port().ok_or("no port")?;
        let mut stream = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).ok();
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode(nonce);
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            u.path()
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // The response head, byte by byte (a frame may follow it).
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            stream.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            head.push(b[0]);
            if head.len() > 16 * 1024 {
                return Err("handshake answer too long".into());
            }
        }
        let head = String::from_utf8_lossy(&head).to_string();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(format!("handshake refused: {head}"));
        }
        let accept = websocket_accept(key.as_bytes());
        if !head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("sec-websocket-accept:") && l.contains(&accept)
        }) {
            return Err(format!("bad Sec-WebSocket-Accept: {head}"));
        }
        Ok(Cdp {
            stream,
            next_id: 1,
            url: ws_url.to_string(),
        })
    }

    async fn write_frame(&mut self, b0: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut mask = [0u8; 4];
        getrandom::fill(&mut mask).unwrap();
        self.stream
            .write_all(&ws_frame(b0, payload, Some(mask)))
            .await
    }

    /// Send a command without waiting for its answer; returns its id.
    pub async fn send(&mut self, method: &str, params: Value) -> std::io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.write_frame(0x81, msg.as_bytes()).await?;
        Ok(id)
    }

    /// The next whole message (text frames joined; pings answered).
    async fn read_message(&mut self) -> Result<Value, String> {
        let mut data = Vec::new();
        loop {
            let (b0, payload) = read_ws_frame(&mut self.stream)
                .await
                .map_err(|e| format!("reading from {}: {e}", self.url))?;
            match b0 & 0x0f {
                0x8 => return Err(format!("{} closed the connection", self.url)),
                0x9 => {
                    self.write_frame(0x8A, &payload)
                        .await
                        .map_err(|e| e.to_string())?;
                    continue;
                }
                0xA => continue,
                _ => data.extend_from_slice(&payload),
            }
            if b0 & 0x80 != 0 {
                return serde_json::from_slice(&data)
                    .map_err(|e| format!("CDP message is not JSON ({e})"));
            }
        }
    }

    /// Run one command and return its `result` (`Err` with CDP's error message).
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let id = self
            .send(method, params)
            .await
            .map_err(|e| format!("{method}: {e}"))?;
        let answer = tokio::time::timeout(CALL_TIMEOUT, async {
            loop {
                let m = self.read_message().await?;
                if m["id"].as_u64() == Some(id) {
                    return Ok::<Value, String>(m);
                }
            }
        })
        .await
        .map_err(|_| format!("{method}: no answer within {CALL_TIMEOUT:?}"))??;
        if let Some(e) = answer.get("error") {
            return Err(format!("{method}: {e}"));
        }
        Ok(answer["result"].clone())
    }
}

/// One page (tab).
pub struct Tab {
    cdp: Cdp,
}

impl Tab {
    /// Start loading `url` (returns at once; wait for what the page should show with [`Tab::wait_for`]).
    pub async fn navigate(&mut self, url: &str) {
        let r = self
            .cdp
            .call("Page.navigate", json!({ "url": url }))
            .await
            .unwrap();
        assert!(
            r.get("errorText").is_none(),
            "navigating to {url}: {}",
            r["errorText"]
        );
    }

    /// Evaluate `expression` in the page and return its value (JSON). `Err` when it threw or there is no page
    /// to evaluate in (between two documents).
    pub async fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let r = self
            .cdp
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": expression,
                    "returnByValue": true,
                    "awaitPromise": true,
                    "userGesture": true,
                }),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(format!(
                "{}: {}",
                e["text"].as_str().unwrap_or("exception"),
                e["exception"]["description"].as_str().unwrap_or("")
            ));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Wait until `predicate` (a JavaScript expression) is truthy in a fully loaded document; panics after
    /// `timeout` with what the page shows.
    pub async fn wait_for(&mut self, what: &str, predicate: &str, timeout: Duration) {
        let expr = format!("document.readyState === 'complete' && !!({predicate})");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Value::Bool(true)) = self.eval(&expr).await {
                return;
            }
            if Instant::now() > deadline {
                let (url, text) = (self.url().await, self.text().await);
                panic!(
                    "the browser never showed {what} within {timeout:?}; it is at {url}:\n{text}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The current document's URL.
    pub async fn url(&mut self) -> String {
        self.eval("location.href")
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// What the page shows (`document.body.innerText`).
    pub async fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''")
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The text of the first element matching `selector` (`None` when there is none).
    pub async fn text_of(&mut self, selector: &str) -> Option<String> {
        let sel = serde_json::to_string(selector).unwrap();
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); return e ? e.innerText : null; }})()"
        ))
        .await
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
    }

    /// Set the value of the input matching `selector` (as typing would, with `input` and `change` events).
    pub async fn fill(&mut self, selector: &str, value: &str) {
        let (sel, val) = (
            serde_json::to_string(selector).unwrap(),
            serde_json::to_string(value).unwrap(),
        );
        let r = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return false; e.focus(); \
                 e.value = {val}; e.dispatchEvent(new Event('input', {{bubbles: true}})); \
                 e.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})()"
            ))
            .await;
        assert_eq!(
            r,
            Ok(Value::Bool(true)),
            "no input {selector} on {}",
            self.url().await
        );
    }

    /// Click the element matching `selector` (a link, or a form's submit button: the browser navigates).
    pub async fn click(&mut self, selector: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        let r = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return false; \
                 setTimeout(() => e.click(), 0); return true; }})()"
            ))
            .await;
        if r != Ok(Value::Bool(true)) {
            let (url, text) = (self.url().await, self.text().await);
            panic!("nothing to click at {selector} on {url} ({r:?}):\n{text}");
        }
    }

    /// Click the first element of `selector` whose text contains `label` (e.g. a button by its caption).
    pub async fn click_text(&mut self, selector: &str, label: &str) {
        let (sel, lab) = (
            serde_json::to_string(selector).unwrap(),
            serde_json::to_string(label).unwrap(),
        );
        let r = self
            .eval(&format!(
                "(() => {{ const e = [...document.querySelectorAll({sel})].find(x => \
                 (x.innerText || x.value || '').includes({lab})); if (!e) return false; \
                 setTimeout(() => e.click(), 0); return true; }})()"
            ))
            .await;
        if r != Ok(Value::Bool(true)) {
            let (url, text) = (self.url().await, self.text().await);
            panic!("no {selector} labelled {label:?} on {url}:\n{text}");
        }
    }

    /// A PNG of the whole page at the desktop size, and one on a phone in dark mode (`<name>.phone-dark.png`):
    /// `dir/<name>.png`. Returns the paths.
    pub async fn screenshots(&mut self, dir: &Path, name: &str) -> Vec<PathBuf> {
        std::fs::create_dir_all(dir).unwrap();
        let desktop = dir.join(format!("{name}.png"));
        self.emulate(DESKTOP.0, DESKTOP.1, 1.0, false, "light")
            .await;
        self.capture(&desktop).await;
        let phone = dir.join(format!("{name}.phone-dark.png"));
        self.emulate(PHONE.0, PHONE.1, PHONE.2, true, "dark").await;
        self.capture(&phone).await;
        self.emulate(DESKTOP.0, DESKTOP.1, 1.0, false, "light")
            .await;
        vec![desktop, phone]
    }

    async fn emulate(&mut self, width: u32, height: u32, scale: f64, mobile: bool, scheme: &str) {
        self.cdp
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile }),
            )
            .await
            .unwrap();
        self.cdp
            .call(
                "Emulation.setEmulatedMedia",
                json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
            )
            .await
            .unwrap();
    }

    /// `Page.captureScreenshot` of the whole document (beyond the viewport) into `path`.
    async fn capture(&mut self, path: &Path) {
        let m = self
            .cdp
            .call("Page.getLayoutMetrics", json!({}))
            .await
            .unwrap();
        let size = &m["cssContentSize"];
        let (w, h) = (
            size["width"].as_f64().unwrap_or(DESKTOP.0 as f64),
            size["height"].as_f64().unwrap_or(DESKTOP.1 as f64),
        );
        let r = self
            .cdp
            .call(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": { "x": 0, "y": 0, "width": w.ceil(), "height": h.ceil().min(8000.0), "scale": 1 },
                }),
            )
            .await
            .unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .unwrap();
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "the screenshot is not a PNG"
        );
        std::fs::write(path, png).unwrap();
    }
}
