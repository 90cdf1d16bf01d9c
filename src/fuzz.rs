//! The bodies of headgate's fuzz targets (`fuzz/fuzz_targets/*.rs`, cargo-fuzz) as plain functions, so that
//! the same checks run on stable Rust too: `tests/it/fuzz_corpus.rs` runs every target over its seed corpus
//! (`fuzz/corpus/<target>/`) and the line corpora of `tests/corpus/`, and `tests/it/properties.rs` drives them
//! with proptest. Each function takes arbitrary bytes, must never panic on them, and panics (with what went
//! wrong) only when a property is broken:
//!
//! | target | property |
//! |---|---|
//! | [`session_cookie`] | decoding a `Cookie` header never panics; only a value exactly as headgate minted it verifies; a minted value with any byte changed does not |
//! | [`return_url`] | an accepted return target is a same-origin path that starts with exactly one `/` or an absolute http(s) URL on an allowlisted host, also as a browser resolves it |
//! | [`path_policy`] | admission is deterministic; an admitted path is canonical; every other spelling of it is refused or decided exactly like it |
//! | [`form_body`] | strict form parsing is deterministic; `action_id` is the first such field; the re-encoded body parses back to the same fields |
//! | [`forwarded_headers`] | forward-auth dialect and `X-Forwarded-For` parsing never panic; an untrusted peer's headers are ignored; the client address is the peer or one of the listed hops |
//! | [`config_text`] | configuration parsing never panics, whatever the text |
//! | [`assertion_token`] | the example verifier (`assertion::verify`) accepts the genuine token and never a changed one |
//!
//! Not part of headgate's behaviour; public only so that the fuzz crate and the tests can call it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use url::Url;

use crate::config::{Cidr, Config, Secret};
use crate::crypto::{Keys, Purpose};
use crate::forward_auth::{Dialect, describe};
use crate::policy::{Admission, HostAllowlist, Request, check_canonical};
use crate::policy::{Mode, Policy, Who};
use crate::redirect::RedirectPolicy;
use crate::roles::Caps;
use crate::store::Role;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name (the names of `fuzz/fuzz_targets/*.rs` and `fuzz/corpus/*`).
pub const TARGETS: &[(&str, Target)] = &[
    ("session_cookie", session_cookie),
    ("return_url", return_url),
    ("path_policy", path_policy),
    ("form_body", form_body),
    ("forwarded_headers", forwarded_headers),
    ("config_text", config_text),
    ("assertion_token", assertion_token),
];

/// The `main` of a fuzz target built without libFuzzer (`fuzz/`, `--no-default-features`): runs `target` over
/// every file named on the command line (a directory: every file in it, sorted) and says how many it ran. A
/// broken property panics, naming the input. Exits 2 without arguments.
pub fn replay_args(name: &str, target: Target) {
    let args: Vec<std::path::PathBuf> = std::env::args_os().skip(1).map(Into::into).collect();
    if args.is_empty() {
        eprintln!(
            "usage: {name} <file or directory>... (built without libFuzzer: runs the target over the inputs)"
        );
        std::process::exit(2);
    }
    let mut files = Vec::new();
    for path in args {
        match std::fs::read_dir(&path) {
            Ok(dir) => {
                let mut inside: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
                inside.sort();
                files.extend(inside.into_iter().filter(|p| p.is_file()));
            }
            Err(_) => files.push(path),
        }
    }
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("{name}: {}", path.display());
        target(&data);
    }
    eprintln!("{name}: {} input(s), no property broken", files.len());
}

/// The base URL and redirect allowlist the targets use.
pub const BASE_URL: &str = "https://hp.example.com";
pub const ALLOWED_REDIRECT_DOMAIN: &str = "allowed.example";
pub const ALLOWED_REDIRECT_SUBDOMAINS: &str = ".apps.example";

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

// ----- session cookie -----

