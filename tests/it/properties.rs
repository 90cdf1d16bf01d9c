//! Property tests (proptest, a few hundred cases each) over the checks of the fuzz targets
//! (`headgate::fuzz`): session cookie decoding, return-URL validation, path canonicalisation and the policy
//! decision, strict form parsing and `action_id`, forwarded-header parsing, configuration parsing, and the
//! example verifier's assertion checks. Inputs are both arbitrary bytes and generated from the grammar of
//! hostile inputs, so the properties are exercised where they matter.

use headgate::fuzz;
use proptest::prelude::*;
use proptest::test_runner::Config;

/// `cases` per property; `HEADGATE_PROPTEST_CASES` overrides it for a longer run.
fn cfg(cases: u32) -> Config {
    let cases = std::env::var("HEADGATE_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(items)
}

// ----- session cookies -----

proptest! {
    #![proptest_config(cfg(300))]

    #[test]
    fn session_cookie_decoding_never_panics_and_only_accepts_minted_values(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        fuzz::session_cookie(&data);
    }

    #[test]
    fn a_minted_session_cookie_with_one_character_changed_never_verifies(
        id in proptest::array::uniform32(any::<u8>()),
        at in any::<usize>(),
        c in pick(&['A', 'a', 'z', '0', '9', '-', '_', '.', '=', '+', '/', ' ', '%']),
    ) {
        let good = fuzz::mint_session_cookie(&id);
        let mut s: Vec<char> = good.chars().collect();
        let i = at % s.len();
        s[i] = c;
        let changed: String = s.into_iter().collect();
        prop_assume!(changed != good);
        let header = format!("other=1; headgate_session={changed}; x=y");
        fuzz::session_cookie(header.as_bytes());
        fuzz::session_cookie(changed.as_bytes());
    }
}

// ----- return URLs -----

const PREFIXES: &[&str] = &[
    "/",
    "//",
    "/\\",
    "\\\\",
    "/./",
    "/../",
    "/%2F",
    "%2F%2F",
    "/%5C",
    "/\t/",
    "/ /",
    "http://",
    "https://",
    "HTTPS://",
    "https:",
    "https:/",
    "https:\\\\",
    "https:///",
    "javascript:",
    "data:text/html,",
    "vbscript:",
    "//%09",
    "https%3A%2F%2F",
    "/admin/oidc/start?rd=",
    "/x?next=",
    "",
];
const HOSTS: &[&str] = &[
    "hp.example.com",
    "HP.EXAMPLE.COM",
    "hp.example.com:443",
    "hp.example.com:8443",
    "allowed.example",
    "ALLOWED.example",
    "allowed.example.",
    "allowed.example:badport",
    "allowed.example:443",
    "evil.example",
    "allowed.example.evil.example",
    "evilallowed.example",
    "allowed.example@evil.example",
    "evil.example@allowed.example",
    "x.apps.example",
    "apps.example",
    "xapps.example",
    "apps.example.evil.example",
    "[::1]",
    "127.0.0.1",
    "0x7f.1",
    "xn--llowed-7ya.example",
    "аllowed.example",
    "allowed。example",
    "",
];
const PIECES: &[&str] = &[
    "",
    "/",
    "admin",
    "/admin/",
    "machines",
    "?",
    "&",
    "=",
    "rd=",
    "%2f",
    "%2F",
    "%5c",
    "%252f",
    "%09",
    "%0a",
    "%00",
    "\\",
    "..",
    ".",
    "#",
    "@",
    ":",
    "%40",
    "\u{3002}",
    "\u{ff0f}",
    "\u{200b}",
    " ",
    "\t",
    "\n",
    "javascript:alert(1)",
    "//evil.example",
    "https://evil.example",
    "%2F%2Fevil.example",
    "+",
];

fn hostile_target() -> impl Strategy<Value = String> {
    (
        pick(PREFIXES),
        pick(HOSTS),
        proptest::collection::vec(pick(PIECES), 0..6),
        any::<bool>(),
    )
        .prop_map(|(p, h, pieces, nest)| {
            let t = format!("{p}{h}{}", pieces.concat());
            if nest {
                let inner: String = url::form_urlencoded::byte_serialize(t.as_bytes()).collect();
                format!("/admin/oidc/start?rd={inner}")
            } else {
                t
            }
        })
}

proptest! {
    #![proptest_config(cfg(400))]

    #[test]
    fn an_accepted_return_target_is_same_site_or_allowlisted(t in hostile_target()) {
        fuzz::return_url(t.as_bytes());
    }

    #[test]
    fn an_accepted_arbitrary_return_target_is_same_site_or_allowlisted(t in "\\PC{0,60}") {
        fuzz::return_url(t.as_bytes());
    }

    #[test]
    fn arbitrary_bytes_as_return_targets_never_panic(data in proptest::collection::vec(any::<u8>(), 0..120)) {
        fuzz::return_url(&data);
    }
}

#[test]
fn the_return_target_property_accepts_what_it_should() {
    // The property is not vacuous: legitimate targets pass it.
    for ok in [
        "/admin/machines",
        "/admin/users?x=1",
        "https://allowed.example/x",
        "https://x.apps.example/",
        "https://hp.example.com/admin/dns",
    ] {
        assert!(fuzz::check_return_target(ok), "{ok}");
    }
}

// ----- paths -----

const SEGMENTS: &[&str] = &[
    "admin",
    "machines",
    "users",
    "settings",
    "auth-keys",
    "acls",
    "dns",
    "assets",
    "login",
    "logout",
    "oidc",
    "start",
    "callback",
    "onboarding",
    "12",
    "007",
    "x.js",
    "_root.data",
    "machines.data",
    "grafana",
    "d",
    "status",
    "Api",
    "api",
    "a.b",
    "~",
    "@me",
    "a+b",
];

fn canonical_path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (
            proptest::collection::vec(pick(SEGMENTS), 1..5),
            any::<bool>()
        )
            .prop_map(|(segs, admin)| {
                let p = format!("/{}", segs.join("/"));
                if admin && !p.starts_with("/admin") {
                    format!("/admin{p}")
                } else {
                    p
                }
            }),
        1 => proptest::collection::vec("[a-z0-9._~-]{1,8}", 1..4)
            .prop_map(|segs| format!("/admin/{}", segs.join("/"))),
        1 => "/[ -~]{0,30}",
    ]
}

