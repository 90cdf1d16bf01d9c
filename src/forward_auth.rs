//! Forward-auth: verdicts for a front proxy (`spec/forward-auth.md`, `spec/policy.md` section 4, S12).
//!
//! The front proxy asks before it forwards a request; headgate decides the *original* request the dialect's
//! headers describe with the proxy's own steps (admission → session → decision, [`crate::gate::caller`] and
//! [`crate::gate::decide`]) and answers only with the dialect's codes:
//!
//! | | nginx (`/_headgate/auth/nginx`) | forward (`/_headgate/auth/forward`), Envoy (`/_headgate/auth/envoy/…`) |
//! |---|---|---|
//! | allow | 200, every identity header and the assertion | 200, the same |
//! | signed out, navigation | 401 + `Location` (nginx maps it with `error_page 401`) | 302 (303 after a form post) |
//! | signed out, API call or `.data` fetch | 401 | 401 |
//! | forbidden, admission refusal, unknown host, untrusted peer, contradicting headers | 403 | 403 |
//! | missing original method or URI (a broken front-proxy config) | 500 | 500 |
//! | headgate's own failure (store, signing keys) | 503 | 503 |
//!
//! Nothing but an allow is ever a 2xx (Envoy treats any other 2xx as a deny, the others as an allow).

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::{App, Body, Conn, LOGIN_PATH};
use crate::auth::enc;
use crate::gate::{self, Caller, CallerError, Evidence};
use crate::policy::{self, Admission, Decision};
use crate::proxy::hygiene;
use crate::respond;

/// Every verdict endpoint is under this prefix.
pub const PREFIX: &str = "/_headgate/auth/";
/// nginx `auth_request`, ingress-nginx `auth-url`.
pub const NGINX_PATH: &str = "/_headgate/auth/nginx";
/// Traefik `forwardAuth`, Caddy `forward_auth`.
pub const FORWARD_PATH: &str = "/_headgate/auth/forward";
/// Envoy `ext_authz` (HTTP service, `path_prefix`): the original path follows.
pub const ENVOY_PREFIX: &str = "/_headgate/auth/envoy";

/// Which front proxy is asking (how it describes the original request, which codes it understands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `X-Original-URI`/`-URL`/`-Method` (or `X-Forwarded-*`); signed out is 401 + `Location`.
    Nginx,
    /// `X-Forwarded-Method`/`-Proto`/`-Host`/`-Uri`; signed out is a redirect.
    Forward,
    /// The request itself, its path after [`ENVOY_PREFIX`]; signed out is a redirect; allow is 200 only.
    Envoy,
}

/// The original request as the front proxy describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub method: Method,
    /// The path exactly as the client sent it (never decoded).
    pub path: String,
    pub query: Option<String>,
    /// `host[:port]` as named (admission parses and checks it).
    pub host: String,
    /// `http` or `https`.
    pub scheme: String,
}

/// Why the original request cannot be described.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Described {
    /// A trusted front proxy did not say what it asks about: its configuration is broken (500, never "GET /").
    Missing(&'static str),
    /// Repeated, malformed or contradicting dialect headers (403).
    Refused(&'static str),
}

/// One header's value: absent, or exactly one visible-ASCII value (repeated or binary: refused).
fn one<'h>(h: &'h HeaderMap, name: &'static str) -> Result<Option<&'h str>, Described> {
    let mut all = h.get_all(name).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(Described::Refused("repeated_dialect_header"));
    }
    let s = v
        .to_str()
        .map_err(|_| Described::Refused("malformed_dialect_header"))?;
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    Ok(Some(s))
}

fn method_of(s: &str) -> Result<Method, Described> {
    if !s.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Described::Refused("malformed_original_method"));
    }
    Method::from_bytes(s.as_bytes()).map_err(|_| Described::Refused("malformed_original_method"))
}

fn scheme_of(s: &str) -> Result<String, Described> {
    match s.to_ascii_lowercase().as_str() {
        "http" => Ok("http".into()),
        "https" => Ok("https".into()),
        _ => Err(Described::Refused("malformed_original_scheme")),
    }
}

/// `path[?query]` of an origin-form request target (must start with `/`).
fn split_target(t: &str) -> Result<(String, Option<String>), Described> {
    if !t.starts_with('/') {
        return Err(Described::Refused("original_uri_not_a_path"));
    }
    Ok(match t.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (t.to_string(), None),
    })
}

