//! The benchmark's store seeder (`benches/run`): creates, in a headgate store that is not in use, a few
//! people (each linked to a Headscale user, as after onboarding) and N sessions spread over them, the way a
//! sign-in does (`Sessions::new_id`: a random id, its MAC under the `cookie_secret`'s session key, the hash
//! stored). Sessions are written in batches (one transaction each) through the store API. Then it writes K of
//! the sessions' cookies (`name=value`, one a line, spread over the whole set) for the load generator.
//!
//! Usage: `bench_seed <store file> <cookie_secret> <sessions> <cookies out> [cookies to write]`

use std::sync::Arc;
use std::time::Instant;

use headgate::cookies::CookieSettings;
use headgate::crypto::{Keys, OsRandom};
use headgate::session::Sessions;
use headgate::store::{
    Link, LinkState, NewUser, OwnerBootstrap, Role, SessionRecord, SessionSubject, Store,
};

/// People the sessions belong to.
const PEOPLE: u64 = 10;
/// Sessions per write transaction.
const BATCH: usize = 5_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!(
            "usage: bench_seed <store file> <cookie_secret> <sessions> <cookies out> [cookies]"
        );
        std::process::exit(2);
    }
    let path = std::path::PathBuf::from(&args[0]);
    let secret = headgate::config::Secret::new(&args[1]);
    let total: usize = args[2].parse().expect("a number of sessions");
    let out = std::path::PathBuf::from(&args[3]);
    let want: usize = args
        .get(4)
        .map(|k| k.parse().expect("a number of cookies"))
        .unwrap_or(100)
        .clamp(1, total.max(1));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = Instant::now();
    let store =
        Store::open_redb(&path, headgate::store::DEFAULT_CACHE_BYTES).expect("open the store");
    let (touch, _touch_rx) = tokio::sync::mpsc::channel(1);
    let sessions = Sessions::new(
        Arc::new(Keys::new(&secret, None)),
        CookieSettings {
            secure: false,
            domain: None,
        },
        store.clone(),
        Arc::new(OsRandom),
        touch,
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let cookies = rt.block_on(async {
        let mut people = Vec::new();
        for i in 0..PEOPLE {
            let user = store
                .create_user(
                    NewUser {
                        subject: format!("bench-person-{i}"),
                        email: Some(format!("person{i}@example.com")),
                        email_verified: true,
                        name: Some(format!("Bench Person {i}")),
                        picture: None,
                        role: Role::Admin,
                        onboarded: true,
                        created: now,
                    },
                    OwnerBootstrap::Never,
                )
                .await
                .expect("create a person");
            store
                .link_if_unclaimed(Link {
                    headscale_user_id: (i + 1).to_string(),
                    user_id: user.id,
                    headscale_created_at: "2024-01-01T00:00:00Z".into(),
                    provider_id: String::new(),
                    state: LinkState::Approved,
                    created: now,
                    headscale_name: format!("person{i}"),
                })
                .await
                .expect("link a person");
            people.push(user.id);
        }
        // What a real OIDC session carries: the ID token (for RP-initiated logout) and the sealed refresh
        // token, so records and the file have their real size.
        let id_token = format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.{}",
            "x".repeat(700),
            "s".repeat(342)
        );
        let every = (total / want).max(1);
        let mut cookies = Vec::new();
        let mut batch = Vec::with_capacity(BATCH);
        for n in 0..total {
            let (value, key) = sessions.new_id();
            if n % every == every / 2 && cookies.len() < want {
                cookies.push(format!("{}={value}", sessions.cookie_name()));
            }
            batch.push((
                key,
                SessionRecord {
                    subject: SessionSubject::User(people[n % people.len()]),
                    created: now,
                    expires: now + 7 * 86_400,
                    // Recently seen: the load does not queue last-seen updates in its first minutes.
                    last_seen: now,
                    idp_sid: Some(format!("sid-{n}")),
                    id_token: Some(id_token.clone()),
                    refresh_token_enc: Some(vec![7u8; 120]),
                    refreshed: now,
                },
            ));
            if batch.len() == BATCH || n + 1 == total {
                store
                    .create_sessions(std::mem::take(&mut batch))
                    .await
                    .expect("store the sessions");
            }
        }
        cookies
    });
    drop(sessions);
    drop(store);
    std::fs::write(&out, cookies.join("\n") + "\n").expect("write the cookies");
    println!(
        "seeded {total} sessions for {PEOPLE} people in {:.2} s; {} cookies in {}",
        started.elapsed().as_secs_f64(),
        cookies.len(),
        out.display()
    );
}
