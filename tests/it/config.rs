//! Configuration: every problem reported at once with its key, suggestions, environment overrides, secret
//! files with `${VAR}`, and the documented example.

use std::collections::{BTreeSet, HashMap};

use headgate::config::{Config, ConfigErrors, HeadplaneLogin, LogFormat};

use crate::harness;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn minimal() -> String {
    format!("[server]\nbase_url = \"https://hp.example.com\"\ncookie_secret = \"{SECRET}\"\n")
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse("test.toml", text, &HashMap::new())
}

fn errors(text: &str, env: &HashMap<String, String>) -> Vec<String> {
    match Config::parse("test.toml", text, env) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn has(errs: &[String], key: &str, needle: &str) -> bool {
    errs.iter()
        .any(|e| e.starts_with(&format!("{key}: ")) && e.contains(needle))
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(&minimal()).unwrap();
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:4180");
    assert!(c.server.cookie_secure);
    assert_eq!(c.server.cookie_max_age, 86400);
    assert_eq!(c.server.data_path.to_str(), Some("/var/lib/headgate"));
    assert_eq!(c.server.log_format, LogFormat::Human);
    assert_eq!(c.upstream.headplane_login, HeadplaneLogin::ApiKey);
    assert!(c.oidc.is_none() && c.headscale.is_none());
    assert_eq!(
        c.store_path().to_str(),
        Some("/var/lib/headgate/headgate.redb")
    );
}

#[test]
fn unknown_keys_suggest_the_nearest_valid_key() {
    let text = format!(
        "{}cookie_secur = false\n[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"x\"\nclient_secret = \"y\"\nclinet_id = \"z\"\n[sever]\n",
        minimal()
    );
    let errs = errors(&text, &HashMap::new());
    assert!(
        has(
            &errs,
            "server.cookie_secur",
            "did you mean `cookie_secure`?"
        ),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "oidc.clinet_id", "did you mean `client_id`?"),
        "{errs:#?}"
    );
    assert!(has(&errs, "sever", "did you mean [server]?"), "{errs:#?}");
}

#[test]
fn headplane_oidc_keys_say_where_their_setting_lives() {
    let text = format!(
        "{}[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"x\"\nclient_secret = \"y\"\n\
         redirect_uri = \"https://hp.example.com/admin/oidc/callback\"\nheadscale_api_key = \"k\"\n\
         user_storage_file = \"/var/lib/headplane/users.json\"\n",
        minimal()
    );
    let errs = errors(&text, &HashMap::new());
    assert!(
        has(
            &errs,
            "oidc.redirect_uri",
            "server.base_url + oidc.callback_path"
        ),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "oidc.headscale_api_key", "headscale.api_key"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "oidc.user_storage_file", "its own store"),
        "{errs:#?}"
    );
}

