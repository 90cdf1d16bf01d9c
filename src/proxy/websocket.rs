//! Websocket upgrades (RFC 6455) on rules that allow them (S9): the handshake is passed to the upstream,
//! and the connection is tunnelled only after a real `101 Switching Protocols` whose `Sec-WebSocket-Accept`
//! matches the client's key. The tunnel is tracked with its session and cut when the session ends (S19).

use base64::Engine;
use http::header::{self, HeaderMap};
use http::{Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::streams::{StopSignal, StreamGuard};

/// RFC 6455 section 1.3.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The client's `Sec-WebSocket-Key`, when it is the one well-formed value RFC 6455 section 4.1 asks for
/// (base64 of 16 bytes) and `Sec-WebSocket-Version` is 13.
pub fn client_key(headers: &HeaderMap) -> Option<String> {
    let mut keys = headers.get_all("sec-websocket-key").iter();
    let key = keys.next()?.to_str().ok()?.trim().to_string();
    if keys.next().is_some() {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .ok()?;
    let version_ok = headers
        .get("sec-websocket-version")
        .is_some_and(|v| v.as_bytes() == b"13");
    (raw.len() == 16 && version_ok).then_some(key)
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key ‖ GUID)).
pub fn accept_for(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// Whether the upstream's answer is a real switch to the websocket protocol for this key.
pub fn is_valid_switch<B>(resp: &Response<B>, key: &str) -> bool {
    let h = resp.headers();
    let upgrade_ok = h
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let accept_ok = h
        .get("sec-websocket-accept")
        .is_some_and(|v| v.as_bytes() == accept_for(key).as_bytes());
    resp.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade_ok && accept_ok
}

/// Join the client's and the upstream's upgraded connections until either side closes or the session's
/// stream is stopped. Runs as its own task; the guard keeps the tunnel on the session's list.
pub async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    tracked: Option<(StreamGuard, StopSignal)>,
) {
    let (c, u) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "websocket upgrade did not complete");
            return;
        }
    };
    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
    match tracked {
        Some((_guard, mut stop)) => {
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
                _ = stop.stopped() => {
                    tracing::info!("websocket closed: its session ended or changed");
                }
            }
        }
        None => {
            let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_rfc_6455_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn client_key_must_be_16_bytes_once_with_version_13() {
        let mut h = HeaderMap::new();
        h.insert(
            "sec-websocket-key",
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        assert!(client_key(&h).is_none(), "no version");
        h.insert("sec-websocket-version", "13".parse().unwrap());
        assert_eq!(client_key(&h).as_deref(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        h.append(
            "sec-websocket-key",
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        assert!(client_key(&h).is_none(), "two keys");
        h.insert("sec-websocket-key", "c2hvcnQ=".parse().unwrap());
        assert!(client_key(&h).is_none(), "not 16 bytes");
        h.insert(
            "sec-websocket-key",
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        h.insert("sec-websocket-version", "8".parse().unwrap());
        assert!(client_key(&h).is_none(), "old version");
    }
}
