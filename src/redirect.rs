//! Return-target (`rd`) validation: the defence against open redirects (forward-auth.md, bug class 1).
//!
//! A return target is where the browser is sent after sign-in (`/admin/oidc/start?rd=…`). Whatever
//! [`RedirectPolicy::validate`] returns is safe to put into a `Location` header as is: either a
//! relative path (+ query) that starts with exactly one `/`, or an absolute `http(s)` URL on an
//! allowlisted host. Everything doubtful is refused and [`RedirectPolicy::validate_or_default`] falls
//! back to `/admin/`.
//!
//! Decisions (all deliberately strict; a refused target costs a click, an accepted hostile one an
//! account):
//!
//! * **Input.** `validate` takes the parameter value as the HTTP layer decoded it from the query string
//!   (once). If that value starts neither with `/` nor with a URL scheme, it is percent-decoded exactly
//!   once more and the decoded form is validated if it starts with `/`, `http://` or `https://`
//!   (ingress-nginx escapes the URI it appends as `rd`). There is never a second extra level.
//! * **Characters.** The value must be printable ASCII (`0x21..=0x7e`): no whitespace, no control
//!   characters, no raw non-ASCII (browsers send percent-encoded paths and punycode hosts, so full-width
//!   dots and other IDN lookalikes only arrive in hand-made links). No backslash anywhere. After
//!   percent-decoding (repeatedly, until stable, at most [`MAX_DECODE_LEVELS`] levels; still changing
//!   after that is refused, as is a level that is not UTF-8) no level may contain whitespace, control
//!   characters, backslashes, invisible format characters or slash/dot lookalikes. This applies to the
//!   query too, so a `%20` in a query makes the target fall back to `/admin/` (use `+`).
//! * **Relative paths.** Must start with exactly one `/` (second character neither `/` nor `\`). In the
//!   path, at every decode level, no segment may be empty (no `//` anywhere, a trailing `/` is fine) or
//!   consist only of dots (no `.`/`..` segments, also not at the end): a superset of the spec's
//!   `[/\\](\s*|\.{1,2})[/\\]` rule. The result is normalised by resolving it against `base_url`
//!   (percent-encodes `"`, `<`, `>` …) and re-checked.
//! * **Absolute URLs.** Scheme `http` or `https` (any case), followed by exactly `//` and an authority
//!   of the form `host[:port]`: host is LDH labels (plus `_`) or a bracketed IPv6 literal, port 1–65535
//!   in digits without leading zeros. So no userinfo (`@`), no `%` in the authority, no empty port, no
//!   trailing or doubled dots. The path and query after the authority must pass the relative rules.
//!   Then the `url` crate parses it and:
//!   - on `base_url`'s origin (scheme, host, port – an explicit default port is fine) the target is
//!     returned as its **path + query only**, so it can never point elsewhere;
//!   - otherwise the host must be allowlisted, the port must be the scheme's default (allowlist entries
//!     carry no port; config refuses `:` in them), and the scheme must be `https`, or `http` only when
//!     `base_url` itself is `http`. It is returned normalised (`Url::as_str`).
//! * **Allowlist.** Entries are lower-cased and IDNA-normalised (`bücher.example` matches its punycode
//!   form). `example.com` matches exactly that host; `.example.com` matches `example.com` *and* any
//!   subdomain, on a dot boundary only (oauth2-proxy semantics). `evilexample.com` never matches. IP
//!   entries match exactly. Unparseable entries are ignored (config validation reports them).
//! * **Fragment.** Stripped (a return target never needs one; everything after the first `#` is
//!   dropped, though it still must pass the character checks).
//! * **Nested targets** (`/admin/oidc/start?rd=…`). headgate never follows them, but something else
//!   might, so: for every query parameter whose name is a redirect parameter (`rd`, `next`, `url`,
//!   `goto`, `dest`, `continue`, `callback`, `return*`, `*redir*`, `*url`, `*uri`, …) and whose value is
//!   non-empty, and for every other parameter
//!   whose name or value (at any decode level) looks like a URL (starts with `/` or `\`, a dangerous
//!   scheme, or any `scheme:/`), the value percent-decoded once must itself be a valid target under
//!   this policy. Nesting deeper than [`MAX_NESTING`] levels is refused.
//! * **Length.** At most [`MAX_LEN`] bytes, raw and normalised.
//! * A `base_url` without a host (config refuses it) makes every target invalid (fail closed).

use std::collections::HashSet;
use std::fmt;

use percent_encoding::percent_decode_str;
use url::{Host, Url};

/// Longest accepted return target, in bytes (raw input and normalised output).
pub const MAX_LEN: usize = 2048;
/// How many percent-decoding levels are inspected; a value that still changes after that is refused.
pub const MAX_DECODE_LEVELS: usize = 4;
/// How deep return targets may nest inside each other's queries (`?rd=/x?next=/y` is depth 2).
pub const MAX_NESTING: usize = 3;

const DEFAULT_TARGET: &str = "/admin/";

/// A return target that passed validation: either a relative path+query (starts with exactly one '/')
/// or an absolute http(s) URL on an allowed origin. Only [`RedirectPolicy::validate`] creates it
/// (and [`ReturnTarget::default_target`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReturnTarget(String);

impl ReturnTarget {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `/admin/`, where refused targets go.
    pub fn default_target() -> ReturnTarget {
        ReturnTarget(DEFAULT_TARGET.to_string())
    }
}

impl fmt::Display for ReturnTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    /// Lower-case ASCII (punycode) host, or an IP literal as `Url::host_str` writes it.
    host: String,
    /// Entry was `.host`: also matches any subdomain.
    subdomains: bool,
}

/// Which return targets are acceptable: the base URL's origin plus `server.allowed_redirect_domains`.
#[derive(Debug, Clone)]
pub struct RedirectPolicy {
    base: Url,
    base_scheme: String,
    base_host: Option<String>,
    base_port: Option<u16>,
    allowed: Vec<AllowedHost>,
}

