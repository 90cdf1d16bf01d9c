//! Admission (`policy.md` section 1): what is never forwarded, checked before any row, on exactly the bytes
//! headgate would forward. headgate never repairs a request: a path, query, host or framing that is not in
//! its one canonical spelling is refused, so every equivalent spelling either is refused or decides exactly
//! like the canonical one.

use http::{HeaderMap, Method, header};

use super::rows::{self, Row};
use super::rules::{self, RuleMethod};
use super::{Mode, Policy};

/// Largest form body headgate reads (and largest `Content-Length` it accepts on a form post).
pub const MAX_FORM_BYTES: usize = 1024 * 1024;

/// One request as received, before any decoding.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a Method,
    /// The path exactly as received (the request target up to `?`), never decoded.
    pub raw_path: &'a str,
    /// The query exactly as received (without `?`).
    pub query: Option<&'a str>,
    /// The authority of the request target: HTTP/2 `:authority`, or an HTTP/1.1 absolute-form target's.
    pub authority: Option<&'a str>,
    /// All headers (`Host`, `Content-Length`, `Transfer-Encoding`, `Upgrade` are read).
    pub headers: &'a HeaderMap,
}

impl<'a> Request<'a> {
    /// The parts of an `http` request head (hyper keeps the target as received).
    pub fn from_parts(method: &'a Method, uri: &'a http::Uri, headers: &'a HeaderMap) -> Self {
        Request {
            method,
            raw_path: uri.path(),
            query: uri.query(),
            authority: uri.authority().map(|a| a.as_str()),
            headers,
        }
    }
}

/// What admission makes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Goes on to the decision.
    Ok(Admitted),
    /// Answered by headgate with this status; nothing is forwarded.
    Refuse { status: u16, reason: &'static str },
    /// One of headgate's own paths (sign-in, logout, OIDC, Headplane 0.6's onboarding pages).
    HeadgateOwned { route: OwnedRoute, data: bool },
    /// `/` and a bare `/admin` (Headplane modes): headgate answers with a redirect to `/admin/`.
    RedirectToAdmin,
}

impl Admission {
    pub fn refuse(status: u16, reason: &'static str) -> Admission {
        Admission::Refuse { status, reason }
    }
}

/// headgate's own paths under Headplane's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnedRoute {
    /// `/admin/login`, `/admin/login.data`
    Login,
    /// `/admin/logout`, `/admin/logout.data`
    Logout,
    /// `/admin/oidc/start`
    OidcStart,
    /// `oidc.callback_path` (default `/admin/oidc/callback`)
    OidcCallback,
    /// Headplane 0.6's `/admin/onboarding` → headgate's onboarding
    Onboarding,
    /// Headplane 0.6's `/admin/onboarding/skip`
    OnboardingSkip,
    /// Headplane 0.6's `/admin/pending-approval` → headgate's no-access page
    PendingApproval,
}

/// A request that passed admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The canonical path: exactly what is forwarded (admission never rewrites a path).
    pub path: String,
    /// The query as received (free on GET; on a form post to a built-in row only `index` and `_routes=…`).
    pub query: Option<String>,
    /// The row (or rule) that decides.
    pub row: Row,
    /// HEAD counts as GET.
    pub method: RuleMethod,
    /// A Headplane data request (`<path>.data`, `/admin/_root.data`): signed-out answers use the
    /// single-fetch redirect.
    pub data: bool,
    /// A websocket upgrade (only on rules with `websocket = true`).
    pub websocket: bool,
}

impl Admitted {
    /// A POST to a built-in row: the body must be a form, parsed with [`super::parse_form`] and forwarded
    /// re-encoded. Bodies of requests decided by `[[policy.rule]]` entries are not read (the rule's decision
    /// does not depend on them) and are forwarded as they are.
    pub fn needs_form(&self) -> bool {
        self.method == RuleMethod::Post && self.row.is_builtin()
    }
}

