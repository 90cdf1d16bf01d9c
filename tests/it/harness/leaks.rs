//! What must never reach a browser through the API-key bridge, checked over everything a [`Browser`]
//! received ([`Browser::history`]): every status line, header and body.
//!
//! * The Headscale API key headgate signs in with — the whole key and its secret part — raw, percent-encoded
//!   (partly or every byte, either hex case), form-encoded, JSON-escaped (`\/`, every character as
//!   `\uXXXX`), hex, and base64 (standard and URL-safe, at each of the three byte alignments a substring can
//!   have inside a larger encoded text, and base64 of that base64).
//! * Headplane's session: the cookie name `_hp_auth` in any case (raw, percent-encoded, JSON-escaped,
//!   base64) and every `_hp_auth` value Headplane handed out (and its base64-decoded content), in the
//!   same encodings as the key.
//! * S10 on answers from headgate's proxied paths: `Cache-Control: no-store, private`, `Vary: Cookie`, and
//!   `Set-Cookie` only for headgate's own cookies and `upstream.pass_cookies`.
//!
//! [`Scanner::scan_log`] looks for the same encodings in a process's log, line by line (S20).
//!
//! This is an oracle written apart from headgate's scrubber: it shares no code with `src/`.

use aho_corasick::AhoCorasick;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};

use super::browser::{Browser, Page};
use super::headplane::FakeHeadplane;

/// One encoded form of a secret.
struct Needle {
    what: String,
    bytes: Vec<u8>,
    /// Compared ignoring ASCII case.
    fold: bool,
}

/// The needles compiled once for a scan.
struct Matcher<'a> {
    exact: Vec<&'a Needle>,
    folded: Vec<&'a Needle>,
    ac_exact: AhoCorasick,
    ac_folded: AhoCorasick,
}

impl Matcher<'_> {
    /// What `hay` holds, each needle once.
    fn find(&self, hay: &[u8]) -> Vec<String> {
        let lower = hay.to_ascii_lowercase();
        let mut out: Vec<String> = Vec::new();
        let hits = self
            .ac_exact
            .find_overlapping_iter(hay)
            .map(|m| self.exact[m.pattern().as_usize()])
            .chain(
                self.ac_folded
                    .find_overlapping_iter(lower.as_slice())
                    .map(|m| self.folded[m.pattern().as_usize()]),
            );
        for n in hits {
            if !out.contains(&n.what) {
                out.push(n.what.clone());
            }
        }
        out
    }
}

/// Secrets to look for, each in every encoding.
#[derive(Default)]
pub struct Scanner {
    needles: Vec<Needle>,
    /// Set-Cookie names (besides headgate's own) allowed from headgate's origin.
    pass_cookies: Vec<String>,
}

/// Aligned base64 runs of `b`: for each start offset 0..3, the longest multiple-of-3 run, encoded.
fn b64_runs(b: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for shift in 0..3usize {
        if b.len() <= shift {
            continue;
        }
        let run = &b[shift..];
        let run = &run[..run.len() - run.len() % 3];
        if run.len() < 6 {
            continue;
        }
        out.push((format!("base64@{shift}"), STANDARD_NO_PAD.encode(run)));
        out.push((format!("base64url@{shift}"), URL_SAFE_NO_PAD.encode(run)));
    }
    out
}

