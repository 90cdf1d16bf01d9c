//! Cookies: reading them from a request (bounded), and the one constructor that sets every attribute
//! (S6: HttpOnly, SameSite=Lax, `__Host-` when secure without a domain, `__Secure-` otherwise when secure).

use http::HeaderMap;
use http::header::COOKIE;

/// Longest cookie value headgate looks at; anything longer is ignored (never parsed, never an error path
/// that costs more than a length check).
pub const MAX_VALUE_LEN: usize = 4096;

#[derive(Debug, Clone)]
pub struct CookieSettings {
    pub secure: bool,
    pub domain: Option<String>,
}

impl CookieSettings {
    /// The full cookie name for `base` at `path`: `__Host-` needs Path=/ and no Domain.
    pub fn name(&self, base: &str, path: &str) -> String {
        match (self.secure, &self.domain, path) {
            (true, None, "/") => format!("__Host-{base}"),
            (true, _, _) => format!("__Secure-{base}"),
            (false, _, _) => base.to_string(),
        }
    }

    /// A `Set-Cookie` value. `max_age` None makes a browser-session cookie.
    pub fn set(&self, base: &str, value: &str, path: &str, max_age: Option<u64>) -> String {
        let mut c = format!(
            "{}={value}; Path={path}; HttpOnly; SameSite=Lax",
            self.name(base, path)
        );
        if self.secure {
            c.push_str("; Secure");
        }
        if let (Some(d), false) = (&self.domain, self.name(base, path).starts_with("__Host-")) {
            c.push_str(&format!("; Domain={d}"));
        }
        if let Some(age) = max_age {
            c.push_str(&format!("; Max-Age={age}"));
        }
        c
    }

    /// A `Set-Cookie` value that deletes the cookie.
    pub fn clear(&self, base: &str, path: &str) -> String {
        let mut c = self.set(base, "", path, Some(0));
        c.push_str("; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
        c
    }
}

/// Every `name=value` pair of every `Cookie` header (HTTP/2 may split them), in order. Values longer than
/// `MAX_VALUE_LEN` are skipped.
pub fn request_cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            let v = v.trim().trim_matches('"');
            (v.len() <= MAX_VALUE_LEN).then_some((n.trim(), v))
        })
}

/// The values of every cookie called `name`.
pub fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> Vec<&'a str> {
    request_cookies(headers)
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_and_prefixes() {
        let s = CookieSettings {
            secure: true,
            domain: None,
        };
        assert_eq!(
            s.set("headgate_session", "v", "/", Some(60)),
            "__Host-headgate_session=v; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=60"
        );
        assert!(
            s.set("f", "v", "/admin/oidc", None)
                .starts_with("__Secure-f=v; Path=/admin/oidc;")
        );
        let d = CookieSettings {
            secure: true,
            domain: Some("example.com".into()),
        };
        assert!(
            d.set("s", "v", "/", None).starts_with("__Secure-s=v")
                && d.set("s", "v", "/", None).contains("Domain=example.com")
        );
        let plain = CookieSettings {
            secure: false,
            domain: None,
        };
        assert_eq!(
            plain.set("s", "v", "/", None),
            "s=v; Path=/; HttpOnly; SameSite=Lax"
        );
        assert!(plain.clear("s", "/").contains("Max-Age=0"));
    }

    #[test]
    fn reads_split_and_repeated_cookie_headers() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, "a=1; s=x".parse().unwrap());
        h.append(COOKIE, "s=y;b=2".parse().unwrap());
        h.append(
            COOKIE,
            format!("s={}", "z".repeat(MAX_VALUE_LEN + 1))
                .parse()
                .unwrap(),
        );
        assert_eq!(values(&h, "s"), vec!["x", "y"]);
        assert_eq!(values(&h, "b"), vec!["2"]);
    }
}
