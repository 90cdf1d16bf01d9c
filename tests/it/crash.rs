//! Crash safety of the real server (issue 9): `headgate serve` on its redb store is killed with SIGKILL at a
//! random moment during a storm of sign-ins (API key and OIDC), role changes and revocations (through the
//! admin socket, as `headgate users set-role` / `headgate sessions revoke` send them), 50 times, reopening the
//! same file each time. After every kill: the store opens; every record decodes; every role change that was
//! acknowledged is in effect (or a later one that was in flight); then, with the server started again on the
//! same file, every acknowledged sign-in's cookie still works and every acknowledged revocation's does not.
//! The random moments come from a seed printed at the start (`HEADGATE_TEST_CRASH_SEED` replays one).
//! PostgreSQL's crash safety is PostgreSQL's; this runs on redb only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headgate::admin::commands::Request;
use headgate::admin::socket;
use headgate::store::{Role, Store};
use reqwest::Method;

use crate::harness::browser::Browser;
use crate::harness::fake_headscale::FakeHeadscale;
use crate::harness::headgate::{Headgate, HeadgateConfig};
use crate::harness::rogue::RogueIdp;
use crate::harness::stack::{Site, oidc_section};

const ROUNDS: u64 = 50;
const ROLE_TARGETS: usize = 3;
const API_KEY_WORKERS: usize = 2;
const ASSIGNABLE: [Role; 6] = [
    Role::Admin,
    Role::NetworkAdmin,
    Role::ItAdmin,
    Role::Auditor,
    Role::Viewer,
    Role::Member,
];

/// splitmix64: small, seeded, good enough to pick moments and roles.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the storm's clients were told, kept across rounds.
#[derive(Default)]
struct Acked {
    /// Sessions whose sign-in was answered (and not revoked by an answered revocation): (what, browser).
    alive: Vec<(String, Browser)>,
    /// Sessions that an answered revocation ended.
    dead: Vec<(String, Browser)>,
    sign_ins: u64,
    revocations: u64,
    role_changes: u64,
}

/// One role target: the role last acknowledged, and the one sent but not answered when the server died.
#[derive(Clone, Copy)]
struct RoleState {
    acked: Role,
    in_flight: Option<Role>,
}

struct Env {
    site: Site,
    rogue: RogueIdp,
    hs: FakeHeadscale,
    /// Serialises OIDC sign-ins: the rogue IdP hands out one subject at a time.
    idp_lock: tokio::sync::Mutex<()>,
    sign_in_count: AtomicU64,
    data: PathBuf,
    _config_dir: tempfile::TempDir,
}

impl Env {
    fn config(&self) -> HeadgateConfig {
        let mut c = self
            .site
            .config(Some(&self.hs))
            .section(oidc_section(self.rogue.issuer(), ""));
        c.server
            .retain(|l| !l.starts_with("data_path =") && !l.starts_with("shutdown_timeout ="));
        c.server
            .push(format!("data_path = \"{}\"", self.data.display()));
        c.server.push("shutdown_timeout = 1".into());
        c.server.push("trusted_proxies = [\"127.0.0.1/32\"]".into());
        // Only redb: PostgreSQL's crash safety is PostgreSQL's.
        c.sections.retain(|s| !s.starts_with("[store]"));
        c
    }

    fn start(&self) -> Headgate {
        self.config().start()
    }

    fn store_path(&self) -> PathBuf {
        self.data.join("headgate.redb")
    }

    fn socket(&self) -> PathBuf {
        socket::socket_path(&self.data)
    }