fn pct_all(b: &[u8], lower: bool) -> String {
    b.iter()
        .map(|c| {
            if lower {
                format!("%{c:02x}")
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

fn pct_reserved(b: &[u8], lower: bool) -> String {
    b.iter()
        .map(|&c| {
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                (c as char).to_string()
            } else if lower {
                format!("%{c:02x}")
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

/// Every encoding of `plain` (see the module's list).
fn encodings(plain: &[u8]) -> Vec<(String, Vec<u8>)> {
    let text = String::from_utf8_lossy(plain).into_owned();
    let mut v: Vec<(String, Vec<u8>)> = vec![
        ("raw".into(), plain.to_vec()),
        ("percent".into(), pct_reserved(plain, false).into_bytes()),
        (
            "percent-lower".into(),
            pct_reserved(plain, true).into_bytes(),
        ),
        ("percent-all".into(), pct_all(plain, false).into_bytes()),
        (
            "percent-all-lower".into(),
            pct_all(plain, true).into_bytes(),
        ),
        (
            "form".into(),
            url::form_urlencoded::byte_serialize(plain)
                .collect::<String>()
                .into_bytes(),
        ),
        ("hex".into(), hex(plain, false).into_bytes()),
        ("hex-upper".into(), hex(plain, true).into_bytes()),
    ];
    let json = serde_json::to_string(&text).unwrap();
    let json = json[1..json.len() - 1].to_string();
    v.push(("json".into(), json.replace('/', "\\/").into_bytes()));
    v.push(("json".into(), json.into_bytes()));
    v.push((
        "json-unicode".into(),
        text.chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect::<String>()
            .into_bytes(),
    ));
    v.push((
        "json-unicode-upper".into(),
        text.chars()
            .map(|c| format!("\\u{:04X}", c as u32))
            .collect::<String>()
            .into_bytes(),
    ));
    for (what, enc) in b64_runs(plain) {
        // base64 of the base64 (a value encoded twice, e.g. inside a cookie inside a token).
        for (what2, enc2) in b64_runs(enc.as_bytes()) {
            v.push((format!("{what2} of {what}"), enc2.into_bytes()));
        }
        v.push((what, enc.into_bytes()));
    }
    v
}

fn hex(b: &[u8], upper: bool) -> String {
    b.iter()
        .map(|c| {
            if upper {
                format!("{c:02X}")
            } else {
                format!("{c:02x}")
            }
        })
        .collect()
}

impl Scanner {
    pub fn new() -> Scanner {
        Scanner::default()
    }

    /// Look for `value` (labelled `label` in findings) in every encoding.
    pub fn secret(mut self, label: &str, value: &[u8]) -> Scanner {
        assert!(value.len() >= 8, "{label}: too short to scan for");
        for (what, bytes) in encodings(value) {
            self.needles.push(Needle {
                what: format!("{label} ({what})"),
                bytes,
                fold: false,
            });
        }
        self
    }

    /// The Headscale API key: the whole key and its secret part.
    pub fn api_key(self, key: &str) -> Scanner {
        let secret = if key.starts_with("hskey-") {
            key.rsplit('-').next().unwrap()
        } else {
            key.split_once('.').map(|(_, s)| s).unwrap_or(key)
        };
        let s = self.secret("the API key", key.as_bytes());
        if secret.len() >= 12 && secret != key {
            s.secret("the API key's secret part", secret.as_bytes())
        } else {
            s
        }
    }

    /// `_hp_auth` in any case, and every session value `hp` handed out (and what it base64-decodes to).
    pub fn hp_sessions(mut self, hp: &FakeHeadplane) -> Scanner {
        for (what, bytes) in encodings(b"_hp_auth") {
            let fold = !what.starts_with("base64");
            self.needles.push(Needle {
                what: format!("the name _hp_auth ({what})"),
                bytes,
                fold,
            });
        }
        self.hp_session_values(hp)
    }

    /// Every `_hp_auth` value `hp` handed out (and what it base64-decodes to), without the cookie's name
    /// (which a log may name).
    pub fn hp_session_values(mut self, hp: &FakeHeadplane) -> Scanner {
        for s in hp.sessions() {
            self = self.secret("an _hp_auth value", s.cookie.as_bytes());
            if let Ok(inner) = STANDARD.decode(&s.cookie)
                && inner.len() >= 8
            {
                self = self.secret("a decoded _hp_auth value", &inner);
            }
        }
        self
    }

    /// `Set-Cookie` names (besides headgate's own) that may come from headgate.
    pub fn pass_cookies(mut self, names: &[&str]) -> Scanner {
        self.pass_cookies = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Findings in one answer (where, which secret in which encoding).
    pub fn scan_page(&self, p: &Page) -> Vec<String> {
        let reason = p.reason.clone().unwrap_or_else(|| {
            reqwest::StatusCode::from_u16(p.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("")
                .to_string()
        });
        let mut parts: Vec<(String, Vec<u8>)> = vec![(
            "status line".into(),
            format!("HTTP/1.1 {} {reason}", p.status).into_bytes(),
        )];
        for (n, v) in p.headers.iter() {
            let mut line = n.as_str().as_bytes().to_vec();
            line.extend_from_slice(b": ");
            line.extend_from_slice(v.as_bytes());
            parts.push((format!("header {n}"), line));
        }
        parts.push(("body".into(), p.body.as_bytes().to_vec()));
        let m = self.matcher();
        let mut found = Vec::new();
        for (place, hay) in &parts {
            for what in m.find(hay) {
                let f = format!(
                    "{} {} ({}): {place} holds {what}",
                    p.method, p.url, p.status
                );
                if !found.contains(&f) {
                    found.push(f);
                }
            }
        }
        found
    }

    /// Findings in a process's log, line by line: `line N holds <secret> (<encoding>): <the line, cut>`.
    pub fn scan_log(&self, log: &str) -> Vec<String> {
        let m = self.matcher();
        let mut found = Vec::new();
        for (i, line) in log.lines().enumerate() {
            for what in m.find(line.as_bytes()) {
                let cut: String = line.chars().take(300).collect();
                found.push(format!("line {} holds {what}: {cut}", i + 1));
            }
        }
        found
    }

    fn matcher(&self) -> Matcher<'_> {
        let exact: Vec<&Needle> = self.needles.iter().filter(|n| !n.fold).collect();
        let folded: Vec<&Needle> = self.needles.iter().filter(|n| n.fold).collect();
        Matcher {
            ac_exact: AhoCorasick::new(exact.iter().map(|n| n.bytes.as_slice())).unwrap(),
            ac_folded: AhoCorasick::new(folded.iter().map(|n| n.bytes.to_ascii_lowercase()))
                .unwrap(),
            exact,
            folded,
        }
    }

    /// Panic unless nothing `b` ever received holds a secret.
    pub fn assert_clean(&self, b: &Browser) {
        let history = b.history();
        assert!(!history.is_empty(), "the browser received nothing to scan");
        let found: Vec<String> = history.iter().flat_map(|p| self.scan_page(p)).collect();
        assert!(
            found.is_empty(),
            "secrets reached the browser:\n{}",
            found.join("\n")
        );
    }

    /// S10 on every answer `b` received from `site_origin` (`http://127.0.0.1:<port>`): answers on proxied
    /// `/admin/…` paths (not headgate's own sign-in paths, not a redirect to the sign-in) are private and
    /// vary by cookie; headgate sets only its own cookies and the allowlisted ones.
    pub fn assert_s10(&self, b: &Browser, site_origin: &str) {
        let mut problems = Vec::new();
        for p in b.history() {
            if p.url.origin().ascii_serialization() != site_origin.trim_end_matches('/') {
                continue;
            }
            for sc in p.set_cookies() {
                let name = sc.split('=').next().unwrap_or("").trim().to_string();
                let own = name
                    .trim_start_matches("__Host-")
                    .trim_start_matches("__Secure-")
                    .starts_with("headgate_");
                if !own && !self.pass_cookies.contains(&name) {
                    problems.push(format!(
                        "{} {}: Set-Cookie {name} is not allowlisted",
                        p.method, p.url
                    ));
                }
            }
            let path = p.url.path();
            let own_path = path.starts_with("/admin/login")
                || path.starts_with("/admin/oidc/")
                || path.starts_with("/admin/logout");
            let to_sign_in = p
                .header("location")
                .is_some_and(|l| l.starts_with("/admin/login"));
            if !path.starts_with("/admin/") || own_path || to_sign_in {
                continue;
            }
            let cc = p
                .headers_all("cache-control")
                .join(",")
                .to_ascii_lowercase();
            if !(cc.contains("no-store") && cc.contains("private")) {
                problems.push(format!(
                    "{} {} ({}): Cache-Control {cc:?}",
                    p.method, p.url, p.status
                ));
            }
            let vary = p.headers_all("vary").join(",").to_ascii_lowercase();
            if !vary
                .split(',')
                .any(|v| v.trim() == "cookie" || v.trim() == "*")
            {
                problems.push(format!(
                    "{} {} ({}): Vary {vary:?}",
                    p.method, p.url, p.status
                ));
            }
        }
        assert!(problems.is_empty(), "S10:\n{}", problems.join("\n"));
    }
}

/// The check every bridge test ends with: nothing `b` received holds the API key or Headplane's session
/// (every value `hp` handed out), and S10 holds on headgate's answers from `site_origin`.
pub fn assert_bridge_clean(b: &Browser, api_key: &str, hp: &FakeHeadplane, site_origin: &str) {
    let s = Scanner::new()
        .api_key(api_key)
        .hp_sessions(hp)
        .pass_cookies(&[]);
    s.assert_clean(b);
    s.assert_s10(b, site_origin);
}

#[test]
fn the_scanner_finds_every_encoding() {
    let key =
        "hskey-api-abcdefghijkl-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz01";
    let s = Scanner::new().api_key(key);
    let page = |body: String| Page::for_scan(body);
    let hits = |body: String| s.scan_page(&page(body)).len();
    assert_eq!(hits("nothing here: hskey-api-abcdefghijkl-***".into()), 0);
    assert!(hits(format!("x{key}x")) > 0);
    assert!(hits(url::form_urlencoded::byte_serialize(key.as_bytes()).collect()) > 0);
    assert!(hits(pct_all(key.as_bytes(), true)) > 0);
    for pre in ["", "a", "ab"] {
        assert!(
            hits(STANDARD.encode(format!("{pre}{{\"k\":\"{key}\"}}"))) > 0,
            "{pre}"
        );
        let twice = STANDARD.encode(URL_SAFE_NO_PAD.encode(format!("{pre}{key}")));
        assert!(hits(format!("x{twice}x")) > 0, "twice {pre}");
    }
    assert!(
        hits(
            key.chars()
                .map(|c| format!("\\u{:04x}", c as u32))
                .collect()
        ) > 0
    );
    assert!(hits(hex(key.as_bytes(), false)) > 0);
}

#[test]
fn the_log_scan_names_the_line() {
    let s = Scanner::new().secret("a token", b"tok-0123456789abcdef");
    let log = "clean line\nINFO code=tok-0123456789abcdef\n{\"q\":\"tok-0123456789abcdef\"}\nx dG9rLTAxMjM0NTY3ODlhYmNkZWY\n";
    let found = s.scan_log(log);
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("line 2 holds a token (raw)")),
        "{found:?}"
    );
    assert!(found.iter().any(|f| f.starts_with("line 3 ")), "{found:?}");
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("line 4 holds a token (base64")),
        "{found:?}"
    );
    assert!(!found.iter().any(|f| f.starts_with("line 1 ")), "{found:?}");
}
