//! The bootstrap/recovery CLI (`headgate users …`, `sessions …`, `audit`) and the local admin socket (S17):
//! the same commands through the running server's socket and on the stopped server's store; the owner rules
//! (no crafted owner, no demoted owner, transfer only from the owner); changes that apply to the very next
//! request; the socket's private directory, stale sockets, and the peer-uid check (a `nobody` client).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use headgate::admin::commands::Context;
use headgate::admin::socket::{AdminSocket, own_uid, socket_path};
use headgate::store::{
    Link, LinkState, NewUser, OwnerBootstrap, Role, SessionKey, SessionRecord, SessionSubject,
    Store, UserId,
};

use crate::harness::browser::Browser;
use crate::harness::fake_headscale::FakeHeadscale;
use crate::harness::headgate::{Headgate, HeadgateConfig};
use crate::harness::rogue::RogueIdp;
use crate::harness::stack::{Site, landing, oidc_section};

const NOBODY: u32 = 65534;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Run a CLI command that must succeed; returns stdout.
fn ok(cfg: &HeadgateConfig, args: &[&str]) -> String {
    let (code, out, err) = cfg.run(args);
    assert_eq!(code, 0, "headgate {args:?} failed: {err}\n{out}");
    out
}

/// Run a CLI command that must succeed and print JSON.
fn json(cfg: &HeadgateConfig, args: &[&str]) -> Value {
    let out = ok(cfg, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// Run a CLI command that must be refused with a message containing `want`; returns stderr.
fn refused(cfg: &HeadgateConfig, args: &[&str], want: &str) -> String {
    let (code, out, err) = cfg.run(args);
    assert_eq!(code, 1, "headgate {args:?} should be refused: {out}{err}");
    assert!(
        err.contains(want),
        "headgate {args:?}: {err:?} lacks {want:?}"
    );
    err
}

fn user<'a>(list: &'a Value, email: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == email)
        .unwrap_or_else(|| panic!("no {email} in {list:#}"))
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// Sign in through the rogue IdP as `sub` with a verified `email`; returns the browser holding the session.
async fn sign_in_as(site: &Site, rogue: &RogueIdp, sub: &str, email: &str) -> Browser {
    rogue.set_subject(sub);
    rogue.set_claim("email", email);
    rogue.set_claim("email_verified", true);
    let b = Browser::new();
    let to_idp = b.get(site.url("/admin/oidc/start")).await;
    assert_eq!(to_idp.status(), 302, "{}", to_idp.text());
    let back = b.get(to_idp.location().unwrap().as_str()).await;
    let done = b.get(back.location().unwrap().as_str()).await;
    assert_eq!(landing(site, &done), "/admin/", "{email} did not sign in");
    b
}

async fn whoami(b: &Browser, site: &Site) -> (u16, Value) {
    let p = b.get(site.url("/_headgate/whoami")).await;
    let v = if p.status() == 200 {
        p.json()
    } else {
        Value::Null
    };
    (p.status(), v)
}

async fn role(b: &Browser, site: &Site) -> String {
    let (status, me) = whoami(b, site).await;
    assert_eq!(status, 200, "whoami");
    me["role"].as_str().unwrap().to_string()
}

/// The 12-character key prefix `sessions list` shows for the session in this browser.
fn key_prefix_of(b: &Browser) -> (String, String) {
    let c = b
        .cookies()
        .into_iter()
        .find(|c| c.name.contains("headgate_session"))
        .expect("a session cookie");
    let id = headgate::crypto::unb64(c.value.split('.').next().unwrap()).unwrap();
    (
        SessionKey::from_raw_id(&id).to_hex()[..12].to_string(),
        c.value,
    )
}

fn audit_has(audit: &Value, action: &str, uid: u32) -> bool {
    audit
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == action && e["actor"] == format!("cli uid {uid}"))
}

