//! Running it for real: readiness (upstream and store required, IdP informational), metrics, the request log
//! line, SIGHUP reload (policy applied to the next request, sessions kept, broken files refused, the admin
//! socket following the new configuration), SIGTERM finishing in-flight requests, and `headgate healthcheck`.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::browser::Browser;
use crate::harness::echo::Echo;
use crate::harness::headgate::Headgate;
use crate::harness::rogue::RogueIdp;
use crate::harness::stack::{Site, oidc_section};

const SIGHUP: i32 = 1;
const SIGTERM: i32 = 15;

fn upstream_section(url: &str, extra: &str) -> String {
    format!("[upstream]\nurl = \"{url}\"\nheadplane_login = \"proxy_auth\"\n\n{extra}")
}

async fn sign_in(site: &Site, rogue: &RogueIdp, sub: &str) -> Browser {
    rogue.set_subject(sub);
    rogue.set_claim("email", format!("{sub}@example.com"));
    rogue.set_claim("email_verified", true);
    let b = Browser::new();
    let to_idp = b.get(site.url("/admin/oidc/start")).await;
    let back = b.get(to_idp.location().unwrap().as_str()).await;
    let done = b.get(back.location().unwrap().as_str()).await;
    assert_eq!(done.status(), 302, "{}", done.text());
    b
}

async fn readyz(site: &Site) -> (u16, Value) {
    let r = reqwest::get(site.url("/_headgate/readyz")).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readiness_follows_the_upstream_and_only_reports_the_idp() {
    let site = Site::new();
    let rogue = RogueIdp::start();
    // An upstream we can take away and bring back on the same port.
    let port = crate::harness::free_port();
    let listener = accepting(port).await;
    let _hg = site
        .config(None)
        .section(upstream_section(&format!("http://127.0.0.1:{port}"), ""))
        .section(oidc_section(rogue.issuer(), ""))
        .start();
    let (status, body) = readyz(&site).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["store"]["ok"], true, "{body}");
    assert_eq!(body["checks"]["upstream"]["ok"], true, "{body}");
    assert_eq!(body["info"]["idp"]["state"], "reachable", "{body}");
    listener.abort();
    let _ = listener.await;
    let (status, body) = readyz(&site).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["upstream"]["ok"], false, "{body}");
    assert!(
        body["checks"]["upstream"]["error"]
            .as_str()
            .unwrap()
            .contains("upstream.url"),
        "{body}"
    );
    let _back = accepting(port).await;
    assert_eq!(readyz(&site).await.0, 200);
    // The IdP going away is reported, never a reason to leave service (after the cached state expires).
    drop(rogue);
    wait_until("readyz reports the IdP unreachable", async || {
        let (status, body) = readyz(&site).await;
        assert_eq!(
            status, 200,
            "an IdP outage made the replica unready: {body}"
        );
        body["info"]["idp"]["state"] == "unreachable"
            && body["warnings"].to_string().contains("API-key sign-in")
    })
    .await;
    // readyz is headgate's own: it never stands for a proxied path.
    let r = reqwest::get(site.url("/_headgate/readyz/../../admin/machines"))
        .await
        .unwrap();
    assert_ne!(r.status(), 200);
}

#[tokio::test]
async fn readiness_follows_the_store() {
    let rogue = RogueIdp::start();
    let echo = Echo::start();
    let hg = crate::harness::inproc::InProcess::start(&format!(
        "{}\n{}",
        upstream_section(&echo.url(), ""),
        oidc_section(rogue.issuer(), "")
    ));
    let get = || async {
        let r = reqwest::get(hg.url("/_headgate/readyz")).await.unwrap();
        let s = r.status().as_u16();
        (s, r.json::<Value>().await.unwrap())
    };
    assert_eq!(get().await.0, 200);
    hg.store.fail_reads_for_test(true);
    let (status, body) = get().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["store"]["ok"], false, "{body}");
    // Meanwhile a proxied request fails closed.
    let r = reqwest::Client::new()
        .get(hg.url("/admin/machines"))
        .header("cookie", "headgate_session=x.y")
        .send()
        .await
        .unwrap();
    assert!(r.status().as_u16() >= 400, "{}", r.status());
    hg.store.fail_reads_for_test(false);
    assert_eq!(get().await.0, 200);
}

