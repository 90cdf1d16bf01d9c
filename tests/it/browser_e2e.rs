//! The demo's sign-in, end to end, in a real browser: Debian's headless Chromium (`harness::chromium`,
//! driven over the DevTools protocol) against the stack `deploy/demo/run` starts, built from the demo's own
//! pieces:
//!
//! * `deploy/demo/run --config-only` writes headgate's config, its secret files and the test IdP's
//!   configuration (`idp.json`: the demo client, alice and bob); the test fills in the stand-ins' URLs;
//! * the Headscale stand-in and the demo upstream page are `examples/demo_stack/upstream.rs`, the code the
//!   demo runs;
//! * the real test IdP (`tests/idp/provider.mjs`) and the real headgate binary.
//!
//! The browser walks what a person does: headgate's sign-in page → "Sign in with SSO" → the IdP's login form →
//! its consent page → headgate's onboarding (linked to the Headscale user `alice` by her verified email; a
//! one-time key; her devices found) → the demo page ("Signed in as Alice Example, role owner, Headscale user
//! alice …"). Each step asserts what the page shows, and each page is saved as a screenshot, at desktop size
//! and on a phone in dark mode, to `target/screenshots/` for review.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::chromium::{Chromium, Tab};
use crate::harness::demo_upstream;
use crate::harness::fake_headscale::FakeHeadscale;
use crate::harness::idp::TestIdp;
use crate::harness::process::ChildProcess;

const STEP: Duration = Duration::from_secs(20);

/// Where the screenshots go: `<target dir>/screenshots/`.
fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("screenshots")
}

/// The demo's stack, started from the demo's files (see the module docs).
struct Demo {
    base: String,
    idp: TestIdp,
    hs: FakeHeadscale,
    _headgate: ChildProcess,
    upstream: tokio::task::JoinHandle<()>,
    _state: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.upstream.abort();
    }
}

async fn start_demo() -> Demo {
    let tmp = crate::harness::tempdir();
    let state = tmp.path().join("demo");
    let port = crate::harness::free_port();
    let out = Command::new("bash")
        .arg(crate::harness::root().join("deploy/demo/run"))
        .arg("--config-only")
        .env("HEADGATE_DEMO_DIR", &state)
        .env("HEADGATE_DEMO_PORT", port.to_string())
        .output()
        .expect("run deploy/demo/run --config-only");
    assert!(
        out.status.success(),
        "deploy/demo/run --config-only failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config_path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());

    // The stand-ins, as demo_stack runs them.
    let hs = demo_upstream::headscale_stand_in();
    std::fs::write(state.join("secrets/headscale_api_key"), hs.admin_key()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = tokio::spawn(demo_upstream::serve(listener));

    // The test IdP with the demo's configuration.
    let idp_config: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("idp.json")).unwrap()).unwrap();
    let idp = TestIdp::start_config(idp_config);

    // The demo's headgate.toml with the real URLs in place of the placeholders.
    let mut config: toml::Table = std::fs::read_to_string(&config_path)
        .unwrap()
        .parse()
        .unwrap();
    let mut set = |section: &str, key: &str, value: &str| {
        config[section].as_table_mut().unwrap()[key] = toml::Value::String(value.into());
    };
    set("oidc", "issuer", idp.issuer());
    set("headscale", "url", &hs.url());
    set("upstream", "url", &upstream_url);
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();

    let mut cmd = Command::new(crate::harness::headgate_bin());
    cmd.arg("--config").arg(&config_path).arg("serve");
    cmd.env_remove("RUST_LOG");
    let mut headgate = ChildProcess::spawn("headgate (the demo's config)", cmd);
    headgate.wait_for_line(Duration::from_secs(20), |l| {
        l.contains("headgate listening on")
    });
    Demo {
        base: format!("http://127.0.0.1:{port}"),
        idp,
        hs,
        _headgate: headgate,
        upstream,
        _state: tmp,
    }
}

/// Screenshots of the page the tab shows, numbered in the order of the walk.
struct Shots {
    dir: PathBuf,
    n: usize,
    saved: Vec<PathBuf>,
}

