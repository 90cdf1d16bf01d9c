//! Several headgate replicas sharing one PostgreSQL store (issue 10): three real headgate processes behind a
//! round-robin nginx, one real PostgreSQL started by the harness, the real test IdP. And `headgate store
//! migrate` between the backends.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness;
use crate::harness::browser::{Browser, Page};
use crate::harness::fake_headscale::FakeHeadscale;
use crate::harness::headgate::{Headgate, HeadgateConfig};
use crate::harness::idp::{TestIdp, UserSpec};
use crate::harness::postgres::PgServer;
use crate::harness::process::ChildProcess;
use crate::harness::stack::{Site, oidc_section};
use crate::store::{Kind, Target};
use headgate::store::{CACHE_LIFETIME, Store};

/// The `[store]` section for a database.
pub fn store_section(url: &str) -> String {
    format!("[store]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 4\nconnect_timeout = 3")
}

struct Cluster {
    pg: PgServer,
    db: String,
    _idp: TestIdp,
    _hs: FakeHeadscale,
    front: Site,
    _nginx: ChildProcess,
    _nginx_dir: tempfile::TempDir,
    replicas: Vec<Headgate>,
}

fn nginx(port: u16, upstreams: &[u16]) -> (ChildProcess, tempfile::TempDir) {
    let dir = harness::tempdir();
    let d = dir.path();
    let servers: String = upstreams
        .iter()
        .map(|p| format!("    server 127.0.0.1:{p};\n"))
        .collect();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         upstream headgate {{\n{servers}  }}\n  \
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://headgate;\n      \
         proxy_set_header Host $http_host;\n      add_header X-Upstream $upstream_addr always;\n    }}\n  }}\n}}\n",
        d = d.display()
    );
    std::fs::write(d.join("nginx.conf"), &conf).unwrap();
    let mut cmd = Command::new("/usr/sbin/nginx");
    cmd.arg("-p")
        .arg(d)
        .arg("-c")
        .arg(d.join("nginx.conf"))
        .arg("-e")
        .arg("stderr");
    let mut p = ChildProcess::spawn("nginx", cmd);
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            !p.has_exited() && Instant::now() < deadline,
            "nginx did not start: {}\n{conf}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (p, dir)
}

fn cluster(users: Vec<UserSpec>) -> Cluster {
    let pg = PgServer::start();
    let db = pg.database();
    let front = Site::new();
    let mut idp = TestIdp::builder().redirect_uri(&front.callback());
    for u in users {
        idp = idp.user(u);
    }
    let idp = idp.start();
    let hs = FakeHeadscale::start();
    let ports: Vec<u16> = (0..3).map(|_| harness::free_port()).collect();
    // One after the other: the first creates the schema and the signing key, the others find them.
    let replicas: Vec<Headgate> = ports
        .iter()
        .map(|p| {
            HeadgateConfig::new()
                .server("listen", &format!("\"127.0.0.1:{p}\""))
                .server("base_url", &format!("\"{}\"", front.base()))
                .section(format!(
                    "[headscale]\nurl = \"{}\"\napi_key = \"{}\"",
                    hs.url(),
                    hs.admin_key()
                ))
                .section(oidc_section(idp.issuer(), "use_pkce = true"))
                .section(store_section(&pg.url(&db)))
                .start()
        })
        .collect();
    let (nginx, nginx_dir) = nginx(front.port, &ports);
    Cluster {
        pg,
        db,
        _idp: idp,
        _hs: hs,
        front,
        _nginx: nginx,
        _nginx_dir: nginx_dir,
        replicas,
    }
}

/// The replica that answered (the last address nginx tried).
fn upstream(p: &Page) -> String {
    let h = p.header("x-upstream").unwrap_or_default();
    h.rsplit(", ").next().unwrap_or_default().to_string()
}

/// Sign in through the front; returns the replicas that served the start and the callback.
async fn sign_in(b: &Browser, front: &Site, login: &str) -> (String, String) {
    let start = b.get(front.url("/admin/oidc/start")).await;
    assert_eq!(start.status(), 302, "start: {}", start.text());
    let callback = b
        .idp_login(
            start.location().unwrap().as_str(),
            login,
            &format!("{login}-password"),
        )
        .await;
    let done = b.get(callback.as_str()).await;
    assert_eq!(done.status(), 302, "callback: {}", done.text());
    assert!(
        b.cookies()
            .iter()
            .any(|c| c.name.contains("headgate_session")),
        "no session cookie after the callback"
    );
    (upstream(&start), upstream(&done))
}

async fn whoami(b: &Browser, front: &Site) -> (u16, Value, String) {
    let p = b.get(front.url("/_headgate/whoami")).await;
    let v = serde_json::from_str(p.text()).unwrap_or(Value::Null);
    (p.status(), v, upstream(&p))
}

