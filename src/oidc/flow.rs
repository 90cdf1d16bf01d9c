//! Login-flow state (S7): one AEAD-encrypted cookie per flow holding state, nonce, PKCE verifier, return
//! target and expiry. Nothing is stored server-side, so any replica can finish a flow; several tabs each
//! get their own cookie; at most `MAX_FLOWS` live at once (the oldest is dropped).

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::cookies::{self, CookieSettings};
use crate::crypto::{self, Keys, Purpose, Random};

pub const COOKIE_PREFIX: &str = "headgate_flow_";
pub const FLOW_TTL_SECS: i64 = 600;
pub const MAX_FLOWS: usize = 5;
/// Flow cookies live at `/` so they can carry the `__Host-` prefix when secure (S6): no sibling subdomain
/// can plant one. Their names tell flows apart.
pub const COOKIE_PATH: &str = "/";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Flow {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: Option<String>,
    /// The validated return target.
    pub return_to: String,
    pub created: i64,
    pub expires: i64,
}

/// A flow cookie found in a request.
#[derive(Debug)]
pub struct FoundFlow {
    /// The cookie's full name (to clear it).
    pub cookie_name: String,
    /// The flow, when it decrypted.
    pub flow: Option<Flow>,
}

pub struct FlowCookies<'a> {
    pub keys: &'a Keys,
    pub cookies: &'a CookieSettings,
    /// The cookie path: a prefix of both the start and the callback path.
    pub path: &'a str,
}

impl FlowCookies<'_> {
    fn full_prefix(&self) -> String {
        self.cookies.name(COOKIE_PREFIX, self.path)
    }

    /// Every flow cookie in the request, decrypted where possible (the cookie name is the AAD, so a value
    /// cannot be moved to another slot).
    pub fn read(&self, headers: &HeaderMap) -> Vec<FoundFlow> {
        let prefix = self.full_prefix();
        cookies::request_cookies(headers)
            .filter(|(n, _)| n.starts_with(&prefix) && n.len() <= prefix.len() + 16)
            .take(4 * MAX_FLOWS)
            .map(|(name, value)| {
                let flow = crypto::unb64(value)
                    .and_then(|sealed| {
                        self.keys
                            .open(Purpose::FlowEncryption, name.as_bytes(), &sealed)
                    })
                    .and_then(|plain| serde_json::from_slice::<Flow>(&plain).ok());
                FoundFlow {
                    cookie_name: name.to_string(),
                    flow,
                }
            })
            .collect()
    }

    /// A new flow cookie (`Set-Cookie` value) plus `Set-Cookie` values that drop the oldest flows so that at
    /// most `MAX_FLOWS` remain, counting the new one. Undecryptable flow cookies are dropped too.
    pub fn start(&self, random: &dyn Random, flow: &Flow, existing: &[FoundFlow]) -> Vec<String> {
        let mut id = [0u8; 6];
        random.fill(&mut id);
        let name = format!("{}{}", self.full_prefix(), hex(&id));
        let plain = serde_json::to_vec(flow).expect("a flow serialises");
        let sealed = self
            .keys
            .seal(Purpose::FlowEncryption, random, name.as_bytes(), &plain);
        let base = &name[name.len() - (COOKIE_PREFIX.len() + 12)..];
        let mut out = vec![self.cookies.set(
            base,
            &crypto::b64(&sealed),
            self.path,
            Some(FLOW_TTL_SECS as u64),
        )];
        let mut live: Vec<(&str, i64)> = Vec::new();
        for f in existing {
            match &f.flow {
                Some(fl) if fl.expires > flow.created => live.push((&f.cookie_name, fl.created)),
                _ => out.push(self.clear(&f.cookie_name)),
            }
        }
        live.sort_by_key(|(_, created)| *created);
        let excess = (live.len() + 1).saturating_sub(MAX_FLOWS);
        for (name, _) in live.into_iter().take(excess) {
            out.push(self.clear(name));
        }
        out
    }

    /// `Set-Cookie` that deletes the flow cookie with this full name.
    pub fn clear(&self, full_name: &str) -> String {
        let base = strip_prefix(full_name);
        self.cookies.clear(base, self.path)
    }
}

fn strip_prefix(full: &str) -> &str {
    full.trim_start_matches("__Host-")
        .trim_start_matches("__Secure-")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::crypto::OsRandom;

    fn flow(created: i64) -> Flow {
        Flow {
            state: format!("s{created}"),
            nonce: "n".into(),
            pkce_verifier: None,
            return_to: "/admin/".into(),
            created,
            expires: created + FLOW_TTL_SECS,
        }
    }

    #[test]
    fn round_trip_and_cap() {
        let keys = Keys::new(&Secret::new("k".repeat(32)), None);
        let cs = CookieSettings {
            secure: false,
            domain: None,
        };
        let fc = FlowCookies {
            keys: &keys,
            cookies: &cs,
            path: "/admin/oidc",
        };
        let mut headers = HeaderMap::new();
        let mut cookie_header = String::new();
        for i in 0..5 {
            let set = fc.start(&OsRandom, &flow(1000 + i), &fc.read(&headers));
            let first = set[0].split(';').next().unwrap().to_string();
            cookie_header = if cookie_header.is_empty() {
                first
            } else {
                format!("{cookie_header}; {first}")
            };
            headers.insert(http::header::COOKIE, cookie_header.parse().unwrap());
        }
        let found = fc.read(&headers);
        assert_eq!(found.len(), 5);
        assert!(found.iter().all(|f| f.flow.is_some()));
        // A sixth flow drops exactly the oldest.
        let set = fc.start(&OsRandom, &flow(1010), &found);
        assert_eq!(set.len(), 2, "{set:?}");
        let oldest = found
            .iter()
            .find(|f| f.flow.as_ref().unwrap().created == 1000)
            .unwrap();
        assert!(
            set[1].starts_with(&format!("{}=;", oldest.cookie_name)),
            "{set:?}"
        );
        // A value moved to another cookie name does not decrypt.
        let v = headers
            .get(http::header::COOKIE)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let (n, val) = v.split(';').next().unwrap().split_once('=').unwrap();
        let moved = format!("{}0000={val}", &n[..n.len() - 4]);
        headers.insert(http::header::COOKIE, moved.parse().unwrap());
        assert!(fc.read(&headers)[0].flow.is_none());
    }
}