impl RedirectPolicy {
    /// `base_url` is `server.base_url` (an origin); `allowed_redirect_domains` are host names,
    /// `.example.com` also allowing every subdomain of `example.com` (and `example.com` itself).
    pub fn new(base_url: &Url, allowed_redirect_domains: &[String]) -> Self {
        let mut base = base_url.clone();
        base.set_fragment(None);
        base.set_query(None);
        let mut allowed = Vec::new();
        for entry in allowed_redirect_domains {
            if let Some(a) = parse_allowed(entry)
                && !allowed.contains(&a)
            {
                allowed.push(a);
            }
        }
        RedirectPolicy {
            base_scheme: base.scheme().to_string(),
            base_host: base.host_str().map(str::to_string),
            base_port: base.port_or_known_default(),
            base,
            allowed,
        }
    }

    /// The validated, normalised target, or `None` if `raw` is not an acceptable return target.
    pub fn validate(&self, raw: &str) -> Option<ReturnTarget> {
        self.validate_at(raw, 0).map(ReturnTarget)
    }

    /// [`validate`](Self::validate), falling back to `/admin/` when `raw` is missing or refused.
    pub fn validate_or_default(&self, raw: Option<&str>) -> ReturnTarget {
        raw.and_then(|r| self.validate(r))
            .unwrap_or_else(ReturnTarget::default_target)
    }

    fn validate_at(&self, raw: &str, depth: usize) -> Option<String> {
        if depth > MAX_NESTING || raw.is_empty() || raw.len() > MAX_LEN || !clean(raw) {
            return None;
        }
        if raw.starts_with('/') {
            return self.relative(raw, depth);
        }
        if scheme_of(raw).is_some() {
            return self.absolute(raw, depth);
        }
        // ingress-nginx style: the whole target escaped once more. Exactly one extra level.
        let decoded = decode_once(raw)?;
        if decoded == raw || decoded.len() > MAX_LEN || !clean(&decoded) {
            return None;
        }
        if decoded.starts_with('/') {
            self.relative(&decoded, depth)
        } else if starts_with_ci(&decoded, "http://") || starts_with_ci(&decoded, "https://") {
            self.absolute(&decoded, depth)
        } else {
            None
        }
    }

    /// `s` starts with `/`, is printable ASCII and at most `MAX_LEN` bytes.
    fn relative(&self, s: &str, depth: usize) -> Option<String> {
        let target = strip_fragment(s);
        if !self.relative_ok(target, depth) {
            return None;
        }
        // Normalise through the URL parser (same rules a browser applies), then check the result again.
        let joined = self.base.join(target).ok()?;
        if !self.is_base_origin(&joined) {
            return None;
        }
        let out = path_and_query(&joined);
        if out.len() > MAX_LEN || !printable_ascii(&out) || !self.relative_ok(&out, depth) {
            return None;
        }
        Some(out)
    }

    /// The relative-target rules for a fragment-free `target`.
    fn relative_ok(&self, target: &str, depth: usize) -> bool {
        if !printable_ascii(target) {
            return false;
        }
        let mut bytes = target.bytes();
        if bytes.next() != Some(b'/') || matches!(bytes.next(), Some(b'/' | b'\\')) {
            return false;
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        path_ok(path) && query.is_none_or(|q| self.query_ok(q, depth))
    }

    fn query_ok(&self, query: &str, depth: usize) -> bool {
        let Some(levels) = decode_levels(query) else {
            return false;
        };
        if levels.iter().any(|l| l.chars().any(bad_char)) {
            return false;
        }
        for pair in query.split(['&', ';']) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(key_levels) = decode_levels(key) else {
                return false;
            };
            let Some(value_levels) = decode_levels(value) else {
                return false;
            };
            let redirect_key = key_levels
                .iter()
                .any(|k| is_redirect_key(&k.to_ascii_lowercase()));
            if key_levels.iter().any(|k| url_like(k)) {
                // `?//evil.example` or `?https://evil.example`: a bare URL as the parameter name.
                if self
                    .validate_at(&key_levels[1.min(key_levels.len() - 1)], depth + 1)
                    .is_none()
                {
                    return false;
                }
            }
            let nested = &value_levels[1.min(value_levels.len() - 1)];
            let must_check =
                (redirect_key && !value.is_empty()) || value_levels.iter().any(|v| url_like(v));
            if must_check && self.validate_at(nested, depth + 1).is_none() {
                return false;
            }
        }
        true
    }

    /// `s` has a scheme, is printable ASCII and at most `MAX_LEN` bytes.
    fn absolute(&self, s: &str, depth: usize) -> Option<String> {
        let target = strip_fragment(s);
        let (scheme, after) = target.split_once(':')?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return None;
        }
        let after = after.strip_prefix("//")?;
        let end = after.find(['/', '?']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(end);
        if !authority_ok(authority) {
            return None;
        }
        let rest = if rest.starts_with('/') {
            rest.to_string()
        } else {
            format!("/{rest}")
        };
        if !self.relative_ok(&rest, depth) {
            return None;
        }
        let mut url = Url::parse(target).ok()?;
        url.set_fragment(None);
        if !matches!(url.scheme(), "http" | "https")
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return None;
        }
        let host = url.host_str()?;
        if host.is_empty() || host.ends_with('.') || host.contains("..") {
            return None;
        }
        if self.is_base_origin(&url) {
            // Same origin: keep only path + query, so the result cannot point anywhere else.
            return self.relative(&path_and_query(&url), depth);
        }
        let scheme_ok = url.scheme() == "https" || self.base_scheme == "http";
        if !scheme_ok || url.port().is_some() || !self.host_allowed(&url) {
            return None;
        }
        let out = url.as_str().to_string();
        if out.len() > MAX_LEN
            || !printable_ascii(&out)
            || !self.relative_ok(&path_and_query(&url), depth)
        {
            return None;
        }
        Some(out)
    }

    fn is_base_origin(&self, url: &Url) -> bool {
        self.base_host.is_some()
            && url.scheme() == self.base_scheme
            && url.host_str() == self.base_host.as_deref()
            && url.port_or_known_default() == self.base_port
            && url.username().is_empty()
            && url.password().is_none()
    }

    fn host_allowed(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let is_domain = matches!(url.host(), Some(Host::Domain(_)));
        self.allowed.iter().any(|a| {
            host == a.host
                || (a.subdomains
                    && is_domain
                    && host.len() > a.host.len() + 1
                    && host.ends_with(a.host.as_str())
                    && host.as_bytes()[host.len() - a.host.len() - 1] == b'.')
        })
    }
}

