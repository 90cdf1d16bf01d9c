//! Header hygiene for everything headgate forwards, in one place.
//!
//! RFC 9110 §7.6.1: "A proxy or gateway MUST parse a received Connection header field before a message is
//! forwarded and, for each connection-option in this field, remove any header or trailer field(s) from the
//! message with the same name as the connection-option, and then remove the Connection header field itself
//! (or replace it with the intermediary's own control options for the forwarded message)."
//! S9 adds: a client's `Connection` list never removes identity headers, `Cookie` or `Host` (identity
//! headers are set by headgate after this step, so a client cannot name them away).
//! Forward-auth class 2: identity headers sent by the client, in any case, with `_` for `-`, repeated, are
//! removed on every request before headgate sets its own; `X-Forwarded-*` count only from trusted peers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop fields (RFC 9110 §7.6.1 and the classic list), never forwarded in either direction.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// The identity headers headgate sets (default names; `[headers]` may rename the first four).
#[derive(Debug, Clone)]
pub struct IdentityNames {
    pub user: String,
    pub email: String,
    pub name: String,
    pub picture: String,
    /// The four names parsed once (user, email, name, picture), not on every request. `None`: a name that is
    /// not a valid header name (configuration validation refuses those; such a header is never set).
    parsed: [Option<HeaderName>; 4],
}

impl Default for IdentityNames {
    fn default() -> Self {
        IdentityNames::new(
            "remote-user".into(),
            "remote-email".into(),
            "remote-name".into(),
            "remote-picture".into(),
        )
    }
}

pub const ROLE: &str = "x-headgate-role";
pub const HS_USER_ID: &str = "x-headgate-headscale-user-id";
pub const HS_USER: &str = "x-headgate-headscale-user";
pub const AUTH: &str = "x-headgate-auth";
pub const ASSERTION: &str = "x-headgate-assertion";

/// One byte of a header name as a spoofer might spell it, folded: lower case, `_` as `-`.
fn fold(b: u8) -> u8 {
    match b {
        b'_' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

/// Whether `a` and `b` are the same name once folded (no allocation: this runs for every header of every
/// request).
fn folded_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// Whether `name` folded starts with `prefix` (given folded).
fn folded_starts_with(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && name.bytes().zip(prefix.bytes()).all(|(x, y)| fold(x) == y)
}

impl IdentityNames {
    pub fn from_config(h: &crate::config::HeadersConfig) -> Self {
        IdentityNames::new(
            h.user_header.clone(),
            h.email_header.clone(),
            h.name_header.clone(),
            h.picture_header.clone(),
        )
    }

    fn new(user: String, email: String, name: String, picture: String) -> Self {
        let parse = |n: &str| HeaderName::from_bytes(n.as_bytes()).ok();
        IdentityNames {
            parsed: [parse(&user), parse(&email), parse(&name), parse(&picture)],
            user,
            email,
            name,
            picture,
        }
    }

    /// Whether a client-sent header is (a spelling of) one of headgate's identity headers.
    pub fn is_identity(&self, name: &str) -> bool {
        folded_starts_with(name, "x-headgate-")
            || [&self.user, &self.email, &self.name, &self.picture].iter().any(|n| folded_eq(n, name))
            // The default names are always reserved, even when renamed, so Headplane's own trusted-header
            // mode can never be fed a client value.
            || ["remote-user", "remote-email", "remote-name", "remote-picture", "remote-groups"]
                .iter()
                .any(|n| folded_eq(n, name))
    }
}

/// The values headgate sets on every forwarded request (empty when unknown; S11).
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub user: String,
    pub email: String,
    pub name: String,
    pub picture: String,
    pub role: String,
    pub hs_user_id: String,
    pub hs_user: String,
    pub auth: String,
    /// The signed assertion, as the header value the mint cache keeps (`None`: an empty header).
    pub assertion: Option<HeaderValue>,
}

/// Clean a client's request headers for forwarding: `Connection`-listed fields (never `Cookie`/`Host`),
/// hop-by-hop fields, every identity header spelling, and `X-Forwarded-*`/`X-Original-*`/`Forwarded`
/// unless the peer is trusted. `keep_upgrade` keeps `Upgrade`/`Connection: upgrade` for an allowed websocket.
pub fn clean_request(
    headers: &mut HeaderMap,
    names: &IdentityNames,
    trusted_peer: bool,
    keep_upgrade: bool,
) {
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "cookie" && t != "host" && !names.is_identity(t))
        .collect();
    for t in &listed {
        if keep_upgrade && t == "upgrade" {
            continue;
        }
        if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
            headers.remove(n);
        }
    }
    let upgrade = keep_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            let s = n.as_str();
            names.is_identity(s)
                || (!trusted_peer
                    && (folded_starts_with(s, "x-forwarded-")
                        || folded_starts_with(s, "x-original-")
                        || s == "forwarded"
                        || folded_eq(s, "x-real-ip")))
        })
        .cloned()
        .collect();
    for n in doomed {
        headers.remove(n);
    }
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Set every identity header (empty when unknown), after `clean_request`.
pub fn set_identity(headers: &mut HeaderMap, names: &IdentityNames, id: &Identity) {
    fn value(v: &str) -> Option<HeaderValue> {
        match sanitize(v) {
            std::borrow::Cow::Borrowed(v) => HeaderValue::from_str(v).ok(),
            std::borrow::Cow::Owned(v) => HeaderValue::from_str(&v).ok(),
        }
    }
    let mut set = |name: HeaderName, v: &str| {
        if let Some(v) = value(v) {
            headers.insert(name, v);
        }
    };
    for (name, v) in names
        .parsed
        .iter()
        .zip([&id.user, &id.email, &id.name, &id.picture])
    {
        if let Some(n) = name {
            set(n.clone(), v);
        }
    }
    set(HeaderName::from_static(ROLE), &id.role);
    set(HeaderName::from_static(HS_USER_ID), &id.hs_user_id);
    set(HeaderName::from_static(HS_USER), &id.hs_user);
    set(HeaderName::from_static(AUTH), &id.auth);
    // Already a header value (base64url and dots), shared with the mint cache: no copy, no check.
    headers.insert(
        HeaderName::from_static(ASSERTION),
        id.assertion
            .clone()
            .unwrap_or_else(|| HeaderValue::from_static("")),
    );
}