/// The hosts a request may name: `server.base_url`'s host and `server.allowed_hosts` (or, for forward-auth,
/// `forward_auth.hosts`). An entry without a port means the base URL scheme's default port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAllowlist {
    entries: Vec<(String, u16)>,
    default_port: u16,
}

impl HostAllowlist {
    /// `base_url`'s host and port, then every `host[:port]` of `extra` (already validated by the
    /// configuration; an invalid one is skipped).
    pub fn new(base_url: &url::Url, extra: &[String]) -> HostAllowlist {
        let default_port = base_url.port_or_known_default().unwrap_or(80);
        let scheme_default = if base_url.scheme() == "https" {
            443
        } else {
            80
        };
        let mut entries = Vec::new();
        if let Some(h) = base_url.host_str() {
            entries.push((h.to_ascii_lowercase(), default_port));
        }
        for e in extra {
            if let Ok((h, p)) = parse_host_port(e) {
                entries.push((h, p.unwrap_or(scheme_default)));
            }
        }
        HostAllowlist {
            entries,
            default_port: scheme_default,
        }
    }

    /// `host[:port]` entries with an explicit default port (tests, forward-auth hosts).
    pub fn from_entries(entries: &[&str], default_port: u16) -> HostAllowlist {
        HostAllowlist {
            entries: entries
                .iter()
                .filter_map(|e| parse_host_port(e).ok())
                .map(|(h, p)| (h, p.unwrap_or(default_port)))
                .collect(),
            default_port,
        }
    }

    pub fn allows(&self, host: &str, port: Option<u16>) -> bool {
        let port = port.unwrap_or(self.default_port);
        self.entries.iter().any(|(h, p)| h == host && *p == port)
    }
}

/// A `Host` value or allowlist entry: `name[:port]`, `a.b.c.d[:port]` or `[v6][:port]`; the name ASCII
/// lower-cased (host case is not significant). A trailing dot, userinfo, an empty or non-numeric port or
/// a port with a leading zero are refused.
pub fn parse_host_port(s: &str) -> Result<(String, Option<u16>), &'static str> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or("host_malformed")?;
        let (v6, after) = (&rest[..end], &rest[end + 1..]);
        if v6.is_empty()
            || !v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err("host_malformed");
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("host_malformed")?),
        };
        (format!("[{}]", v6.to_ascii_lowercase()), port)
    } else {
        let (h, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if h.is_empty()
            || h.len() > 253
            || h.starts_with('.')
            || h.ends_with('.')
            || h.contains("..")
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err("host_malformed");
        }
        (h.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) => {
            // One spelling per port: a leading zero (`:04180`) names the same port as `:4180`.
            if p.is_empty()
                || p.len() > 5
                || !p.bytes().all(|b| b.is_ascii_digit())
                || (p.len() > 1 && p.starts_with('0'))
            {
                return Err("host_malformed");
            }
            Some(p.parse::<u16>().map_err(|_| "host_malformed")?)
        }
    };
    Ok((host, port))
}

/// The canonical-path rules of `policy.md` section 1. `lower_case_rule`: upper-case letters only under
/// `/admin/assets/` (off with `upstream.headplane_login = "none"`). Returns the reason of a refusal (400).
pub fn check_canonical(path: &str, lower_case_rule: bool) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("path_not_absolute");
    }
    let upper_ok = !lower_case_rule || path.starts_with("/admin/assets/");
    for b in path.bytes() {
        match b {
            b'%' => return Err("percent_escape"),
            b'\\' => return Err("backslash"),
            b';' => return Err("semicolon"),
            0..=0x1f | 0x7f => return Err("control_character"),
            0x80.. => return Err("non_ascii"),
            b'A'..=b'Z' if !upper_ok => return Err("upper_case"),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => {}
            // RFC 3986 pchar and `/`, minus `%` and `;` (handled above).
            b'-' | b'.' | b'_' | b'~' | b'/' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*'
            | b'+' | b',' | b'=' | b':' | b'@' => {}
            // space, `"`, `#`, `<`, `>`, `?`, `[`, `]`, `^`, `` ` ``, `{`, `|`, `}`
            _ => return Err("invalid_character"),
        }
    }
    if path == "/" || path == "/admin/" {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err("trailing_slash");
    }
    for seg in path[1..].split('/') {
        match seg {
            "" => return Err("empty_segment"),
            "." | ".." => return Err("dot_segment"),
            s if s.ends_with('.') => return Err("trailing_dot"),
            _ => {}
        }
    }
    Ok(())
}

