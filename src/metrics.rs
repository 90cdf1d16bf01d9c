//! Prometheus metrics (text exposition format 0.0.4), kept in fixed arrays of atomics so that recording on
//! the request path is a few relaxed increments: no lock, no allocation.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// What kind of path a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// Forwarded (or refused) by the gate.
    Proxy,
    /// A forward-auth verdict endpoint.
    ForwardAuth,
    /// Sign-in, sign-out, the login page.
    Auth,
    /// headgate's own pages and APIs (`/_headgate/…`, onboarding, users).
    Headgate,
    /// Health, metrics, JWKS, the stylesheet.
    Internal,
}

const CLASSES: [(RouteClass, &str); 5] = [
    (RouteClass::Proxy, "proxy"),
    (RouteClass::ForwardAuth, "forward_auth"),
    (RouteClass::Auth, "auth"),
    (RouteClass::Headgate, "headgate"),
    (RouteClass::Internal, "internal"),
];

/// The verdict of a request (the log line's `verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Login,
    Deny,
    Redirect,
    Error,
}

const VERDICTS: [(Verdict, &str); 5] = [
    (Verdict::Allow, "allow"),
    (Verdict::Login, "login"),
    (Verdict::Deny, "deny"),
    (Verdict::Redirect, "redirect"),
    (Verdict::Error, "error"),
];

impl Verdict {
    pub fn as_str(self) -> &'static str {
        VERDICTS
            .iter()
            .find(|(v, _)| *v == self)
            .map(|(_, s)| *s)
            .unwrap_or("error")
    }
    /// The gate's and forward-auth's verdict words.
    pub fn from_word(w: &str) -> Verdict {
        match w {
            "allow" => Verdict::Allow,
            "login" => Verdict::Login,
            "deny" => Verdict::Deny,
            "redirect" => Verdict::Redirect,
            _ => Verdict::Error,
        }
    }
    /// For headgate's own handlers, read off the status.
    pub fn from_status(status: u16) -> Verdict {
        match status {
            500.. => Verdict::Error,
            401 => Verdict::Login,
            400..=499 => Verdict::Deny,
            300..=399 => Verdict::Redirect,
            _ => Verdict::Allow,
        }
    }
}

/// Sign-in methods and outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignIn {
    Oidc,
    ApiKey,
}

/// Calls headgate makes to other services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Headscale,
    Idp,
}

/// Latency buckets in seconds (upper bounds).
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Histogram {
    /// Observations per bucket, not cumulative (one atomic add per observation: this runs on every
    /// proxied request and verdict); `render` adds them up.
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Every metric headgate exposes.
#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; 5]; 5],
    sign_ins: [[AtomicU64; 2]; 2],
    upstream: Histogram,
    forward_auth: Histogram,
    dependency: [Histogram; 2],
    dependency_errors: [AtomicU64; 2],
    sessions_active: AtomicI64,
    /// Days before `headscale.api_key` expires; i64::MIN when unknown.
    api_key_days_left: AtomicI64,
}