/// `scheme://authority<path?query>` (ingress-nginx's `X-Original-URL`), split without decoding anything.
fn split_absolute(u: &str) -> Result<(String, String, String), Described> {
    let bad = Described::Refused("malformed_original_url");
    let (scheme, rest) = u.split_once("://").ok_or(bad)?;
    let scheme = scheme_of(scheme).map_err(|_| bad)?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(end);
    if authority.is_empty() || target.starts_with('#') {
        return Err(bad);
    }
    let target = match target {
        "" => "/".to_string(),
        t if t.starts_with('?') => format!("/{t}"),
        t => t.to_string(),
    };
    Ok((scheme, authority.to_string(), target))
}

/// The original request of a verdict request, per dialect. `envoy_target`: the request's path after
/// [`ENVOY_PREFIX`] and its query.
pub fn describe(
    dialect: Dialect,
    method: &Method,
    envoy_target: Option<(&str, Option<&str>)>,
    h: &HeaderMap,
    default_scheme: &str,
) -> Result<Original, Described> {
    let host_header = one(h, "host")?;
    let xf_host = one(h, "x-forwarded-host")?;
    let xf_proto = one(h, "x-forwarded-proto")?.map(scheme_of).transpose()?;
    let (method, target, host, scheme) = match dialect {
        Dialect::Nginx => {
            let url = one(h, "x-original-url")?.map(split_absolute).transpose()?;
            let uri = one(h, "x-original-uri")?;
            if let (Some((_, _, from_url)), Some(uri)) = (&url, uri)
                && from_url != uri
            {
                return Err(Described::Refused("original_uri_differs_from_url"));
            }
            let method = match one(h, "x-original-method")? {
                Some(m) => Some(m),
                None => one(h, "x-forwarded-method")?,
            };
            let target = match (uri, &url) {
                (Some(u), _) => Some(u.to_string()),
                (None, Some((_, _, t))) => Some(t.clone()),
                (None, None) => one(h, "x-forwarded-uri")?.map(str::to_string),
            };
            let (url_scheme, url_host) = match url {
                Some((s, a, _)) => (Some(s), Some(a)),
                None => (None, None),
            };
            (
                method.map(method_of).transpose()?,
                target,
                url_host.or(xf_host.map(str::to_string)),
                url_scheme.or(xf_proto),
            )
        }
        Dialect::Forward => (
            one(h, "x-forwarded-method")?.map(method_of).transpose()?,
            one(h, "x-forwarded-uri")?.map(str::to_string),
            xf_host.map(str::to_string),
            xf_proto,
        ),
        Dialect::Envoy => (
            Some(method.clone()),
            envoy_target.map(|(p, q)| match q {
                Some(q) => format!("{p}?{q}"),
                None => p.to_string(),
            }),
            xf_host.map(str::to_string),
            xf_proto,
        ),
    };
    let method = method.ok_or(Described::Missing("original_method"))?;
    let target = target.ok_or(Described::Missing("original_uri"))?;
    let (path, query) = split_target(&target)?;
    let host = host
        .or(host_header.map(str::to_string))
        .ok_or(Described::Missing("original_host"))?;
    Ok(Original {
        method,
        path,
        query,
        host,
        scheme: scheme.unwrap_or_else(|| default_scheme.to_string()),
    })
}

/// The dialect of a path under [`PREFIX`] and, for Envoy, the original path.
fn dialect_of(path: &str) -> Option<(Dialect, Option<&str>)> {
    match path {
        NGINX_PATH => Some((Dialect::Nginx, None)),
        FORWARD_PATH => Some((Dialect::Forward, None)),
        // Envoy appends the original path (which starts with `/`) to its prefix.
        p => match p.strip_prefix(ENVOY_PREFIX) {
            Some(rest) if rest.starts_with('/') => Some((Dialect::Envoy, Some(rest))),
            Some("") => Some((Dialect::Envoy, None)),
            _ => None,
        },
    }
}

