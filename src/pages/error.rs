//! The generic error page: 403 (missing capability), 429, 502, 504 and the like.

use super::html::{Html, el, prose};
use super::{footer, layout, mark};

/// A link target for the "Go back" button: only a path on this site (`/…`, not `//…` or `/\…`, no
/// control characters). Anything else is dropped rather than linked.
fn local_path(back: &str) -> Option<&str> {
    let ok = back.starts_with('/')
        && !back.starts_with("//")
        && !back.starts_with("/\\")
        && !back.chars().any(|c| c.is_control());
    ok.then_some(back)
}

/// A complete error page. `title`, `message` and `hint` are escaped (`` `code` `` spans become
/// `<code>`); `back` is linked as "Go back" only when it is a path on this site.
pub fn render_error(
    status: u16,
    title: &str,
    message: &str,
    hint: Option<&str>,
    back: Option<&str>,
) -> String {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason());
    let status_line = match reason {
        Some(r) => format!("Error {status} · {r}"),
        None => format!("Error {status}"),
    };
    let mut card = mark()
        .push(el("p", &[("class", "status")], Html::text(&status_line)))
        .push(el("h1", &[], Html::text(title)))
        .push(el("p", &[("class", "lead")], prose(message)));
    if let Some(hint) = hint.filter(|h| !h.trim().is_empty()) {
        card.append(el("div", &[("class", "hint")], prose(hint)));
    }
    if let Some(href) = back.and_then(local_path) {
        card.append(el(
            "div",
            &[("class", "actions")],
            el(
                "a",
                &[("class", "button secondary"), ("href", href)],
                Html::lit("Go back"),
            ),
        ));
    }
    let body = el("main", &[("class", "card")], card).push(footer());
    layout(&format!("{title} · Error {status}"), body)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{
        PAYLOADS, assert_escaped, assert_no_bare_ampersand, assert_self_contained,
    };
    use super::*;

    #[test]
    fn renders_status_title_message_hint_and_back() {
        let out = render_error(
            403,
            "Not allowed",
            "This page needs the `write_users` capability; your role is Viewer.",
            Some("Ask an Owner or Admin to change your role."),
            Some("/admin/"),
        );
        assert_self_contained(&out);
        assert_no_bare_ampersand(&out);
        assert!(out.contains("<p class=\"status\">Error 403 · Forbidden</p>"));
        assert!(out.contains("<h1>Not allowed</h1>"));
        assert!(
            out.contains("needs the <code>write_users</code> capability; your role is Viewer.")
        );
        assert!(
            out.contains("<div class=\"hint\">Ask an Owner or Admin to change your role.</div>")
        );
        assert!(out.contains("<a class=\"button secondary\" href=\"/admin/\">Go back</a>"));
        assert!(out.contains("<title>Not allowed · Error 403</title>"));
    }

    #[test]
    fn common_statuses() {
        for (code, reason) in [
            (429, "Too Many Requests"),
            (502, "Bad Gateway"),
            (504, "Gateway Timeout"),
        ] {
            let out = render_error(code, "t", "m", None, None);
            assert!(out.contains(&format!("Error {code} · {reason}")));
            assert!(!out.contains("class=\"hint\""));
            assert!(!out.contains("Go back"));
        }
        let out = render_error(599, "t", "m", Some("  "), None);
        assert!(out.contains("<p class=\"status\">Error 599</p>"));
        assert!(!out.contains("class=\"hint\""));
    }

    #[test]
    fn back_is_only_a_local_path() {
        for bad in [
            "javascript:alert(1)",
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "relative",
            "/a\nb",
            "",
        ] {
            let out = render_error(500, "t", "m", None, Some(bad));
            assert!(!out.contains("Go back"), "{bad:?}");
            assert!(!out.contains("evil"), "{bad:?}");
        }
        let out = render_error(500, "t", "m", None, Some("/admin/login?rd=%2F&x=1"));
        assert!(out.contains("href=\"/admin/login?rd=%2F&amp;x=1\""));
    }

    #[test]
    fn every_field_is_escaped() {
        for p in PAYLOADS {
            let back = format!("/{p}");
            let code_span = format!("`{p}`");
            for out in [
                render_error(403, p, "m", None, None),
                render_error(403, "t", p, None, None),
                render_error(403, "t", &code_span, None, None),
                render_error(403, "t", "m", Some(p), None),
                render_error(403, "t", "m", Some(&code_span), None),
                render_error(403, "t", "m", None, Some(&back)),
            ] {
                assert_escaped(&out, p);
                assert_no_bare_ampersand(&out);
            }
        }
    }
}
