//! The regression guard of the micro-benchmarks (`benches/hot_path/`): every benchmarked code path runs once
//! here as an ordinary test, in the debug build, with its result checked. Nothing is timed.

#[path = "../../benches/hot_path/bodies.rs"]
mod bodies;

use bodies::Fixture;
use headgate::policy::Decision;

#[test]
fn every_benchmarked_path_runs_and_answers_as_the_real_request_would() {
    let f = Fixture::new();

    let key = bodies::cookie_verify(&f).expect("the cookie verifies");
    let (session, link) = bodies::session_lookup(&f);
    assert_eq!(session.key(), &key);
    assert_eq!(
        session.user().map(|u| u.subject.as_str()),
        Some("alice-sub")
    );
    assert_eq!(link.map(|l| l.headscale_user_id), Some("7".to_string()));

    assert!(
        matches!(bodies::policy_get(&f), Decision::Allow { .. }),
        "an admin may read machines"
    );
    assert!(
        matches!(bodies::policy_post_action_id(&f), Decision::Allow { .. }),
        "an admin may rename a machine"
    );

    let id = bodies::identity(&f);
    let mut h = f.browser.clone();
    bodies::hygiene(&f, &mut h, &id);
    assert_eq!(
        h["remote-user"], "alice-sub",
        "the spoofed header is replaced"
    );
    assert_eq!(
        h["cookie"], "color_scheme=dark",
        "headgate's cookies never reach the upstream"
    );
    assert_eq!(
        h["x-forwarded-for"], "192.0.2.1",
        "an untrusted peer's X-Forwarded-For is replaced"
    );
    assert!(h.get("connection").is_none());
    assert_eq!(Some(&h["x-headgate-assertion"]), id.assertion.as_ref());

    let cold = bodies::assertion_cold(&f, 1);
    assert_eq!(cold.split('.').count(), 3, "a compact JWS");
    let cached = bodies::assertion_cached(&f);
    assert_eq!(
        bodies::assertion_cached(&f),
        cached,
        "the second mint comes from the cache"
    );
    assert_ne!(
        bodies::assertion_cold(&f, 2),
        cold,
        "a cold mint signs afresh"
    );
}
