//! The stable-Rust driver of the fuzz targets (`fuzz/`, cargo-fuzz needs nightly): every target of
//! `headgate::fuzz` runs over its seed corpus `fuzz/corpus/<target>/` (plus anything a fuzzing run added
//! there) and over the matching line corpora of `tests/corpus/`. A crash a fuzzer finds is added to the seed
//! corpus as `seed-crash-…` and stays a test here.

use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    crate::harness::root().join("fuzz/corpus").join(target)
}

#[test]
fn every_fuzz_target_passes_its_seed_corpus() {
    let mut ran = Vec::new();
    for (name, target) in headgate::fuzz::TARGETS {
        let dir = corpus_dir(name);
        let mut n = 0;
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let data = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "fuzz target {name} failed on {}", path.display());
            n += 1;
        }
        assert!(n >= 5, "{name}: only {n} seeds in {}", dir.display());
        ran.push(format!("{name}: {n}"));
    }
    eprintln!("fuzz seeds: {}", ran.join(", "));
}

#[test]
fn the_fuzz_targets_pass_the_line_corpora() {
    use headgate::fuzz;
    for line in crate::corpora::read_corpus("open_redirect.txt") {
        let v: String = url::form_urlencoded::parse(format!("rd={line}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        fuzz::return_url(v.as_bytes());
        fuzz::session_cookie(v.as_bytes());
        fuzz::config_text(v.as_bytes());
    }
    for entry in crate::corpora::read_corpus("header_spoofing.txt") {
        let text = entry.replace("||", "\n");
        fuzz::forwarded_headers(text.as_bytes());
        fuzz::session_cookie(text.as_bytes());
    }
    for line in crate::corpora::read_corpus("canonicalisation.txt") {
        let (_, variant) = line.split_once(' ').unwrap();
        let mut data = vec![0u8, 0];
        data.extend_from_slice(variant.as_bytes());
        fuzz::path_policy(&data);
        fuzz::form_body(variant.as_bytes());
        fuzz::assertion_token(variant.as_bytes());
    }
}

/// A stable stand-in for a fuzzing run (no coverage guidance): for `HEADGATE_FUZZ_SECS` seconds per target
/// (default 10), mutate the seeds (bit flips, byte changes, insertions, deletions, duplication, splicing with
/// another seed and with the line corpora's entries) and run the target on each. Prints executions per target;
/// an input that breaks a property is written to `fuzz/artifacts/<target>/` and fails the test.
#[test]
#[ignore = "a timed run: cargo test --test it -- --ignored stable_mutation_fuzzing --nocapture"]
fn stable_mutation_fuzzing() {
    let secs: u64 = std::env::var("HEADGATE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut extra: Vec<Vec<u8>> = Vec::new();
    for name in [
        "open_redirect.txt",
        "header_spoofing.txt",
        "canonicalisation.txt",
    ] {
        extra.extend(
            crate::corpora::read_corpus(name)
                .into_iter()
                .map(String::into_bytes),
        );
    }
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut report = Vec::new();
    let mut broken = Vec::new();
    for (name, target) in headgate::fuzz::TARGETS {
        let mut pool: Vec<Vec<u8>> = std::fs::read_dir(corpus_dir(name))
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        let mut runs = 0u64;
        while std::time::Instant::now() < until {
            let mut d = pool[(next() as usize) % pool.len()].clone();
            for _ in 0..1 + next() % 4 {
                let n = d.len();
                match next() % 7 {
                    0 if n > 0 => {
                        let i = next() as usize % n;
                        d[i] ^= 1 << (next() % 8);
                    }
                    1 if n > 0 => {
                        let i = next() as usize % n;
                        d[i] = next() as u8;
                    }
                    2 => {
                        let i = if n == 0 { 0 } else { next() as usize % (n + 1) };
                        let b = [
                            b'/', b'%', b'.', b'\\', b':', b'@', b'?', b'#', b'=', b'&', b'\n', 0,
                            0xff,
                        ];
                        d.insert(i, b[next() as usize % b.len()]);
                    }
                    3 if n > 0 => {
                        let i = next() as usize % n;
                        let len = (next() as usize % 8).min(n - i);
                        d.drain(i..i + len);
                    }
                    4 if n > 0 => {
                        let i = next() as usize % n;
                        let len = (next() as usize % 16).min(n - i);
                        let chunk = d[i..i + len].to_vec();
                        d.splice(i..i, chunk);
                    }
                    5 => {
                        let other = &pool[next() as usize % pool.len()];
                        let cut = if other.is_empty() {
                            0
                        } else {
                            next() as usize % other.len()
                        };
                        d.extend_from_slice(&other[cut..]);
                    }
                    _ => {
                        let e = &extra[next() as usize % extra.len()];
                        let i = if n == 0 { 0 } else { next() as usize % (n + 1) };
                        d.splice(i..i, e.iter().copied());
                    }
                }
            }
            d.truncate(4096);
            runs += 1;
            if std::panic::catch_unwind(|| target(&d)).is_err() {
                let dir = crate::harness::root().join("fuzz/artifacts").join(name);
                std::fs::create_dir_all(&dir).unwrap();
                let path = dir.join(format!("crash-{runs}"));
                std::fs::write(&path, &d).unwrap();
                broken.push(path.display().to_string());
                break;
            }
            if next() % 64 == 0 && pool.len() < 4096 {
                pool.push(d);
            }
        }
        report.push(format!("{name}: {runs} runs"));
    }
    std::panic::set_hook(prev);
    eprintln!(
        "stable mutation fuzzing, {secs} s per target: {}",
        report.join(", ")
    );
    assert!(
        broken.is_empty(),
        "inputs that break a property: {broken:?}"
    );
}

/// Seeds for each target: typical, edge and hostile inputs.
fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let b = |s: &str| s.as_bytes().to_vec();
    let cookie = headgate::fuzz::mint_session_cookie(&[9u8; 32]);
    let (_, token) = headgate::fuzz::sample_assertion(1_800_000_000);
    vec![
        (
            "session_cookie",
            vec![
                b(&format!("headgate_session={cookie}")),
                b(&format!(
                    "a=1; headgate_session={cookie}; headgate_session={cookie}"
                )),
                b(&cookie),
                b("headgate_session="),
                b("headgate_session=AAAA.BBBB"),
                b("; ; ;=;headgate_session"),
                vec![0xff, 0xfe, b'=', 0],
                b(&"a".repeat(200)),
            ],
        ),
        (
            "return_url",
            vec![
                b("/admin/machines"),
                b("//evil.example"),
                b("/\\evil.example"),
                b("https://allowed.example@evil.example"),
                b("https://allowed.example/x?rd=%2F%2Fevil.example"),
                b("%2F%2Fevil.example"),
                b("javascript:alert(1)"),
                b("https://x.apps.example/"),
                "/\u{3000}/evil".as_bytes().to_vec(),
            ],
        ),
        (
            "path_policy",
            vec![
                b("\x00\x00/admin/machines"),
                b("\x03\x01/admin/users.data"),
                b("\x01\x02/admin/assets/x.js"),
                b("\x00\x00/grafana/d/x"),
                b("\x05\x00/status"),
                b("\x00\x00/admin/%2e%2e/users"),
                b("\x00\x00/admin//users"),
                b("\x00\x00/"),
            ],
        ),
        (
            "form_body",
            vec![
                b("\x01action_id=rename_node&node_id=1&name=x"),
                b("\x01action_id=a&action_id=b"),
                b("\x02action%5Fid=x&%ff=1"),
                b(
                    "\x00--XyZ\r\nContent-Disposition: form-data; name=\"action_id\"\r\n\r\nrename_node\r\n--XyZ--\r\n",
                ),
                b(
                    "\x00--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\nx\r\n--XyZ--\r\n",
                ),
                b("\x01&&&==&"),
                vec![1, 0xff, 0xfe],
            ],
        ),
        (
            "forwarded_headers",
            vec![
                b("x-forwarded-for: 1.2.3.4, 10.0.0.1"),
                b("x-forwarded-for: 10.0.0.1\nx-forwarded-for: 6.6.6.6"),
                b(
                    "x-original-uri: /admin/machines\nx-original-url: https://hp.example.com/admin/users",
                ),
                b("x-forwarded-method: get\nx-forwarded-uri: admin"),
                b("x-forwarded-proto: gopher\nx-forwarded-host: evil.example"),
                b("x-forwarded-uri: /a?b\nx-forwarded-uri: /c"),
                b("x-original-url: https://hp.example.com#frag"),
            ],
        ),
        (
            "config_text",
            vec![
                b(
                    "[server]\nbase_url = \"https://hp.example.com\"\ncookie_secret = \"0123456789abcdef0123456789abcdef\"\n",
                ),
                b("[[policy.rule]]\npath_prefix = \"/x\"\npublic = true\n"),
                b("[oidc]\nissuer = 1\n"),
                b("[server\n"),
                b("listen = 99999\ncookie_max_age = -1\n"),
                b("a.b.c = [1, {x = 2}]\n"),
                b("SERVER__LISTEN=\"x\"\n"),
            ],
        ),
        (
            "assertion_token",
            vec![
                Vec::new(),
                vec![0, 5, b'A'],
                vec![1, 200, b'.'],
                vec![2, 0, 0, 2, 1, 0],
                vec![3, 90, 7],
                b(&token),
                b("eyJhbGciOiJub25lIn0.e30."),
            ],
        ),
    ]
}

/// Write `fuzz/corpus/<target>/seed-NN` from [`seeds`] (run once; the files are committed).
#[test]
#[ignore = "writes fuzz/corpus/*/seed-*; run by hand to regenerate"]
fn regenerate_fuzz_seeds() {
    for (name, list) in seeds() {
        let dir = corpus_dir(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, data) in list.into_iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), data).unwrap();
        }
    }
}
