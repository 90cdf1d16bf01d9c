//! Keys derived from `server.cookie_secret` (and `cookie_secret_previous`) with HKDF-SHA256, one per purpose
//! (S6), and the primitives built on them: MACs compared in constant time, AEAD for flow cookies and
//! secrets at rest. Randomness comes through `Random`, so tests can control it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// What a derived key is for; the label is part of the HKDF info, so keys never serve two purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    SessionMac,
    FlowEncryption,
    Csrf,
    KeyEncryption,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::SessionMac => b"headgate v1 session-mac",
            Purpose::FlowEncryption => b"headgate v1 flow-encryption",
            Purpose::Csrf => b"headgate v1 csrf",
            Purpose::KeyEncryption => b"headgate v1 key-encryption",
        }
    }
}

#[derive(Clone)]
struct KeySet {
    session_mac: [u8; 32],
    flow: [u8; 32],
    csrf: [u8; 32],
    key_enc: [u8; 32],
    /// HMAC states already keyed (inner and outer pads absorbed) for the MAC purposes: every request
    /// verifies a session MAC, and cloning a keyed state saves two SHA-256 blocks each time.
    session_mac_keyed: HmacSha256,
    csrf_keyed: HmacSha256,
}

impl KeySet {
    fn derive(secret: &Secret) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"headgate cookie_secret"), secret.expose().as_bytes());
        let get = |p: Purpose| {
            let mut out = [0u8; 32];
            hk.expand(p.label(), &mut out)
                .expect("32 bytes is a valid HKDF-SHA256 length");
            out
        };
        let keyed = |k: &[u8; 32]| {
            <HmacSha256 as hmac::KeyInit>::new_from_slice(k).expect("any key length")
        };
        let session_mac = get(Purpose::SessionMac);
        let csrf = get(Purpose::Csrf);
        KeySet {
            session_mac_keyed: keyed(&session_mac),
            csrf_keyed: keyed(&csrf),
            session_mac,
            flow: get(Purpose::FlowEncryption),
            csrf,
            key_enc: get(Purpose::KeyEncryption),
        }
    }

    /// A fresh HMAC for `p`, keyed.
    fn hmac(&self, p: Purpose) -> HmacSha256 {
        match p {
            Purpose::SessionMac => self.session_mac_keyed.clone(),
            Purpose::Csrf => self.csrf_keyed.clone(),
            p => {
                <HmacSha256 as hmac::KeyInit>::new_from_slice(self.get(p)).expect("any key length")
            }
        }
    }

    fn get(&self, p: Purpose) -> &[u8; 32] {
        match p {
            Purpose::SessionMac => &self.session_mac,
            Purpose::FlowEncryption => &self.flow,
            Purpose::Csrf => &self.csrf,
            Purpose::KeyEncryption => &self.key_enc,
        }
    }
}

/// The current keys (used to sign and encrypt) and the previous ones (still accepted when verifying and
/// decrypting, so rotating `cookie_secret` logs nobody out).
#[derive(Clone)]
pub struct Keys {
    current: KeySet,
    previous: Option<KeySet>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    pub fn new(current: &Secret, previous: Option<&Secret>) -> Self {
        Keys {
            current: KeySet::derive(current),
            previous: previous.map(KeySet::derive),
        }
    }

    fn all(&self) -> impl Iterator<Item = &KeySet> {
        std::iter::once(&self.current).chain(self.previous.iter())
    }