fn no_store(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn forbidden(reason: &str) -> Response<Body> {
    respond::error_page(
        StatusCode::FORBIDDEN,
        "Not allowed",
        &format!("headgate refused this request ({reason})."),
        None,
    )
}

/// A verdict request: answer with the dialect's codes, log the reason.
pub async fn verdict(
    app: &App,
    req: Request<Incoming>,
    conn: Conn,
) -> (Response<Body>, &'static str) {
    let (r, reason) = verdict_inner(app, req, conn).await;
    tracing::debug!(status = r.status().as_u16(), reason, "forward-auth verdict");
    (no_store(r), reason)
}

async fn verdict_inner(
    app: &App,
    req: Request<Incoming>,
    conn: Conn,
) -> (Response<Body>, &'static str) {
    let (parts, _body) = req.into_parts();
    let Some((dialect, envoy_path)) = dialect_of(parts.uri.path()) else {
        return (
            respond::json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found"}),
            ),
            "forward_auth_unknown_dialect",
        );
    };
    // S12 / class 2: the dialect headers count only from the configured front proxies.
    if !app
        .config
        .forward_auth
        .trusted_proxies
        .iter()
        .any(|c| c.contains(conn.peer.ip()))
    {
        tracing::warn!(
            peer = %conn.peer,
            "forward-auth verdict asked by a peer outside forward_auth.trusted_proxies: 403"
        );
        return (forbidden("untrusted_peer"), "untrusted_peer");
    }
    let default_scheme = app.config.server.base_url.scheme();
    let original = match describe(
        dialect,
        &parts.method,
        envoy_path.map(|p| (p, parts.uri.query())),
        &parts.headers,
        default_scheme,
    ) {
        Ok(o) => o,
        Err(Described::Missing(what)) => {
            tracing::error!(
                "forward-auth: the front proxy did not send the {what} (a broken front-proxy configuration; see \
                 the examples/ directory): 500"
            );
            let r = respond::error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The front proxy is misconfigured",
                "headgate was asked for a verdict without being told which request it is about.",
                Some("Operators: see headgate's log and the examples/ directory."),
            );
            return (r, what);
        }
        Err(Described::Refused(why)) => return (forbidden(why), why),
    };

    // Admission of the original request, against forward_auth's hosts. The verdict request's own framing
    // (there is no body) is not the original's.
    let mut headers = parts.headers.clone();
    for h in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::HOST,
    ] {
        headers.remove(h);
    }
    match HeaderValue::from_str(&original.host) {
        Ok(v) => headers.insert(header::HOST, v),
        Err(_) => return (forbidden("host_malformed"), "host_malformed"),
    };
    let admit = |path: &str| {
        app.policy.admit_for_hosts(
            &policy::Request {
                method: &original.method,
                raw_path: path,
                query: original.query.as_deref(),
                authority: None,
                headers: &headers,
            },
            &app.forward_auth_hosts,
        )
    };
    let admitted = match admit(&original.path) {
        Admission::Ok(a) => a,
        // `/` and a bare `/admin`: the proxy answers them with a redirect to `/admin/`, so they are decided
        // like `/admin/` (the application redirects them itself).
        Admission::RedirectToAdmin => match admit("/admin/") {
            Admission::Ok(a) => a,
            _ => return (forbidden("root"), "root"),
        },
        Admission::Refuse { reason, .. } => return (forbidden(reason), reason),
        Admission::HeadgateOwned { .. } => {
            tracing::warn!(
                path = %crate::logging::escape(&original.path),
                "forward-auth was asked about one of headgate's own paths: route them to headgate (see examples/)"
            );
            return (forbidden("headgate_owned_path"), "headgate_owned_path");
        }
    };

    // The caller and the decision: the same steps as the proxy, without a body.
    let now = app.now();
    let Caller {
        session, link, who, ..
    } = match gate::caller(app, &parts.headers, now).await {
        Ok(c) => c,
        Err(CallerError::SeveralSessionCookies) => {
            let r = respond::json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "several_session_cookies"}),
            );
            return (r, "several_session_cookies");
        }
        Err(CallerError::Store(e)) => return (crate::auth::store_failure(&e), "store_failure"),
    };
    let decision = gate::decide(app, &admitted, Evidence::NoBody, who.as_ref()).await;
    match decision {
        Decision::Allow { reason, .. } => {
            let audience = audience_of(&original);
            match gate::identity_for(app, session.as_ref(), link.as_ref(), now, &audience) {
                Ok(identity) => {
                    let mut r = Response::new(crate::app::full(""));
                    hygiene::set_identity(r.headers_mut(), &app.identity_names, &identity);
                    (r, reason)
                }
                Err(e) => {
                    tracing::error!("cannot sign the identity assertion: {e}");
                    let r = respond::error_page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Temporarily unavailable",
                        "headgate cannot sign the identity it hands on.",
                        Some("Operators: see headgate's log (signing keys in the store)."),
                    );
                    (r, "assertion")
                }
            }
        }
        Decision::SignIn { reason } => (
            sign_in_answer(app, dialect, &parts, &original, admitted.data),
            reason,
        ),
        Decision::Deny {
            page,
            missing,
            reason,
        } => (
            gate::deny_answer(session.as_ref(), page, missing, admitted.data),
            reason,
        ),
        Decision::Redirect { reason, location } => {
            let r = respond::error_page(
                StatusCode::FORBIDDEN,
                "Not allowed here",
                "This page is not available with your role.",
                Some(&format!("Open {location} instead.")),
            );
            (r, reason)
        }
        // `decide` resolves it; never an allow undecided.
        Decision::AllowIfOwnsNode { .. } => (forbidden("own_node_pending"), "own_node_pending"),
    }
}

