//! In-memory fixed-window rate limits (per client IP and in all), for `/admin/oidc/start` (S7). Limits that
//! must hold across replicas live in the store instead.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimiter {
    per_ip: u32,
    global: u32,
    window: Duration,
    state: Mutex<State>,
}

struct State {
    started: Instant,
    total: u32,
    by_ip: HashMap<IpAddr, u32>,
}

/// Tracking more clients than this in one window means a flood: every new client is refused.
const MAX_TRACKED: usize = 100_000;

impl RateLimiter {
    pub fn new(per_ip: u32, global: u32, window: Duration) -> Self {
        RateLimiter {
            per_ip,
            global,
            window,
            state: Mutex::new(State {
                started: Instant::now(),
                total: 0,
                by_ip: HashMap::new(),
            }),
        }
    }

    /// Count one event for `ip`; false when a limit is exceeded.
    pub fn allow(&self, ip: IpAddr) -> bool {
        let mut st = self.state.lock().unwrap();
        if st.started.elapsed() >= self.window {
            st.started = Instant::now();
            st.total = 0;
            st.by_ip.clear();
        }
        if st.total >= self.global {
            return false;
        }
        if !st.by_ip.contains_key(&ip) && st.by_ip.len() >= MAX_TRACKED {
            return false;
        }
        let n = st.by_ip.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            return false;
        }
        *n += 1;
        st.total += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_global() {
        let r = RateLimiter::new(2, 3, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(r.allow(a) && r.allow(a) && !r.allow(a));
        assert!(r.allow(b));
        assert!(!r.allow(b), "the global limit of 3 is reached");
    }
}