    /// Give the browser an address of its own (headgate trusts loopback as a proxy here): the per-client
    /// limits (30 sign-in starts a minute; 10 API-key failures, and an attempt cut off by the kill counts as
    /// one) must not throttle the storm.
    fn own_address(&self, b: &Browser) {
        let n = self.sign_in_count.fetch_add(1, Ordering::SeqCst);
        b.set_default_header(
            "X-Forwarded-For",
            &format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255),
        );
    }

    /// Sign `sub` in through the rogue IdP; `Ok(true)` when the callback answered with a session cookie.
    async fn oidc_sign_in(&self, b: &Browser, sub: &str) -> Result<bool, String> {
        let _one_at_a_time = self.idp_lock.lock().await;
        self.rogue.set_subject(sub);
        self.rogue.set_claim("email", format!("{sub}@example.com"));
        self.rogue.set_claim("email_verified", true);
        self.rogue.set_claim("name", format!("Name of {sub}"));
        let get = |url: String| async move {
            b.try_request(Method::GET, &url, None, &[], None)
                .await
                .map_err(|e| e.to_string())
        };
        self.own_address(b);
        let to_idp = get(self.site.url("/admin/oidc/start")).await?;
        let Some(to_idp) = to_idp.location() else {
            eprintln!(
                "start answered {}: {}",
                to_idp.status(),
                to_idp.visible_text()
            );
            return Ok(false);
        };
        let back = get(to_idp.to_string()).await?;
        let Some(back) = back.location() else {
            eprintln!("the rogue IdP did not redirect: {}", back.status());
            return Ok(false);
        };
        let done = get(back.to_string()).await?;
        if done.status() != 302 {
            eprintln!(
                "the callback answered {}: {}",
                done.status(),
                done.visible_text()
            );
        }
        Ok(done.status() == 302 && b.cookie(&self.site.base(), "headgate_session").is_some())
    }

    /// The login page's API-key form with `key`; `Ok(true)` when answered 303 with a session cookie.
    async fn api_key_sign_in(&self, b: &Browser, key: &str) -> Result<bool, String> {
        self.own_address(b);
        let page = b
            .try_request(Method::GET, &self.site.url("/admin/login"), None, &[], None)
            .await
            .map_err(|e| e.to_string())?;
        let Some(mut form) = page.forms().into_iter().find(|f| {
            f.get("api_key").is_some() || f.password_fields.iter().any(|p| p == "api_key")
        }) else {
            return Err(format!(
                "no API-key form ({}): {}",
                page.status(),
                page.text()
            ));
        };
        form.set("api_key", key);
        let r = b
            .try_request(
                Method::POST,
                form.action.as_str(),
                Some(form.fields.clone()),
                &[],
                Some(&page.url),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.status() == 303 && b.cookie(&self.site.base(), "headgate_session").is_some())
    }

    /// One admin-socket command; `Ok(())` only when the server answered that it was done.
    async fn admin(&self, req: Request) -> Result<(), String> {
        match socket::call(&self.socket(), &req).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(refused)) => Err(format!("REFUSED {req:?}: {refused}")),
            Err(e) => Err(format!("{e:?}")),
        }
    }
}

async fn whoami(b: &Browser, site: &Site) -> u16 {
    b.get(site.url("/_headgate/whoami")).await.status()
}

