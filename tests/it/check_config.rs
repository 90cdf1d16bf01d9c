//! `headgate check-config` against the real test IdP, the fake Headscale and real directories: ✓ when all is
//! well, ✗ with a fix for each failure, exit 0 only when every check passes.

use std::os::unix::fs::PermissionsExt;

use crate::harness::fake_headscale::FakeHeadscale;
use crate::harness::free_port;
use crate::harness::headgate::HeadgateConfig;
use crate::harness::idp::TestIdp;
use crate::harness::rogue::RogueIdp;

fn oidc_section(issuer: &str) -> String {
    format!(
        "[oidc]\nissuer = \"{issuer}\"\nclient_id = \"headgate\"\nclient_secret = \"headgate-test-secret\""
    )
}

fn headscale_section(url: &str, key: &str) -> String {
    format!("[headscale]\nurl = \"{url}\"\napi_key = \"{key}\"")
}

fn check(cfg: &HeadgateConfig) -> (i32, String) {
    let (code, out, err) = cfg.run(&["check-config"]);
    (code, format!("{out}{err}"))
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"))
}

#[test]
fn all_checks_pass_against_the_real_idp_and_fake_headscale() {
    let idp = TestIdp::builder().start();
    let hs = FakeHeadscale::start();
    let cfg = HeadgateConfig::new()
        .server("initial_owner", "\"alice@example.com\"")
        .section(format!(
            "{}\nallowed_email_domains = [\"example.com\"]",
            oidc_section(idp.issuer())
        ))
        .section(headscale_section(&hs.url(), &hs.admin_key()));
    let (code, out) = check(&cfg);
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "✓ identity provider").contains("discovery document"),
        "{out}"
    );
    assert!(
        line(&out, "✓ headscale").contains("API key accepted"),
        "{out}"
    );
    line(&out, "✓ data directory");
    assert!(line(&out, "✓ store").contains("will be created"), "{out}");
    assert!(out.contains("all checks passed"), "{out}");
    assert!(!out.contains('✗') && !out.contains("! warning"), "{out}");
    // The key was really used against Headscale.
    assert!(
        hs.calls()
            .iter()
            .any(|c| c.path.starts_with("/api/v1/") && c.status == 200),
        "{:?}",
        hs.calls()
    );
    // check-config leaves no trace: the data directory it proved creatable is gone again.
    assert!(!cfg.data_path().exists());
}

#[test]
fn open_door_defaults_are_warned_but_do_not_fail() {
    let idp = TestIdp::builder().start();
    let cfg = HeadgateConfig::new().section(oidc_section(idp.issuer()));
    let (code, out) = check(&cfg);
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "! warning").contains("anyone the IdP accepts"),
        "{out}"
    );
    assert!(out.contains("server.initial_owner"), "{out}");
}

#[test]
fn idp_unreachable() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cfg = HeadgateConfig::new().section(oidc_section(&dead));
    let (code, out) = check(&cfg);
    assert_eq!(code, 1, "{out}");
    let l = line(&out, "✗ identity provider");
    assert!(
        l.contains("cannot fetch the IdP's discovery document") && l.contains(&dead),
        "{out}"
    );
    assert!(out.contains("fix: check oidc.issuer"), "{out}");
    assert!(out.contains("1 check failed"), "{out}");
}

#[test]
fn discovery_document_without_token_endpoint() {
    let rogue = RogueIdp::start();
    rogue.set_discovery_field("token_endpoint", serde_json::Value::Null);
    let cfg = HeadgateConfig::new().section(oidc_section(rogue.issuer()));
    let (code, out) = check(&cfg);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "✗ identity provider").contains("has no token_endpoint"),
        "{out}"
    );
    assert!(out.contains("fix: set oidc.token_endpoint"), "{out}");
    // Configuring the endpoint by hand fixes it.
    let cfg = HeadgateConfig::new().section(format!(
        "{}\ntoken_endpoint = \"{}/token\"",
        oidc_section(rogue.issuer()),
        rogue.issuer()
    ));
    let (code, out) = check(&cfg);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn discovery_naming_another_issuer() {
    let rogue = RogueIdp::start();
    rogue.set_discovery_field("issuer", "https://other.example.com".into());
    let (code, out) = check(&HeadgateConfig::new().section(oidc_section(rogue.issuer())));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("fix: set oidc.issuer = \"https://other.example.com\""),
        "{out}"
    );
}