fn cookie_keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        Keys::new(
            &Secret::new("fuzz-cookie-secret-0123456789abcdef0123456789"),
            Some(&Secret::new("fuzz-previous-secret-0123456789abcdef012345")),
        )
    })
}

/// A cookie value as headgate mints it for raw session id `id`.
pub fn mint_session_cookie(id: &[u8; 32]) -> String {
    let tag = cookie_keys().mac(Purpose::SessionMac, id);
    format!("{}.{}", crate::crypto::b64(id), crate::crypto::b64(&tag))
}

pub fn session_cookie(data: &[u8]) {
    let keys = cookie_keys();
    // 1. The bytes as a whole Cookie header, and as one value.
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(data) {
        h.insert(http::header::COOKIE, v);
    }
    let name = "headgate_session";
    let mut values = crate::cookies::values(&h, name);
    let raw = text(data);
    values.push(&raw);
    for v in values {
        if let Some(key) = crate::session::decode_cookie(keys, v) {
            // Only the canonical spelling of a minted value verifies (no malleable encodings).
            let (id, _) = v.split_once('.').expect("a verified value has a dot");
            let id: [u8; 32] = crate::crypto::unb64(id)
                .and_then(|b| b.try_into().ok())
                .expect("a verified value has a 32-byte id");
            assert_eq!(
                v,
                mint_session_cookie(&id),
                "a non-canonical value verified"
            );
            assert_eq!(key, crate::store::SessionKey::from_raw_id(&id));
        }
    }
    // 2. A genuine value with one byte changed (position and byte from the input) never verifies.
    let id = crate::crypto::sha256(data);
    let good = mint_session_cookie(&id);
    assert!(crate::session::decode_cookie(keys, &good).is_some());
    if data.len() >= 2 {
        let mut b = good.clone().into_bytes();
        let at = data[0] as usize % b.len();
        b[at] = data[1];
        if let Ok(s) = String::from_utf8(b)
            && s != good
        {
            assert!(
                crate::session::decode_cookie(keys, &s).is_none(),
                "a changed session cookie verified: {s:?}"
            );
        }
    }
}

// ----- return URL -----

fn redirect_policy() -> &'static RedirectPolicy {
    static P: OnceLock<RedirectPolicy> = OnceLock::new();
    P.get_or_init(|| {
        RedirectPolicy::new(
            &Url::parse(BASE_URL).unwrap(),
            &[
                ALLOWED_REDIRECT_DOMAIN.to_string(),
                ALLOWED_REDIRECT_SUBDOMAINS.to_string(),
            ],
        )
    })
}

/// Whether `host` is the base URL's host or on the allowlist (suffix entries on a dot boundary only).
pub fn redirect_host_allowed(host: &str) -> bool {
    let base = Url::parse(BASE_URL).unwrap();
    let sub = ALLOWED_REDIRECT_SUBDOMAINS.trim_start_matches('.');
    Some(host) == base.host_str()
        || host == ALLOWED_REDIRECT_DOMAIN
        || host == sub
        || host.ends_with(ALLOWED_REDIRECT_SUBDOMAINS)
}