fn parse_allowed(entry: &str) -> Option<AllowedHost> {
    let entry = entry.trim().to_lowercase();
    let (subdomains, bare) = match entry.strip_prefix('.') {
        Some(b) => (true, b),
        None => (false, entry.as_str()),
    };
    if bare.is_empty() || bare.ends_with('.') || bare.contains(['/', ':', '@', '*', '\\', '%']) {
        return None;
    }
    match Host::parse(bare).ok()? {
        Host::Domain(d) => {
            if d.is_empty() || d.starts_with('.') || d.ends_with('.') || d.contains("..") {
                return None;
            }
            Some(AllowedHost {
                host: d,
                subdomains,
            })
        }
        Host::Ipv4(ip) => Some(AllowedHost {
            host: ip.to_string(),
            subdomains: false,
        }),
        Host::Ipv6(ip) => Some(AllowedHost {
            host: format!("[{ip}]"),
            subdomains: false,
        }),
    }
}

fn strip_fragment(s: &str) -> &str {
    s.split_once('#').map_or(s, |(before, _)| before)
}

fn path_and_query(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

fn printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Printable ASCII without backslash, and no decode level (fragment included) has a bad character.
fn clean(s: &str) -> bool {
    printable_ascii(s)
        && !s.contains('\\')
        && decode_levels(s).is_some_and(|levels| levels.iter().all(|l| !l.chars().any(bad_char)))
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// The scheme of `s` if it starts with `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"`.
fn scheme_of(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

fn decode_once(s: &str) -> Option<String> {
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// `s` and its percent-decoded forms until they stop changing. `None` if a level is not UTF-8 or the
/// value still changes after `MAX_DECODE_LEVELS` decodes.
fn decode_levels(s: &str) -> Option<Vec<String>> {
    let mut levels = vec![s.to_string()];
    for _ in 0..MAX_DECODE_LEVELS {
        let last = levels.last()?;
        let next = decode_once(last)?;
        if &next == last {
            return Some(levels);
        }
        levels.push(next);
    }
    let last = levels.last()?;
    (decode_once(last)?.as_str() == last).then_some(levels)
}

/// Characters no level of a return target may contain.
fn bad_char(c: char) -> bool {
    c.is_control()
        || c.is_whitespace()
        || c == '\\'
        || matches!(c,
            // invisible / bidi / format characters
            '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
            | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}'
            | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}'
            // slash, backslash and dot lookalikes
            | '\u{2024}' | '\u{2044}' | '\u{2215}' | '\u{2216}' | '\u{29f5}' | '\u{29f8}' | '\u{29f9}'
            | '\u{3002}' | '\u{fe52}' | '\u{fe68}' | '\u{ff0e}' | '\u{ff0f}' | '\u{ff3c}' | '\u{ff61}')
}

/// The path rules at every decode level: no bad characters, no empty or dot-only segments.
fn path_ok(path: &str) -> bool {
    let Some(levels) = decode_levels(path) else {
        return false;
    };
    levels.iter().all(|level| {
        if level.chars().any(bad_char) || !level.starts_with('/') {
            return false;
        }
        let segments: Vec<&str> = level.split('/').skip(1).collect();
        let n = segments.len();
        segments.iter().enumerate().all(|(i, seg)| {
            if seg.is_empty() {
                return i + 1 == n; // only a trailing '/'
            }
            !seg.chars()
                .all(|c| c == '.' || c.is_whitespace() || c.is_control())
        })
    })
}

/// Authority of an absolute target: `host[:port]`, strictly.
fn authority_ok(authority: &str) -> bool {
    let port = if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: hex digits, ':' and '.' (embedded IPv4) only; the url crate parses it.
        let Some((inner, after)) = rest.split_once(']') else {
            return false;
        };
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return false;
        }
        match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        }
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        // Letters, digits, '-' and '_' in non-empty labels: no leading, trailing or doubled dots.
        let labels_ok = !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !labels_ok {
            return false;
        }
        port
    };
    port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && !p.starts_with('0')
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n > 0)
    })
}

/// Parameter names that carry a return target somewhere (lower-case). Their non-empty values must
/// validate even when they do not look like URLs (`?rd=evil.example`). Kept to unambiguous names, so
/// ordinary parameters (`?view=grid`, `?page=2`) are not mistaken for targets; any parameter whose value
/// looks like a URL is checked regardless of its name.
fn is_redirect_key(k: &str) -> bool {
    const KEYS: &[&str] = &[
        "rd",
        "url",
        "uri",
        "next",
        "goto",
        "dest",
        "destination",
        "continue",
        "callback",
        "came_from",
        "referer",
        "referrer",
    ];
    KEYS.contains(&k)
        || k.starts_with("return")
        || k.contains("redir")
        || k.ends_with("_url")
        || k.ends_with("_uri")
        || k.ends_with("url")
        || k.ends_with("uri")
}

/// Looks like something a browser would navigate to: `/x`, `\x`, `//x`, `javascript:…`, `foo://…`.
fn url_like(v: &str) -> bool {
    let v = v.trim_start_matches(|c: char| c.is_whitespace() || c.is_control());
    if v.starts_with(['/', '\\']) {
        return true;
    }
    const DANGEROUS: &[&str] = &[
        "http",
        "https",
        "javascript",
        "data",
        "vbscript",
        "file",
        "blob",
        "filesystem",
        "ftp",
        "ws",
        "wss",
        "view-source",
        "jar",
        "intent",
    ];
    let Some((scheme, rest)) = v.split_once(':') else {
        return false;
    };
    let cleaned: String = scheme
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .collect::<String>()
        .to_ascii_lowercase();
    scheme_of(&format!("{cleaned}:")).is_some()
        && (DANGEROUS.contains(&cleaned.as_str()) || rest.starts_with(['/', '\\']))
}

