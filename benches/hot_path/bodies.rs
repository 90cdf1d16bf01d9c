//! The per-request pieces of headgate's hot path, one function each, on one fixture: timed by the criterion
//! micro-benchmarks (`benches/hot_path/main.rs`, `cargo bench --bench hot_path`) and run once each as ordinary
//! tests (`tests/it/bench_bodies.rs`, the regression guard: the benchmarks' code paths cannot rot, and no
//! test depends on timing).
//!
//! Every body returns what it computed, so the optimiser cannot drop the work and the tests can check it.

#![allow(dead_code)] // each user (the benchmark, the test) calls a different subset of helpers

use std::collections::HashMap;
use std::sync::Arc;

use headgate::assertion::{AssertionClaims, Assertions};
use headgate::config::Config;
use headgate::cookies::CookieSettings;
use headgate::crypto::{Keys, OsRandom};
use headgate::policy::{self, Admission, Decision, Form, Policy, Who};
use headgate::proxy::{forward, hygiene};
use headgate::session::{Lookup, Sessions, VerifiedSession};
use headgate::store::{
    Link, LinkState, NewUser, OwnerBootstrap, Role, SessionKey, SessionRecord, SessionSubject,
    Store,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

const SECRET: &str = "bench-cookie-secret-0123456789abcdef0123456789";
const HOST: &str = "hp.example.com";

/// Everything the bodies need: a store with a person, their link and their session; headgate's pieces built
/// from one configuration (Headplane's built-in rows, `proxy_auth` mode).
pub struct Fixture {
    pub rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    pub store: Store,
    pub sessions: Sessions,
    /// Held so last-seen updates have somewhere to go.
    _touch: tokio::sync::mpsc::Receiver<(SessionKey, i64)>,
    /// A browser request's headers, the session cookie among other cookies.
    pub browser: HeaderMap,
    pub cookie_value: String,
    pub now: i64,
    pub policy: Policy,
    pub form: Form,
    pub who: Who,
    pub names: hygiene::IdentityNames,
    pub assertions: Assertions,
    pub audience: String,
    pub session: VerifiedSession,
    pub link: Option<Link>,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("a temp dir");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:4180\"\nbase_url = \"https://{HOST}\"\ncookie_secret = \"{SECRET}\"\n\
             data_path = \"{}\"\n\n[upstream]\nurl = \"http://127.0.0.1:3000\"\nheadplane_login = \"proxy_auth\"\n",
            dir.path().display()
        );
        let config = Config::parse("bench.toml", &text, &HashMap::new()).expect("a valid config");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let store = Store::open_redb(&dir.path().join("headgate.redb"), 8 << 20).expect("a store");
        let now = 1_750_000_000;
        let keys = Arc::new(Keys::new(&config.server.cookie_secret, None));
        let (touch_tx, touch_rx) = tokio::sync::mpsc::channel(1024);
        let sessions = Sessions::new(
            keys.clone(),
            CookieSettings {
                secure: true,
                domain: None,
            },
            store.clone(),
            Arc::new(OsRandom),
            touch_tx,
        );
        let (cookie_value, key) = sessions.new_id();
        rt.block_on(async {
            let user = store
                .create_user(
                    NewUser {
                        subject: "alice-sub".into(),
                        email: Some("alice@example.com".into()),
                        email_verified: true,
                        name: Some("Alice Example".into()),
                        picture: None,
                        role: Role::Admin,
                        onboarded: true,
                        created: now,
                    },
                    OwnerBootstrap::Never,
                )
                .await
                .expect("a user");
            store
                .link_if_unclaimed(Link {
                    headscale_user_id: "7".into(),
                    user_id: user.id,
                    headscale_created_at: "2024-01-01T00:00:00Z".into(),
                    provider_id: String::new(),
                    state: LinkState::Approved,
                    created: now,
                    headscale_name: "alice".into(),
                })
                .await
                .expect("a link");
            store
                .create_session(
                    key,
                    SessionRecord {
                        subject: SessionSubject::User(user.id),
                        created: now,
                        expires: now + 86_400,
                        last_seen: now,
                        idp_sid: Some("sid".into()),
                        id_token: Some(format!("eyJ.{}.sig", "x".repeat(900))),
                        refresh_token_enc: Some(vec![7; 120]),
                        refreshed: now,
                    },
                )
                .await
                .expect("a session");
        });
        let browser = headers(&[
            ("host", HOST),
            (
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
            ),
            (
                "accept",
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            ),
            ("accept-language", "en-GB,en;q=0.5"),
            ("accept-encoding", "gzip, deflate, br, zstd"),
            ("referer", "https://hp.example.com/admin/"),
            (
                "cookie",
                &format!(
                    "color_scheme=dark; __Host-headgate_session={cookie_value}; _hp_auth=stale"
                ),
            ),
            ("sec-fetch-dest", "document"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-site", "same-origin"),
            ("connection", "keep-alive"),
            // What a spoofer adds: removed by the hygiene, never forwarded.
            ("remote-user", "mallory"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        let policy = Policy::from_config(&config);
        let form = policy::parse_form(
            Some("application/x-www-form-urlencoded"),
            None,
            b"action_id=rename&node_id=7&name=laptop",
        )
        .expect("a valid form");
        let assertions = Assertions::new(&config, store.clone(), keys, Arc::new(OsRandom));
        assertions.load_blocking(now);
        let session = match rt.block_on(sessions.lookup(&browser, now)) {
            Ok(Lookup::Valid(s)) => *s,
            other => panic!("the fixture's session does not verify: {other:?}"),
        };
        let link = rt
            .block_on(store.link_of_user(session.user().expect("a person").id))
            .expect("the store reads");
        Fixture {
            rt,
            _dir: dir,
            store,
            sessions,
            _touch: touch_rx,
            browser,
            cookie_value,
            now,
            policy,
            form,
            who: Who::person(Role::Admin, Some("7".into())),
            names: hygiene::IdentityNames::from_config(&config.headers),
            audience: headgate::assertion::default_audience(&config),
            assertions,
            session,
            link,
        }
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("a header name"),
            HeaderValue::from_str(v).expect("a header value"),
        );
    }
    h
}

/// The session cookie's MAC checked (no store read).
pub fn cookie_verify(f: &Fixture) -> Option<SessionKey> {
    f.sessions.verify_cookie(&f.cookie_value)
}

/// Cookie verify + session lookup: the cookie found among the request's cookies, its MAC checked, the
/// session and its person read from the store (what every request does first), then the person's link.
pub fn session_lookup(f: &Fixture) -> (VerifiedSession, Option<Link>) {
    f.rt.block_on(async {
        let s = match f.sessions.lookup(&f.browser, f.now).await {
            Ok(Lookup::Valid(s)) => *s,
            other => panic!("the session does not verify: {other:?}"),
        };
        let link = f
            .store
            .link_of_user(s.user().expect("a person").id)
            .await
            .expect("the store reads");
        (s, link)
    })
}

/// Admission and the decision of a page load (`GET /admin/machines.data`): no `action_id`.
pub fn policy_get(f: &Fixture) -> Decision {
    let uri = Uri::from_static("/admin/machines.data");
    let admitted =
        match f
            .policy
            .admit(&policy::Request::from_parts(&Method::GET, &uri, &f.browser))
        {
            Admission::Ok(a) => a,
            other => panic!("not admitted: {other:?}"),
        };
    f.policy.decide(&admitted, None, Some(&f.who))
}

/// Admission and the decision of a form post (`POST /admin/machines`, `action_id=rename`), the form parsed.
pub fn policy_post_action_id(f: &Fixture) -> Decision {
    let uri = Uri::from_static("/admin/machines");
    let mut h = f.browser.clone();
    h.insert("origin", HeaderValue::from_static("https://hp.example.com"));
    h.insert(
        "content-type",
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    h.insert("content-length", HeaderValue::from_static("38"));
    let admitted = match f
        .policy
        .admit(&policy::Request::from_parts(&Method::POST, &uri, &h))
    {
        Admission::Ok(a) => a,
        other => panic!("not admitted: {other:?}"),
    };
    f.policy.decide(&admitted, Some(&f.form), Some(&f.who))
}

/// The identity a forwarded request carries (the assertion from the mint cache).
pub fn identity(f: &Fixture) -> hygiene::Identity {
    hygiene::Identity {
        user: "alice-sub".into(),
        email: "alice@example.com".into(),
        name: "Alice Example".into(),
        picture: String::new(),
        role: "admin".into(),
        hs_user_id: "7".into(),
        hs_user: "alice".into(),
        auth: "oidc".into(),
        assertion: Some(http::HeaderValue::from_str(&assertion_cached(f)).expect("ASCII")),
    }
}

/// Header hygiene of a forwarded request, in place: hop-by-hop and spoofed identity headers out, headgate's
/// own cookies out, the identity headers and `X-Forwarded-*` in.
pub fn hygiene(f: &Fixture, headers: &mut HeaderMap, id: &hygiene::Identity) {
    hygiene::clean_request(headers, &f.names, false, false);
    hygiene::strip_cookies(headers, |n| {
        n == "_hp_auth"
            || n.trim_start_matches("__Host-")
                .trim_start_matches("__Secure-")
                .starts_with("headgate_")
    });
    hygiene::set_identity(headers, &f.names, id);
    let mut parts = http::Request::new(()).into_parts().0;
    std::mem::swap(&mut parts.headers, headers);
    forward::set_forwarded(&mut parts, [192, 0, 2, 1].into(), true, false);
    std::mem::swap(&mut parts.headers, headers);
}

/// The assertion of the fixture's session as a request builds it (claims, then the mint), from the cache.
pub fn assertion_cached(f: &Fixture) -> String {
    let claims = AssertionClaims::for_session(&f.session, f.link.as_ref());
    f.assertions
        .mint(&claims, &f.audience, f.now)
        .expect("a signing key")
}

/// The same, signed afresh (ES256): `round` moves the clock past the mint cache's lifetime each time.
pub fn assertion_cold(f: &Fixture, round: i64) -> String {
    let claims = AssertionClaims::for_session(&f.session, f.link.as_ref());
    f.assertions
        .mint(&claims, &f.audience, f.now + 3_600 + round * 60)
        .expect("a signing key")
}