/// The property of [`return_url`] for one input string: panics when an accepted target is not safe.
pub fn check_return_target(raw: &str) -> bool {
    let Some(t) = redirect_policy().validate(raw) else {
        return false;
    };
    let t = t.as_str();
    assert!(
        t.bytes().all(|b| (0x21..=0x7e).contains(&b)),
        "{raw:?} → {t:?}: not printable ASCII"
    );
    assert!(!t.contains('\\'), "{raw:?} → {t:?}: backslash");
    let base = Url::parse(BASE_URL).unwrap();
    if t.starts_with('/') {
        let b = t.as_bytes();
        assert!(
            b.len() == 1 || (b[1] != b'/' && b[1] != b'\\'),
            "{raw:?} → {t:?}: protocol-relative"
        );
        let path = t.split(['?', '#']).next().unwrap_or("");
        for w in path.as_bytes().windows(3) {
            assert!(
                !(w[0] == b'/' && w[2] == b'/' && (w[1] == b'.' || w[1] == b'/')),
                "{raw:?} → {t:?}: empty or dot segment"
            );
        }
        assert!(!path.contains("//"), "{raw:?} → {t:?}: empty segment");
    } else {
        let u = Url::parse(t).unwrap_or_else(|e| panic!("{raw:?} → {t:?}: not a URL ({e})"));
        assert!(
            matches!(u.scheme(), "http" | "https"),
            "{raw:?} → {t:?}: scheme"
        );
        assert!(
            u.username().is_empty() && u.password().is_none(),
            "{raw:?} → {t:?}: userinfo"
        );
        assert!(
            redirect_host_allowed(u.host_str().unwrap_or("")),
            "{raw:?} → {t:?}: host not allowed"
        );
    }
    // However a browser resolves it against the page it is on: the same origin, or an allowed host.
    let resolved = base
        .join(t)
        .unwrap_or_else(|e| panic!("{raw:?} → {t:?}: unresolvable ({e})"));
    assert!(
        matches!(resolved.scheme(), "http" | "https")
            && redirect_host_allowed(resolved.host_str().unwrap_or("")),
        "{raw:?} → {t:?}: resolves to {resolved}"
    );
    true
}

pub fn return_url(data: &[u8]) {
    let raw = text(data);
    check_return_target(&raw);
    // Also as ingress-nginx would hand it over: escaped once more.
    let escaped =
        percent_encoding::utf8_percent_encode(&raw, percent_encoding::NON_ALPHANUMERIC).to_string();
    check_return_target(&escaped);
}

// ----- path canonicalisation and policy -----

fn policies() -> &'static [(Policy, &'static str)] {
    static P: OnceLock<Vec<(Policy, &'static str)>> = OnceLock::new();
    P.get_or_init(|| {
        let hosts = HostAllowlist::new(&Url::parse(BASE_URL).unwrap(), &[]);
        let rules = Config::parse(
            "fuzz",
            &format!(
                "[server]\nbase_url = \"{BASE_URL}\"\ncookie_secret = \"fuzz-cookie-secret-0123456789abcdef0123456789\"\n\
                 [upstream]\nurl = \"http://127.0.0.1:3000\"\nheadplane_login = \"none\"\n\
                 [[policy.rule]]\npath_prefix = \"/grafana\"\ncapabilities = [\"read_users\"]\n\
                 [[policy.rule]]\npath = \"/status\"\npublic = true\n\
                 [[policy.rule]]\npath_prefix = \"/Api\"\ncapabilities = []\nmethods = [\"GET\", \"DELETE\"]\n"
            ),
            &HashMap::new(),
        )
        .map(|c| c.policy.rules)
        .unwrap_or_else(|e| panic!("the fuzz policy config: {e}"));
        vec![
            (
                Policy::new(Mode::Bridge, hosts.clone(), Vec::new(), "/admin/oidc/callback"),
                "bridge",
            ),
            (
                Policy::new(Mode::ProxyAuth, hosts.clone(), Vec::new(), "/admin/oidc/callback"),
                "proxy_auth",
            ),
            (
                Policy::new(Mode::None, hosts, rules, "/admin/oidc/callback"),
                "none",
            ),
        ]
    })
}

fn whos() -> Vec<Option<Who>> {
    let mut v = vec![None, Some(Who::api_key())];
    for r in crate::store::Role::ALL {
        v.push(Some(Who::person(r, Some("7".into()))));
    }
    v.push(Some(Who::person(Role::Member, None)));
    v.push(Some(Who {
        caps: Caps(0),
        ..Who::person(Role::Member, None)
    }));
    v
}

/// What admission and every decision make of `GET`/`POST` `path` under `policy`.
fn verdicts(policy: &Policy, method: &Method, path: &str) -> Result<Vec<String>, ()> {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::HOST,
        HeaderValue::from_static("hp.example.com"),
    );
    let req = Request {
        method,
        raw_path: path,
        query: None,
        authority: None,
        headers: &h,
    };
    match policy.admit(&req) {
        Admission::Ok(a) => {
            assert_eq!(a.path, path, "admission never rewrites a path");
            let mut out = vec![format!("{:?}", a.row)];
            for w in whos() {
                out.push(format!("{:?}", policy.decide_without_body(&a, w.as_ref())));
            }
            Ok(out)
        }
        Admission::Refuse { .. } => Err(()),
        other => Ok(vec![format!("{other:?}")]),
    }
}