/// Open the store the way `serve` does after the crash and read every record of every kind.
async fn check_store(path: &Path, round: u64, roles: &mut HashMap<String, RoleState>) -> usize {
    let started = Instant::now();
    let store = Store::open_redb(path, 4 << 20)
        .unwrap_or_else(|e| panic!("round {round}: the store does not open after kill -9: {e}"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "round {round}: opening took {:?}",
        started.elapsed()
    );
    let users = store
        .users()
        .await
        .unwrap_or_else(|e| panic!("round {round}: users: {e}"));
    let sessions = store
        .sessions()
        .await
        .unwrap_or_else(|e| panic!("round {round}: sessions: {e}"));
    store
        .audit(usize::MAX, None)
        .await
        .unwrap_or_else(|e| panic!("round {round}: audit: {e}"));
    store
        .links()
        .await
        .unwrap_or_else(|e| panic!("round {round}: links: {e}"));
    store
        .signing_keys()
        .await
        .unwrap_or_else(|e| panic!("round {round}: signing keys: {e}"));
    for (key, s) in &sessions {
        assert_eq!(
            store.session(key).await.unwrap().as_ref(),
            Some(s),
            "round {round}: a session reads back as listed"
        );
    }
    for u in &users {
        let by_subject = store.user_by_subject(&u.subject).await.unwrap();
        assert_eq!(by_subject.as_ref(), Some(u), "round {round}: subject index");
    }
    for (sub, state) in roles.iter_mut() {
        let u = store
            .user_by_subject(sub)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("round {round}: user {sub} is lost"));
        assert!(
            u.role == state.acked || Some(u.role) == state.in_flight,
            "round {round}: {sub} has role {} after kill -9, but {} was acknowledged last (in flight: {:?})",
            u.role,
            state.acked,
            state.in_flight.map(Role::as_str)
        );
        *state = RoleState {
            acked: u.role,
            in_flight: None,
        };
    }
    assert_eq!(
        users.iter().filter(|u| u.role == Role::Owner).count(),
        1,
        "round {round}: exactly one owner"
    );
    sessions.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_storm_loses_no_acknowledged_change_50_times() {
    let seed = std::env::var("HEADGATE_TEST_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash storm seed {seed} (HEADGATE_TEST_CRASH_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let started = Instant::now();

    let config_dir = crate::harness::tempdir();
    let env = Arc::new(Env {
        site: Site::new(),
        rogue: RogueIdp::start(),
        hs: FakeHeadscale::start(),
        idp_lock: tokio::sync::Mutex::new(()),
        sign_in_count: AtomicU64::new(1),
        data: config_dir.path().join("data"),
        _config_dir: config_dir,
    });
    let keys: Vec<String> = (0..API_KEY_WORKERS)
        .map(|_| {
            env.hs.add_api_key(Some(
                time::OffsetDateTime::now_utc() + time::Duration::days(30),
            ))
        })
        .collect();

    // The owner first (the first sign-in), then the people whose roles the storm changes.
    let mut hg = env.start();
    let owner = Browser::new();
    assert_eq!(env.oidc_sign_in(&owner, "owner").await, Ok(true));
    let mut roles: HashMap<String, RoleState> = HashMap::new();
    for i in 0..ROLE_TARGETS {
        let sub = format!("role-target-{i}");
        assert_eq!(env.oidc_sign_in(&Browser::new(), &sub).await, Ok(true));
        env.admin(Request::UsersSetRole {
            user: sub.clone(),
            role: "member".into(),
        })
        .await
        .unwrap();
        roles.insert(
            sub,
            RoleState {
                acked: Role::Member,
                in_flight: None,
            },
        );
    }
    let acked = Arc::new(Mutex::new(Acked::default()));
    acked
        .lock()
        .unwrap()
        .alive
        .push(("owner's OIDC sign-in".into(), owner));

    let mut checked_alive = 0u64;
    let mut checked_dead = 0u64;
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let refusals = Arc::new(Mutex::new(Vec::<String>::new()));
        let counter = Arc::new(AtomicU64::new(0));
        let (alive_before, dead_before) = {
            let a = acked.lock().unwrap();
            (a.alive.len(), a.dead.len())
        };
        let mut workers = Vec::new();

        // API-key sign-ins.
        for key in &keys {
            let (env, acked, stop, key, refusals) = (
                env.clone(),
                acked.clone(),
                stop.clone(),
                key.clone(),
                refusals.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let b = Browser::new();
                    match env.api_key_sign_in(&b, &key).await {
                        Ok(true) => {
                            let mut a = acked.lock().unwrap();
                            a.sign_ins += 1;
                            a.alive
                                .push((format!("round {round}: API-key sign-in {n}"), b));
                        }
                        Ok(false) => refusals
                            .lock()
                            .unwrap()
                            .push(format!("API-key sign-in {n} refused")),
                        Err(_) => break,
                    }
                    n += 1;
                }
            }));
        }

        // OIDC sign-ins of new people.
        {
            let (env, acked, stop, refusals, counter) = (
                env.clone(),
                acked.clone(),
                stop.clone(),
                refusals.clone(),
                counter.clone(),
            );
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let sub = format!("person-{round}-{n}");
                    let b = Browser::new();
                    match env.oidc_sign_in(&b, &sub).await {
                        Ok(true) => {
                            let mut a = acked.lock().unwrap();
                            a.sign_ins += 1;
                            a.alive
                                .push((format!("round {round}: OIDC sign-in of {sub}"), b));
                        }
                        Ok(false) => refusals
                            .lock()
                            .unwrap()
                            .push(format!("OIDC sign-in of {sub} refused")),
                        Err(_) => break,
                    }
                }
            }));
        }

        // Sign in, then revoke every session of that person, again and again.
        {
            let (env, acked, stop, refusals) =
                (env.clone(), acked.clone(), stop.clone(), refusals.clone());
            workers.push(tokio::spawn(async move {
                let sub = format!("revoked-{round}");
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let b = Browser::new();
                    match env.oidc_sign_in(&b, &sub).await {
                        Ok(true) => {}
                        Ok(false) => {
                            refusals
                                .lock()
                                .unwrap()
                                .push(format!("OIDC sign-in of {sub} refused"));
                            continue;
                        }
                        Err(_) => break,
                    }
                    acked.lock().unwrap().sign_ins += 1;
                    if stop.load(Ordering::SeqCst) {
                        // Never revoked: it must live.
                        acked
                            .lock()
                            .unwrap()
                            .alive
                            .push((format!("round {round}: sign-in {n} of {sub}"), b));
                        break;
                    }
                    match env
                        .admin(Request::SessionsRevoke {
                            target: sub.clone(),
                        })
                        .await
                    {
                        Ok(()) => {
                            let mut a = acked.lock().unwrap();
                            a.revocations += 1;
                            a.dead
                                .push((format!("round {round}: revoked sign-in {n} of {sub}"), b));
                        }
                        Err(e) if e.starts_with("REFUSED") => {
                            refusals.lock().unwrap().push(e);
                            break;
                        }
                        // In flight when the server died: either outcome is right.
                        Err(_) => break,
                    }
                    n += 1;
                }
            }));
        }

        // Role changes, each target by one client in order.
        let role_states: Vec<Arc<Mutex<(String, RoleState)>>> = roles
            .iter()
            .map(|(s, r)| Arc::new(Mutex::new((s.clone(), *r))))
            .collect();
        for (i, state) in role_states.iter().enumerate() {
            let (env, acked, stop, refusals, state) = (
                env.clone(),
                acked.clone(),
                stop.clone(),
                refusals.clone(),
                state.clone(),
            );
            let mut rng = Rng(seed ^ (round << 8) ^ i as u64);
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let (sub, next) = {
                        let mut s = state.lock().unwrap();
                        let next = loop {
                            let r = ASSIGNABLE[rng.below(ASSIGNABLE.len() as u64) as usize];
                            if r != s.1.acked {
                                break r;
                            }
                        };
                        s.1.in_flight = Some(next);
                        (s.0.clone(), next)
                    };
                    match env
                        .admin(Request::UsersSetRole {
                            user: sub,
                            role: next.as_str().into(),
                        })
                        .await
                    {
                        Ok(()) => {
                            let mut s = state.lock().unwrap();
                            s.1 = RoleState {
                                acked: next,
                                in_flight: None,
                            };
                            acked.lock().unwrap().role_changes += 1;
                        }
                        Err(e) if e.starts_with("REFUSED") => {
                            refusals.lock().unwrap().push(e);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }));
        }

        // Kill at a random moment of the storm.
        let at = Duration::from_millis(150 + rng.below(500));
        tokio::time::sleep(at).await;
        hg.process.kill();
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            tokio::time::timeout(Duration::from_secs(30), w)
                .await
                .unwrap_or_else(|_| panic!("round {round}: a client hangs after the kill"))
                .unwrap();
        }
        let refusals = refusals.lock().unwrap().clone();
        assert!(
            refusals.is_empty(),
            "round {round} (seed {seed}): the server refused storm requests: {refusals:?}\n{}",
            hg.process.output()
        );
        for s in &role_states {
            let s = s.lock().unwrap();
            roles.insert(s.0.clone(), s.1);
        }

        // Reopen: the store opens and every record decodes; acknowledged roles are in effect.
        let sessions = check_store(&env.store_path(), round, &mut roles).await;

        // The server starts again on the same file; this round's acknowledged sign-ins still work and its
        // acknowledged revocations still hold.
        hg = env.start();
        // (Out of the mutex while awaiting; no client runs now.)
        let a = std::mem::take(&mut *acked.lock().unwrap());
        assert!(
            sessions >= a.alive.len(),
            "round {round}: {sessions} sessions stored for {} acknowledged",
            a.alive.len()
        );
        let (alive, dead) = (&a.alive[alive_before..], &a.dead[dead_before..]);
        for (what, b) in alive {
            assert_eq!(
                whoami(b, &env.site).await,
                200,
                "{what} was acknowledged but its session is gone after kill -9 (seed {seed})"
            );
            checked_alive += 1;
        }
        for (what, b) in dead {
            assert_eq!(
                whoami(b, &env.site).await,
                401,
                "{what}: the revocation was acknowledged but the session works again after kill -9 (seed {seed})"
            );
            checked_dead += 1;
        }
        eprintln!(
            "round {round}: killed after {at:?}; {} sign-ins, {} revocations acknowledged; {sessions} sessions stored",
            alive.len(),
            dead.len()
        );
        *acked.lock().unwrap() = a;
    }

    // At the end, everything acknowledged over all rounds.
    let a = std::mem::take(&mut *acked.lock().unwrap());
    for (what, b) in &a.alive {
        assert_eq!(whoami(b, &env.site).await, 200, "{what}: lost by the end");
    }
    for (what, b) in &a.dead {
        assert_eq!(whoami(b, &env.site).await, 401, "{what}: back by the end");
    }
    hg.process.kill();
    eprintln!(
        "{ROUNDS} kills survived in {:?}: {} sign-ins, {} role changes, {} revocations acknowledged; \
         {checked_alive} sessions and {checked_dead} revocations checked after their kill, {} and {} again at the end",
        started.elapsed(),
        a.sign_ins,
        a.role_changes,
        a.revocations,
        a.alive.len(),
        a.dead.len()
    );
}