#[test]
fn manual_endpoints_work_without_discovery() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cfg = HeadgateConfig::new().section(format!(
        "{}\nauthorization_endpoint = \"{dead}/auth\"\ntoken_endpoint = \"{dead}/token\"\njwks_uri = \"{dead}/jwks\"",
        oidc_section(&dead)
    ));
    let (code, out) = check(&cfg);
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "✓ identity provider").contains("configured endpoints"),
        "{out}"
    );
}

#[test]
fn headscale_key_rejected_401_and_legacy_500() {
    for legacy in [false, true] {
        let hs = FakeHeadscale::builder()
            .legacy_500_unauthorized(legacy)
            .start();
        let cfg = HeadgateConfig::new().section(headscale_section(
            &hs.url(),
            "hskey-api-AAAAAAAAAAAA-not-a-real-key",
        ));
        let (code, out) = check(&cfg);
        assert_eq!(code, 1, "legacy={legacy}: {out}");
        assert!(
            line(&out, "✗ headscale").contains("headscale.api_key is invalid or expired"),
            "{out}"
        );
        assert!(
            out.contains("headscale apikeys create --expiration 90d"),
            "{out}"
        );
        assert!(
            !out.contains("not-a-real-key"),
            "the key must never be printed: {out}"
        );
    }
    // An expired key is rejected the same way.
    let hs = FakeHeadscale::start();
    let key = hs.add_api_key(Some(
        time::OffsetDateTime::now_utc() - time::Duration::hours(1),
    ));
    let (code, out) = check(&HeadgateConfig::new().section(headscale_section(&hs.url(), &key)));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("headscale.api_key is invalid or expired"),
        "{out}"
    );
}

#[test]
fn headscale_before_0_27_without_health_endpoint_passes() {
    let hs = FakeHeadscale::builder().no_health_endpoint(true).start();
    let (code, out) =
        check(&HeadgateConfig::new().section(headscale_section(&hs.url(), &hs.admin_key())));
    assert_eq!(code, 0, "{out}");
    assert!(
        hs.calls().iter().any(|c| c.path == "/api/v1/user"),
        "{:?}",
        hs.calls()
    );
}

#[test]
fn headscale_unreachable() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let (code, out) =
        check(&HeadgateConfig::new().section(headscale_section(&url, "hskey-api-AAAAAAAAAAAA-x")));
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "✗ headscale").contains("unreachable"), "{out}");
    assert!(out.contains("fix: check headscale.url"), "{out}");
}

#[test]
fn data_path_unusable() {
    // A regular file.
    let cfg = HeadgateConfig::new();
    std::fs::write(cfg.data_path(), "not a directory").unwrap();
    let (code, out) = check(&cfg);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "✗ data directory").contains("is not a directory"),
        "{out}"
    );

    // A directory that cannot be created (its parent is a regular file; root can't get around that).
    let cfg = HeadgateConfig::new();
    let blocker = cfg.dir.path().join("blocker");
    std::fs::write(&blocker, "x").unwrap();
    let cfg = cfg.server("data_path", &format!("\"{}/data\"", blocker.display()));
    let (code, out) = check(&cfg);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "✗ data directory").contains("cannot be created"),
        "{out}"
    );

    // World-readable.
    let cfg = HeadgateConfig::new();
    std::fs::create_dir(cfg.data_path()).unwrap();
    std::fs::set_permissions(cfg.data_path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, out) = check(&cfg);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "✗ data directory").contains("accessible by group or others"),
        "{out}"
    );
    assert!(
        out.contains(&format!("fix: chmod 700 {}", cfg.data_path().display())),
        "{out}"
    );
}

#[test]
fn store_in_use_by_a_running_headgate_is_fine() {
    let running = HeadgateConfig::new().start();
    let (code, out) = check(&running.config);
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "✓ store").contains("in use by a running headgate"),
        "{out}"
    );
}

#[test]
fn corrupt_store_fails() {
    let cfg = HeadgateConfig::new();
    std::fs::create_dir(cfg.data_path()).unwrap();
    std::fs::set_permissions(cfg.data_path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let store = cfg.data_path().join("headgate.redb");
    std::fs::write(&store, b"this is not a redb file at all, just text").unwrap();
    let (code, out) = check(&cfg);
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "✗ store").contains("headgate.redb"), "{out}");
    assert_eq!(
        std::fs::read(&store).unwrap(),
        b"this is not a redb file at all, just text"
    );
}

#[test]
fn invalid_configuration_is_reported_before_any_probe() {
    let cfg = HeadgateConfig::new()
        .server("cookie_secret", "\"short\"")
        .server("listen", "\"x\"");
    let (code, out) = check(&cfg);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("✗ configuration"), "{out}");
    assert!(
        out.contains("server.cookie_secret: ") && out.contains("server.listen: "),
        "{out}"
    );
}
