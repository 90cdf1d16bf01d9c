//! The client's address: the TCP peer, unless the peer is a configured trusted proxy, in which case the
//! rightmost `X-Forwarded-For` hop that is not itself trusted (forwarded headers count only from trusted
//! peers: forward-auth class 2).

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::Cidr;

/// More hops than this are not read (a bounded walk over attacker-supplied text).
const MAX_HOPS: usize = 32;

pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut last = peer;
    for hop in hops.iter().rev().take(MAX_HOPS) {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => last = ip,
            Ok(ip) => return ip,
            // A hop we cannot read: stop at the last one we could.
            Err(_) => return last,
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(xff: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert("x-forwarded-for", xff.parse().unwrap());
        m
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(ip("203.0.113.9"), &h("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        // Through a trusted proxy: the rightmost untrusted hop, not a spoofed leftmost one.
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                &h("6.6.6.6, 198.51.100.7, 10.0.0.5"),
                &trusted
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &h("garbage, 198.51.100.7"), &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &HeaderMap::new(), &trusted),
            ip("10.0.0.2")
        );
    }
}