proptest! {
    #![proptest_config(cfg(300))]

    #[test]
    fn every_spelling_of_a_path_is_refused_or_decided_like_it(
        p in canonical_path(),
        pick in proptest::collection::vec(any::<u8>(), 2),
    ) {
        fuzz::check_path(&p, &pick);
    }

    #[test]
    fn arbitrary_paths_never_panic_admission(data in proptest::collection::vec(any::<u8>(), 0..80)) {
        fuzz::path_policy(&data);
    }
}

#[test]
fn known_paths_are_admitted_so_the_path_property_is_not_vacuous() {
    for p in [
        "/admin/machines",
        "/admin/users",
        "/admin/",
        "/grafana/d/x",
        "/status",
    ] {
        fuzz::check_path(p, &[3, 1]);
        assert!(!fuzz::equivalent_spellings(p, &[3, 1]).is_empty());
    }
}

// ----- forms -----

const FIELD_NAMES: &[&str] = &[
    "action_id",
    "ACTION_ID",
    "action_id[]",
    "action%5Fid",
    "node_id",
    "user_id",
    "new_role",
    "name",
    "csrf",
    "",
];
const FIELD_VALUES: &[&str] = &[
    "rename_node",
    "delete_node",
    "expire_node",
    "update_acl",
    "12",
    "",
    "%00",
    "%FF",
    "a+b",
    "%2B",
    "x%3Dy",
    "\u{e9}",
    "%C3%A9",
];

fn form_bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(
            (
                pick(FIELD_NAMES),
                pick(FIELD_VALUES),
                pick(&["=", "", "=="])
            ),
            0..8
        )
        .prop_map(|fields| {
            let body = fields
                .iter()
                .map(|(k, v, eq)| format!("{k}{eq}{v}"))
                .collect::<Vec<_>>()
                .join("&");
            let mut b = vec![1u8];
            b.extend_from_slice(body.as_bytes());
            b
        }),
        proptest::collection::vec((pick(FIELD_NAMES), pick(FIELD_VALUES)), 0..5).prop_map(
            |fields| {
                let mut b = vec![0u8];
                for (k, v) in fields {
                    b.extend_from_slice(
                        format!(
                            "--XyZ\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                        )
                        .as_bytes(),
                    );
                }
                b.extend_from_slice(b"--XyZ--\r\n");
                b
            }
        ),
        proptest::collection::vec(any::<u8>(), 0..200),
    ]
}

proptest! {
    #![proptest_config(cfg(300))]

    #[test]
    fn form_parsing_never_panics_is_deterministic_and_round_trips(body in form_bodies()) {
        fuzz::form_body(&body);
    }
}

// ----- forwarded headers -----