/// Ask `whoami` through the front until `replicas` answers in a row, from as many different replicas, all
/// satisfy `ok`; returns how long that took. Panics after `within`.
async fn until_all(
    b: &Browser,
    front: &Site,
    replicas: usize,
    within: Duration,
    ok: impl Fn(u16, &Value) -> bool,
) -> Duration {
    let t = Instant::now();
    let mut run: Vec<String> = Vec::new();
    loop {
        let (status, me, up) = whoami(b, front).await;
        if ok(status, &me) {
            run.push(up);
            let distinct: BTreeSet<&String> = run.iter().collect();
            if distinct.len() >= replicas {
                return t.elapsed();
            }
        } else {
            run.clear();
        }
        assert!(
            t.elapsed() < within,
            "not every replica agreed within {within:?}: last answer {status} {me}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cli(hg: &Headgate, args: &[&str]) -> String {
    let (code, out, err) = hg.config.run(args);
    assert_eq!(code, 0, "headgate {args:?}: {out}{err}");
    out
}

fn verdict_headers(front: &Site) -> Vec<(&'static str, String)> {
    vec![
        ("x-forwarded-method", "GET".into()),
        ("x-forwarded-uri", "/admin/machines".into()),
        ("x-forwarded-host", format!("127.0.0.1:{}", front.port)),
        ("x-forwarded-proto", "http".into()),
    ]
}

async fn verdict(b: &Browser, front: &Site) -> Page {
    let h = verdict_headers(front);
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    b.get_with(front.url("/_headgate/auth/forward"), &h).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_postgresql_behind_round_robin_nginx() {
    let mut users: Vec<UserSpec> = (0..12)
        .map(|i| UserSpec::new(&format!("u{i}"), &format!("u{i}-sub")))
        .collect();
    for n in ["bob", "carol"] {
        users
            .push(UserSpec::new(n, &format!("{n}-sub")).claim("email", format!("{n}@example.com")));
    }
    let mut c = cluster(users);
    let front = c.front.port;
    let front = Site { port: front };

    // 12 concurrent first sign-ins spread over the replicas: exactly one owner.
    let browsers: Vec<Browser> = (0..12).map(|_| Browser::new()).collect();
    let signins = browsers.iter().enumerate().map(|(i, b)| {
        let front = &front;
        async move { sign_in(b, front, &format!("u{i}")).await }
    });
    let served = futures_join_all(signins).await;
    let replicas_seen: BTreeSet<&String> = served.iter().flat_map(|(a, b)| [a, b]).collect();
    assert_eq!(
        replicas_seen.len(),
        3,
        "sign-ins spread over all replicas: {served:?}"
    );
    let list: Value =
        serde_json::from_str(&cli(&c.replicas[0], &["users", "list", "--json"])).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 12);
    assert_eq!(
        list.iter().filter(|u| u["role"] == "owner").count(),
        1,
        "{list:#?}"
    );
    let mut owner = None;
    for b in &browsers {
        let (status, me, _) = whoami(b, &front).await;
        assert_eq!(status, 200, "{me}");
        if me["role"] == "owner" {
            owner = Some(b);
        }
    }
    let owner = owner.expect("the owner signs in");

    // A sign-in whose start and callback land on different replicas.
    let bob = Browser::new();
    let (start, callback) = sign_in(&bob, &front, "bob").await;
    assert_ne!(
        start, callback,
        "round robin sends the callback to another replica"
    );
    until_all(&bob, &front, 3, Duration::from_secs(5), |s, me| {
        s == 200 && me["role"] == "member"
    })
    .await;

    // A role change made on one replica reaches the others.
    cli(&c.replicas[0], &["users", "set-role", "bob-sub", "auditor"]);
    let took = until_all(&bob, &front, 3, Duration::from_secs(10), |s, me| {
        s == 200 && me["role"] == "auditor"
    })
    .await;
    eprintln!("role change seen by every replica after {took:?}");

    // A revocation made on another reaches every replica.
    cli(&c.replicas[1], &["sessions", "revoke", "bob-sub"]);
    let took = until_all(&bob, &front, 3, Duration::from_secs(10), |s, _| s == 401).await;
    eprintln!("revocation seen by every replica after {took:?}");

    // The notification connections are killed, then a session revoked: refused everywhere within the
    // cache's hard lifetime all the same.
    let carol = Browser::new();
    sign_in(&carol, &front, "carol").await;
    until_all(&carol, &front, 3, Duration::from_secs(5), |s, _| s == 200).await;
    let killed = c.pg.terminate(&c.db, "headgate-listen");
    assert_eq!(killed, 3, "one listening connection per replica");
    cli(&c.replicas[2], &["sessions", "revoke", "carol-sub"]);
    let t = Instant::now();
    until_all(&carol, &front, 3, CACHE_LIFETIME * 3, |s, _| s == 401).await;
    let took = t.elapsed();
    eprintln!("revocation after killing the listeners seen everywhere after {took:?}");
    assert!(
        took <= CACHE_LIFETIME + Duration::from_millis(500),
        "took {took:?}"
    );

    // An assertion minted by one replica verifies with the JWKS another serves; every JWKS is the same.
    let v = verdict(owner, &front).await;
    assert_eq!(v.status(), 200, "{}", v.text());
    let token = v.header("x-headgate-assertion").expect("an assertion");
    let minted_by = upstream(&v);
    let mut jwks_by: Vec<(String, Value)> = Vec::new();
    for _ in 0..6 {
        let p = owner.get(front.url("/_headgate/jwks.json")).await;
        assert_eq!(p.status(), 200);
        jwks_by.push((upstream(&p), p.json()));
    }
    let kids = |j: &Value| -> BTreeSet<String> {
        j["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(jwks_by.iter().all(|(_, j)| kids(j) == kids(&jwks_by[0].1)));
    let (other, jwks) = jwks_by
        .iter()
        .find(|(u, _)| *u != minted_by)
        .expect("a JWKS from another replica");
    assert_ne!(other, &minted_by);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(set.find(&header.kid.unwrap()).unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(&token, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["role"], "owner");

    // `headgate keys rotate` works from any replica while they run; every replica's list shows the new key.
    let out = cli(&c.replicas[2], &["keys", "rotate"]);
    assert!(out.contains("created signing key"), "{out}");
    let listed = cli(&c.replicas[0], &["keys", "list"]);
    assert!(
        listed.contains("next") && listed.contains("current"),
        "{listed}"
    );

    // Killing a replica mid-run loses nothing; the others keep serving.
    c.replicas[1].process.kill();
    for _ in 0..6 {
        let (status, me, _) = whoami(owner, &front).await;
        assert_eq!((status, &me["role"]), (200, &Value::from("owner")));
    }
    let after: Value =
        serde_json::from_str(&cli(&c.replicas[0], &["users", "list", "--json"])).unwrap();
    assert_eq!(after.as_array().unwrap().len(), 14, "{after:#}");
    until_all(&browsers[0], &front, 2, Duration::from_secs(5), |s, _| {
        s == 200
    })
    .await;

    // PostgreSQL restarts: requests fail closed (5xx, never an allow), then recover by themselves.
    c.pg.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..6 {
        let (status, _, _) = whoami(owner, &front).await;
        assert!(
            (500..600).contains(&status),
            "whoami while PostgreSQL is down: {status}"
        );
        let v = verdict(owner, &front).await;
        assert!(
            (500..600).contains(&v.status()),
            "verdict while PostgreSQL is down: {}",
            v.status()
        );
        assert!(v.header("x-headgate-assertion").is_none());
    }
    c.pg.start_again();
    let took = until_all(owner, &front, 2, Duration::from_secs(30), |s, me| {
        s == 200 && me["role"] == "owner"
    })
    .await;
    eprintln!("recovered {took:?} after PostgreSQL came back");
    assert_eq!(verdict(owner, &front).await.status(), 200);
}

/// `join_all` without the futures crate: run them all concurrently on this task.
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

// ----- headgate store migrate -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_migrate_copies_redb_into_postgres_and_refuses_a_non_empty_target() {
    let pg = Target::new(Kind::Postgres);
    let cfg = HeadgateConfig::new().section(store_section(&pg.url()));
    std::fs::create_dir_all(cfg.data_path()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(cfg.data_path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let redb_path = cfg.data_path().join("headgate.redb");
    let want = {
        let s = Store::open_redb(&redb_path, 1 << 20).unwrap();
        crate::store::populate(&s).await;
        s.export().await.unwrap()
    };

    let (code, out, err) = cfg.run(&["store", "migrate", "--from", "redb", "--to", "postgres"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("copied 4 users, 2 links, 5 sessions, 4 signing keys, 5 audit events"),
        "{out}"
    );
    let got = pg.open().await.export().await.unwrap();
    assert_eq!(
        got, want,
        "every user, role, link, session and key preserved"
    );

    // Again: the target holds data now, and is left alone.
    let (code, out, err) = cfg.run(&["store", "migrate", "--from", "redb", "--to", "postgres"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("already holds") && err.contains("nothing was copied"),
        "{err}"
    );
    assert_eq!(pg.open().await.export().await.unwrap(), want);

    // The CLI works on PostgreSQL directly while no headgate runs (users list opens the database).
    let (code, out, err) = cfg.run(&["users", "list", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // `headgate backup` of a PostgreSQL store: a consistent redb copy.
    let copy = cfg.dir.path().join("backup.redb");
    let (code, out, err) = cfg.run(&["backup", copy.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let copied = Store::open_redb(&copy, 1 << 20)
        .unwrap()
        .export()
        .await
        .unwrap();
    assert_eq!(copied.users, want.users);
    assert_eq!(copied.sessions, want.sessions);

    // And back into a new redb file.
    let file = cfg.dir.path().join("back.redb");
    let (code, out, err) = cfg.run(&[
        "store",
        "migrate",
        "--from",
        "postgres",
        "--to",
        "redb",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let back = Store::open_redb(&file, 1 << 20)
        .unwrap()
        .export()
        .await
        .unwrap();
    assert_eq!(back, pg.open().await.export().await.unwrap());
    assert_eq!(
        (&back.users, &back.links, &back.sessions, &back.signing_keys),
        (&want.users, &want.links, &want.sessions, &want.signing_keys)
    );

    // `headgate restore` puts a redb file in place: on PostgreSQL it says to migrate instead.
    let (code, _, err) = cfg.run(&["restore", copy.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("headgate store migrate --from redb --to postgres"),
        "{err}"
    );

    // Same backend twice, or no store.url: refused with a reason.
    let (code, _, err) = cfg.run(&["store", "migrate", "--from", "redb", "--to", "redb"]);
    assert_eq!(code, 1);
    assert!(err.contains("same backend"), "{err}");
    let plain = HeadgateConfig::new();
    let (code, _, err) = plain.run(&["store", "migrate", "--from", "redb", "--to", "postgres"]);
    assert_eq!(code, 1);
    assert!(err.contains("store.url"), "{err}");
}

#[test]
fn check_config_probes_postgresql_without_changing_it() {
    let server = PgServer::shared();
    let db = server.database();
    let cfg = HeadgateConfig::new().section(store_section(&server.url(&db)));
    let (_, out, err) = cfg.run(&["check-config"]);
    let line = out
        .lines()
        .find(|l| l.contains("store"))
        .unwrap_or_else(|| panic!("no store line: {out}{err}"));
    assert!(
        line.contains(&format!("PostgreSQL database {db}"))
            && line.contains("creates its tables at first start"),
        "{line}"
    );
    assert!(
        server
            .sql(&db, "SELECT to_regclass('headgate_schema') IS NULL")
            .first()
            .and_then(|r| r[0].clone())
            .as_deref()
            == Some("t"),
        "check-config created tables"
    );
    // Unreachable: the store line fails, naming store.url and not the password.
    let port = harness::free_port();
    let cfg = HeadgateConfig::new().section(store_section(&format!(
        "postgresql://headgate:Pw0rdSecret@127.0.0.1:{port}/headgate"
    )));
    let (code, out, err) = cfg.run(&["check-config"]);
    assert_eq!(code, 1, "{out}{err}");
    let line = out.lines().find(|l| l.contains("store")).unwrap();
    assert!(line.contains("store.url"), "{out}");
    assert!(
        !out.contains("Pw0rdSecret") && !err.contains("Pw0rdSecret"),
        "{out}{err}"
    );
}

// ----- forward-auth verdicts per second, redb vs PostgreSQL (one replica) -----

/// Not a test: `cargo test --release --test it verdict_throughput -- --ignored --nocapture` prints the
/// verdicts per second one headgate answers with each store (8 concurrent clients, 3 s each).
#[ignore = "a measurement; run by hand"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdict_throughput_redb_vs_postgres() {
    for kind in [Kind::Redb, Kind::Postgres] {
        let site = Site::new();
        let idp = TestIdp::builder().redirect_uri(&site.callback()).start();
        let hs = FakeHeadscale::start();
        let mut cfg = site
            .config(Some(&hs))
            .section(oidc_section(idp.issuer(), "use_pkce = true"))
            .server("log_level", "\"warn,headgate::cli=info\"");
        let _target;
        if kind == Kind::Postgres {
            let t = Target::new(Kind::Postgres);
            cfg = cfg.section(store_section(&t.url()));
            _target = Some(t);
        }
        let _hg = cfg.start();
        let b = Browser::new();
        sign_in(&b, &site, "alice").await;
        let headers = verdict_headers(&site);
        let cookie = b
            .cookies()
            .into_iter()
            .find(|c| c.name.contains("headgate_session"))
            .unwrap();
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let (client, headers, url) = (
                    client.clone(),
                    headers.clone(),
                    site.url("/_headgate/auth/forward"),
                );
                let cookie = format!("{}={}", cookie.name, cookie.value);
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        let mut r = client.get(&url).header("cookie", &cookie);
                        for (k, v) in &headers {
                            r = r.header(*k, v);
                        }
                        assert_eq!(r.send().await.unwrap().status(), 200);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for w in workers {
            total += w.await.unwrap();
        }
        println!("{kind:?}: {} verdicts/s", total / 3);
    }
}