/// Node ids are decimal digits without a leading zero (a Headscale uint64).
pub fn is_node_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 20
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'))
        && s.parse::<u64>().is_ok()
}

/// SSH targets are lower-case DNS labels.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Conflicting or unusual framing (400): more than one `Content-Length`, a non-numeric one, both
/// `Content-Length` and `Transfer-Encoding`, a `Transfer-Encoding` other than a single `chunked`.
/// Returns the declared length.
fn check_framing(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let cl: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    let te: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if !cl.is_empty() && !te.is_empty() {
        return Err("content_length_and_transfer_encoding");
    }
    if cl.len() > 1 {
        return Err("repeated_content_length");
    }
    if te.len() > 1 {
        return Err("repeated_transfer_encoding");
    }
    if let Some(te) = te.first()
        && !te.as_bytes().eq_ignore_ascii_case(b"chunked")
    {
        return Err("transfer_encoding_not_chunked");
    }
    match cl.first() {
        None => Ok(None),
        Some(v) => {
            let b = v.as_bytes();
            if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
                return Err("content_length_malformed");
            }
            Ok(Some(
                std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or("content_length_malformed")?,
            ))
        }
    }
}

/// `Host` (one, well-formed) and `:authority` (equal to `Host` when both are present; HTTP/2 may send only
/// `:authority`), then the allowlist (421).
fn check_host(req: &Request<'_>, hosts: &HostAllowlist) -> Result<(), (u16, &'static str)> {
    let all: Vec<_> = req.headers.get_all(header::HOST).iter().collect();
    if all.len() > 1 {
        return Err((400, "repeated_host"));
    }
    let host = match all.first() {
        Some(v) => Some(v.to_str().map_err(|_| (400, "host_malformed"))?),
        None => None,
    };
    let named = match (host, req.authority) {
        (Some(h), Some(a)) => {
            if !h.eq_ignore_ascii_case(a) {
                return Err((400, "authority_differs_from_host"));
            }
            h
        }
        (Some(h), None) => h,
        (None, Some(a)) => a,
        (None, None) => return Err((400, "missing_host")),
    };
    let (name, port) = parse_host_port(named).map_err(|r| (400, r))?;
    if !hosts.allows(&name, port) {
        return Err((421, "unknown_host"));
    }
    Ok(())
}

/// On a form post to a built-in row only a bare `index` and `_routes=…`, each at most once.
fn check_post_query(query: Option<&str>) -> Result<(), &'static str> {
    let Some(q) = query else { return Ok(()) };
    if q.is_empty() {
        return Ok(());
    }
    let (mut index, mut routes) = (false, false);
    for param in q.split('&') {
        if param == "index" && !index {
            index = true;
        } else if param.starts_with("_routes=") && !routes {
            routes = true;
        } else {
            return Err("query_on_post");
        }
    }
    Ok(())
}

impl Policy {
    /// Admission against `server.base_url`'s host and `server.allowed_hosts`.
    pub fn admit(&self, req: &Request<'_>) -> Admission {
        self.admit_for_hosts(req, &self.hosts)
    }