/// Spellings a server (or a proxy in between) may treat as the same path as `p` (which starts with `/`);
/// `pick` chooses where the edits go.
pub fn equivalent_spellings(p: &str, pick: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let byte = |i: usize| pick.get(i).copied().unwrap_or(0) as usize;
    // Percent-encode one character, `/` included (%2F and %2f).
    let count = p.chars().count().max(1);
    if let Some((i, ch)) = p.char_indices().nth(byte(0) % count) {
        let mut enc = String::new();
        for b in ch.to_string().bytes() {
            enc.push_str(&format!("%{b:02X}"));
        }
        let rest = &p[i + ch.len_utf8()..];
        out.push(format!("{}{enc}{rest}", &p[..i]));
        out.push(format!("{}{}{rest}", &p[..i], enc.to_ascii_lowercase()));
    }
    // Edits at a segment boundary: `a` ends before a `/`, `b` starts with it.
    let slashes: Vec<usize> = p.match_indices('/').map(|(i, _)| i).collect();
    let cut = slashes
        .get(byte(1) % slashes.len().max(1))
        .copied()
        .unwrap_or(0);
    let (a, b) = p.split_at(cut);
    out.push(format!("{a}/.{b}"));
    out.push(format!("{a}/x/..{b}"));
    out.push(format!("{a}/%2e{b}"));
    out.push(format!("{a}/y/%2E%2E{b}"));
    out.push(format!("{a}/{b}"));
    out.push(format!("{a}\\{}", b.strip_prefix('/').unwrap_or(b)));
    out.push(format!("{a}/\t{}", b.strip_prefix('/').unwrap_or(b)));
    out.push(p.replace('/', "\\"));
    // A trailing slash, dot or look-alike dot; parameters; a NUL; a fragment.
    out.push(format!("{p}/"));
    out.push(format!("{p}."));
    out.push(format!("{p}\u{ff0e}"));
    out.push(format!("{p};x=1"));
    out.push(format!("{p}%00"));
    out.push(format!("{p}%23frag"));
    out.push(format!("{p}#frag"));
    // Case (a different resource where paths are case-sensitive; see `check_path`).
    out.push(p.to_ascii_uppercase());
    out.push(format!("{a}{}", b.to_ascii_uppercase()));
    out.retain(|v| v != p);
    out
}

/// The property of [`path_policy`] for one path: panics on a spelling decided differently.
pub fn check_path(path: &str, pick: &[u8]) {
    for (policy, name) in policies() {
        for method in [Method::GET, Method::POST] {
            let first = verdicts(policy, &method, path);
            assert_eq!(
                first,
                verdicts(policy, &method, path),
                "{name}: admission of {path:?} is not deterministic"
            );
            // Only paths admitted for a decision (not headgate's own paths or the `/admin` redirect).
            let Ok(canonical) = first else { continue };
            if canonical.len() == 1 {
                continue;
            }
            assert!(
                check_canonical(path, *name != "none").is_ok(),
                "{name}: {path:?} admitted but not canonical"
            );
            for v in equivalent_spellings(path, pick) {
                same_decision(policy, name, &method, path, &canonical, &v);
            }
        }
    }
}