const HEADER_NAMES: &[&str] = &[
    "x-forwarded-for",
    "X-Forwarded-For",
    "x-forwarded-uri",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-method",
    "x-original-uri",
    "x-original-url",
    "x-original-method",
    "host",
    "x_forwarded_for",
];
const HEADER_VALUES: &[&str] = &[
    "1.2.3.4",
    "10.0.0.1, 203.0.113.5",
    "203.0.113.5, 10.0.0.1",
    "fd00::2, ::1",
    "unknown, 1.1.1.1",
    "/admin/machines",
    "/admin/machines?x=1",
    "https://hp.example.com/admin/",
    "https://other.example/admin/",
    "http://hp.example.com",
    "hp.example.com",
    "GET",
    "get",
    "POST",
    "https",
    "HTTPS",
    "ftp",
    "",
    " ",
    "/%2e%2e/admin",
    "admin",
    "https://hp.example.com#x",
    "https://hp.example.com?x",
];

proptest! {
    #![proptest_config(cfg(300))]

    #[test]
    fn forwarded_header_parsing_never_panics_and_trusts_only_trusted_peers(
        lines in proptest::collection::vec((pick(HEADER_NAMES), pick(HEADER_VALUES)), 0..8),
        noise in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut text = lines
            .iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect::<Vec<_>>()
            .join("\n")
            .into_bytes();
        fuzz::forwarded_headers(&text);
        text.extend_from_slice(&noise);
        fuzz::forwarded_headers(&text);
    }
}

// ----- configuration -----

const CONFIG_LINES: &[&str] = &[
    "[server]",
    "[oidc]",
    "[upstream]",
    "[headscale]",
    "[headers]",
    "[forward_auth]",
    "[store]",
    "[[policy.rule]]",
    "[onboarding]",
    "[server",
    "listen = \"127.0.0.1:0\"",
    "listen = 99999",
    "base_url = \"https://hp.example.com\"",
    "base_url = \"not a url\"",
    "cookie_secret = \"short\"",
    "cookie_secret = \"0123456789abcdef0123456789abcdef-long-enough\"",
    "cookie_max_age = -1",
    "cookie_max_age = 18446744073709551615",
    "trusted_proxies = [\"10.0.0.0/8\", \"::/0\", \"999.0.0.0/8\"]",
    "allowed_redirect_domains = [\".example.com\", \"\", \"a:b\"]",
    "issuer = \"https://idp.example\"",
    "client_id = \"x\"",
    "url = \"http://127.0.0.1:3000\"",
    "url = \"unix:/run/x.sock\"",
    "headplane_login = \"none\"",
    "headplane_login = \"bogus\"",
    "path_prefix = \"/grafana\"",
    "path = \"/Status/\"",
    "capabilities = [\"ui_access\", \"nope\"]",
    "public = true",
    "methods = [\"GET\", \"TRACE\"]",
    "role_map = { admin = \"admin\", x = \"owner\" }",
    "api_key_path = \"${NOPE}/x\"",
    "x = \"\\u0000\"",
    "= 1",
    "\"\" = 2",
    "a.b.c = 3",
    "key = [1, \"two\", { three = 3 }]",
];

proptest! {
    #![proptest_config(cfg(300))]

    #[test]
    fn configuration_parsing_never_panics_on_toml_ish_text(
        lines in proptest::collection::vec(pick(CONFIG_LINES), 0..16),
    ) {
        fuzz::config_text(lines.join("\n").as_bytes());
    }

    #[test]
    fn configuration_parsing_never_panics_on_arbitrary_text(t in "\\PC{0,200}") {
        fuzz::config_text(t.as_bytes());
    }
}

// ----- the signed assertion -----

proptest! {
    #![proptest_config(cfg(300))]

    #[test]
    fn the_example_verifier_never_accepts_a_changed_assertion(edits in proptest::collection::vec(any::<u8>(), 1..12)) {
        fuzz::assertion_token(&edits);
    }

    #[test]
    fn the_example_verifier_never_accepts_an_assertion_with_one_character_changed(
        at in any::<usize>(),
        c in pick(&['A', 'B', 'Q', 'g', 'w', '0', '1', '-', '_', '.', '=', 'x']),
    ) {
        let (jwks, token) = fuzz::sample_assertion(1_800_000_000);
        let mut s: Vec<char> = token.chars().collect();
        let i = at % s.len();
        s[i] = c;
        let changed: String = s.into_iter().collect();
        prop_assume!(changed != token);
        prop_assert!(headgate::assertion::verify(&jwks, &changed, fuzz::BASE_URL, "http://upstream", 1_800_000_000).is_err(), "{}", changed);
    }
}
