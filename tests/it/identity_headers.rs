//! `[headers]`: renamed identity headers and `user_claim` (S11), on the proxy path against the echo upstream,
//! and the configuration checks that keep the names safe.

use std::collections::HashMap;

use headgate::config::Config;

use crate::harness::browser::Browser;
use crate::harness::echo::Echo;
use crate::harness::rogue::RogueIdp;
use crate::harness::stack::{Site, oidc_section};

#[tokio::test]
async fn renamed_headers_and_sub_at_iss_reach_the_upstream_and_client_copies_never_do() {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let echo = Echo::start();
    let _hg = site
        .config(None)
        .section(format!(
            "[upstream]\nurl = \"{}\"\nheadplane_login = \"proxy_auth\"",
            echo.url()
        ))
        .section(oidc_section(rogue.issuer(), ""))
        .section(
            "[headers]\nuser_claim = \"sub@iss\"\nuser_header = \"X-Auth-User\"\nemail_header = \"X-Auth-Email\"\n\
             name_header = \"X-Auth-Name\"\npicture_header = \"X-Auth-Picture\"",
        )
        .start();
    let b = crate::harness::stack::rogue_person(&site, &rogue, "person-1", "p1@example.com").await;
    let r = b
        .get_with(
            site.url("/admin/machines"),
            &[
                ("X-Auth-User", "admin"),
                ("x_auth_user", "admin2"),
                ("X-AUTH-EMAIL", "ceo@example.com"),
                // The default names stay reserved after a rename: Headplane may still read them.
                ("Remote-User", "admin3"),
                ("remote_email", "ceo@example.com"),
                ("Connection", "x-auth-user"),
            ],
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let seen = echo.last().unwrap();
    let issuer = rogue.issuer().trim_end_matches('/').to_string();
    assert_eq!(
        seen.header_all("x-auth-user"),
        vec![format!("person-1@{issuer}")],
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.header_all("x-auth-email"), vec!["p1@example.com"]);
    assert_eq!(seen.header("x-auth-name"), Some("Name of person-1"));
    assert_eq!(seen.header("x-auth-picture"), Some(""));
    for (name, value) in &seen.headers {
        let n = name.to_ascii_lowercase().replace('_', "-");
        assert!(
            !n.starts_with("remote-") && !value.contains("admin") && !value.contains("ceo@"),
            "{name}: {value} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.header("x-headgate-role"), Some("owner"));
}

fn parse_errors(headers: &str) -> Vec<String> {
    let text = format!(
        "[server]\nbase_url = \"https://hp.example.com\"\ncookie_secret = \"0123456789abcdef0123456789abcdef\"\n\n[headers]\n{headers}\n"
    );
    match Config::parse("t.toml", &text, &HashMap::new()) {
        Ok(_) => vec![],
        Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn header_names_and_user_claim_are_checked() {
    assert!(parse_errors("user_header = \"X-Auth-User\"\nuser_claim = \"sub@iss\"").is_empty());
    for (text, key, needle) in [
        (
            "user_claim = \"email\"",
            "headers.user_claim",
            "can change hands",
        ),
        (
            "user_claim = \"preferred_username\"",
            "headers.user_claim",
            "\"sub\" or \"sub@iss\"",
        ),
        (
            "user_header = \"X Auth\"",
            "headers.user_header",
            "not a valid header name",
        ),
        (
            "email_header = \"X-Headgate-Email\"",
            "headers.email_header",
            "headgate's own",
        ),
        (
            "name_header = \"Cookie\"",
            "headers.name_header",
            "standard HTTP header",
        ),
        (
            "picture_header = \"Host\"",
            "headers.picture_header",
            "standard HTTP header",
        ),
        ("user_header = \"\"", "headers.user_header", "is empty"),
        (
            "user_header = \"X-Who\"\nemail_header = \"x_who\"",
            "headers.email_header",
            "already the name of headers.user_header",
        ),
    ] {
        let errs = parse_errors(text);
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("{key}: ")) && e.contains(needle)),
            "{text}: {errs:?}"
        );
    }
}

#[tokio::test]
async fn an_api_key_session_is_never_a_remote_user() {
    let hs = crate::harness::fake_headscale::FakeHeadscale::start();
    let key = hs.add_api_key(Some(
        time::OffsetDateTime::now_utc() + time::Duration::days(1),
    ));
    let site = Site::new();
    let echo = Echo::start();
    let _hg = site
        .config(Some(&hs))
        .section(format!(
            "[upstream]\nurl = \"{}\"\nheadplane_login = \"proxy_auth\"",
            echo.url()
        ))
        .start();
    let b = Browser::new();
    let page = b.get(site.url("/admin/login")).await;
    let mut form = page
        .forms()
        .into_iter()
        .find(|f| f.get("api_key").is_some() || f.password_fields.iter().any(|p| p == "api_key"))
        .expect("an API-key form");
    form.set("api_key", &key);
    let r = b.submit(&page, &form, None).await;
    assert!((300..400).contains(&r.status()), "{}", r.text());
    let r = b
        .get_with(
            site.url("/admin/machines"),
            &[("Remote-User", "admin"), ("X-Headgate-Auth", "oidc")],
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let seen = echo.last().unwrap();
    assert_eq!(
        seen.header_all("remote-user"),
        vec![""],
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.header_all("x-headgate-auth"), vec!["api_key"]);
    assert_eq!(seen.header("remote-email"), Some(""));
    let token = seen.header("x-headgate-assertion").unwrap().to_string();
    let jwks = b
        .get(site.url("/_headgate/jwks.json"))
        .await
        .text()
        .to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = headgate::assertion::verify(&jwks, &token, &site.base(), &echo.url(), now)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let c = serde_json::to_value(&claims).unwrap();
    assert_eq!(c["amr"], serde_json::json!(["api_key"]), "{c}");
    // The key itself is never handed on.
    for (name, value) in &seen.headers {
        assert!(!value.contains(&key), "{name} carries the API key");
    }
    assert!(!seen.body_str().contains(&key));
}