    /// Admission against another host allowlist (forward-auth: `forward_auth.hosts`; no body is seen).
    pub fn admit_for_hosts(&self, req: &Request<'_>, hosts: &HostAllowlist) -> Admission {
        let declared_len = match check_framing(req.headers) {
            Ok(n) => n,
            Err(r) => return Admission::refuse(400, r),
        };
        if let Err((status, r)) = check_host(req, hosts) {
            return Admission::refuse(status, r);
        }
        let path = req.raw_path;
        let is_get = matches!(*req.method, Method::GET | Method::HEAD);
        let is_get_or_post = is_get || *req.method == Method::POST;

        // headgate's own paths (exact bytes; they are canonical or they are not these paths).
        if let Some((route, data)) = self.owned(path) {
            if !is_get_or_post {
                return Admission::refuse(405, "method_not_allowed");
            }
            return Admission::HeadgateOwned { route, data };
        }

        let headplane = self.mode != Mode::None;
        if let Err(r) = check_canonical(path, headplane) {
            return Admission::refuse(400, r);
        }

        // What decides: a built-in row (Headplane modes, under /admin), a rule, or nothing.
        let rule = rules::find(&self.rules, self.mode, path);
        if !headplane
            && rules::find_ignoring_case(&self.rules, self.mode, path).map(|(i, _)| i)
                != rule.map(|(i, _)| i)
        {
            return Admission::refuse(400, "case_variant_of_rule");
        }
        if headplane && rule.is_none() && (path == "/" || path == "/admin") {
            return if is_get {
                Admission::RedirectToAdmin
            } else {
                Admission::refuse(405, "method_not_allowed")
            };
        }
        let (row, data) = if headplane && (path == "/admin" || path.starts_with("/admin/")) {
            match rows::classify(path) {
                Ok(x) => x,
                Err(r) => return Admission::refuse(400, r),
            }
        } else {
            match rule {
                Some((i, _)) => (Row::Rule(i), false),
                None => (Row::Unmatched, false),
            }
        };

        // Methods: GET, HEAD and POST; PUT, PATCH and DELETE only where the deciding rule lists them.
        let Some(method) = RuleMethod::of(req.method) else {
            return Admission::refuse(405, "method_not_allowed");
        };
        let method_ok = match &row {
            Row::Rule(i) => self.rules[*i].allows_method(method),
            _ => matches!(method, RuleMethod::Get | RuleMethod::Post),
        };
        if !method_ok {
            return Admission::refuse(405, "method_not_allowed");
        }

        // Upgrades: websocket on a rule that allows it; nothing else (h2c included).
        let upgrade: Vec<_> = req.headers.get_all(header::UPGRADE).iter().collect();
        let websocket = !upgrade.is_empty();
        if websocket {
            let ws_rule = matches!(&row, Row::Rule(i) if self.rules[*i].websocket);
            if !ws_rule
                || upgrade.len() != 1
                || !upgrade[0].as_bytes().eq_ignore_ascii_case(b"websocket")
                || *req.method != Method::GET
            {
                return Admission::refuse(400, "upgrade_not_allowed");
            }
        }

        let admitted = Admitted {
            path: path.to_string(),
            query: req.query.map(str::to_string),
            row,
            method,
            data,
            websocket,
        };

        if admitted.row.is_builtin() {
            if method == RuleMethod::Post {
                if let Err(r) = check_post_query(req.query) {
                    return Admission::refuse(400, r);
                }
                if declared_len.is_some_and(|n| n > MAX_FORM_BYTES as u64) {
                    return Admission::refuse(413, "form_too_large");
                }
            } else if declared_len.is_some_and(|n| n > 0)
                || req.headers.contains_key(header::TRANSFER_ENCODING)
            {
                // A GET never carries a body headgate would have to forward undecided.
                return Admission::refuse(400, "body_on_get");
            }
        }
        Admission::Ok(admitted)
    }