/// A listener on `port` that accepts and drops connections until the task is aborted.
async fn accepting(port: u16) -> tokio::task::JoinHandle<()> {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    })
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[tokio::test]
async fn metrics_count_sign_ins_allows_and_denies_and_the_log_says_why() {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let echo = Echo::start();
    let mut hg = site
        .config(None)
        .section(upstream_section(&echo.url(), ""))
        .section(oidc_section(rogue.issuer(), ""))
        .start();
    let m0 = reqwest::get(site.url("/_headgate/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(
            &m0,
            "headgate_sign_ins_total{method=\"oidc\",outcome=\"success\"}"
        ),
        0
    );
    let owner = sign_in(&site, &rogue, "owner-sub").await;
    let member = sign_in(&site, &rogue, "member-sub").await;
    assert_eq!(owner.get(site.url("/admin/machines")).await.status(), 200);
    let denied = member
        .get_with(site.url("/admin/machines"), &[("accept", "text/html")])
        .await;
    assert_eq!(denied.status(), 403);
    let request_id = denied.header("x-request-id").expect("a request id");
    let r = reqwest::get(site.url("/_headgate/metrics")).await.unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let m = r.text().await.unwrap();
    assert_eq!(
        metric(
            &m,
            "headgate_sign_ins_total{method=\"oidc\",outcome=\"success\"}"
        ),
        2,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "headgate_requests_total{class=\"proxy\",verdict=\"allow\"}"
        ) >= 1
    );
    assert!(
        metric(
            &m,
            "headgate_requests_total{class=\"proxy\",verdict=\"deny\"}"
        ) >= 1
    );
    assert!(metric(&m, "headgate_upstream_request_duration_seconds_count") >= 1);
    // The denial's log line names its request id, verdict and reason code.
    let line = hg
        .process
        .wait_for_line(Duration::from_secs(5), |l| l.contains(&request_id));
    assert!(
        line.contains("verdict=deny ") || line.contains("\"verdict\":\"deny\""),
        "{line}"
    );
    assert!(line.contains("reason="), "{line}");
}