struct Corpus {
    seen: HashSet<String>,
    list: Vec<String>,
}

impl Corpus {
    fn add(&mut self, s: impl Into<String>) {
        let s = s.into();
        if self.seen.insert(s.clone()) {
            self.list.push(s);
        }
    }
}

/// Hostile return targets, every one of which must be refused by a policy with base URL
/// `https://hp.example.com` and allowlist `["allowed.example"]` or `[".allowed.example"]`.
/// Values are as the handler sees them after decoding the query string once; some contain raw control
/// characters and non-ASCII, so percent-encode them to send them over HTTP.
#[doc(hidden)]
pub fn hostile_corpus() -> Vec<String> {
    let mut c = Corpus {
        seen: HashSet::new(),
        list: Vec::new(),
    };

    // The vectors listed in forward-auth.md, class 1.
    for v in [
        "//evil.example",
        "/\\evil.example",
        "/ /evil.example",
        "/\t/evil.example",
        "/\u{b}/evil.example",
        "/\n/evil.example",
        "/\r/evil.example",
        "/\t\t/evil.example",
        "/ \t \t/evil.example",
        "/\t\n\r\u{b}/evil.example",
        "/./\\evil.example",
        "/./../../\\evil.example",
        "https://evil.example",
        "https:\\\\evil.example",
        "https://allowed.example@evil.example",
        "https://allowed.example.evil.example",
        "https://evilallowed.example",
        "https://allowed.example:badport",
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "data:text/html,\u{2026}",
        "%2F%2Fevil.example",
        "HTTPS://EVIL.EXAMPLE",
        "/admin/oidc/start?rd=//evil.example",
        "/admin/oidc/start?rd=https://evil.example",
    ] {
        c.add(v);
    }

    // Slash-confusion prefixes in front of an off-site host.
    let prefixes = [
        "//",
        "/\\",
        "\\\\",
        "\\/",
        "///",
        "////",
        "/\\/",
        "\\/\\",
        "/%2F",
        "/%2f",
        "%2F%2F",
        "%2f%2f",
        "%2F/",
        "/%5C",
        "/%5c",
        "%5C%5C",
        "%5c/",
        "%2F%5C",
        "/.%2F",
        "/.%2f",
        "/%2E/",
        "/%2e%2F",
        "/./",
        "/../",
        "/.\\",
        "/..\\",
        "/./../../\\",
        "/.%5C",
        "/%2e%2e%2F",
        "/..%2F",
        "/%252F",
        "%252F%252F",
        "/%255C",
        "/%25%32%46",
        "/%2e%2e/%2e%2e//",
        "/admin/..//",
        "/admin/%2F/",
        "/.//",
        "/../../..//",
    ];
    let hosts = [
        "evil.example",
        "evil.example/admin/",
        "allowed.example.evil.example",
        "hp.example.com@evil.example",
        "evil.example%2F%2E%2E",
    ];
    for p in prefixes {
        for h in hosts {
            c.add(format!("{p}{h}"));
        }
    }

    // Every ASCII control character and space between (and around) slashes, raw and %-encoded.
    for b in (0u8..=0x20).chain([0x7f]) {
        let ch = char::from(b);
        c.add(format!("/{ch}/evil.example"));
        c.add(format!("/%{b:02X}/evil.example"));
        c.add(format!("/%{b:02x}%2Fevil.example"));
        c.add(format!("/{ch}\\evil.example"));
        c.add(format!("{ch}//evil.example"));
        c.add(format!("/admin{ch}"));
        c.add(format!("https:/{ch}/evil.example"));
    }
    for v in [
        "/\u{3000}/evil.example",
        "/\u{a0}/evil.example",
        "/\u{2028}/evil.example",
        "/\u{feff}/evil.example",
        "/\u{200b}/evil.example",
        "/%E3%80%80/evil.example",
        "/%C2%A0/evil.example",
        "/%E2%80%8B/evil.example",
        "/%EF%BC%8Fevil.example",
        "/\u{ff0f}evil.example",
        "/\u{ff3c}evil.example",
        "/%09%0A/evil.example",
        "/%0D%0A/evil.example",
        "/admin%0D%0ASet-Cookie:%20x=y",
        "/admin\r\nLocation: //evil.example",
        "/admin%00",
        "/admin/%FF",
    ] {
        c.add(v);
    }

    // Scheme spelling and separator tricks.
    let schemes = ["https", "http", "HTTPS", "HTTP", "hTtPs", "HtTpS", "hTTp"];
    let separators = [
        "://",
        ":/",
        ":",
        ":\\\\",
        ":\\/",
        ":/\\",
        ":///",
        ":%2F%2F",
        ":%5C%5C",
        "%3A%2F%2F",
        "%3a//",
        ": //",
        ":\t//",
    ];
    for s in schemes {
        for sep in separators {
            c.add(format!("{s}{sep}evil.example"));
        }
        for h in [
            "EVIL.EXAMPLE",
            "evil.example:443",
            "evil.example/admin",
            "evil.example.",
        ] {
            c.add(format!("{s}://{h}"));
        }
    }

    // Userinfo.
    for v in [
        "https://allowed.example@evil.example",
        "https://hp.example.com@evil.example",
        "https://hp.example.com:443@evil.example",
        "https://hp.example.com:@evil.example",
        "https://user:pass@hp.example.com/admin/",
        "https://user@hp.example.com/admin/",
        "https://user@allowed.example/",
        "https://@hp.example.com/admin/",
        "https://@evil.example",
        "https://:@evil.example",
        "https://hp.example.com%40evil.example",
        "https://hp.example.com%2540evil.example",
        "https://hp.example.com\\@evil.example",
        "https://evil.example\\@hp.example.com",
        "https://evil.example#@hp.example.com",
        "https://evil.example?@hp.example.com",
        "https://hp.example.com&@evil.example",
        "https://hp.example.com;@evil.example",
        "//hp.example.com@evil.example",
        "http://allowed.example@evil.example/",
    ] {
        c.add(v);
    }

    // Suffix / prefix lookalikes and host spelling.
    for h in [
        "evilallowed.example",
        "allowed.example.evil.example",
        "allowed.exampleevil.example",
        "allowed-example.evil",
        "allowed.example.",
        "allowed.example..",
        ".allowed.example",
        "allowed..example",
        "hp.example.com.evil.example",
        "hp.example.com.",
        "hp.example.com..",
        ".hp.example.com",
        "evilhp.example.com",
        "hp-example.com",
        "hp.example.co",
        "hp.example.com%2e",
        "hp.example.com%00.evil.example",
        "hp.example.com%2F@evil.example",
        "example.com",
        "com",
        "allowed.example%2eevil.example",
        "127.0.0.1",
        "[::1]",
        "0x7f.1",
        "2130706433",
        "hp.example.com_evil.example",
        "-hp.example.com",
        "hp.example.com-",
    ] {
        c.add(format!("https://{h}/admin/"));
        c.add(format!("//{h}/admin/"));
    }

    // IDN / punycode lookalikes.
    for h in [
        "hp\u{ff0e}example\u{ff0e}com",
        "hp\u{3002}example\u{3002}com",
        "hp\u{ff61}example.com",
        "allowed\u{ff0e}example",
        "allowed\u{3002}example",
        "evil\u{3002}example",
        "\u{430}llowed.example",
        "hp.ex\u{430}mple.com",
        "\u{ff41}llowed.example",
        "xn--llowed-9xe.example",
        "xn--hp-example-xyz.com",
        "xn--allowed-example",
        "xn--80ak6aa92e.com",
        "allowed.example\u{ff0f}@evil.example",
        "evil.example\u{2044}admin",
        "allowed.example\u{200b}",
        "hp.example.com%E3%80%82evil.example",
        "hp.example.com\u{3002}",
        "allowed.example\u{ff0e}evil.example",
    ] {
        c.add(format!("https://{h}/"));
        c.add(format!("https%3A%2F%2F{h}%2F"));
    }

    // Ports.
    for h in ["hp.example.com", "allowed.example", "app.allowed.example"] {
        for p in [
            ":0",
            ":65536",
            ":99999",
            ":abc",
            ":badport",
            ":443@evil.example",
            ":-1",
            ":8443",
            ":80",
            ": 443",
            ":443:443",
            ":0x1bb",
            ":+443",
            ":4430",
            ":1e3",
            ":",
            ":00443",
            ":%34%34%33",
        ] {
            c.add(format!("https://{h}{p}/admin"));
        }
    }
    c.add("http://hp.example.com/admin/");
    c.add("http://allowed.example/");
    c.add("http://hp.example.com:443/admin/");

    // javascript:, data:, vbscript:, file: with case and whitespace tricks.
    for (scheme, payload) in [
        ("javascript", "alert(1)"),
        ("data", "text/html,<script>alert(1)</script>"),
        ("vbscript", "msgbox(1)"),
        ("file", "///etc/passwd"),
    ] {
        let upper = scheme.to_ascii_uppercase();
        let mixed: String = scheme
            .chars()
            .enumerate()
            .map(|(i, ch)| {
                if i % 2 == 0 {
                    ch.to_ascii_uppercase()
                } else {
                    ch
                }
            })
            .collect();
        for s in [scheme.to_string(), upper, mixed] {
            let (a, b) = s.split_at(2);
            for v in [
                format!("{s}:{payload}"),
                format!(" {s}:{payload}"),
                format!("\t{s}:{payload}"),
                format!("\n{s}:{payload}"),
                format!("\u{0}{s}:{payload}"),
                format!("%20{s}:{payload}"),
                format!("{a}\t{b}:{payload}"),
                format!("{a}%09{b}:{payload}"),
                format!("{s}%3A{payload}"),
                format!("{s}%253A{payload}"),
                format!("{s} :{payload}"),
            ] {
                c.add(v);
            }
        }
    }
    for v in [
        "javascript://%0Aalert(1)",
        "javascript://hp.example.com/%0Aalert(1)",
        "javascript://allowed.example/%250Aalert(1)",
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "file://evil.example/x",
        "blob:https://evil.example/uuid",
        "ftp://evil.example/",
        "ws://evil.example/",
        "wss://hp.example.com/",
        "view-source:https://evil.example/",
        "jar:https://evil.example/x.jar!/",
        "mailto:x@evil.example",
        "intent://evil.example#Intent;end",
        "javascript&#58;alert(1)",
    ] {
        c.add(v);
    }

    // Double (and deeper) encoding.
    for v in [
        "%252F%252Fevil.example",
        "/%252F%252Fevil.example",
        "%25252F%25252Fevil.example",
        "/%25252Fevil.example",
        "/%2525252Fevil.example",
        "/%252525252Fevil.example",
        "%255C%255Cevil.example",
        "/%255C%255Cevil.example",
        "/%255cevil.example",
        "https%253A%252F%252Fevil.example",
        "https%3A%2F%2Fevil.example",
        "https%3A%2F%2Fhp.example.com%40evil.example",
        "https%3A%2F%2Fhp.example.com%2F%2Fevil.example",
        "https%3A%2F%2Fhp.example.com.evil.example%2Fadmin",
        "https%3A%2F%2Fallowed.example%3A8443%2F",
        "%2F%252Fevil.example",
        "/%2e%252e/%2e%252e//evil.example",
        "/%252e%252e%252F%252Fevil.example",
    ] {
        c.add(v);
    }

    // Same-origin or allowlisted absolute URLs whose path escapes.
    for v in [
        "https://hp.example.com//evil.example",
        "https://hp.example.com/%2F%2Fevil.example",
        "https://hp.example.com/%2F/evil.example",
        "https://hp.example.com/./\\evil.example",
        "https://hp.example.com/a/..//evil.example",
        "https://hp.example.com/%2e%2e//evil.example",
        "https://hp.example.com/%5Cevil.example",
        "https://hp.example.com/\t/evil.example",
        "https://allowed.example//evil.example",
        "https://allowed.example/%2F%2Fevil.example",
        "HTTPS://HP.EXAMPLE.COM//EVIL.EXAMPLE",
        "https:///evil.example",
        "https:////evil.example",
        "https://",
        "https:",
        "https://?x=1",
    ] {
        c.add(v);
    }

    // Nested return-target chains.
    for v in [
        "/admin/oidc/start?rd=%2F%2Fevil.example",
        "/admin/oidc/start?rd=https%3A%2F%2Fevil.example",
        "/admin/oidc/start?rd=%252F%252Fevil.example",
        "/admin/oidc/start?rd=https%253A%252F%252Fevil.example",
        "/admin/oidc/start?rd=evil.example",
        "/admin/oidc/start?rd=javascript:alert(1)",
        "/admin/oidc/start?x=1&rd=//evil.example",
        "/admin/oidc/start?x=1;rd=//evil.example",
        "/admin/oidc/start?RD=//evil.example",
        "/admin/oidc/start?%72d=//evil.example",
        "/admin/oidc/start?rd=%2Fadmin%2Foidc%2Fstart%3Frd%3Dhttps%253A%252F%252Fevil.example",
        "/admin/oidc/start?rd=/admin/oidc/start%3Frd%3D/admin/oidc/start%253Frd%253D%252F%252Fevil.example",
        "/admin/oidc/start?rd=/a%3Frd%3D/b%253Frd%253D/c%25253Frd%25253D/d%2525253Frd%2525253D/e",
        "/?next=https://evil.example",
        "/?next=//evil.example",
        "/?redirect=https://evil.example",
        "/?redirect_uri=https://evil.example/cb",
        "/?return_to=https://evil.example",
        "/?returnTo=https://evil.example",
        "/?url=javascript:alert(1)",
        "/?continue=https://evil.example",
        "/?goto=//evil.example",
        "/?dest=https://evil.example",
        "/?post_logout_redirect_uri=https://evil.example",
        "/admin?foo=//evil.example",
        "/admin?foo=https://evil.example",
        "/admin?foo=%2F%2Fevil.example",
        "/admin?foo=javascript:alert(1)",
        "/admin?//evil.example",
        "/admin?https://evil.example",
        "/admin?https%3A%2F%2Fevil.example",
        "https://hp.example.com/admin/oidc/start?rd=https://evil.example",
        "https://hp.example.com/admin/oidc/start?rd=//evil.example",
        "https%3A%2F%2Fhp.example.com%2Fadmin%2Foidc%2Fstart%3Frd%3Dhttps%253A%252F%252Fevil.example",
        "https://allowed.example/login?next=https://evil.example",
        "https://allowed.example/login?next=//evil.example",
    ] {
        c.add(v);
    }

    // Odds and ends.
    for v in [
        "",
        " ",
        "evil.example",
        ".evil.example",
        "@evil.example",
        "admin",
        "admin/",
        "./admin",
        "../admin",
        "?rd=//evil.example",
        "#//evil.example",
        "\\/evil.example",
        "/\\/evil.example",
        "/admin/..",
        "/admin/.",
        "/admin/%2e%2e",
        "/..",
        "/.",
        "/%2e",
        "/admin/\\",
        "/admin#\\evil",
        "/admin# //evil.example",
    ] {
        c.add(v);
    }
    c.add(format!("/{}", "a".repeat(MAX_LEN)));
    c.add(format!("https://hp.example.com/{}", "a".repeat(MAX_LEN)));

    c.list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str]) -> RedirectPolicy {
        policy_at("https://hp.example.com", allowed)
    }

    fn policy_at(base: &str, allowed: &[&str]) -> RedirectPolicy {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        RedirectPolicy::new(&Url::parse(base).unwrap(), &allowed)
    }

    fn policies() -> Vec<RedirectPolicy> {
        vec![policy(&["allowed.example"]), policy(&[".allowed.example"])]
    }

    fn ok(p: &RedirectPolicy, raw: &str) -> String {
        match p.validate(raw) {
            Some(t) => t.as_str().to_string(),
            None => panic!("{raw:?} was refused"),
        }
    }

    /// The spec's `[/\\](\s*|\.{1,2})[/\\]`, literally.
    fn spec_regex_matches(s: &str) -> bool {
        let chars: Vec<char> = s.chars().collect();
        let slash = |c: Option<&char>| matches!(c, Some('/' | '\\'));
        (0..chars.len()).any(|i| {
            if !slash(chars.get(i)) {
                return false;
            }
            let mut j = i + 1;
            while chars.get(j).is_some_and(|c| c.is_whitespace()) {
                j += 1;
            }
            if slash(chars.get(j)) {
                return true;
            }
            (1..=2).any(|n| {
                (i + 1..i + 1 + n).all(|k| chars.get(k) == Some(&'.'))
                    && slash(chars.get(i + 1 + n))
            })
        })
    }

    /// What every accepted target must satisfy, checked independently of the implementation.
    fn assert_safe(p: &RedirectPolicy, subdomains: bool, raw: &str, out: &str) {
        assert!(out.len() <= MAX_LEN, "{raw:?} -> too long");
        assert!(
            out.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "{raw:?} -> {out:?} not printable ASCII"
        );
        assert!(
            !out.contains('#') && !out.contains('\\'),
            "{raw:?} -> {out:?}"
        );
        if out.starts_with('/') {
            let second = out.as_bytes().get(1).copied();
            assert!(
                !matches!(second, Some(b'/' | b'\\')),
                "{raw:?} -> {out:?} starts with two slashes"
            );
            let path = out.split('?').next().unwrap();
            let mut level = path.to_string();
            for _ in 0..6 {
                assert!(
                    !spec_regex_matches(&level),
                    "{raw:?} -> {out:?} matches the spec regex"
                );
                level = percent_decode_str(&level).decode_utf8_lossy().into_owned();
            }
            let joined = Url::parse("https://hp.example.com")
                .unwrap()
                .join(out)
                .unwrap();
            assert_eq!(
                joined.host_str(),
                Some("hp.example.com"),
                "{raw:?} -> {out:?}"
            );
        } else {
            let u = Url::parse(out).unwrap_or_else(|e| panic!("{raw:?} -> {out:?}: {e}"));
            assert_eq!(u.scheme(), "https", "{raw:?} -> {out:?}");
            assert!(u.username().is_empty() && u.password().is_none());
            assert_eq!(u.port(), None, "{raw:?} -> {out:?}");
            let host = u.host_str().unwrap();
            let allowed =
                host == "allowed.example" || (subdomains && host.ends_with(".allowed.example"));
            assert!(allowed, "{raw:?} -> {out:?}: host {host} not allowlisted");
        }
        // Idempotent: a validated target validates to itself.
        assert_eq!(
            p.validate(out).map(|t| t.0),
            Some(out.to_string()),
            "{raw:?} -> {out:?}"
        );
    }

    #[test]
    fn spec_vectors_are_refused() {
        let vectors = [
            "//evil.example",
            "/\\evil.example",
            "/ /evil.example",
            "/\t/evil.example",
            "/\u{b}/evil.example",
            "/\n/evil.example",
            "/\r/evil.example",
            "/\t \t\u{b}/evil.example",
            "/./\\evil.example",
            "/./../../\\evil.example",
            "https://evil.example",
            "https:\\\\evil.example",
            "https://allowed.example@evil.example",
            "https://allowed.example.evil.example",
            "https://evilallowed.example",
            "https://allowed.example:badport",
            "javascript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "%2F%2Fevil.example",
            "HTTPS://EVIL.EXAMPLE",
            "/admin/oidc/start?rd=//evil.example",
            "/admin/oidc/start?rd=https%3A%2F%2Fevil.example",
            "/admin/oidc/start?rd=%2Fadmin%2Foidc%2Fstart%3Frd%3Dhttps%253A%252F%252Fevil.example",
            "https://hp.example.com/admin/oidc/start?rd=https://evil.example",
        ];
        for p in policies() {
            for v in vectors {
                assert_eq!(p.validate(v), None, "{v:?} accepted");
                assert_eq!(p.validate_or_default(Some(v)).as_str(), "/admin/");
            }
        }
    }

    #[test]
    fn corpus_is_large_distinct_and_refused() {
        let corpus = hostile_corpus();
        assert!(corpus.len() >= 300, "only {} payloads", corpus.len());
        let distinct: HashSet<&String> = corpus.iter().collect();
        assert_eq!(distinct.len(), corpus.len());
        for p in policies() {
            for v in &corpus {
                assert_eq!(p.validate(v), None, "{v:?} accepted");
            }
        }
        // Also with an http base: nothing off-site becomes acceptable.
        let http = policy_at("http://hp.example.com", &["allowed.example"]);
        for v in &corpus {
            if let Some(t) = http.validate(v) {
                let t = t.as_str();
                assert!(
                    t.starts_with('/') || t.starts_with("http://allowed.example/"),
                    "{v:?} -> {t:?}"
                );
            }
        }
    }

    #[test]
    fn accepted_targets() {
        let cases = [
            ("/admin/", "/admin/"),
            ("/", "/"),
            ("/admin/machines?x=1", "/admin/machines?x=1"),
            ("/admin/users#frag", "/admin/users"),
            ("/admin/users?a=1#//evil.example", "/admin/users?a=1"),
            ("https://hp.example.com/admin/machines", "/admin/machines"),
            (
                "https://hp.example.com:443/admin/machines",
                "/admin/machines",
            ),
            ("https://hp.example.com", "/"),
            ("https://hp.example.com?x=1", "/?x=1"),
            ("HTTPS://HP.EXAMPLE.COM/admin", "/admin"),
            ("https://hp.example.com/admin#x", "/admin"),
            (
                "https%3A%2F%2Fhp.example.com%2Fadmin%2Fmachines%3Fa%3D1",
                "/admin/machines?a=1",
            ),
            (
                "https://hp.example.com/admin/machines?a=1",
                "/admin/machines?a=1",
            ),
            ("%2Fadmin%2Fmachines", "/admin/machines"),
            ("/admin/users/J%C3%BCrgen", "/admin/users/J%C3%BCrgen"),
            ("/admin/a<b>", "/admin/a%3Cb%3E"),
            ("/admin/.well-known/x", "/admin/.well-known/x"),
            (
                "/admin/oidc/start?rd=%2Fadmin%2Fmachines",
                "/admin/oidc/start?rd=%2Fadmin%2Fmachines",
            ),
            (
                "/admin/oidc/start?rd=/admin/",
                "/admin/oidc/start?rd=/admin/",
            ),
            (
                "/admin/machines?q=a+b&filter=tag:prod",
                "/admin/machines?q=a+b&filter=tag:prod",
            ),
            ("https://allowed.example/x", "https://allowed.example/x"),
            ("https://allowed.example:443/x", "https://allowed.example/x"),
            ("https://ALLOWED.example/x#y", "https://allowed.example/x"),
            ("https://allowed.example", "https://allowed.example/"),
        ];
        let p = policy(&["allowed.example"]);
        for (raw, want) in cases {
            assert_eq!(ok(&p, raw), want, "{raw:?}");
            assert_safe(&p, false, raw, want);
        }
        let sub = policy(&[".allowed.example"]);
        assert_eq!(
            ok(&sub, "https://app.allowed.example/x"),
            "https://app.allowed.example/x"
        );
        assert_eq!(
            ok(&sub, "https://a.b.allowed.example/x"),
            "https://a.b.allowed.example/x"
        );
        assert_eq!(
            ok(&sub, "https://allowed.example/x"),
            "https://allowed.example/x"
        );
        assert_eq!(
            ok(&sub, "HTTPS://APP.ALLOWED.EXAMPLE/X?y=1"),
            "https://app.allowed.example/X?y=1"
        );
    }

    #[test]
    fn allowlist_semantics() {
        let exact = policy(&["allowed.example"]);
        assert_eq!(exact.validate("https://app.allowed.example/x"), None);
        let sub = policy(&[".allowed.example"]);
        for v in [
            "https://evilallowed.example/",
            "https://allowed.example.evil.example/",
            "https://app.allowed.example:8443/",
            "https://app.allowed.example./",
            "http://app.allowed.example/",
        ] {
            assert_eq!(sub.validate(v), None, "{v:?}");
        }
        // Entries are normalised: case, surrounding space, IDNA.
        let idn = policy(&[" Allowed.Example ", "bücher.example"]);
        assert!(idn.validate("https://allowed.example/").is_some());
        assert_eq!(
            ok(&idn, "https://xn--bcher-kva.example/x"),
            "https://xn--bcher-kva.example/x"
        );
        // Raw non-ASCII is refused even when it would map to an allowed host.
        assert_eq!(idn.validate("https://bücher.example/x"), None);
        // Garbage entries are ignored, not widened.
        let junk = policy(&["", ".", "*.example", "a:b", "x/y"]);
        assert_eq!(junk.validate("https://example/"), None);
        assert!(junk.allowed.is_empty());
        // IP entries match exactly.
        let ip = policy(&["192.0.2.7", ".192.0.2.7"]);
        assert!(ip.validate("https://192.0.2.7/").is_some());
        assert_eq!(ip.validate("https://1.192.0.2.7/"), None);
    }

    #[test]
    fn scheme_and_port_rules() {
        let https = policy(&["allowed.example"]);
        assert_eq!(https.validate("http://hp.example.com/admin"), None);
        assert_eq!(https.validate("http://allowed.example/"), None);
        assert_eq!(https.validate("https://hp.example.com:8443/admin"), None);

        let http = policy_at("http://hp.example.com:8080", &["allowed.example"]);
        assert_eq!(ok(&http, "http://hp.example.com:8080/admin"), "/admin");
        assert_eq!(http.validate("http://hp.example.com/admin"), None);
        assert_eq!(http.validate("https://hp.example.com:8080/admin"), None);
        assert_eq!(
            ok(&http, "http://allowed.example/x"),
            "http://allowed.example/x"
        );
        assert_eq!(
            ok(&http, "https://allowed.example/x"),
            "https://allowed.example/x"
        );
        assert_eq!(http.validate("http://allowed.example:8080/x"), None);

        let port = policy_at("https://hp.example.com:8443", &[]);
        assert_eq!(ok(&port, "https://hp.example.com:8443/x"), "/x");
        assert_eq!(port.validate("https://hp.example.com/x"), None);
    }

    #[test]
    fn defaults() {
        let p = policy(&["allowed.example"]);
        assert_eq!(p.validate_or_default(None).as_str(), "/admin/");
        assert_eq!(
            p.validate_or_default(Some("//evil.example")).as_str(),
            "/admin/"
        );
        assert_eq!(p.validate_or_default(Some("")).as_str(), "/admin/");
        assert_eq!(
            p.validate_or_default(Some("/admin/users")).as_str(),
            "/admin/users"
        );
        assert_eq!(ReturnTarget::default_target().to_string(), "/admin/");
        assert_eq!(
            p.validate("/admin/").unwrap(),
            ReturnTarget::default_target()
        );
    }

    #[test]
    fn nesting_and_length_limits() {
        let p = policy(&[]);
        // On-site chains up to MAX_NESTING are fine, deeper ones are not.
        assert!(p.validate("/a?rd=/b%3Frd%3D/c").is_some());
        assert!(
            p.validate("/a?rd=/b%3Frd%3D/c%253Frd%253D/d%25253Frd%25253D/e%2525253Frd%2525253D/f")
                .is_none()
        );
        let long = format!("/{}", "a".repeat(MAX_LEN - 1));
        assert_eq!(ok(&p, &long).len(), MAX_LEN);
        assert_eq!(p.validate(&format!("{long}a")), None);
    }

    #[test]
    fn no_host_base_fails_closed() {
        let p = RedirectPolicy::new(&Url::parse("data:text/plain,x").unwrap(), &[]);
        assert_eq!(p.validate("/admin/"), None);
        assert_eq!(p.validate_or_default(Some("/admin/x")).as_str(), "/admin/");
    }

    /// Deterministic xorshift, so the fuzz corpus is the same on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[(self.next() % xs.len() as u64) as usize]
        }
    }

    #[test]
    fn every_accepted_target_is_safe() {
        let starts = [
            "/",
            "/admin",
            "/admin/",
            "https://hp.example.com",
            "HTTPS://HP.EXAMPLE.COM",
            "https://allowed.example",
            "https://app.allowed.example",
            "https%3A%2F%2Fhp.example.com",
            "%2F",
            "http://hp.example.com",
            "",
        ];
        let tokens = [
            "/",
            "/",
            "/",
            "admin",
            "x",
            "machines",
            "?",
            "rd=",
            "next=",
            "foo=",
            "=",
            "&",
            ";",
            "#",
            "%2F",
            "%2f",
            "%5C",
            "\\",
            ".",
            "..",
            "%2e",
            "%2E",
            "%25",
            "2F",
            "https:",
            "HTTPS:",
            "//",
            "hp.example.com",
            "allowed.example",
            "app.",
            "evil.example",
            "@",
            ":",
            ":443",
            ":8443",
            "\t",
            " ",
            "%09",
            "%20",
            "\n",
            "%3A",
            "%3F",
            "%23",
            "\u{ff0e}",
            "javascript:",
            "%252F",
            "%2F%2F",
            "a+b",
            "%C3%BC",
            "%FF",
            "<",
            "'",
            "\"",
            "~",
            "-",
            "_",
            "!",
            "$",
        ];
        let mut corpus: Vec<String> = hostile_corpus();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..40_000 {
            let mut s = rng.pick(&starts).to_string();
            let n = 1 + rng.next() % 8;
            for _ in 0..n {
                s.push_str(rng.pick(&tokens));
            }
            corpus.push(s);
        }
        for (p, subdomains) in [
            (policy(&["allowed.example"]), false),
            (policy(&[".allowed.example"]), true),
        ] {
            let mut accepted = 0;
            for raw in &corpus {
                if let Some(t) = p.validate(raw) {
                    accepted += 1;
                    assert_safe(&p, subdomains, raw, t.as_str());
                }
            }
            // The fuzz must exercise both outcomes to mean anything.
            assert!(accepted > 1000, "only {accepted} accepted");
            assert!(accepted < corpus.len() / 2, "{accepted} accepted");
        }
    }
}