#[tokio::test]
async fn commands_through_the_admin_socket_apply_to_the_next_request() {
    let site = Site::new();
    let rogue = RogueIdp::start();
    let hg = site
        .config(None)
        .section(oidc_section(rogue.issuer(), ""))
        .start();
    let cfg = &hg.config;
    let me = own_uid().unwrap();

    // S17: the socket exists while serving, in a 0700 directory, itself 0600.
    let sock = socket_path(&cfg.data_path());
    assert_eq!(mode(sock.parent().unwrap()), 0o700);
    assert_eq!(mode(&sock), 0o600);

    let owner = sign_in_as(&site, &rogue, "owner-sub", "owner@example.com").await;
    let bob = sign_in_as(&site, &rogue, "bob-sub", "bob@example.com").await;
    assert_eq!(role(&owner, &site).await, "owner");
    assert_eq!(role(&bob, &site).await, "member");

    // users list over the socket (the store is locked by serve, so it cannot be anything else).
    let list = json(cfg, &["users", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list:#}");
    assert_eq!(user(&list, "owner@example.com")["role"], "owner");
    assert_eq!(user(&list, "bob@example.com")["role"], "member");
    assert_eq!(user(&list, "bob@example.com")["active_sessions"], 1);
    assert_eq!(user(&list, "bob@example.com")["link"]["state"], "none");
    let table = ok(cfg, &["users", "list"]);
    assert!(
        table.starts_with("ID") && table.contains("bob@example.com") && table.contains("member"),
        "{table}"
    );

    // A role change applies to the very next request.
    let out = ok(cfg, &["users", "set-role", "bob@example.com", "viewer"]);
    assert!(out.contains("member → viewer"), "{out}");
    assert_eq!(role(&bob, &site).await, "viewer");
    // By subject and by id too.
    ok(cfg, &["users", "set-role", "bob-sub", "auditor"]);
    assert_eq!(role(&bob, &site).await, "auditor");
    let bob_id = user(&list, "bob@example.com")["id"].to_string();
    ok(cfg, &["users", "set-role", &bob_id, "viewer"]);
    assert_eq!(role(&bob, &site).await, "viewer");

    // A crafted assignment of owner, an unknown role, demoting the owner: refused, nothing changes.
    refused(
        cfg,
        &["users", "set-role", "bob@example.com", "owner"],
        "owner cannot be assigned",
    );
    refused(
        cfg,
        &["users", "set-role", "bob@example.com", "Owner"],
        "unknown role",
    );
    refused(
        cfg,
        &["users", "set-role", "owner@example.com", "admin"],
        "owner's role cannot be changed",
    );
    refused(
        cfg,
        &["users", "set-role", "nobody@example.com", "admin"],
        "no user",
    );
    assert_eq!(role(&bob, &site).await, "viewer");
    assert_eq!(role(&owner, &site).await, "owner");

    // Transfer: not to the owner itself; to bob it makes bob owner and the old owner admin, at once.
    refused(
        cfg,
        &["users", "transfer-ownership", "owner@example.com"],
        "already the owner",
    );
    ok(cfg, &["users", "transfer-ownership", "bob@example.com"]);
    assert_eq!(role(&bob, &site).await, "owner");
    assert_eq!(role(&owner, &site).await, "admin");
    let list = json(cfg, &["users", "list", "--json"]);
    let owners: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["role"] == "owner")
        .collect();
    assert_eq!(owners.len(), 1, "exactly one owner: {list:#}");
    // The new owner cannot be demoted either.
    refused(
        cfg,
        &["users", "set-role", "bob@example.com", "viewer"],
        "owner's role cannot be changed",
    );

    // sessions list: a short key-hash prefix, never a raw id or a cookie.
    let (owner_prefix, owner_cookie) = key_prefix_of(&owner);
    let (_, bob_cookie) = key_prefix_of(&bob);
    let sessions = json(cfg, &["sessions", "list", "--json"]);
    let rows = sessions.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{sessions:#}");
    for r in rows {
        assert_eq!(r["kind"], "oidc");
        assert_eq!(r["key_prefix"].as_str().unwrap().len(), 12);
    }
    let owner_row = rows
        .iter()
        .find(|r| r["user"] == "owner@example.com")
        .unwrap();
    assert_eq!(owner_row["key_prefix"], owner_prefix.as_str());
    let sessions_text = ok(cfg, &["sessions", "list"]);
    for secret in [&owner_cookie, &bob_cookie] {
        let raw = secret.split('.').next().unwrap();
        assert!(
            !sessions.to_string().contains(raw) && !sessions_text.contains(raw),
            "a raw session id was printed"
        );
    }

    // Revoke one session by its prefix, then every session of a user by email.
    let out = ok(cfg, &["sessions", "revoke", &owner_prefix[..10]]);
    assert!(out.contains(&owner_prefix), "{out}");
    assert_eq!(whoami(&owner, &site).await.0, 401);
    assert_eq!(whoami(&bob, &site).await.0, 200);
    refused(cfg, &["sessions", "revoke", "abc"], "no user");
    let out = ok(cfg, &["sessions", "revoke", "bob@example.com"]);
    assert!(out.contains("ended 1 session"), "{out}");
    assert_eq!(whoami(&bob, &site).await.0, 401);
    assert_eq!(
        json(cfg, &["sessions", "list", "--json"]),
        serde_json::json!([])
    );

    // Every command is in the audit log with the caller's uid: changes, refusals and reads.
    let audit = json(cfg, &["audit", "--json", "--limit", "200"]);
    for action in [
        "set_role",
        "set_role_refused",
        "transfer_ownership",
        "transfer_ownership_refused",
        "revoke_session",
        "revoke_sessions",
        "revoke_sessions_refused",
        "users_list",
        "sessions_list",
    ] {
        assert!(
            audit_has(&audit, action, me),
            "{action} by uid {me}: {audit:#}"
        );
    }
    let refusal = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["action"] == "set_role_refused"
                && e["detail"].as_str().unwrap().contains("owner cannot")
        })
        .expect("the crafted owner assignment is audited");
    assert_eq!(refusal["target"], "bob@example.com");
    let text = ok(cfg, &["audit"]);
    assert!(text.contains("transfer_ownership") && text.contains(&format!("cli uid {me}")));

    // Neither the CLI nor the server ever printed a session cookie.
    let log = hg.process.output();
    for secret in [&owner_cookie, &bob_cookie] {
        assert!(
            !log.contains(secret.as_str()),
            "a session cookie is in the log"
        );
    }
    stop(hg);
}