/// Header values are visible ASCII: other characters are percent-escaped, so a name with a newline or
/// non-ASCII letters can neither break the request nor be dropped. A value that needs no escaping (the
/// assertion, nearly every name) is used as it is.
fn sanitize(v: &str) -> std::borrow::Cow<'_, str> {
    if v.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'%') {
        return std::borrow::Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Remove cookies the upstream must never see (headgate's own, and any client `_hp_auth`), keeping the rest.
pub fn strip_cookies(headers: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    let kept: Vec<String> = crate::cookies::request_cookies(headers)
        .filter(|(n, _)| !drop(n))
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

/// Clean an upstream response for the browser: hop-by-hop fields, and `Set-Cookie` only for allowlisted
/// names (never `_hp_auth`, S10).
pub fn clean_response(headers: &mut HeaderMap, pass_cookies: &[String], keep_upgrade: bool) {
    let upgrade = keep_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| t != "set-cookie")
        .collect();
    for t in listed {
        if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
            headers.remove(n);
        }
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for c in cookies {
        let name = c
            .to_str()
            .ok()
            .and_then(|s| s.split('=').next())
            .map(str::trim)
            .unwrap_or("");
        if name != "_hp_auth" && pass_cookies.iter().any(|p| p == name) {
            headers.append(header::SET_COOKIE, c);
        }
    }
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// S10: responses to a signed-in person are private.
pub fn mark_private(headers: &mut HeaderMap) {
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, private"),
    );
    headers.append(header::VARY, HeaderValue::from_static("Cookie"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn spoofed_identity_headers_never_survive() {
        let names = IdentityNames::default();
        let mut h = map(&[
            ("remote-user", "admin"),
            ("Remote_User", "admin"),
            ("REMOTE-EMAIL", "x@y"),
            ("x-headgate-role", "owner"),
            ("x_headgate_assertion", "forged"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-original-uri", "/x"),
            (
                "connection",
                "keep-alive, x-keep, remote-user, cookie, host",
            ),
            ("x-keep", "dropped because listed"),
            ("cookie", "a=1"),
            ("host", "hp.example.com"),
            ("accept", "text/html"),
        ]);
        clean_request(&mut h, &names, false, false);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["accept", "cookie", "host"], "{h:?}");
        set_identity(
            &mut h,
            &names,
            &Identity {
                user: "alice-sub".into(),
                role: "viewer".into(),
                ..Default::default()
            },
        );
        assert_eq!(h.get("remote-user").unwrap(), "alice-sub");
        assert_eq!(h.get("remote-email").unwrap(), "");
        assert_eq!(h.get(ROLE).unwrap(), "viewer");
        assert_eq!(h.get_all("remote-user").iter().count(), 1);
    }

    #[test]
    fn forwarded_headers_kept_from_trusted_peers_only() {
        let names = IdentityNames::default();
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        clean_request(&mut h, &names, true, false);
        assert!(h.contains_key("x-forwarded-for") && h.contains_key("x-forwarded-proto"));
    }

    #[test]
    fn responses_keep_only_allowlisted_cookies() {
        let mut h = map(&[
            ("set-cookie", "_hp_auth=secret; Path=/admin"),
            ("set-cookie", "color_scheme=dark; Path=/"),
            ("set-cookie", "other=1"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
        ]);
        clean_response(&mut h, &["color_scheme".to_string()], false);
        let cookies: Vec<_> = h
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(cookies, vec!["color_scheme=dark; Path=/"]);
        assert!(!h.contains_key("connection") && !h.contains_key("keep-alive"));
    }

    #[test]
    fn values_are_escaped_not_dropped() {
        let names = IdentityNames::default();
        let mut h = HeaderMap::new();
        set_identity(
            &mut h,
            &names,
            &Identity {
                name: "Zoë\r\nX: y".into(),
                ..Default::default()
            },
        );
        assert_eq!(h.get("remote-name").unwrap(), "Zo%C3%AB%0D%0AX: y");
    }

    #[test]
    fn cookie_stripping() {
        let mut h = map(&[(
            "cookie",
            "_hp_auth=x; headgate_session=s; color_scheme=dark",
        )]);
        strip_cookies(&mut h, |n| n == "_hp_auth" || n.contains("headgate_"));
        assert_eq!(h.get("cookie").unwrap(), "color_scheme=dark");
    }
}
