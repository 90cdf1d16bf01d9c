//! `/_headgate/healthz` (the process answers), `/_headgate/readyz` (this replica can serve: store usable,
//! configuration loaded, upstream reachable in proxy mode) and what `readyz` reports for information only:
//! the identity provider's and Headscale's state and the days before `headscale.api_key` expires.
//!
//! An IdP outage never makes a replica unready: API-key sign-in and existing sessions keep working, and
//! taking every replica out of service would turn a partial outage into a total one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use serde_json::{Value, json};

use crate::app::{App, Body};
use crate::respond;

/// How long one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a dependency's state (IdP, Headscale) is reused between readiness probes.
const INFO_TTL: Duration = Duration::from_secs(15);
/// Below this many days a warning is logged and shown on `readyz`.
pub const API_KEY_WARN_DAYS: i64 = 14;

/// Cached dependency states (information only).
#[derive(Default)]
pub struct HealthInfo {
    idp: Mutex<Option<(Instant, Value)>>,
    headscale: Mutex<Option<(Instant, Value)>>,
}

fn cached(slot: &Mutex<Option<(Instant, Value)>>) -> Option<Value> {
    let g = slot.lock().unwrap_or_else(|e| e.into_inner());
    g.as_ref()
        .filter(|(at, _)| at.elapsed() < INFO_TTL)
        .map(|(_, v)| v.clone())
}

fn remember(slot: &Mutex<Option<(Instant, Value)>>, v: &Value) {
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), v.clone()));
}

pub fn healthz() -> Response<Body> {
    respond::json(StatusCode::OK, json!({ "status": "ok" }))
}

/// The readiness answer: 200 when every check passes, 503 otherwise; the body says which and why.
pub async fn readyz(app: &App) -> Response<Body> {
    let (store, upstream, idp, headscale) = tokio::join!(
        check_store(app),
        check_upstream(app),
        idp_state(app),
        headscale_state(app)
    );
    let ready = store["ok"] == true && upstream["ok"] != false;
    let mut warnings = Vec::new();
    let days = app.metrics.api_key_days_left();
    if let Some(d) = days
        && d < API_KEY_WARN_DAYS
    {
        warnings.push(format!(
            "headscale.api_key expires in {d} day(s): create a new one with `headscale apikeys create --expiration 90d` and set headscale.api_key"
        ));
    }
    if idp["state"] == "unreachable" {
        warnings.push(
            "the identity provider is unreachable: SSO sign-in is unavailable, API-key sign-in and existing sessions keep working"
                .into(),
        );
    }
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "store": store,
            "config": { "ok": true, "loaded_at": app.loaded_at() },
            "upstream": upstream,
        },
        "info": {
            "idp": idp,
            "headscale": headscale,
            "headscale_api_key_expires_in_days": days,
        },
        "warnings": warnings,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut r = respond::json(status, body);
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

async fn check_store(app: &App) -> Value {
    // The same kind of read every request makes (a session lookup), so readiness sees what requests see.
    let probe = crate::store::SessionKey([0u8; 32]);
    match tokio::time::timeout(CHECK_TIMEOUT, app.store.session(&probe)).await {
        Ok(Ok(_)) => json!({ "ok": true, "location": app.store.location() }),
        Ok(Err(e)) => json!({ "ok": false, "error": e.to_string() }),
        Err(_) => {
            json!({ "ok": false, "error": format!("the store did not answer within {} s", CHECK_TIMEOUT.as_secs()) })
        }
    }
}