fn same_decision(
    policy: &Policy,
    name: &str,
    method: &Method,
    path: &str,
    canonical: &[String],
    v: &str,
) {
    if let Ok(got) = verdicts(policy, method, v)
        && got != canonical
        // An upper-case spelling is another resource where case matters (rules are exact).
        && !v.eq_ignore_ascii_case(path)
    {
        panic!(
            "{name} {method}: {v:?} is decided {got:?}, but its canonical form {path:?} {canonical:?}"
        );
    }
}

/// One corpus pair: `variant` is refused or decided like `canonical` (in every mode where `canonical` is
/// admitted for a decision).
pub fn check_variant(canonical: &str, variant: &str) {
    for (policy, name) in policies() {
        for method in [Method::GET, Method::POST] {
            if let Ok(c) = verdicts(policy, &method, canonical)
                && c.len() > 1
            {
                same_decision(policy, name, &method, canonical, &c, variant);
            }
        }
    }
}

pub fn path_policy(data: &[u8]) {
    let (pick, rest) = data.split_at(data.len().min(2));
    let mut path = text(rest);
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    path.truncate(
        path.char_indices()
            .nth(512)
            .map(|(i, _)| i)
            .unwrap_or(path.len()),
    );
    check_path(&path, pick);
}

// ----- form bodies -----

pub fn form_body(data: &[u8]) {
    use crate::policy::parse_form;
    let (ct, body) = match data.split_first() {
        Some((b, rest)) if b % 3 == 0 => (
            "multipart/form-data; boundary=XyZ".to_string(),
            rest.to_vec(),
        ),
        Some((b, rest)) if b % 3 == 1 => (
            "application/x-www-form-urlencoded; charset=UTF-8".to_string(),
            rest.to_vec(),
        ),
        Some((_, rest)) => (
            "application/x-www-form-urlencoded".to_string(),
            rest.to_vec(),
        ),
        None => ("application/x-www-form-urlencoded".to_string(), Vec::new()),
    };
    let a = parse_form(Some(&ct), None, &body);
    let b = parse_form(Some(&ct), None, &body);
    assert_eq!(a, b, "form parsing is not deterministic");
    if let Ok(form) = a {
        let first = form
            .fields()
            .iter()
            .find(|(k, _)| k == "action_id")
            .map(|(_, v)| v.as_str());
        assert_eq!(form.action_id(), first);
        // What is forwarded is exactly what was decided on.
        let again = parse_form(
            Some(crate::policy::FORWARD_CONTENT_TYPE),
            None,
            form.encoded().as_bytes(),
        )
        .unwrap_or_else(|e| panic!("the re-encoded form is refused: {e}"));
        assert_eq!(
            again.fields(),
            form.fields(),
            "re-encoding changed the form"
        );
    }
    // Never accepted with a content encoding.
    assert!(parse_form(Some(&ct), Some("gzip"), &body).is_err());
}

// ----- forwarded headers -----

fn trusted() -> &'static [Cidr] {
    static T: OnceLock<Vec<Cidr>> = OnceLock::new();
    T.get_or_init(|| {
        ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    })
}

/// A header map from `name: value` lines (lines that are not a valid header are skipped).
pub fn headers_from(data: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            h.append(n, v);
        }
    }
    h
}

pub fn forwarded_headers(data: &[u8]) {
    let h = headers_from(data);
    for dialect in [Dialect::Nginx, Dialect::Forward, Dialect::Envoy] {
        let a = describe(
            dialect,
            &Method::GET,
            Some(("/x", Some("a=1"))),
            &h,
            "https",
        );
        let b = describe(
            dialect,
            &Method::GET,
            Some(("/x", Some("a=1"))),
            &h,
            "https",
        );
        assert_eq!(a, b);
        if let Ok(o) = a {
            assert!(o.path.starts_with('/'), "{o:?}");
            assert!(o.scheme == "http" || o.scheme == "https", "{o:?}");
        }
    }
    let hops: Vec<IpAddr> = h
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for peer in ["203.0.113.7", "10.1.2.3", "127.0.0.1", "fd00::1"] {
        let peer: IpAddr = peer.parse().unwrap();
        let ip = crate::client_ip::client_ip(peer, &h, trusted());
        if !trusted().iter().any(|c| c.contains(peer)) {
            assert_eq!(ip, peer, "an untrusted peer's X-Forwarded-For was believed");
        } else {
            assert!(
                ip == peer || hops.contains(&ip),
                "{ip} is neither the peer nor a hop"
            );
        }
    }
}

