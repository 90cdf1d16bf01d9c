//! S8: unsafe requests must come from our own origin (`Origin`, else `Referer`, else
//! `Sec-Fetch-Site: same-origin`), and headgate's own forms carry a token bound to a cookie.

use http::HeaderMap;
use url::Url;

use crate::crypto::{self, Keys, Purpose, Random};

pub const COOKIE_BASE: &str = "headgate_csrf";

/// `scheme://host[:port]` of a URL, the way browsers serialise an origin.
pub fn origin_of(u: &Url) -> String {
    u.origin().ascii_serialization()
}

/// Whether the request says it comes from `base`'s origin.
pub fn same_origin(headers: &HeaderMap, base: &Url) -> bool {
    let ours = origin_of(base);
    if let Some(o) = headers.get(http::header::ORIGIN) {
        return o.to_str().map(|o| o == ours).unwrap_or(false);
    }
    if let Some(r) = headers.get(http::header::REFERER) {
        return r
            .to_str()
            .ok()
            .and_then(|r| Url::parse(r).ok())
            .is_some_and(|r| origin_of(&r) == ours);
    }
    headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("same-origin")
}

/// A fresh random cookie value for the CSRF cookie.
pub fn new_cookie_value(random: &dyn Random) -> String {
    crypto::random_b64(random, 24)
}

/// The form token for a CSRF cookie value.
pub fn token_for(keys: &Keys, cookie_value: &str) -> String {
    crypto::b64(&keys.mac(Purpose::Csrf, cookie_value.as_bytes()))
}

/// Whether `token` belongs to `cookie_value` (constant time; current or previous secret).
pub fn verify(keys: &Keys, cookie_value: &str, token: &str) -> bool {
    match crypto::unb64(token) {
        Some(tag) if tag.len() == 32 => {
            keys.verify_mac(Purpose::Csrf, cookie_value.as_bytes(), &tag)
        }
        _ => false,
    }
}

/// The form token of a signed-in page, bound to the session (forms on `/_headgate/…` pages).
pub fn session_token(keys: &Keys, session: &crate::store::SessionKey) -> String {
    crypto::b64(&keys.mac(
        Purpose::Csrf,
        &[b"session:".as_slice(), session.as_bytes()].concat(),
    ))
}

pub fn verify_session_token(keys: &Keys, session: &crate::store::SessionKey, token: &str) -> bool {
    match crypto::unb64(token) {
        Some(tag) if tag.len() == 32 => keys.verify_mac(
            Purpose::Csrf,
            &[b"session:".as_slice(), session.as_bytes()].concat(),
            &tag,
        ),
        _ => false,
    }
}