/// `aud` of the assertion: the origin of the original request (`https://app.example.com`), default port
/// omitted, host lower-cased.
pub fn audience_of(o: &Original) -> String {
    match policy::parse_host_port(&o.host) {
        Ok((h, p)) => {
            let default = if o.scheme == "https" { 443 } else { 80 };
            match p {
                Some(p) if p != default => format!("{}://{h}:{p}", o.scheme),
                _ => format!("{}://{h}", o.scheme),
            }
        }
        Err(_) => format!("{}://{}", o.scheme, o.host.to_ascii_lowercase()),
    }
}

/// The signed-out answer in the dialect's codes: a navigation is sent to the sign-in page (nginx: 401 with
/// `Location`, others: 302, 303 after a form post), everything else (API calls, `.data` fetches) is a 401.
fn sign_in_answer(
    app: &App,
    dialect: Dialect,
    parts: &http::request::Parts,
    o: &Original,
    data: bool,
) -> Response<Body> {
    let here = match &o.query {
        Some(q) => format!("{}://{}{}?{q}", o.scheme, o.host, o.path),
        None => format!("{}://{}{}", o.scheme, o.host, o.path),
    };
    let here = if data {
        here.replacen(".data", "", 1)
    } else {
        here
    };
    let rd = app.redirects.validate_or_default(Some(&here));
    let login = format!(
        "{}{LOGIN_PATH}?rd={}",
        app.config.server.base_url.origin().ascii_serialization(),
        enc(rd.as_str())
    );
    let navigation = !data && gate::wants_html(parts);
    let status = match (dialect, &o.method, navigation) {
        (_, _, false) => None,
        (Dialect::Nginx, _, true) => Some(StatusCode::UNAUTHORIZED),
        (_, &Method::GET | &Method::HEAD, true) => Some(StatusCode::FOUND),
        (_, &Method::POST, true) => Some(StatusCode::SEE_OTHER),
        (_, _, true) => None,
    };
    match status {
        Some(StatusCode::UNAUTHORIZED) => {
            let mut r = respond::json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "not_signed_in", "login": login}),
            );
            if let Ok(v) = HeaderValue::from_str(&login) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Some(s) => respond::redirect(s, &login),
        None => respond::json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "not_signed_in", "login": login}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    fn nginx(pairs: &[(&str, &str)]) -> Result<Original, Described> {
        describe(Dialect::Nginx, &Method::GET, None, &h(pairs), "https")
    }

    #[test]
    fn nginx_dialect() {
        let o = nginx(&[
            ("x-original-uri", "/admin/users?x=1"),
            ("x-original-method", "POST"),
            ("x-forwarded-host", "hp.example.com"),
            ("host", "headgate:4180"),
        ])
        .unwrap();
        assert_eq!(o.method, Method::POST);
        assert_eq!(
            (o.path.as_str(), o.query.as_deref()),
            ("/admin/users", Some("x=1"))
        );
        assert_eq!(
            (o.host.as_str(), o.scheme.as_str()),
            ("hp.example.com", "https")
        );
        // ingress-nginx: X-Original-URL names scheme, host and target.
        let o = nginx(&[
            (
                "x-original-url",
                "http://HP.example.com:8080/admin/machines",
            ),
            ("x-original-method", "GET"),
        ])
        .unwrap();
        assert_eq!(
            (o.host.as_str(), o.scheme.as_str(), o.path.as_str()),
            ("HP.example.com:8080", "http", "/admin/machines")
        );
        // Both, agreeing, and contradicting.
        assert!(
            nginx(&[
                ("x-original-url", "https://hp.example.com/admin/users"),
                ("x-original-uri", "/admin/users"),
                ("x-original-method", "GET"),
            ])
            .is_ok()
        );
        assert_eq!(
            nginx(&[
                ("x-original-url", "https://hp.example.com/admin/public"),
                ("x-original-uri", "/admin/users"),
                ("x-original-method", "GET"),
            ]),
            Err(Described::Refused("original_uri_differs_from_url"))
        );
        // Missing pieces from a trusted proxy: its configuration is broken.
        assert_eq!(
            nginx(&[("x-original-method", "GET"), ("host", "hp.example.com")]),
            Err(Described::Missing("original_uri"))
        );
        assert_eq!(
            nginx(&[("x-original-uri", "/admin/"), ("host", "hp.example.com")]),
            Err(Described::Missing("original_method"))
        );
        // Repeated or odd values are refused, never one of them picked.
        assert_eq!(
            nginx(&[
                ("x-original-uri", "/admin/"),
                ("x-original-uri", "/admin/users"),
                ("x-original-method", "GET"),
            ]),
            Err(Described::Refused("repeated_dialect_header"))
        );
        assert_eq!(
            nginx(&[("x-original-uri", "admin"), ("x-original-method", "GET")]),
            Err(Described::Refused("original_uri_not_a_path"))
        );
        assert_eq!(
            nginx(&[("x-original-uri", "/admin/"), ("x-original-method", "get")]),
            Err(Described::Refused("malformed_original_method"))
        );
    }

    #[test]
    fn forward_and_envoy_dialects() {
        let o = describe(
            Dialect::Forward,
            &Method::GET,
            None,
            &h(&[
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/admin/dns"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "hp.example.com"),
                // The nginx dialect's headers are not this endpoint's.
                ("x-original-uri", "/admin/public"),
            ]),
            "https",
        )
        .unwrap();
        assert_eq!((o.path.as_str(), o.scheme.as_str()), ("/admin/dns", "http"));
        assert_eq!(
            describe(
                Dialect::Forward,
                &Method::GET,
                None,
                &h(&[("x-original-uri", "/admin/"), ("x-original-method", "GET")]),
                "https"
            ),
            Err(Described::Missing("original_method"))
        );
        let o = describe(
            Dialect::Envoy,
            &Method::POST,
            Some(("/admin/users", Some("index"))),
            &h(&[("host", "hp.example.com")]),
            "https",
        )
        .unwrap();
        assert_eq!(o.method, Method::POST);
        assert_eq!(
            (o.path.as_str(), o.query.as_deref(), o.host.as_str()),
            ("/admin/users", Some("index"), "hp.example.com")
        );
        assert_eq!(
            dialect_of("/_headgate/auth/envoy"),
            Some((Dialect::Envoy, None))
        );
        assert_eq!(
            dialect_of("/_headgate/auth/envoy/admin/"),
            Some((Dialect::Envoy, Some("/admin/")))
        );
        assert_eq!(dialect_of("/_headgate/auth/envoyx"), None);
        assert_eq!(dialect_of("/_headgate/auth/traefik"), None);
    }

    #[test]
    fn audiences_are_origins() {
        let o = |scheme: &str, host: &str| Original {
            method: Method::GET,
            path: "/".into(),
            query: None,
            host: host.into(),
            scheme: scheme.into(),
        };
        assert_eq!(
            audience_of(&o("https", "App.Example.com")),
            "https://app.example.com"
        );
        assert_eq!(
            audience_of(&o("https", "app.example.com:443")),
            "https://app.example.com"
        );
        assert_eq!(
            audience_of(&o("http", "127.0.0.1:8080")),
            "http://127.0.0.1:8080"
        );
    }
}