// ----- configuration -----

pub fn config_text(data: &[u8]) {
    let t = text(data);
    let _ = Config::parse("fuzz", &t, &HashMap::new());
    // The same text under a valid [server] section, so deeper validation runs too.
    let with_server = format!(
        "[server]\nbase_url = \"{BASE_URL}\"\ncookie_secret = \"fuzz-cookie-secret-0123456789abcdef0123456789\"\n{t}"
    );
    let _ = Config::parse("fuzz", &with_server, &HashMap::new());
    // As environment overrides.
    let mut env = HashMap::new();
    for line in t.lines().take(16) {
        if let Some((k, v)) = line.split_once('=') {
            env.insert(
                format!("HEADGATE_{}", k.trim().to_ascii_uppercase()),
                v.to_string(),
            );
        }
    }
    let _ = Config::parse(
        "fuzz",
        &format!("[server]\nbase_url = \"{BASE_URL}\"\n"),
        &env,
    );
}

// ----- the signed assertion -----

/// A fixed ES256 key's JWKS and a token it signed (issuer [`BASE_URL`], audience `http://upstream`,
/// valid at `now`).
pub fn sample_assertion(now: i64) -> (String, String) {
    use p256::ecdsa::signature::Signer;
    let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).expect("a valid scalar");
    let (kid, jwk) = crate::assertion::public_jwk(key.verifying_key());
    let header = serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": kid });
    let claims = serde_json::json!({
        "iss": BASE_URL, "aud": "http://upstream", "iat": now, "nbf": now, "exp": now + 300,
        "jti": "j", "sub": "alice", "sid": "s", "amr": ["oidc"],
    });
    let b64 = |v: &serde_json::Value| crate::crypto::b64(&serde_json::to_vec(v).unwrap());
    let input = format!("{}.{}", b64(&header), b64(&claims));
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    let token = format!("{input}.{}", crate::crypto::b64(&sig.to_bytes()));
    let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
    (jwks, token)
}

/// Apply edits from `data` to `token`: each 3 bytes are (operation, position, byte).
pub fn mutate_token(token: &str, data: &[u8]) -> String {
    let mut b = token.as_bytes().to_vec();
    for op in data.chunks(3) {
        let (kind, pos, byte) = (
            op[0],
            op.get(1).copied().unwrap_or(0) as usize,
            op.get(2).copied().unwrap_or(b'A'),
        );
        if b.is_empty() {
            b.push(byte);
            continue;
        }
        let at = pos * 7 % b.len();
        match kind % 4 {
            0 => b[at] = byte,
            1 => b.insert(at, byte),
            2 => {
                b.remove(at);
            }
            _ => b[at] ^= 1 << (byte % 8),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

pub fn assertion_token(data: &[u8]) {
    const NOW: i64 = 1_800_000_000;
    let (jwks, token) = sample_assertion(NOW);
    assert!(
        crate::assertion::verify(&jwks, &token, BASE_URL, "http://upstream", NOW).is_ok(),
        "the genuine token is refused"
    );
    let changed = mutate_token(&token, data);
    if changed != token {
        assert!(
            crate::assertion::verify(&jwks, &changed, BASE_URL, "http://upstream", NOW).is_err(),
            "a changed token was accepted: {changed}"
        );
    }
    // The raw input as a token: never accepted (it is not signed by the key).
    let raw = text(data);
    if raw != token {
        assert!(crate::assertion::verify(&jwks, &raw, BASE_URL, "http://upstream", NOW).is_err());
    }
}