#[test]
fn every_problem_is_reported_at_once_with_its_key() {
    let text = r#"
[server]
base_url = "https://hp.example.com/admin"
cookie_secret = "too-short"
cookie_max_age = "a day"
listen = "nowhere"
log_format = "xml"
tls_cert_path = "/etc/cert.pem"

[upstream]
url = "ftp://example.com"

[headscale]
public_url = "not a url"

[oidc]
issuer = "not a url"
scope = "email"
token_endpoint_auth_method = "private_key_jwt"
"#;
    let errs = errors(text, &HashMap::new());
    for (key, needle) in [
        ("server.base_url", "must be an origin only"),
        ("server.cookie_secret", "at least 32"),
        ("server.cookie_max_age", "expected a whole number"),
        ("server.listen", "not an address:port"),
        ("server.log_format", "\"human\" or \"json\""),
        ("server.tls_key_path", "missing"),
        ("upstream.url", "must be http://host:port"),
        ("headscale.url", "missing"),
        ("headscale.public_url", "not a URL"),
        ("headscale.api_key", "missing"),
        ("oidc.issuer", "not a URL"),
        ("oidc.client_id", "missing"),
        ("oidc.client_secret", "missing"),
        ("oidc.scope", "openid"),
        ("oidc.token_endpoint_auth_method", "client_secret_basic"),
    ] {
        assert!(
            has(&errs, key, needle),
            "no error for {key} containing {needle:?} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), 15, "exactly one error per problem: {errs:#?}");
}

#[test]
fn base_url_must_be_an_absolute_http_origin() {
    for bad in [
        "headplane.example.com",
        "ftp://example.com",
        "/admin",
        "https://",
        "https://u:p@example.com",
    ] {
        let text = format!("[server]\nbase_url = \"{bad}\"\ncookie_secret = \"{SECRET}\"\n");
        let errs = errors(&text, &HashMap::new());
        assert!(
            errs.iter().all(|e| e.starts_with("server.base_url: ")),
            "{bad}: {errs:#?}"
        );
        assert_eq!(errs.len(), 1, "{bad}: {errs:#?}");
    }
    for good in [
        "https://hp.example.com",
        "http://127.0.0.1:4180",
        "https://hp.example.com/",
    ] {
        let text = format!("[server]\nbase_url = \"{good}\"\ncookie_secret = \"{SECRET}\"\n");
        parse(&text).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}

#[test]
fn missing_server_section_and_secret() {
    let errs = errors("", &HashMap::new());
    assert!(has(&errs, "server", "missing"), "{errs:#?}");
    assert!(has(&errs, "server.base_url", "missing"), "{errs:#?}");
    assert!(has(&errs, "server.cookie_secret", "missing"), "{errs:#?}");
}

#[test]
fn cookie_secret_previous_is_accepted_and_checked() {
    let ok = format!(
        "{}cookie_secret_previous = \"{}\"\n",
        minimal(),
        "p".repeat(40)
    );
    let c = parse(&ok).unwrap();
    assert_eq!(
        c.server.cookie_secret_previous.unwrap().expose(),
        "p".repeat(40)
    );
    let short = format!("{}cookie_secret_previous = \"short\"\n", minimal());
    assert!(has(
        &errors(&short, &HashMap::new()),
        "server.cookie_secret_previous",
        "at least 32"
    ));
}

#[test]
fn environment_overrides_win_over_the_file() {
    let text = format!(
        "{}cookie_secure = true\ncookie_max_age = 100\n[oidc]\nissuer = \"https://file.example.com\"\nclient_id = \"file\"\nclient_secret = \"s\"\n",
        minimal()
    );
    let e = env(&[
        ("HEADGATE_SERVER__COOKIE_SECURE", "false"),
        ("HEADGATE_SERVER__COOKIE_MAX_AGE", "3600"),
        ("HEADGATE_SERVER__LISTEN", "127.0.0.1:9999"),
        ("HEADGATE_OIDC__ISSUER", "https://env.example.com"),
        ("HEADGATE_OIDC__ALLOWED_GROUPS", "admins, ops"),
        ("HEADGATE_OIDC__EXTRA_PARAMS__PROMPT", "login"),
        ("HEADGATE_CONFIG", "/ignored/here.toml"),
        ("UNRELATED", "x"),
    ]);
    let c = Config::parse("t", &text, &e).unwrap();
    assert!(!c.server.cookie_secure);
    assert_eq!(c.server.cookie_max_age, 3600);
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:9999");
    let o = c.oidc.unwrap();
    assert_eq!(o.issuer, "https://env.example.com");
    assert_eq!(o.allowed_groups, vec!["admins", "ops"]);
    assert_eq!(
        o.extra_params.get("prompt").map(String::as_str),
        Some("login")
    );
}

#[test]
fn environment_overrides_can_create_sections_and_are_validated() {
    let e = env(&[
        ("HEADGATE_SERVER__BASE_URL", "https://hp.example.com"),
        ("HEADGATE_SERVER__COOKIE_SECRET", SECRET),
        ("HEADGATE_SERVER__COOKIE_SECURE", "maybe"),
        ("HEADGATE_SERVR__LISTEN", "x"),
        ("HEADGATE_SERVER__COOKIE_SECUR", "true"),
    ]);
    let errs = errors("", &e);
    assert!(
        has(&errs, "server.cookie_secure", "expected true or false"),
        "{errs:#?}"
    );
    assert!(
        has(
            &errs,
            "HEADGATE_SERVR__LISTEN",
            "did you mean HEADGATE_SERVER__"
        ),
        "{errs:#?}"
    );
    assert!(
        has(
            &errs,
            "server.cookie_secur",
            "did you mean `cookie_secure`?"
        ),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 3, "{errs:#?}");
    // Everything from the environment alone is a complete configuration.
    let e = env(&[
        ("HEADGATE_SERVER__BASE_URL", "https://hp.example.com"),
        ("HEADGATE_SERVER__COOKIE_SECRET", SECRET),
    ]);
    assert_eq!(
        Config::parse("t", "", &e).unwrap().server.base_url.as_str(),
        "https://hp.example.com/"
    );
}

#[test]
fn secret_files_expand_variables_and_are_trimmed() {
    let dir = harness::tempdir();
    std::fs::write(dir.path().join("cookie"), format!("  {SECRET}\n")).unwrap();
    std::fs::write(dir.path().join("client"), "client-secret\n").unwrap();
    std::fs::write(dir.path().join("hs"), "hskey-api-abcdefghijkl-xyz\n").unwrap();
    let text = r#"
[server]
base_url = "https://hp.example.com"
cookie_secret_path = "${SECRETS}/cookie"
[headscale]
url = "http://hs:8080"
api_key_path = "${SECRETS}/hs"
[oidc]
issuer = "https://idp.example.com"
client_id = "hp"
client_secret_path = "${SECRETS}/client"
"#;
    let e = env(&[("SECRETS", dir.path().to_str().unwrap())]);
    let c = Config::parse("t", text, &e).unwrap();
    assert_eq!(c.server.cookie_secret.expose(), SECRET);
    assert_eq!(
        c.headscale.unwrap().api_key.expose(),
        "hskey-api-abcdefghijkl-xyz"
    );
    assert_eq!(
        c.oidc.unwrap().client_secret.unwrap().expose(),
        "client-secret"
    );
}

#[test]
fn secret_file_problems_name_the_key_and_the_path() {
    let dir = harness::tempdir();
    let missing = dir.path().join("nope");
    let text = format!(
        r#"
[server]
base_url = "https://hp.example.com"
cookie_secret_path = "${{UNSET_VARIABLE_FOR_TEST}}/cookie"
[headscale]
url = "http://hs:8080"
api_key_path = "{}"
[oidc]
issuer = "https://idp.example.com"
client_id = "hp"
client_secret = "x"
client_secret_path = "/also/set"
"#,
        missing.display()
    );
    let errs = errors(&text, &HashMap::new());
    assert!(
        has(
            &errs,
            "server.cookie_secret_path",
            "UNSET_VARIABLE_FOR_TEST is not set"
        ),
        "{errs:#?}"
    );
    assert!(
        has(
            &errs,
            "headscale.api_key_path",
            &format!("cannot read {}", missing.display())
        ),
        "{errs:#?}"
    );
    assert!(
        has(
            &errs,
            "oidc.client_secret_path",
            "both oidc.client_secret and oidc.client_secret_path are set"
        ),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 3, "{errs:#?}");
}

#[test]
fn secrets_never_show_in_debug_output_or_errors() {
    let text = format!(
        "{}[oidc]\nissuer = \"https://i.example.com\"\nclient_id = \"c\"\nclient_secret = \"TOPSECRET-CLIENT\"\n",
        minimal()
    );
    let c = parse(&text).unwrap();
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains(SECRET) && !dbg.contains("TOPSECRET-CLIENT"),
        "{dbg}"
    );
    let bad = format!("{}cookie_max_age = \"{SECRET}\"\n", minimal()).replace(
        &format!("cookie_secret = \"{SECRET}\""),
        "cookie_secret = \"short-secret-value\"",
    );
    let errs = errors(&bad, &HashMap::new()).join("\n");
    assert!(!errs.contains("short-secret-value"), "{errs}");
}

#[test]
fn invalid_toml_names_the_line() {
    let errs = errors("[server]\nbase_url = = 1\n", &HashMap::new());
    assert!(
        errs[0].contains("line 2") && errs[0].contains("not valid TOML"),
        "{errs:#?}"
    );
}

#[test]
fn lookup_order_flag_then_env_then_defaults() {
    let e = env(&[("HEADGATE_CONFIG", "/from/env.toml")]);
    assert_eq!(
        Config::locate(Some("/from/flag.toml".as_ref()), &e)
            .unwrap()
            .to_str(),
        Some("/from/flag.toml")
    );
    assert_eq!(
        Config::locate(None, &e).unwrap().to_str(),
        Some("/from/env.toml")
    );
    // With none of them (and no ./headgate.toml in the package root), the error lists where it looked.
    if !std::path::Path::new("./headgate.toml").exists()
        && !std::path::Path::new("/etc/headgate/headgate.toml").exists()
    {
        let err = Config::locate(None, &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--config")
                && err.contains("HEADGATE_CONFIG")
                && err.contains("/etc/headgate/headgate.toml"),
            "{err}"
        );
    }
}

#[test]
fn open_door_defaults_are_warned() {
    let text = format!(
        "{}[oidc]\nissuer = \"https://i.example.com\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
        minimal()
    );
    let w = parse(&text).unwrap().warnings.join("\n");
    assert!(w.contains("oidc.allowed_email_domains"), "{w}");
    assert!(w.contains("server.initial_owner"), "{w}");
    let text = text.replace(
        "[oidc]",
        "initial_owner = \"a@example.com\"\n[oidc]\nallowed_email_domains = [\"example.com\"]",
    );
    assert!(parse(&text).unwrap().warnings.is_empty());
    let plain = minimal().replace("https://hp.example.com", "http://hp.example.com");
    assert!(
        parse(&plain)
            .unwrap()
            .warnings
            .join("\n")
            .contains("server.cookie_secure")
    );
}

#[test]
fn the_example_loads_and_documents_every_key() {
    let path = harness::root().join("config/headgate.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = Config::load(&path, &HashMap::new()).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.oidc.is_some() && c.headscale.is_some());
    // Every key the parser knows appears in the example (set or as a commented default) and nothing else.
    let mut section = String::new();
    let mut documented = BTreeSet::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let l = l.strip_prefix("# ").unwrap_or(l);
        // Arrays of tables are documented commented out: `# [[policy.rule]]` starts their keys.
        if let Some(s) = l.strip_prefix("[[").and_then(|s| s.strip_suffix("]]")) {
            section = s.to_string();
            continue;
        }
        if let Some((k, _)) = l.split_once(" = ")
            && !k.is_empty()
            && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            documented.insert(format!("{section}.{k}"));
        }
    }
    let known: BTreeSet<String> = Config::known_keys().into_iter().collect();
    let undocumented: Vec<_> = known.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&known).collect();
    assert!(
        undocumented.is_empty(),
        "keys missing from the example: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "keys in the example that headgate does not read: {unknown:?}"
    );
}

#[test]
fn policy_rules_are_read_and_every_problem_names_its_key() {
    use headgate::policy::{Access, PathMatch, RuleMethod};
    use headgate::roles::Caps;
    let text = format!(
        "{}[[policy.rule]]\npath_prefix = \"/grafana\"\ncapabilities = [\"read_policy\", \"ui_access\"]\nwebsocket = true\n\
         [[policy.rule]]\npath = \"/status\"\npublic = true\nmethods = [\"GET\"]\n",
        minimal()
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.policy.rules.len(), 2);
    let r = &c.policy.rules[0];
    assert_eq!(r.path, PathMatch::Prefix("/grafana".into()));
    assert_eq!(r.access, Access::Caps(Caps::READ_POLICY | Caps::UI_ACCESS));
    assert_eq!(r.methods, vec![RuleMethod::Get, RuleMethod::Post]);
    assert!(r.websocket);
    assert_eq!(c.policy.rules[1].access, Access::Public);
    assert!(parse(&minimal()).unwrap().policy.rules.is_empty());

    let bad = format!(
        "{}[[policy.rule]]\npath_prefix = \"/admin/users\"\ncapabilities = [\"read_user\"]\n\
         [[policy.rule]]\npath = \"/x\"\npath_prefix = \"/x\"\npublic = true\n\
         [[policy.rule]]\npath = \"/y\"\ncapabilites = []\n\
         [[policy.rule]]\npath_prefix = \"/grafana\"\ncapabilities = []\nmethods = [\"OPTIONS\"]\n\
         [[policy.rule]]\npath_prefix = \"/grafana\"\npublic = true\n",
        minimal()
    );
    let errs = errors(&bad, &HashMap::new());
    assert!(
        has(&errs, "policy.rule[0].path_prefix", "outside /admin"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "policy.rule[0].capabilities[0]", "read_users"),
        "{errs:#?}"
    );
    assert!(has(&errs, "policy.rule[1].path", "not both"), "{errs:#?}");
    assert!(
        has(&errs, "policy.rule[2].capabilities", "missing"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "policy.rule[2].capabilites", "capabilities"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "policy.rule[3].methods[0]", "OPTIONS"),
        "{errs:#?}"
    );

    // Two rules for one path are ambiguous (reported once the rules themselves are valid).
    let dup = format!(
        "{}[[policy.rule]]\npath_prefix = \"/g\"\npublic = true\n[[policy.rule]]\npath_prefix = \"/g\"\ncapabilities = []\n",
        minimal()
    );
    assert!(has(
        &errors(&dup, &HashMap::new()),
        "policy.rule[1].path_prefix",
        "policy.rule[0]"
    ));

    // With headplane_login = "none" rules may cover /admin (the built-in rows are off).
    let none = format!(
        "{}[upstream]\nheadplane_login = \"none\"\n[[policy.rule]]\npath_prefix = \"/admin\"\ncapabilities = [\"read_users\"]\n",
        minimal()
    );
    assert_eq!(parse(&none).unwrap().policy.rules.len(), 1);

    // `policy.rule` must be an array of tables; through the environment an inline array works.
    assert!(has(
        &errors(
            &format!("{}[policy]\nrule = \"x\"\n", minimal()),
            &HashMap::new()
        ),
        "policy.rule",
        "list of tables"
    ));
    assert!(has(
        &errors(
            &format!("{}[policy]\nrules = []\n", minimal()),
            &HashMap::new()
        ),
        "policy.rules",
        "unknown key"
    ));
    let c = Config::parse(
        "test.toml",
        &minimal(),
        &env(&[(
            "HEADGATE_POLICY__RULE",
            r#"[{ path_prefix = "/g", public = true }]"#,
        )]),
    )
    .unwrap();
    assert_eq!(c.policy.rules[0].path, PathMatch::Prefix("/g".into()));
    let errs = errors(
        &minimal(),
        &env(&[("HEADGATE_POLICY__RULE", "[{ path = \"/g\" }]")]),
    );
    assert!(
        has(&errs, "policy.rule[0].capabilities", "missing"),
        "{errs:#?}"
    );
}

#[test]
fn allowed_hosts_are_lower_case_host_and_port() {
    let c = parse(&format!(
        "{}allowed_hosts = [\"headplane.internal:4180\", \"[::1]:4180\", \"10.0.0.2\"]\n",
        minimal()
    ))
    .unwrap();
    assert_eq!(c.server.allowed_hosts.len(), 3);
    let p = headgate::policy::Policy::from_config(&c);
    assert_eq!(p.mode(), headgate::policy::Mode::Bridge);
    let errs = errors(
        &format!(
            "{}allowed_hosts = [\"Headplane.internal\", \"x:port\", \"https://x\", \"a.b.\"]\n",
            minimal()
        ),
        &HashMap::new(),
    );
    for i in 0..4 {
        assert!(
            has(&errs, &format!("server.allowed_hosts[{i}]"), "host[:port]"),
            "{errs:#?}"
        );
    }
    assert!(parse(&minimal()).unwrap().server.allowed_hosts.is_empty());
}

#[test]
fn header_mode_only_to_loopback_unless_allowed() {
    let with = |upstream: &str| format!("{}[upstream]\n{upstream}\n", minimal());
    let errs = errors(
        &with("url = \"http://headplane:3000\"\nheadplane_login = \"proxy_auth\""),
        &HashMap::new(),
    );
    assert!(
        has(&errs, "upstream.url", "allow_remote_header_mode"),
        "{errs:#?}"
    );
    for ok in [
        "url = \"http://127.0.0.1:3000\"\nheadplane_login = \"proxy_auth\"",
        "url = \"http://[::1]:3000\"\nheadplane_login = \"proxy_auth\"",
        "url = \"http://localhost:3000\"\nheadplane_login = \"proxy_auth\"",
        "url = \"http://headplane:3000\"\nheadplane_login = \"proxy_auth\"\nallow_remote_header_mode = true",
        "url = \"http://headplane:3000\"\nheadplane_login = \"none\"",
    ] {
        parse(&with(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    // A unix socket is local: header mode needs no allow_remote_header_mode (more in unix_upstream.rs).
    let dir = harness::tempdir();
    parse(&with(&format!(
        "url = \"unix:{}/hp.sock\"\nheadplane_login = \"proxy_auth\"",
        dir.path().display()
    )))
    .unwrap();
    let errs = errors(&with("url = \"unix:run/headplane.sock\""), &HashMap::new());
    assert!(has(&errs, "upstream.url", "must be absolute"), "{errs:#?}");
    // The bridge without [headscale] is warned about.
    let w = parse(&with("url = \"http://127.0.0.1:3000\""))
        .unwrap()
        .warnings
        .join("\n");
    assert!(w.contains("no [headscale] section"), "{w}");
}

#[test]
fn forward_auth_hosts_and_trusted_proxies() {
    let loopback = |c: &Config| {
        let ips: [std::net::IpAddr; 3] = [
            "127.0.0.1".parse().unwrap(),
            "::1".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
        ];
        ips.map(|ip| {
            c.forward_auth
                .trusted_proxies
                .iter()
                .any(|n| n.contains(ip))
        })
    };
    // Defaults: no extra hosts; only loopback may ask for verdicts.
    let c = parse(&minimal()).unwrap();
    assert!(c.forward_auth.hosts.is_empty());
    assert_eq!(loopback(&c), [true, true, false]);
    let c = parse(&format!(
        "{}[forward_auth]\nhosts = [\"app.example.com\", \"grafana.internal:3000\"]\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
        minimal()
    ))
    .unwrap();
    assert_eq!(c.forward_auth.hosts.len(), 2);
    assert_eq!(loopback(&c), [false, false, true]);
    let c = parse(&format!(
        "{}[forward_auth]\ntrusted_proxies = []\n",
        minimal()
    ))
    .unwrap();
    assert_eq!(
        loopback(&c),
        [false, false, false],
        "an empty list trusts nobody"
    );
    // From the environment too.
    let c = Config::parse(
        "test.toml",
        &minimal(),
        &env(&[("HEADGATE_FORWARD_AUTH__HOSTS", "app.example.com")]),
    )
    .unwrap();
    assert_eq!(c.forward_auth.hosts, vec!["app.example.com".to_string()]);
    // Every problem names its key; "everyone" is never a front proxy.
    let errs = errors(
        &format!(
            "{}[forward_auth]\nhosts = [\"App.example.com\", \"https://x\"]\ntrusted_proxies = [\"0.0.0.0/0\", \"::/0\", \"nowhere\"]\nhost = []\n",
            minimal()
        ),
        &HashMap::new(),
    );
    assert!(
        has(&errs, "forward_auth.hosts[0]", "host[:port]"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "forward_auth.hosts[1]", "host[:port]"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "forward_auth.trusted_proxies[0]", "anyone"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "forward_auth.trusted_proxies[1]", "anyone"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "forward_auth.trusted_proxies[2]", "IP network"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "forward_auth.host", "did you mean `hosts`?"),
        "{errs:#?}"
    );
}

#[test]
fn the_store_section_picks_a_backend_and_every_problem_names_its_key() {
    use headgate::config::StoreConfig;
    assert!(matches!(
        parse(&minimal()).unwrap().store,
        StoreConfig::Redb
    ));
    let c = parse(&format!(
        "{}[store]\nbackend = \"postgres\"\nurl = \"postgresql://hg:pw@db.example.com/hg\"\npool_size = 3\nconnect_timeout = 9\n",
        minimal()
    ))
    .unwrap();
    let StoreConfig::Postgres(pg) = &c.store else {
        panic!("{:?}", c.store)
    };
    assert_eq!((pg.pool_size, pg.connect_timeout), (3, 9));
    assert_eq!(pg.url.expose(), "postgresql://hg:pw@db.example.com/hg");
    assert!(!format!("{c:?}").contains("hg:pw"), "the URL is a secret");

    // url_path: a secret file with ${VAR}.
    let dir = harness::tempdir();
    std::fs::write(
        dir.path().join("url"),
        "postgresql://hg:pw@db.example.com/hg\n",
    )
    .unwrap();
    let text = format!(
        "{}[store]\nbackend = \"postgres\"\nurl_path = \"${{D}}/url\"\n",
        minimal()
    );
    let e = env(&[("D", dir.path().to_str().unwrap())]);
    let c = Config::parse("t", &text, &e).unwrap();
    assert!(matches!(c.store, StoreConfig::Postgres(_)));
    // Environment overrides work for the section too.
    let e = env(&[
        ("HEADGATE_STORE__BACKEND", "postgres"),
        ("HEADGATE_STORE__URL", "host=/run/postgresql user=hg"),
        ("HEADGATE_STORE__POOL_SIZE", "2"),
    ]);
    let c = Config::parse("t", &minimal(), &e).unwrap();
    assert!(matches!(&c.store, StoreConfig::Postgres(p) if p.pool_size == 2));

    let errs = errors(
        &format!("{}[store]\nbackend = \"postgress\"\n", minimal()),
        &env(&[]),
    );
    assert!(
        has(&errs, "store.backend", "did you mean \"postgres\""),
        "{errs:?}"
    );
    let errs = errors(
        &format!("{}[store]\nbackend = \"postgres\"\n", minimal()),
        &env(&[]),
    );
    assert!(has(&errs, "store.url", "missing"), "{errs:?}");
    let errs = errors(
        &format!("{}[store]\nurl = \"postgresql://a@b/c\"\n", minimal()),
        &env(&[]),
    );
    assert!(has(&errs, "store.url", "backend is \"redb\""), "{errs:?}");
    let errs = errors(
        &format!(
            "{}[store]\nbackend = \"postgres\"\nurl = \"postgresql://hg:TopSecret@db/hg?sslmode=verify-full\"\n",
            minimal()
        ),
        &env(&[]),
    );
    assert!(has(&errs, "store.url", "sslmode"), "{errs:?}");
    assert!(!errs.iter().any(|e| e.contains("TopSecret")), "{errs:?}");
    let errs = errors(
        &format!(
            "{}[store]\nbackend = \"postgres\"\nurl = \"postgresql://a@b/c\"\nurl_path = \"/x\"\npool_size = 0\nconnect_timeout = 1000\ntls_ca_path = \"/nonexistent.pem\"\nurl_pth = 1\n",
            minimal()
        ),
        &env(&[]),
    );
    assert!(has(&errs, "store.url_path", "both"), "{errs:?}");
    assert!(has(&errs, "store.pool_size", "out of range"), "{errs:?}");
    assert!(
        has(&errs, "store.connect_timeout", "out of range"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "store.url_pth", "did you mean `url_path`"),
        "{errs:?}"
    );
}