#[tokio::test]
async fn sighup_applies_a_new_policy_keeps_sessions_and_refuses_a_broken_file() {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let echo = Echo::start();
    let mut hg = site
        .config(None)
        .section(upstream_section(&echo.url(), ""))
        .section(oidc_section(rogue.issuer(), ""))
        .start();
    let owner = sign_in(&site, &rogue, "owner-sub").await;
    // /status is outside /admin and no rule covers it: denied.
    assert_ne!(Browser::new().get(site.url("/status")).await.status(), 200);
    // A rule that makes it public, and a rotated cookie secret with the old one kept as previous (S6).
    let new_secret = "rotated-cookie-secret-0123456789abcdef0123456789";
    reconfigure(&mut hg, |c| {
        c.sections[0] = upstream_section(
            &echo.url(),
            "[[policy.rule]]\npath = \"/status\"\npublic = true\n",
        );
        c.server.retain(|l| !l.starts_with("cookie_secret"));
        c.server.push(format!("cookie_secret = \"{new_secret}\""));
        c.server.push(format!(
            "cookie_secret_previous = \"{}\"",
            crate::harness::headgate::TEST_SECRET
        ));
    });
    hg.process.signal(SIGHUP);
    hg.process.wait_for_line(Duration::from_secs(10), |l| {
        l.contains("configuration reloaded")
    });
    let r = Browser::new().get(site.url("/status")).await;
    assert_eq!(r.status(), 200, "the new rule applies to the next request");
    assert_eq!(
        owner.get(site.url("/_headgate/whoami")).await.status(),
        200,
        "the session survived the reload and the secret rotation"
    );
    // A broken file is refused with its errors; the running configuration stays.
    reconfigure(&mut hg, |c| {
        c.server.push("cookie_secur = true".into());
        c.server.retain(|l| !l.starts_with("listen"));
        c.server.push("listen = \"not an address\"".into());
    });
    hg.process.signal(SIGHUP);
    hg.process.wait_for_line(Duration::from_secs(10), |l| {
        l.contains("the running one stays")
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = hg.process.output();
    let refusal = out.split("the running one stays").last().unwrap();
    assert!(
        refusal.contains("cookie_secur") && refusal.contains("server.listen"),
        "every error is reported: {refusal}"
    );
    assert_eq!(Browser::new().get(site.url("/status")).await.status(), 200);
    assert_eq!(owner.get(site.url("/_headgate/whoami")).await.status(), 200);
    assert_eq!(owner.get(site.url("/admin/machines")).await.status(), 200);
}

#[tokio::test]
async fn the_admin_socket_follows_a_reload() {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let echo = Echo::start();
    let mut hg = site
        .config(None)
        .section(upstream_section(&echo.url(), ""))
        .section(oidc_section(rogue.issuer(), ""))
        .start();
    let _owner = sign_in(&site, &rogue, "owner-sub").await;
    let _bob = sign_in(&site, &rogue, "bob-sub").await;
    // serve holds the store: these commands go through its admin socket.
    let (code, out, err) = hg
        .config
        .run(&["users", "set-role", "bob-sub@example.com", "admin"]);
    assert_eq!(
        code, 0,
        "before the reload roles are headgate's: {out}{err}"
    );
    // Roles now come from the IdP (S13): after SIGHUP the socket refuses to set one.
    reconfigure(&mut hg, |c| {
        c.sections[1] = oidc_section(rogue.issuer(), "role_claim = \"role\"");
    });
    hg.process.signal(SIGHUP);
    hg.process.wait_for_line(Duration::from_secs(10), |l| {
        l.contains("configuration reloaded")
    });
    let (code, out, err) = hg
        .config
        .run(&["users", "set-role", "bob-sub@example.com", "viewer"]);
    assert_eq!(code, 1, "the reloaded oidc.role_claim applies: {out}{err}");
    assert!(
        err.contains("roles come from the identity provider"),
        "{err}"
    );
    let (code, out, err) = hg.config.run(&["users", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    let bob = list
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "bob-sub@example.com")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(bob["role"], "admin", "the refused change changed nothing");
}

fn reconfigure(hg: &mut Headgate, f: impl FnOnce(&mut crate::harness::headgate::HeadgateConfig)) {
    f(&mut hg.config);
    // The running listener's address stays (a reload cannot move it).
    hg.config.write();
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let echo = Echo::start();
    let mut hg = site
        .config(None)
        .section(upstream_section(&echo.url(), ""))
        .section(oidc_section(rogue.issuer(), ""))
        .start();
    let owner = sign_in(&site, &rogue, "owner-sub").await;
    echo.set_delay(Duration::from_millis(1500));
    let slow = tokio::spawn({
        let url = site.url("/admin/machines");
        async move { owner.get(url).await.status() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    hg.process.signal(SIGTERM);
    assert_eq!(slow.await.unwrap(), 200, "the in-flight request was cut");
    assert_eq!(hg.process.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test]
async fn the_healthcheck_command_exits_by_readiness() {
    let site = Site::new();
    let echo = Echo::start();
    let hg = site
        .config(None)
        .section(upstream_section(&echo.url(), ""))
        .start();
    let (code, out, err) = hg.config.run(&["healthcheck"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ready"), "{out}");
    drop(echo);
    let (code, out, _) = hg.config.run(&["healthcheck"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("503"), "{out}");
    let (code, _, _) = hg.config.run(&["healthcheck", "--live"]);
    assert_eq!(code, 0, "healthz needs no dependency");
    let (code, out, _) = hg.config.run(&[
        "healthcheck",
        "--url",
        "http://127.0.0.1:1/_headgate/readyz",
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("cannot connect"), "{out}");
}
