//! Building responses: redirects, JSON, pages with their security headers, Remix single-fetch redirects.

use http::{HeaderValue, Response, StatusCode, header};

use crate::app::{Body, full};

pub fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
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

/// Headplane's client-side (Remix single-fetch) redirect for a `.data` request: 202, `x-remix-response: yes`.
pub fn single_fetch_redirect(target: &str, reload: bool) -> Response<Body> {
    let body = format!(
        r#"[["SingleFetchRedirect",1],{{"_2":3,"_4":5,"_6":7,"_8":9}},"redirect",{},"status",302,"revalidate",true,"reload",{}]"#,
        serde_json::Value::String(target.to_string()),
        reload
    );
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_TYPE, "text/x-script")
        .header("x-remix-response", "yes")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(body))
        .expect("static response parts are valid")
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

/// Add `Set-Cookie` values to a response.
pub fn with_cookies(mut r: Response<Body>, cookies: &[String]) -> Response<Body> {
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}