    /// HMAC-SHA256 of `msg` with the current key for `purpose`.
    pub fn mac(&self, purpose: Purpose, msg: &[u8]) -> [u8; 32] {
        let mut m = self.current.hmac(purpose);
        m.update(msg);
        m.finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `msg` under the current or the previous key (constant time).
    pub fn verify_mac(&self, purpose: Purpose, msg: &[u8], tag: &[u8]) -> bool {
        let mut ok = false;
        for ks in self.all() {
            let mut m = ks.hmac(purpose);
            m.update(msg);
            ok |= m.verify_slice(tag).is_ok();
        }
        ok
    }

    /// Encrypt with the current key: `nonce (12) || ciphertext+tag`. `aad` binds the ciphertext to its use.
    pub fn seal(
        &self,
        purpose: Purpose,
        random: &dyn Random,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(&Key::from(*self.current.get(purpose)));
        let mut nonce = [0u8; 12];
        random.fill(&mut nonce);
        let ct = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("ChaCha20-Poly1305 encryption does not fail for in-memory sizes");
        let mut out = Vec::with_capacity(12 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypt with the current, then the previous key.
    pub fn open(&self, purpose: Purpose, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 12 + 16 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(12);
        let nonce = Nonce::try_from(nonce).ok()?;
        self.all().find_map(|ks| {
            ChaCha20Poly1305::new(&Key::from(*ks.get(purpose)))
                .decrypt(&nonce, Payload { msg: ct, aad })
                .ok()
        })
    }
}

/// A source of randomness (the OS in production; tests may substitute a deterministic one).
pub trait Random: Send + Sync {
    fn fill(&self, buf: &mut [u8]);
}

/// The operating system's CSPRNG.
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&self, buf: &mut [u8]) {
        getrandom::fill(buf).expect("the OS random number generator failed");
    }
}

/// `n` random bytes as unpadded base64url.
pub fn random_b64(random: &dyn Random, n: usize) -> String {
    let mut buf = vec![0u8; n];
    random.fill(&mut buf);
    B64.encode(buf)
}

pub fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

pub fn unb64(s: &str) -> Option<Vec<u8>> {
    B64.decode(s).ok()
}

/// Exactly 32 bytes of unpadded base64url (43 characters), decoded without allocating.
pub fn unb64_32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 43 {
        return None;
    }
    let mut out = [0u8; 32];
    match B64.decode_slice(s, &mut out) {
        Ok(32) => Some(out),
        _ => None,
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Constant-time equality of two byte strings (the length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: &str, p: Option<&str>) -> Keys {
        Keys::new(&Secret::new(s), p.map(Secret::new).as_ref())
    }

    #[test]
    fn thirty_two_bytes_decode_without_allocating_and_nothing_else_does() {
        let id = [0xa5u8; 32];
        assert_eq!(unb64_32(&b64(&id)), Some(id));
        assert_eq!(unb64_32(&b64(&[1u8; 31])), None);
        assert_eq!(unb64_32(&b64(&[1u8; 33])), None);
        assert_eq!(unb64_32(&format!("{}=", &b64(&id)[..42])), None);
        assert_eq!(unb64_32(&"!".repeat(43)), None);
        // The same strictness as `unb64`: non-zero trailing bits are refused.
        let mut s = b64(&id);
        s.pop();
        s.push('B');
        assert_eq!(unb64_32(&s).is_some(), unb64(&s).is_some());
    }

    #[test]
    fn keyed_macs_match_a_fresh_hmac() {
        let k = keys(&"k".repeat(32), None);
        for p in [Purpose::SessionMac, Purpose::Csrf, Purpose::FlowEncryption] {
            let mut fresh =
                <HmacSha256 as hmac::KeyInit>::new_from_slice(k.current.get(p)).unwrap();
            fresh.update(b"message");
            let want: [u8; 32] = fresh.finalize().into_bytes().into();
            assert_eq!(k.mac(p, b"message"), want);
            assert!(k.verify_mac(p, b"message", &want));
        }
    }

    #[test]
    fn purposes_get_different_keys() {
        let k = keys(&"a".repeat(32), None);
        assert_ne!(k.mac(Purpose::SessionMac, b"x"), k.mac(Purpose::Csrf, b"x"));
    }

    #[test]
    fn previous_secret_still_verifies_and_decrypts() {
        let old = keys(&"old".repeat(11), None);
        let tag = old.mac(Purpose::SessionMac, b"id");
        let sealed = old.seal(Purpose::FlowEncryption, &OsRandom, b"aad", b"hello");
        let rotated = keys(&"new".repeat(11), Some(&"old".repeat(11)));
        assert!(rotated.verify_mac(Purpose::SessionMac, b"id", &tag));
        assert_eq!(
            rotated
                .open(Purpose::FlowEncryption, b"aad", &sealed)
                .as_deref(),
            Some(&b"hello"[..])
        );
        let unrelated = keys(&"new".repeat(11), None);
        assert!(!unrelated.verify_mac(Purpose::SessionMac, b"id", &tag));
        assert!(
            unrelated
                .open(Purpose::FlowEncryption, b"aad", &sealed)
                .is_none()
        );
        // Another associated-data context does not open it either.
        assert!(
            rotated
                .open(Purpose::FlowEncryption, b"other", &sealed)
                .is_none()
        );
    }
}