fn class_index(c: RouteClass) -> usize {
    CLASSES.iter().position(|(x, _)| *x == c).unwrap_or(0)
}
fn verdict_index(v: Verdict) -> usize {
    VERDICTS.iter().position(|(x, _)| *x == v).unwrap_or(4)
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics::default();
        m.api_key_days_left.store(i64::MIN, Relaxed);
        m
    }

    pub fn request(&self, class: RouteClass, verdict: Verdict) {
        self.requests[class_index(class)][verdict_index(verdict)].fetch_add(1, Relaxed);
    }

    pub fn sign_in(&self, method: SignIn, ok: bool) {
        let m = matches!(method, SignIn::ApiKey) as usize;
        self.sign_ins[m][(!ok) as usize].fetch_add(1, Relaxed);
    }

    pub fn upstream_latency(&self, d: Duration) {
        self.upstream.observe(d);
    }

    pub fn forward_auth_latency(&self, d: Duration) {
        self.forward_auth.observe(d);
    }

    pub fn dependency_call(&self, dep: Dependency, d: Duration, ok: bool) {
        let i = matches!(dep, Dependency::Idp) as usize;
        self.dependency[i].observe(d);
        if !ok {
            self.dependency_errors[i].fetch_add(1, Relaxed);
        }
    }

    pub fn set_sessions_active(&self, n: i64) {
        self.sessions_active.store(n, Relaxed);
    }

    pub fn set_api_key_days_left(&self, days: Option<i64>) {
        self.api_key_days_left
            .store(days.unwrap_or(i64::MIN), Relaxed);
    }

    pub fn api_key_days_left(&self) -> Option<i64> {
        match self.api_key_days_left.load(Relaxed) {
            i64::MIN => None,
            d => Some(d),
        }
    }

    /// The exposition text; `open_streams` is (event streams, websockets).
    pub fn render(&self, open_streams: (usize, usize)) -> String {
        let mut o = String::with_capacity(8192);
        o.push_str("# HELP headgate_requests_total Requests by route class and verdict.\n");
        o.push_str("# TYPE headgate_requests_total counter\n");
        for (ci, (_, class)) in CLASSES.iter().enumerate() {
            for (vi, (_, verdict)) in VERDICTS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "headgate_requests_total{{class=\"{class}\",verdict=\"{verdict}\"}} {}",
                    self.requests[ci][vi].load(Relaxed)
                );
            }
        }
        o.push_str("# HELP headgate_sign_ins_total Sign-ins by method and outcome.\n");
        o.push_str("# TYPE headgate_sign_ins_total counter\n");
        for (mi, method) in ["oidc", "api_key"].iter().enumerate() {
            for (oi, outcome) in ["success", "failure"].iter().enumerate() {
                let _ = writeln!(
                    o,
                    "headgate_sign_ins_total{{method=\"{method}\",outcome=\"{outcome}\"}} {}",
                    self.sign_ins[mi][oi].load(Relaxed)
                );
            }
        }
        o.push_str("# HELP headgate_upstream_request_duration_seconds Time until the upstream's response head.\n");
        o.push_str("# TYPE headgate_upstream_request_duration_seconds histogram\n");
        self.upstream
            .render(&mut o, "headgate_upstream_request_duration_seconds", "");
        o.push_str("# HELP headgate_forward_auth_duration_seconds Time to decide a forward-auth verdict.\n");
        o.push_str("# TYPE headgate_forward_auth_duration_seconds histogram\n");
        self.forward_auth
            .render(&mut o, "headgate_forward_auth_duration_seconds", "");
        o.push_str("# HELP headgate_dependency_request_duration_seconds Calls to Headscale and the identity provider.\n");
        o.push_str("# TYPE headgate_dependency_request_duration_seconds histogram\n");
        for (i, dep) in ["headscale", "idp"].iter().enumerate() {
            self.dependency[i].render(
                &mut o,
                "headgate_dependency_request_duration_seconds",
                &format!("dependency=\"{dep}\""),
            );
        }
        o.push_str("# HELP headgate_dependency_errors_total Failed calls to Headscale and the identity provider.\n");
        o.push_str("# TYPE headgate_dependency_errors_total counter\n");
        for (i, dep) in ["headscale", "idp"].iter().enumerate() {
            let _ = writeln!(
                o,
                "headgate_dependency_errors_total{{dependency=\"{dep}\"}} {}",
                self.dependency_errors[i].load(Relaxed)
            );
        }
        o.push_str("# HELP headgate_sessions_active Unexpired sessions in the store (counted every minute).\n");
        o.push_str("# TYPE headgate_sessions_active gauge\n");
        let _ = writeln!(
            o,
            "headgate_sessions_active {}",
            self.sessions_active.load(Relaxed)
        );
        o.push_str("# HELP headgate_open_streams Open event streams and websockets.\n");
        o.push_str("# TYPE headgate_open_streams gauge\n");
        let _ = writeln!(
            o,
            "headgate_open_streams{{kind=\"event_stream\"}} {}",
            open_streams.0
        );
        let _ = writeln!(
            o,
            "headgate_open_streams{{kind=\"websocket\"}} {}",
            open_streams.1
        );
        if let Some(d) = self.api_key_days_left() {
            o.push_str("# HELP headgate_headscale_api_key_expiry_days Days before headscale.api_key expires.\n");
            o.push_str("# TYPE headgate_headscale_api_key_expiry_days gauge\n");
            let _ = writeln!(o, "headgate_headscale_api_key_expiry_days {d}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_exposition_format() {
        let m = Metrics::new();
        m.request(RouteClass::Proxy, Verdict::Allow);
        m.request(RouteClass::Proxy, Verdict::Allow);
        m.request(RouteClass::Proxy, Verdict::Deny);
        m.sign_in(SignIn::Oidc, true);
        m.upstream_latency(Duration::from_millis(3));
        let t = m.render((1, 0));
        assert!(
            t.contains("headgate_requests_total{class=\"proxy\",verdict=\"allow\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("headgate_requests_total{class=\"proxy\",verdict=\"deny\"} 1\n"));
        assert!(t.contains("headgate_sign_ins_total{method=\"oidc\",outcome=\"success\"} 1\n"));
        assert!(t.contains("headgate_upstream_request_duration_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(t.contains("headgate_upstream_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(t.contains("headgate_upstream_request_duration_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(t.contains("headgate_open_streams{kind=\"event_stream\"} 1\n"));
        assert!(
            !t.contains("api_key_expiry"),
            "unknown expiry is not exported"
        );
        m.set_api_key_days_left(Some(9));
        assert!(
            m.render((0, 0))
                .contains("headgate_headscale_api_key_expiry_days 9\n")
        );
    }
}