/// Proxy mode only: can a connection to the upstream be opened?
async fn check_upstream(app: &App) -> Value {
    let Some(url) = &app.config.upstream.url else {
        return json!({ "ok": null, "note": "no upstream.url (forward-auth only)" });
    };
    let shown = url.as_str().to_string();
    let connect = async {
        if url.scheme() == "unix" {
            tokio::net::UnixStream::connect(url.path())
                .await
                .map(|_| ())
        } else {
            let host = url.host_str().unwrap_or("127.0.0.1").to_string();
            let port = url.port_or_known_default().unwrap_or(80);
            tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map(|_| ())
        }
    };
    match tokio::time::timeout(CHECK_TIMEOUT, connect).await {
        Ok(Ok(())) => json!({ "ok": true, "url": shown }),
        Ok(Err(e)) => json!({
            "ok": false,
            "url": shown,
            "error": format!("cannot connect: {e}; check upstream.url and that the application is running"),
        }),
        Err(_) => json!({ "ok": false, "url": shown, "error": "connecting timed out" }),
    }
}

async fn idp_state(app: &App) -> Value {
    let Some(o) = &app.config.oidc else {
        return json!({ "state": "not_configured" });
    };
    if let Some(v) = cached(&app.health.idp) {
        return v;
    }
    let url = if o.endpoints.complete() {
        o.endpoints
            .jwks_uri
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_default()
    } else {
        o.discovery_url()
    };
    let started = Instant::now();
    let r = app.http.get(&url, &[], CHECK_TIMEOUT).await;
    let ok = matches!(&r, Ok(r) if r.status.is_success());
    app.metrics
        .dependency_call(crate::metrics::Dependency::Idp, started.elapsed(), ok);
    let v = match r {
        Ok(r) if r.status.is_success() => json!({ "state": "reachable" }),
        Ok(r) => {
            json!({ "state": "unreachable", "detail": format!("{} answered {}", crate::http_client::strip_query(&url), r.status.as_u16()) })
        }
        Err(e) => json!({ "state": "unreachable", "detail": e.to_string() }),
    };
    remember(&app.health.idp, &v);
    v
}

async fn headscale_state(app: &App) -> Value {
    let Some(hs) = &app.headscale else {
        return json!({ "state": "not_configured" });
    };
    if let Some(v) = cached(&app.health.headscale) {
        return v;
    }
    let started = Instant::now();
    let r = tokio::time::timeout(CHECK_TIMEOUT, hs.check_key()).await;
    let ok = matches!(r, Ok(Ok(())));
    app.metrics
        .dependency_call(crate::metrics::Dependency::Headscale, started.elapsed(), ok);
    let v = match r {
        Ok(Ok(())) => json!({ "state": "reachable" }),
        Ok(Err(crate::headscale::HeadscaleError::InvalidKey)) => json!({
            "state": "key_refused",
            "detail": "headscale.api_key is invalid or expired: create one with `headscale apikeys create --expiration 90d`",
        }),
        Ok(Err(e)) => json!({ "state": "unreachable", "detail": e.to_string() }),
        Err(_) => json!({ "state": "unreachable", "detail": "no answer within 2 s" }),
    };
    remember(&app.health.headscale, &v);
    v
}

/// Look up when headgate's own `headscale.api_key` expires (background; never on a request).
pub async fn refresh_api_key_expiry(app: &App, now: i64) {
    let (Some(hs), Some(cfg)) = (&app.headscale, &app.config.headscale) else {
        return;
    };
    let key = cfg.api_key.expose();
    let started = Instant::now();
    let listed = hs.list_api_keys_with(key).await;
    app.metrics.dependency_call(
        crate::metrics::Dependency::Headscale,
        started.elapsed(),
        listed.is_ok(),
    );
    let Ok(keys) = listed else { return };
    let mine = keys.iter().find(|k| {
        let p = k.bare_prefix();
        p.len() >= 5 && key.starts_with(p)
    });
    let expires = mine
        .and_then(|k| k.expiration.as_deref())
        .and_then(|e| {
            time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| t.unix_timestamp());
    let days = expires.map(|e| (e - now).div_euclid(86400));
    app.metrics.set_api_key_days_left(days);
    if let Some(d) = days
        && d < API_KEY_WARN_DAYS
    {
        tracing::warn!(
            days_left = d,
            "headscale.api_key expires soon: create a new one with `headscale apikeys create --expiration 90d` and set headscale.api_key"
        );
    }
}
