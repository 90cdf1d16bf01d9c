//! Criterion micro-benchmarks of the per-request pieces (`cargo bench --bench hot_path`). The bodies live in
//! `bodies.rs`, shared with the regression guard that runs each once as a test (`tests/it/bench_bodies.rs`).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

mod bodies;
use bodies::Fixture;

fn hot_path(c: &mut Criterion) {
    let f = Fixture::new();
    c.bench_function("cookie verify (MAC only)", |b| {
        b.iter(|| black_box(bodies::cookie_verify(&f)))
    });
    c.bench_function(
        "cookie verify + session lookup (session, person, link)",
        |b| b.iter(|| black_box(bodies::session_lookup(&f))),
    );
    c.bench_function(
        "policy: GET page, no action_id (admission + decision)",
        |b| b.iter(|| black_box(bodies::policy_get(&f))),
    );
    c.bench_function("policy: POST with action_id (admission + decision)", |b| {
        b.iter(|| black_box(bodies::policy_post_action_id(&f)))
    });
    let id = bodies::identity(&f);
    c.bench_function(
        "header hygiene (clean, strip cookies, identity, forwarded)",
        |b| {
            b.iter_batched_ref(
                || f.browser.clone(),
                |h| bodies::hygiene(&f, h, &id),
                BatchSize::SmallInput,
            )
        },
    );
    let mut round = 0;
    c.bench_function("assertion mint, cold (ES256 signature)", |b| {
        b.iter(|| {
            round += 1;
            black_box(bodies::assertion_cold(&f, round))
        })
    });
    c.bench_function("assertion mint, cached (claims + cache hit)", |b| {
        b.iter(|| black_box(bodies::assertion_cached(&f)))
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