    fn owned(&self, path: &str) -> Option<(OwnedRoute, bool)> {
        if path == self.callback_path {
            return Some((OwnedRoute::OidcCallback, false));
        }
        Some(match path {
            "/admin/login" => (OwnedRoute::Login, false),
            "/admin/login.data" => (OwnedRoute::Login, true),
            "/admin/logout" => (OwnedRoute::Logout, false),
            "/admin/logout.data" => (OwnedRoute::Logout, true),
            "/admin/oidc/start" => (OwnedRoute::OidcStart, false),
            _ if self.mode == Mode::None => return None,
            "/admin/onboarding" => (OwnedRoute::Onboarding, false),
            "/admin/onboarding.data" => (OwnedRoute::Onboarding, true),
            "/admin/onboarding/skip" => (OwnedRoute::OnboardingSkip, false),
            "/admin/onboarding/skip.data" => (OwnedRoute::OnboardingSkip, true),
            "/admin/pending-approval" => (OwnedRoute::PendingApproval, false),
            "/admin/pending-approval.data" => (OwnedRoute::PendingApproval, true),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths() {
        for ok in [
            "/",
            "/admin/",
            "/admin/users",
            "/admin/machines/12",
            "/admin/assets/index-AbC_1.js",
            "/admin/_root.data",
            "/admin/settings/auth-keys",
            "/grafana/d/x:y@z",
        ] {
            assert_eq!(check_canonical(ok, true), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("admin/users", "path_not_absolute"),
            ("/admin/USERS", "upper_case"),
            ("/Admin/users", "upper_case"),
            ("/admin/Assets/x", "upper_case"),
            ("/admin/users/", "trailing_slash"),
            ("/admin/machines/", "trailing_slash"),
            ("/admin/assets\\..\\users", "backslash"),
            ("/admin/%2e%2e/users", "percent_escape"),
            ("/admin%2Fusers", "percent_escape"),
            ("/admin/us%65rs", "percent_escape"),
            ("/admin//users", "empty_segment"),
            ("//admin/users", "empty_segment"),
            ("/admin/users;x=1", "semicolon"),
            ("/admin/./users", "dot_segment"),
            ("/admin/../admin/users", "dot_segment"),
            ("/admin/users/..", "dot_segment"),
            ("/admin/users.", "trailing_dot"),
            ("/admin/users\t", "control_character"),
            ("/admin/users\u{7f}", "control_character"),
            ("/admin/us\0ers", "control_character"),
            ("/admin/usérs", "non_ascii"),
            ("/admin/users#x", "invalid_character"),
            ("/admin/us ers", "invalid_character"),
            ("/admin/users?x", "invalid_character"),
            ("/admin/{x}", "invalid_character"),
        ] {
            assert_eq!(check_canonical(bad, true), Err(why), "{bad:?}");
        }
        // Without the lower-case rule ("none" mode) upper case is fine; nothing else changes.
        assert_eq!(check_canonical("/Grafana/D", false), Ok(()));
        assert_eq!(check_canonical("/Grafana/", false), Err("trailing_slash"));
    }

    #[test]
    fn ids_and_labels() {
        for ok in ["0", "1", "42", "18446744073709551615"] {
            assert!(is_node_id(ok), "{ok}");
        }
        for bad in [
            "",
            "01",
            "1a",
            "-1",
            "+1",
            " 1",
            "18446744073709551616",
            "١",
        ] {
            assert!(!is_node_id(bad), "{bad}");
        }
        for ok in ["a", "laptop-1", "x9"] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a_b", "A", "a.b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn host_syntax() {
        assert_eq!(
            parse_host_port("HP.Example.com"),
            Ok(("hp.example.com".into(), None))
        );
        assert_eq!(
            parse_host_port("hp.example.com:8443"),
            Ok(("hp.example.com".into(), Some(8443)))
        );
        assert_eq!(
            parse_host_port("[::1]:4180"),
            Ok(("[::1]".into(), Some(4180)))
        );
        assert_eq!(parse_host_port("10.0.0.1"), Ok(("10.0.0.1".into(), None)));
        for bad in [
            "",
            "hp.example.com.",
            "user@hp.example.com",
            "hp.example.com:",
            "hp.example.com:x",
            "hp.example.com:99999",
            "hp example.com",
            "[::1",
            "[::1]x",
            "hp..example.com",
            "hp_example.com",
            "hp.example.com:0443",
            "hp.example.com:00",
            "[::1]:04180",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad:?}");
        }
    }
}
