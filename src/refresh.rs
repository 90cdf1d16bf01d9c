//! Session refresh (issue: identity and roles): a session older than `oidc.refresh_interval` is refreshed in
//! the background with its refresh token, single-flight per session. The answer re-reads the role claim
//! and the S1 allowlist; `invalid_grant` (or a person no longer allowed) ends the session. Nothing here runs
//! on the request path: the lookup only queues the session key.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::app::App;
use crate::crypto::Purpose;
use crate::oidc::identity;
use crate::oidc::rp::SignInError;
use crate::store::{Role, SessionKey, SessionSubject};

pub async fn run(app: Arc<App>, mut rx: mpsc::Receiver<SessionKey>) {
    let in_flight: Arc<Mutex<HashSet<SessionKey>>> = Arc::default();
    while let Some(key) = rx.recv().await {
        if !in_flight.lock().unwrap().insert(key) {
            continue;
        }
        let (app, in_flight) = (app.clone(), in_flight.clone());
        tokio::spawn(async move {
            refresh_one(&app, key).await;
            in_flight.lock().unwrap().remove(&key);
        });
    }
}

/// What became of one refresh (for the log and tests).
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Refreshed,
    Ended(&'static str),
    NotDue,
    Failed,
}

pub async fn refresh_one(app: &App, key: SessionKey) -> Outcome {
    let (Some(rp), now) = (&app.rp, app.now()) else {
        return Outcome::NotDue;
    };
    let interval = rp.config().refresh_interval as i64;
    let Ok(Some(mut rec)) = app.store.session(&key).await else {
        return Outcome::NotDue;
    };
    let SessionSubject::User(user_id) = rec.subject else {
        return Outcome::NotDue;
    };
    if now - rec.refreshed < interval {
        return Outcome::NotDue;
    }
    let Some(rt) = rec
        .refresh_token_enc
        .as_deref()
        .and_then(|enc| app.keys.open(Purpose::KeyEncryption, b"refresh_token", enc))
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return Outcome::NotDue;
    };
    let end = |why: &'static str| async move {
        let _ = app.store.delete_session(&key).await;
        tracing::info!(user = user_id.0, "session ended at refresh: {why}");
        Outcome::Ended(why)
    };
    let e = match rp.endpoints().await {
        Ok(e) => e,
        Err(err) => {
            tracing::warn!("session refresh postponed: {err}");
            return postpone(app, key, rec, now, interval).await;
        }
    };
    let tokens = match rp.refresh(&e, &rt).await {
        Ok(t) => t,
        Err(SignInError::TokenEndpoint { error, .. }) if error == "invalid_grant" => {
            return end("the IdP refused the refresh token (invalid_grant)").await;
        }
        Err(err) => {
            tracing::warn!("session refresh postponed: {err}");
            return postpone(app, key, rec, now, interval).await;
        }
    };
    // Fresh claims: a new ID token (verified, no nonce), else userinfo for the stored subject.
    let user = match app.store.user(user_id).await {
        Ok(Some(u)) => u,
        _ => return end("the user record is gone").await,
    };
    let mut claims = match tokens.id_token.as_deref() {
        Some(t) => match rp.verify_id_token(&e, t, None, now).await {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!("session refresh: {err}");
                return end("the refreshed ID token was refused").await;
            }
        },
        None => {
            let mut m = serde_json::Map::new();
            m.insert(
                "sub".into(),
                serde_json::Value::String(user.subject.clone()),
            );
            m
        }
    };
    if claims.get("sub").and_then(|v| v.as_str()) != Some(user.subject.as_str()) {
        return end("the refreshed identity names another subject").await;
    }
    if let Some(at) = tokens.access_token.as_deref()
        && let Ok(ui) = rp.userinfo(&e, at).await
    {
        let _ = identity::merge_userinfo(&mut claims, ui);
    }
    let cfg = rp.config();
    let who = match identity::identity(cfg, &claims) {
        Ok(w) => w,
        Err(_) => return end("the refreshed identity has no subject").await,
    };
    if let Err(err) = identity::check_allowed(cfg, &who, &claims) {
        tracing::info!("{err}");
        return end("the person is no longer allowed to sign in (S1)").await;
    }
    if let Some(c) = &cfg.role_claim {
        let role =
            crate::roles::role_from_claim(claims.get(c), &cfg.role_map).unwrap_or(cfg.default_role);
        // Applied to the role stored now, not to the session's copy (S13; the owner stays owner).
        if user.role != Role::Owner && user.role != role {
            match app.store.apply_idp_role(user.id, role).await {
                Ok(done) => {
                    if let Some(from) = done.role_changed_from {
                        tracing::info!(
                            user = user.id.0,
                            from = from.as_str(),
                            to = done.user.role.as_str(),
                            "role changed by the IdP at refresh"
                        );
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "session refresh could not store the new role");
                    return Outcome::Failed;
                }
            }
        }
    }
    rec.refreshed = now;
    if let Some(new_rt) = tokens.refresh_token.as_deref() {
        rec.refresh_token_enc = Some(app.keys.seal(
            Purpose::KeyEncryption,
            &*app.random,
            b"refresh_token",
            new_rt.as_bytes(),
        ));
    }
    if let Some(t) = tokens.id_token {
        rec.id_token = Some(t);
        // Back-channel logout finds the session by the IdP's session id: keep the latest one.
        if let Some(sid) = who.sid.clone() {
            rec.idp_sid = Some(sid);
        }
    }
    match app.store.update_session(&key, rec).await {
        Ok(()) => Outcome::Refreshed,
        Err(err) => {
            tracing::warn!(error = %err, "session refresh could not be stored");
            Outcome::Failed
        }
    }
}

/// Try again in a minute rather than at every request while the IdP is unreachable.
async fn postpone(
    app: &App,
    key: SessionKey,
    mut rec: crate::store::SessionRecord,
    now: i64,
    interval: i64,
) -> Outcome {
    rec.refreshed = now - interval + 60;
    let _ = app.store.update_session(&key, rec).await;
    Outcome::Failed
}