impl Shots {
    async fn take(&mut self, tab: &mut Tab, name: &str) {
        self.n += 1;
        let files = tab
            .screenshots(&self.dir, &format!("{:02}-{name}", self.n))
            .await;
        self.saved.extend(files);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_sign_in_in_headless_chromium() {
    let started = Instant::now();
    let demo = start_demo().await;
    let browser = Chromium::launch();
    eprintln!("browser: {}", browser.version().await);
    let mut tab = browser.tab().await;
    let dir = screenshot_dir();
    let mut shots = Shots {
        dir: dir.clone(),
        n: 0,
        saved: Vec::new(),
    };
    let idp_origin = {
        let u = url::Url::parse(demo.idp.issuer()).unwrap();
        u.origin().ascii_serialization()
    };
    let on_idp = format!(
        "location.origin === {}",
        serde_json::to_string(&idp_origin).unwrap()
    );

    // 1. The demo's URL: headgate's sign-in page.
    tab.navigate(&format!("{}/", demo.base)).await;
    tab.wait_for(
        "headgate's sign-in page",
        "location.pathname === '/admin/login' && document.querySelector('a[href^=\"/admin/oidc/start\"]')",
        STEP,
    )
    .await;
    let text = tab.text().await;
    assert!(text.contains("Sign in with SSO"), "{text}");
    assert!(
        tab.eval("!!document.querySelector('input[name=api_key]')")
            .await
            .unwrap()
            == Value::Bool(true),
        "the API-key form is offered too: {text}"
    );
    shots.take(&mut tab, "login").await;

    // 2. "Sign in with SSO": the IdP's login form.
    tab.click("a[href^=\"/admin/oidc/start\"]").await;
    tab.wait_for(
        "the IdP's login form",
        &format!("{on_idp} && document.querySelector('input[name=login]')"),
        STEP,
    )
    .await;
    let text = tab.text().await;
    assert!(
        text.contains("Sign in") && text.contains("to continue to headgate-demo"),
        "{text}"
    );
    shots.take(&mut tab, "idp-login").await;
    tab.fill("input[name=login]", "alice").await;
    tab.fill("input[name=password]", "alice-password").await;
    tab.click("button[type=submit][value=login]").await;

    // 3. The IdP's consent page.
    tab.wait_for(
        "the IdP's consent page",
        &format!("{on_idp} && document.querySelector('button[value=allow]')"),
        STEP,
    )
    .await;
    let text = tab.text().await;
    assert!(text.contains("headgate-demo asks for"), "{text}");
    assert!(text.contains("email") && text.contains("profile"), "{text}");
    shots.take(&mut tab, "idp-consent").await;
    tab.click("button[value=allow]").await;

    // 4. Back at headgate: the first sign-in's onboarding. alice is linked already (her verified email
    //    matches the Headscale user alice), so it opens at step 2: connect a device, with a one-time key.
    tab.wait_for(
        "headgate's onboarding",
        "location.pathname === '/_headgate/onboarding' && document.querySelector('h1')",
        STEP,
    )
    .await;
    assert_eq!(
        tab.text_of("h1").await.as_deref(),
        Some("Connect your first device"),
        "{}",
        tab.text().await
    );
    let me = tab
        .eval("fetch('/_headgate/whoami').then(r => r.json())")
        .await
        .unwrap();
    assert_eq!(
        (
            me["role"].as_str(),
            me["link"].as_str(),
            me["auth"].as_str()
        ),
        (Some("owner"), Some("linked"), Some("oidc")),
        "the browser's session: {me}"
    );
    let text = tab.text().await;
    // Shown in small capitals (CSS text-transform).
    assert!(text.to_lowercase().contains("step 2 of 3"), "{text}");
    let login_server = demo.hs.url().trim_end_matches('/').to_string();
    assert!(
        text.contains(&format!("tailscale up --login-server {login_server}")),
        "{text}"
    );
    shots.take(&mut tab, "onboarding-device").await;
    tab.click_text("button", "Create a one-time key").await;
    tab.wait_for(
        "the one-time key",
        "document.body.innerText.includes('Your one-time key')",
        STEP,
    )
    .await;
    let keys = demo.hs.preauth_keys();
    assert_eq!(keys.len(), 1, "one key was created at Headscale: {keys:?}");
    let text = tab.text().await;
    assert!(
        text.contains(&format!("--authkey {}", keys[0].key)),
        "the key is shown with the command: {text}"
    );
    shots.take(&mut tab, "onboarding-key").await;
    tab.click_text("a", "find my device").await;

    // Step 3: her devices are already in the stand-in's tailnet.
    tab.wait_for(
        "onboarding's last step",
        "document.querySelector('h1') && document.querySelector('h1').innerText === 'Waiting for your device'",
        STEP,
    )
    .await;
    let text = tab.text().await;
    assert!(text.contains("Device connected"), "{text}");
    assert!(
        text.contains("alice-laptop") || text.contains("alice-phone"),
        "{text}"
    );
    shots.take(&mut tab, "onboarding-done").await;
    tab.click_text("button", "Continue").await;

    // 5. The demo upstream page, behind headgate: who headgate says is there.
    tab.wait_for(
        "the demo upstream page",
        "document.getElementById('who')",
        STEP,
    )
    .await;
    assert_eq!(
        tab.text_of("#who").await.as_deref(),
        Some("Alice Example"),
        "{}",
        tab.text().await
    );
    assert_eq!(tab.text_of("#role").await.as_deref(), Some("owner"));
    let hs_user = tab.text_of("#hs-user").await.unwrap_or_default();
    assert!(hs_user.starts_with("alice (id "), "{hs_user}");
    let text = tab.text().await;
    assert!(
        text.contains("Signed in as Alice Example, role owner, Headscale user alice")
            && text.contains("(via oidc)"),
        "{text}"
    );
    assert!(text.contains("X-Headgate-Assertion"), "{text}");
    assert_eq!(
        tab.eval("location.pathname").await.unwrap(),
        "/admin/",
        "the sign-in ended where it started"
    );
    shots.take(&mut tab, "upstream").await;

    browser.close().await;
    for f in &shots.saved {
        let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "{} is {len} bytes", f.display());
    }
    eprintln!(
        "the demo sign-in took {:.1} s in Chromium; {} screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.saved.len(),
        dir.display()
    );
    drop(demo);
}
