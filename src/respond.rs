//! Building responses: redirects, JSON, pages with their security headers, Remix single-fetch redirects.

use http::{HeaderValue, Response, StatusCode, header};

use crate::app::{Body, full};

pub fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store, private")
        .header(header::VARY, "Cookie")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(full(body.to_string()))
        .expect("static response parts are valid")
}

/// A redirect (302 for navigations, 303 after a form post).
pub fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = Response::builder()
        .status(status)
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(""))
        .expect("static response parts are valid");
    // A location that is not a valid header value (it never should be: targets are validated) falls back.
    let loc =
        HeaderValue::from_str(location).unwrap_or_else(|_| HeaderValue::from_static("/admin/"));
    r.headers_mut().insert(header::LOCATION, loc);
    r
}

/// A target as Headplane's client router sees it: paths under its `/admin` basename lose the basename;
/// anything else (another site, e.g. the IdP's logout) stays absolute and makes the client reload.
pub fn client_route(target: &str) -> (String, bool) {
    if target == "/admin" || target.starts_with("/admin/") || target.starts_with("/admin?") {
        let rest = &target["/admin".len()..];
        let rest = if rest.is_empty() || rest.starts_with('?') {
            format!("/{rest}")
        } else {
            rest.to_string()
        };
        (rest, false)
    } else {
        (target.to_string(), true)
    }
}

/// The turbo-stream values of a redirect (`reload` and `replace` share one `false` when both are false,
/// as React Router encodes them).
fn redirect_values(target: &str, first_index: usize) -> (String, String) {
    let (route, reload) = client_route(target);
    let t = serde_json::Value::String(route).to_string();
    let i = first_index;
    if reload {
        (
            format!(
                r#"{{"_{}":{},"_{}":{},"_{}":{},"_{}":{},"_{}":{}}}"#,
                i,
                i + 1,
                i + 2,
                i + 3,
                i + 4,
                i + 5,
                i + 6,
                i + 7,
                i + 8,
                i + 9
            ),
            format!(
                r#""redirect",{t},"status",302,"revalidate",true,"reload",true,"replace",false"#
            ),
        )
    } else {
        (
            format!(
                r#"{{"_{}":{},"_{}":{},"_{}":{},"_{}":{},"_{}":{}}}"#,
                i,
                i + 1,
                i + 2,
                i + 3,
                i + 4,
                i + 5,
                i + 6,
                i + 7,
                i + 8,
                i + 7
            ),
            format!(r#""redirect",{t},"status",302,"revalidate",true,"reload",false,"replace""#),
        )
    }
}

fn turbo(body: String) -> Response<Body> {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_TYPE, "text/x-script")
        .header("x-remix-response", "yes")
        .header(header::CACHE_CONTROL, "no-store, private")
        .body(full(body))
        .expect("static response parts are valid")
}

/// Headplane's client-side redirect for a `.data` GET (a loader): 202, `x-remix-response: yes`, the
/// `SingleFetchRedirect` form.
pub fn data_redirect_loader(target: &str) -> Response<Body> {
    let (keys, values) = redirect_values(target, 2);
    turbo(format!(r#"[["SingleFetchRedirect",1],{keys},{values}]"#))
}

/// Headplane's client-side redirect for a `.data` POST (an action): the bare object form.
pub fn data_redirect_action(target: &str) -> Response<Body> {
    let (keys, values) = redirect_values(target, 1);
    turbo(format!(r#"[{keys},{values}]"#))
}

/// An HTML page with every security header (S18).
pub fn page(status: StatusCode, html: String) -> Response<Body> {
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8");
    for (k, v) in crate::pages::security_headers() {
        b = b.header(*k, *v);
    }
    b.body(full(html)).expect("static response parts are valid")
}

pub fn error_page(
    status: StatusCode,
    title: &str,
    message: &str,
    hint: Option<&str>,
) -> Response<Body> {
    page(
        status,
        crate::pages::error::render_error(status.as_u16(), title, message, hint, Some("/admin/")),
    )
}

/// Why the body of a request headgate reads itself could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the limit given.
    TooLarge,
    /// Not all there within `server.body_read_timeout_secs` (the seconds).
    TooSlow(u64),
    /// The connection failed while reading.
    Failed,
}

/// Read a whole request body of at most `limit` bytes within `timeout_secs` (`server.body_read_timeout_secs`):
/// a client that sends its headers and then trickles the body cannot hold the connection (and a task) open.
pub async fn read_body(
    body: hyper::body::Incoming,
    limit: usize,
    timeout_secs: u64,
) -> Result<bytes::Bytes, BodyError> {
    use http_body_util::{BodyExt, Limited};
    match tokio::time::timeout(
        std::time::Duration::from_secs(timeout_secs),
        Limited::new(body, limit).collect(),
    )
    .await
    {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(BodyError::TooLarge)
        }
        Ok(Err(_)) => Err(BodyError::Failed),
        Err(_) => Err(BodyError::TooSlow(timeout_secs)),
    }
}

/// 408 for a body that did not arrive in time; the connection is closed after it.
pub fn body_too_slow(secs: u64) -> Response<Body> {
    tracing::warn!(
        "closed a connection whose request body did not arrive within {secs} s (server.body_read_timeout_secs)"
    );
    let mut r = error_page(
        StatusCode::REQUEST_TIMEOUT,
        "Request timed out",
        &format!("The request body did not arrive within {secs} seconds."),
        Some(
            "Try again. Operators: a slow network or proxy may need a larger server.body_read_timeout_secs.",
        ),
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Add `Set-Cookie` values to a response.
pub fn with_cookies(mut r: Response<Body>, cookies: &[String]) -> Response<Body> {
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Response<Body>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn data_redirects_match_headplanes_wire_format() {
        // Observed: b2 (action) and a4 (loader) in shared/headplane/observed/main.
        assert_eq!(
            body(data_redirect_action("/admin/machines")).await,
            r#"[{"_1":2,"_3":4,"_5":6,"_7":8,"_9":8},"redirect","/machines","status",302,"revalidate",true,"reload",false,"replace"]"#
        );
        assert_eq!(
            body(data_redirect_loader("/admin/login")).await,
            r#"[["SingleFetchRedirect",1],{"_2":3,"_4":5,"_6":7,"_8":9,"_10":9},"redirect","/login","status",302,"revalidate",true,"reload",false,"replace"]"#
        );
        assert_eq!(client_route("/administrator").0, "/administrator");
        assert_eq!(client_route("/admin").0, "/");
        assert_eq!(client_route("/admin/login?s=logout").0, "/login?s=logout");
        assert!(client_route("https://idp.example.com/logout").1);
    }
}
