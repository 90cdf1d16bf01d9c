//! `headgate backup` while `serve` takes sign-ins (every change acknowledged before the backup started is in
//! it, and the copy opens), and `headgate restore` (refuses a running server, a non-empty target, a file that
//! is not a store).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use headgate::store::Store;

use crate::harness::browser::Browser;
use crate::harness::headgate::HeadgateConfig;
use crate::harness::rogue::RogueIdp;
use crate::harness::stack::{Site, oidc_section};

#[tokio::test]
async fn a_backup_during_live_sign_ins_holds_every_acknowledged_change() {
    let site = Site::new();
    let rogue = Arc::new(RogueIdp::start());
    let mut hg = site
        .config(None)
        .section(oidc_section(rogue.issuer(), ""))
        .start();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Sign-ins one after another (the rogue IdP signs in whoever it is told to be), each acknowledged by its
    // session cookie.
    let traffic = tokio::spawn({
        let (acked, stop, rogue) = (acked.clone(), stop.clone(), rogue.clone());
        let base = site.base();
        async move {
            // Sign-in starts are limited per address (30 per 10 minutes): stay under it.
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < 25 {
                let sub = format!("person-{i}");
                let b = Browser::new();
                let to_idp = b.get(format!("{base}/admin/oidc/start")).await;
                assert_eq!(to_idp.status(), 302, "{}", to_idp.text());
                rogue.set_subject(&sub);
                let back = b.get(to_idp.location().unwrap().as_str()).await;
                let done = b.get(back.location().unwrap().as_str()).await;
                if done.status() == 302 && b.cookie(&base, "headgate_session").is_some() {
                    acked.lock().unwrap().push(sub);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before: Vec<String> = acked.lock().unwrap().clone();
    assert!(before.len() >= 3, "too little traffic: {before:?}");
    let file = hg.config.dir.path().join("live-backup.redb");
    let (code, out, err) = hg.config.run(&["backup", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("backed up"), "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    traffic.await.unwrap();
    // The copy is private, opens as a store, and holds every user whose sign-in was acknowledged before it.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let copy = Store::open_redb(&file, 1 << 20).unwrap();
    for sub in &before {
        let u =
            copy.user_by_subject(sub).await.unwrap().unwrap_or_else(|| {
                panic!("{sub} was acknowledged before the backup but is not in it")
            });
        let sessions = copy.sessions_of_user(u.id).await.unwrap();
        assert!(!sessions.is_empty(), "{sub}'s session is missing");
    }
    // Consistent: every session's user exists.
    for (_, rec) in copy.sessions().await.unwrap() {
        if let headgate::store::SessionSubject::User(id) = rec.subject {
            assert!(
                copy.user(id).await.unwrap().is_some(),
                "a session without its user"
            );
        }
    }
    drop(copy);
    // A backup never overwrites.
    let (code, out, err) = hg.config.run(&["backup", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("exists"), "{err}");
    // Restore refuses while serve runs.
    let (code, _, err) = hg.config.run(&["restore", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("stop it"), "{err}");
    hg.process.signal(15);
    hg.process.wait_exit(Duration::from_secs(10));
    // Into the stopped store, which holds data: refused.
    let (code, _, err) = hg.config.run(&["restore", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("already holds"), "{err}");
    // Into a fresh data directory: done, and the restored store opens with the same people.
    let fresh = HeadgateConfig::new();
    let (code, out, err) = fresh.run(&["restore", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let restored = Store::open_redb(&fresh.data_path().join("headgate.redb"), 1 << 20).unwrap();
    for sub in &before {
        assert!(restored.user_by_subject(sub).await.unwrap().is_some());
    }
    drop(restored);
    // A file that is not a store is refused and leaves nothing behind.
    let junk = fresh.dir.path().join("junk");
    std::fs::write(&junk, b"not a store").unwrap();
    let other = HeadgateConfig::new();
    let (code, _, err) = other.run(&["restore", junk.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("not a usable headgate backup"), "{err}");
    assert!(!other.data_path().join("headgate.redb").exists());
}