/// SIGTERM, wait, and check the socket file is gone.
fn stop(mut hg: Headgate) -> HeadgateConfig {
    let sock = socket_path(&hg.config.data_path());
    hg.process.signal(15);
    assert_eq!(hg.process.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(!sock.exists(), "the admin socket is removed on shutdown");
    let Headgate { config, .. } = hg;
    config
}

/// A data directory with a store holding an owner, a member with a session and a pending link, and an
/// unlinked member — made while headgate is stopped.
async fn seeded_store(cfg: &HeadgateConfig) -> (UserId, UserId, UserId) {
    let data = cfg.data_path();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&data)
        .unwrap();
    let store = Store::open_redb(&data.join("headgate.redb"), 1 << 20).unwrap();
    let new = |sub: &str, email: &str| NewUser {
        subject: sub.into(),
        email: Some(email.into()),
        email_verified: true,
        name: Some(format!("Name of {sub}")),
        picture: None,
        role: Role::Member,
        onboarded: true,
        created: now(),
    };
    let owner = store
        .create_user(new("o-sub", "owner@example.com"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    assert_eq!(owner.role, Role::Owner);
    let carol = store
        .create_user(new("c-sub", "carol@example.com"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    let dave = store
        .create_user(new("d-sub", "dave@example.com"), OwnerBootstrap::FirstUser)
        .await
        .unwrap();
    store
        .create_session(
            SessionKey::from_raw_id(b"carol's raw session id"),
            SessionRecord {
                subject: SessionSubject::User(carol.id),
                created: now(),
                expires: now() + 3600,
                last_seen: now(),
                idp_sid: None,
                id_token: Some("eyJ.id-token.secret".into()),
                refresh_token_enc: None,
                refreshed: now(),
            },
        )
        .await
        .unwrap();
    store
        .link_if_unclaimed(Link {
            headscale_user_id: "77".into(),
            user_id: carol.id,
            headscale_created_at: "2024-01-01T00:00:00Z".into(),
            provider_id: String::new(),
            state: LinkState::Pending,
            created: now(),
            headscale_name: "carol-hs".into(),
        })
        .await
        .unwrap();
    (owner.id, carol.id, dave.id)
}

#[tokio::test]
async fn with_serve_stopped_the_commands_work_on_the_store() {
    let hs = FakeHeadscale::start();
    let dave_hs = hs.add_user("dave", "dave@example.com");
    let cfg = HeadgateConfig::new().section(format!(
        "[headscale]\nurl = \"{}\"\napi_key = \"{}\"",
        hs.url(),
        hs.admin_key()
    ));
    let (_owner, _carol, _dave) = seeded_store(&cfg).await;
    let me = own_uid().unwrap();
    assert!(!socket_path(&cfg.data_path()).exists());

    let list = json(&cfg, &["users", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 3);
    let carol = user(&list, "carol@example.com");
    assert_eq!(carol["link"]["state"], "pending");
    assert_eq!(carol["link"]["headscale_user_id"], "77");
    assert_eq!(carol["active_sessions"], 1);

    // The same rules as through the socket.
    ok(
        &cfg,
        &["users", "set-role", "carol@example.com", "network_admin"],
    );
    refused(
        &cfg,
        &["users", "set-role", "dave@example.com", "owner"],
        "owner cannot be assigned",
    );
    refused(
        &cfg,
        &["users", "set-role", "o-sub", "viewer"],
        "owner's role cannot be changed",
    );

    // Links: approve the pending one, unlink it, link dave to a Headscale user by id.
    refused(
        &cfg,
        &["users", "approve-link", "dave@example.com"],
        "no link",
    );
    ok(&cfg, &["users", "approve-link", "carol@example.com"]);
    refused(
        &cfg,
        &["users", "approve-link", "carol@example.com"],
        "not pending",
    );
    ok(&cfg, &["users", "unlink", "carol@example.com"]);
    refused(
        &cfg,
        &["users", "link", "dave@example.com", "999"],
        "no user with id",
    );
    ok(
        &cfg,
        &["users", "link", "dave@example.com", &dave_hs.to_string()],
    );
    refused(
        &cfg,
        &["users", "link", "carol@example.com", &dave_hs.to_string()],
        "already linked",
    );

    // Sessions: listed by prefix (never the id token), revoked by user.
    let sessions = json(&cfg, &["sessions", "list", "--json"]);
    assert_eq!(sessions.as_array().unwrap().len(), 1);
    let want = SessionKey::from_raw_id(b"carol's raw session id").to_hex();
    assert_eq!(sessions[0]["key_prefix"], &want[..12]);
    assert!(!sessions.to_string().contains("secret"), "{sessions}");
    assert!(
        !sessions.to_string().contains(&want[..13]),
        "only a short prefix: {sessions}"
    );
    ok(&cfg, &["sessions", "revoke", "carol@example.com"]);

    // Transfer from the store directly.
    ok(&cfg, &["users", "transfer-ownership", "dave@example.com"]);
    let list = json(&cfg, &["users", "list", "--json"]);
    assert_eq!(user(&list, "dave@example.com")["role"], "owner");
    assert_eq!(user(&list, "owner@example.com")["role"], "admin");
    assert_eq!(user(&list, "carol@example.com")["role"], "network_admin");
    assert_eq!(user(&list, "dave@example.com")["link"]["state"], "linked");
    assert_eq!(user(&list, "carol@example.com")["link"]["state"], "none");

    let audit = json(&cfg, &["audit", "--json"]);
    for action in [
        "set_role",
        "set_role_refused",
        "approve_link",
        "unlink",
        "link",
        "revoke_sessions",
        "transfer_ownership",
    ] {
        assert!(audit_has(&audit, action, me), "{action}: {audit:#}");
    }

    // The changes made while stopped are what serve starts with; then the socket takes over.
    let hg = cfg.start();
    let list = json(&hg.config, &["users", "list", "--json"]);
    assert_eq!(user(&list, "dave@example.com")["role"], "owner");
    stop(hg);
}

#[test]
fn roles_owned_by_the_idp_are_read_only() {
    let cfg = HeadgateConfig::new().section(
        "[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"x\"\nclient_secret = \"y\"\nrole_claim = \"role\"",
    );
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(seeded_store(&cfg));
    refused(
        &cfg,
        &["users", "set-role", "carol@example.com", "admin"],
        "roles come from the identity provider",
    );
}

#[test]
fn without_a_store_or_with_a_silent_socket_the_cli_says_so() {
    let cfg = HeadgateConfig::new();
    refused(&cfg, &["users", "list"], "there is no store");
    assert!(!cfg.data_path().exists(), "the CLI does not create a store");

    // serve holds the store; its socket file gone → a clear error, not a hang.
    let hg = HeadgateConfig::new().start();
    std::fs::remove_file(socket_path(&hg.config.data_path())).unwrap();
    let err = refused(
        &hg.config,
        &["users", "list"],
        "headgate serve is running but its admin socket at",
    );
    assert!(err.contains("headgate.sock"), "{err}");
}

#[test]
fn the_admin_directory_must_be_private() {
    // Group- or world-accessible admin directory: serve refuses to start.
    for m in [0o750, 0o705, 0o777] {
        let cfg = HeadgateConfig::new();
        let admin = cfg.data_path().join("admin");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&admin)
            .unwrap();
        std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(m)).unwrap();
        let (code, _, err) = cfg.run(&["serve"]);
        assert_eq!(code, 1, "mode {m:o}: {err}");
        assert!(
            err.contains("accessible by group or others") && err.contains("chmod 700"),
            "{err}"
        );
    }
    // A symlink where the directory should be: refused too.
    let cfg = HeadgateConfig::new();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(cfg.data_path())
        .unwrap();
    let elsewhere = cfg.dir.path().join("elsewhere");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&elsewhere)
        .unwrap();
    std::os::unix::fs::symlink(&elsewhere, cfg.data_path().join("admin")).unwrap();
    let (code, _, err) = cfg.run(&["serve"]);
    assert_eq!(code, 1);
    assert!(err.contains("is not a directory"), "{err}");
}

#[test]
fn a_stale_socket_is_removed_and_the_store_is_used_directly() {
    let mut hg = HeadgateConfig::new().start();
    let sock = socket_path(&hg.config.data_path());
    hg.process.kill(); // SIGKILL: the socket file stays behind
    assert!(sock.exists());
    // Nobody answers: the CLI opens the store itself.
    assert_eq!(
        json(&hg.config, &["users", "list", "--json"]),
        serde_json::json!([])
    );
    let Headgate { config, .. } = hg;
    // And serve replaces the stale file.
    let hg = config.start();
    assert_eq!(mode(&sock), 0o600);
    ok(&hg.config, &["users", "list"]);
    stop(hg);
}

// ----- another uid -----

/// These tests run a client as `nobody`, which needs root and `setpriv`; without them they fail loudly
/// (never skip): run the suite as root (as CI does) with util-linux installed.
fn can_switch_uid() -> bool {
    let root = own_uid().unwrap() == 0;
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    assert!(
        root && setpriv,
        "this test needs root and setpriv (apt-get install -y util-linux) to run a client as another uid"
    );
    true
}

/// `headgate --config <config> <args>` as uid/gid 65534 with no supplementary groups.
fn run_as_nobody(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        .arg(crate::harness::headgate_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run setpriv");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn world_readable(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

#[test]
fn another_uid_cannot_reach_the_socket_of_serve() {
    if !can_switch_uid() {
        return;
    }
    let hg = HeadgateConfig::new().start();
    // Let nobody read the config and walk to the data directory; the data and admin directories stay 0700.
    world_readable(hg.config.dir.path(), 0o755);
    let config = hg.config.write();
    world_readable(&config, 0o644);
    let (code, out, err) = run_as_nobody(&config, &["users", "list", "--json"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("Permission denied") && err.contains("headgate.sock"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_refuses_a_peer_with_another_uid() {
    if !can_switch_uid() {
        return;
    }
    // A store with an owner and a member.
    let cfg = HeadgateConfig::new();
    seeded_store(&cfg).await;
    let store = Store::open_redb(&cfg.data_path().join("headgate.redb"), 1 << 20).unwrap();

    // A socket server everyone can reach: a 0777 directory (that only tests can get: `bind` refuses it) and
    // a 0666 socket, so only the peer-uid check stands between `nobody` and the commands.
    let open = tempfile::Builder::new()
        .prefix("headgate-open-")
        .tempdir()
        .unwrap();
    world_readable(open.path(), 0o777);
    let admin = open.path().join("admin");
    std::fs::create_dir(&admin).unwrap();
    world_readable(&admin, 0o777);
    let sock: PathBuf = socket_path(open.path());
    let server = AdminSocket::bind_unchecked_for_tests(&sock).unwrap();
    world_readable(&sock, 0o666);
    let ctx = Context {
        store: store.clone(),
        headscale: None,
        idp_owns_roles: false,
        clock: Arc::new(headgate::clock::SystemClock),
    };
    let _guard = server.spawn(move || ctx.clone()).unwrap();

    // A config pointing the CLI at that directory, readable by nobody.
    let config = open.path().join("headgate.toml");
    let text = cfg.text().replace(
        &format!("data_path = \"{}\"", cfg.data_path().display()),
        &format!("data_path = \"{}\"", open.path().display()),
    );
    assert!(text.contains(&open.path().display().to_string()));
    std::fs::write(&config, text).unwrap();
    world_readable(&config, 0o644);

    let as_nobody = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            run_as_nobody(
                &config,
                &["users", "set-role", "carol@example.com", "admin"],
            )
        })
        .await
        .unwrap()
    };
    let (code, out, err) = as_nobody;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("refused: uid {NOBODY} is not headgate's uid 0")),
        "{err}"
    );
    let carol = store.user_by_subject("c-sub").await.unwrap().unwrap();
    assert_eq!(carol.role, Role::Member, "nothing was executed");
    let audit = store.audit(50, None).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "admin_socket_refused" && e.actor == format!("cli uid {NOBODY}")),
        "{audit:#?}"
    );
    assert!(!audit.iter().any(|e| e.action == "set_role"), "{audit:#?}");

    // The control: the same command from headgate's own uid over the same socket is executed.
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let out = Command::new(crate::harness::headgate_bin())
            .arg("--config")
            .arg(&config)
            .args(["users", "set-role", "carol@example.com", "admin"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let carol = store.user_by_subject("c-sub").await.unwrap().unwrap();
    assert_eq!(carol.role, Role::Admin);
}

/// The wire protocol by hand: malformed, unknown, oversized and crafted requests get an error line and
/// change nothing.
#[tokio::test]
async fn the_wire_protocol_refuses_malformed_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = HeadgateConfig::new();
    seeded_store(&cfg).await;
    let store = Store::open_redb(&cfg.data_path().join("headgate.redb"), 1 << 20).unwrap();
    let dir = crate::harness::tempdir();
    let sock = dir.path().join("s.sock");
    let server = AdminSocket::bind_unchecked_for_tests(&sock).unwrap();
    let _guard = server
        .spawn({
            let ctx = Context {
                store: store.clone(),
                headscale: None,
                idp_owns_roles: false,
                clock: Arc::new(headgate::clock::SystemClock),
            };
            move || ctx.clone()
        })
        .unwrap();
    let ask = |line: Vec<u8>| {
        let sock = sock.clone();
        async move {
            let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
            let _ = s.write_all(&line).await;
            // read_to_end keeps what arrived before a reset (the server may close with unread input).
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            serde_json::from_slice::<Value>(out.trim_ascii()).unwrap_or(Value::Null)
        }
    };
    for bad in [
        b"not json\n".to_vec(),
        b"{\"command\":\"drop_tables\"}\n".to_vec(),
        b"{\"command\":\"users_set_role\",\"user\":\"carol@example.com\",\"role\":\"admin\",\"uid\":0}\n"
            .to_vec(),
        b"{\"command\":\"users_set_role\",\"user\":\"carol@example.com\",\"role\":\"owner\"}\n".to_vec(),
        [vec![b' '; 70 * 1024], b"\n".to_vec()].concat(),
    ] {
        let r = ask(bad.clone()).await;
        assert_eq!(r["ok"], false, "{}: {r}", String::from_utf8_lossy(&bad[..bad.len().min(80)]));
        assert!(r["error"].is_string(), "{r}");
    }
    let r = ask(b"{\"command\":\"users_list\"}\n".to_vec()).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["kind"], "users");
    assert_eq!(r["result"]["data"].as_array().unwrap().len(), 3);
    let carol = store.user_by_subject("c-sub").await.unwrap().unwrap();
    assert_eq!(carol.role, Role::Member);
}

#[tokio::test]
async fn make_owner_only_while_there_is_none() {
    let cfg = HeadgateConfig::new();
    let (owner, carol, _dave) = seeded_store(&cfg).await;
    let me = own_uid().unwrap();

    // With an owner (store opened directly): refused, naming the owner; nothing changes.
    let err = refused(
        &cfg,
        &["users", "make-owner", "carol@example.com"],
        &format!("user {owner} (owner@example.com) is the owner, and there is only one"),
    );
    assert!(err.contains("transfer-ownership"), "{err}");
    refused(
        &cfg,
        &["users", "make-owner", "owner@example.com"],
        "already the owner",
    );
    refused(
        &cfg,
        &["users", "make-owner", "nobody@example.com"],
        "no user",
    );
    let list = json(&cfg, &["users", "list", "--json"]);
    assert_eq!(user(&list, "carol@example.com")["role"], "member");
    assert_eq!(user(&list, "owner@example.com")["role"], "owner");

    // The owner's account deleted: transfer has nobody to transfer from and says what to do instead.
    {
        let store = Store::open_redb(&cfg.data_path().join("headgate.redb"), 1 << 20).unwrap();
        store.delete_user(owner).await.unwrap();
    }
    refused(
        &cfg,
        &["users", "transfer-ownership", "carol@example.com"],
        "headgate users make-owner",
    );
    let out = ok(&cfg, &["users", "make-owner", "carol@example.com"]);
    assert!(
        out.contains(&format!(
            "user {carol} (carol@example.com) is now the owner"
        )),
        "{out}"
    );
    refused(
        &cfg,
        &["users", "make-owner", "dave@example.com"],
        &format!("user {carol} (carol@example.com) is the owner"),
    );

    // Through the running server's socket: the same rules.
    let hg = cfg.start();
    let cfg = &hg.config;
    refused(
        cfg,
        &["users", "make-owner", "d-sub"],
        &format!("user {carol} (carol@example.com) is the owner"),
    );
    let list = json(cfg, &["users", "list", "--json"]);
    assert_eq!(user(&list, "carol@example.com")["role"], "owner");
    assert_eq!(user(&list, "dave@example.com")["role"], "member");
    let audit = json(cfg, &["audit", "--json"]);
    for action in ["make_owner", "make_owner_refused"] {
        assert!(audit_has(&audit, action, me), "{action}: {audit:#}");
    }
    stop(hg);
}

#[tokio::test]
async fn make_owner_through_the_socket_when_nobody_ever_was_owner() {
    // People in the store, none of them owner (bootstrap without the first-sign-in rule).
    let cfg = HeadgateConfig::new();
    let data = cfg.data_path();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&data)
        .unwrap();
    {
        let store = Store::open_redb(&data.join("headgate.redb"), 1 << 20).unwrap();
        for sub in ["a", "b"] {
            let u = store
                .create_user(
                    NewUser {
                        subject: format!("{sub}-sub"),
                        email: Some(format!("{sub}@example.com")),
                        email_verified: true,
                        name: None,
                        picture: None,
                        role: Role::Member,
                        onboarded: true,
                        created: now(),
                    },
                    OwnerBootstrap::Never,
                )
                .await
                .unwrap();
            assert_eq!(u.role, Role::Member);
        }
        assert!(!store.is_bootstrapped().await.unwrap());
    }
    let hg = cfg.start();
    let cfg = &hg.config;
    let out = ok(cfg, &["users", "make-owner", "b@example.com"]);
    assert!(out.contains("(b@example.com) is now the owner"), "{out}");
    refused(
        cfg,
        &["users", "make-owner", "a@example.com"],
        "(b@example.com) is the owner, and there is only one",
    );
    let list = json(cfg, &["users", "list", "--json"]);
    assert_eq!(user(&list, "b@example.com")["role"], "owner");
    assert_eq!(user(&list, "a@example.com")["role"], "member");
    let config = stop(hg);
    let store = Store::open_redb(&config.data_path().join("headgate.redb"), 1 << 20).unwrap();
    assert!(store.is_bootstrapped().await.unwrap(), "the marker is set");
}
