//! Server-rendered HTML pages (S18): pure functions from data to a complete document, no HTTP handling,
//! no JavaScript, no external assets.
//!
//! Markup is built with the auto-escaping [`Html`] type; the one stylesheet is served from
//! [`STYLESHEET_PATH`] because the [`CSP`] (`default-src 'self'`) blocks inline `<style>`. Every page
//! response carries [`security_headers`].

pub mod error;
mod html;
pub mod keys;
pub mod login;
pub mod onboarding;
pub mod users;

pub use error::render_error;
pub use html::{Html, el, escape, prose, void};
pub use login::{LoginPage, Sso};

/// The Content-Security-Policy every page is served with (S18).
pub const CSP: &str = "default-src 'self'; img-src 'self' https:; frame-ancestors 'none'";

/// `Content-Type` of every page.
pub const HTML_CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// Where the server answers with [`STYLESHEET`].
pub const STYLESHEET_PATH: &str = "/_headgate/static/headgate.css";

/// `Content-Type` for [`STYLESHEET`].
pub const STYLESHEET_CONTENT_TYPE: &str = "text/css; charset=utf-8";

/// Security headers every page response gets, as (lower-case name, value).
const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    // `no-referrer` would make browsers send `Origin: null` on our own form posts (Fetch standard), which
    // the same-origin check (S8) must refuse; `same-origin` keeps the origin and leaks nothing cross-site.
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
];

/// The headers every page response gets, as (lower-case name, value): CSP, `nosniff`, `no-referrer`,
/// `DENY` framing and `no-store`.
pub fn security_headers() -> &'static [(&'static str, &'static str)] {
    &SECURITY_HEADERS
}

/// A complete HTML5 document: charset, viewport, the linked stylesheet, `title` (escaped) and `body`.
pub fn layout(title: &str, body: Html) -> String {
    let head = Html::lit(
        "<meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\">\
         <meta name=\"robots\" content=\"noindex, nofollow\">",
    )
    .push(el("title", &[], Html::text(title)))
    .push(void(
        "link",
        &[("rel", "stylesheet"), ("href", STYLESHEET_PATH)],
    ));
    let doc = Html::lit("<!DOCTYPE html>\n")
        .push(el(
            "html",
            &[("lang", "en")],
            el("head", &[], head).push(el("body", &[], body)),
        ))
        .push(Html::lit("\n"));
    doc.into_string()
}

/// The small shield mark shown at the top of every card (inline SVG: no request, allowed by the CSP).
pub(crate) fn mark() -> Html {
    Html::lit(
        "<div class=\"mark\" aria-hidden=\"true\"><svg viewBox=\"0 0 24 24\" width=\"24\" height=\"24\" \
         fill=\"none\" stroke=\"currentColor\" stroke-width=\"2\" stroke-linecap=\"round\" \
         stroke-linejoin=\"round\"><path d=\"M12 3l7 3v5c0 4.5-3 8.3-7 10-4-1.7-7-5.5-7-10V6l7-3z\"/>\
         <rect x=\"9\" y=\"11\" width=\"6\" height=\"5\" rx=\"1\"/><path d=\"M10 11V9.5a2 2 0 0 1 4 0V11\"/>\
         </svg></div>",
    )
}

/// The page footer.
pub(crate) fn footer() -> Html {
    Html::lit("<footer class=\"foot\">Protected by headgate</footer>")
}

/// The one stylesheet, served at [`STYLESHEET_PATH`]. System fonts, a centred card, light and dark.
pub const STYLESHEET: &str = r#":root {
  color-scheme: light dark;
  --bg: #f4f5f7;
  --card: #ffffff;
  --text: #1a1d23;
  --muted: #5f6673;
  --border: #e3e5ea;
  --subtle: #f7f8fa;
  --field: #ffffff;
  --field-border: #cfd3da;
  --accent: #2f5bea;
  --accent-hover: #2549c7;
  --accent-text: #ffffff;
  --ring: rgba(47, 91, 234, 0.35);
  --code-bg: rgba(127, 135, 150, 0.14);
  --info-bg: #eef3ff;
  --info-border: #c9d7fb;
  --info-text: #1f3b8f;
  --error-bg: #fdf0f0;
  --error-border: #f3c6c6;
  --error-text: #8f1f1f;
  --warn-bg: #fff8e6;
  --warn-border: #f2d98c;
  --warn-text: #7a4d00;
  --shadow: 0 1px 2px rgba(16, 24, 40, 0.05), 0 12px 32px rgba(16, 24, 40, 0.08);
}

@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0e1014;
    --card: #171a20;
    --text: #e7e9ee;
    --muted: #9aa1ad;
    --border: #2a2f38;
    --subtle: #1c2027;
    --field: #0f1216;
    --field-border: #363c47;
    --accent: #5b82ff;
    --accent-hover: #7a9aff;
    --accent-text: #0b0d12;
    --ring: rgba(91, 130, 255, 0.45);
    --code-bg: rgba(160, 170, 190, 0.16);
    --info-bg: #142038;
    --info-border: #2a3d66;
    --info-text: #bcd0ff;
    --error-bg: #2a1517;
    --error-border: #5a2a2e;
    --error-text: #ffc2c2;
    --warn-bg: #2a2212;
    --warn-border: #5c4a1c;
    --warn-text: #f5d48a;
    --shadow: 0 1px 2px rgba(0, 0, 0, 0.3), 0 12px 32px rgba(0, 0, 0, 0.35);
  }
}

*, *::before, *::after { box-sizing: border-box; }

html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }

body {
  margin: 0;
  min-height: 100vh;
  min-height: 100dvh;
  display: flex;
  flex-direction: column;
  align-items: center;
  justify-content: center;
  gap: 20px;
  padding: 32px 16px;
  background: var(--bg);
  color: var(--text);
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", "Noto Sans",
    "Liberation Sans", Arial, sans-serif;
  font-size: 16px;
  line-height: 1.5;
  -webkit-font-smoothing: antialiased;
}

.card {
  width: 100%;
  max-width: 400px;
  background: var(--card);
  border: 1px solid var(--border);
  border-radius: 16px;
  padding: 32px 28px 28px;
  box-shadow: var(--shadow);
}

.mark {
  display: inline-flex;
  align-items: center;
  justify-content: center;
  width: 44px;
  height: 44px;
  margin-bottom: 16px;
  border-radius: 12px;
  background: var(--info-bg);
  color: var(--accent);
}

h1 {
  margin: 0 0 4px;
  font-size: 1.5rem;
  line-height: 1.25;
  font-weight: 650;
  letter-spacing: -0.01em;
}

h2 {
  margin: 0 0 12px;
  font-size: 0.95rem;
  font-weight: 600;
}

p { margin: 0 0 12px; }

.lead { margin: 0 0 24px; color: var(--muted); }

.status {
  margin: 0 0 6px;
  color: var(--muted);
  font-size: 0.8rem;
  font-weight: 600;
  letter-spacing: 0.06em;
  text-transform: uppercase;
}

code {
  padding: 0.1em 0.35em;
  border-radius: 5px;
  background: var(--code-bg);
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  font-size: 0.86em;
  overflow-wrap: anywhere;
}

.notice {
  margin: 0 0 20px;
  padding: 12px 14px;
  border: 1px solid;
  border-radius: 10px;
  font-size: 0.92rem;
  overflow-wrap: anywhere;
}
.notice p { margin: 0; }
.notice p + p { margin-top: 6px; }
.notice strong { display: block; margin-bottom: 2px; font-weight: 600; }
.notice .ref { margin-top: 6px; opacity: 0.75; font-size: 0.8rem; }
.notice ul { margin: 0; padding-left: 18px; }
.notice li + li { margin-top: 6px; }
.notice.info { background: var(--info-bg); border-color: var(--info-border); color: var(--info-text); }
.notice.error { background: var(--error-bg); border-color: var(--error-border); color: var(--error-text); }
.notice.warning { background: var(--warn-bg); border-color: var(--warn-border); color: var(--warn-text); }

.button {
  display: flex;
  align-items: center;
  justify-content: center;
  width: 100%;
  min-height: 44px;
  padding: 10px 16px;
  border: 1px solid transparent;
  border-radius: 10px;
  font: inherit;
  font-weight: 600;
  text-align: center;
  text-decoration: none;
  cursor: pointer;
  transition: background-color 0.15s ease, border-color 0.15s ease;
}
.button.primary { background: var(--accent); color: var(--accent-text); }
.button.primary:hover { background: var(--accent-hover); }
.button.secondary { background: var(--card); color: var(--text); border-color: var(--field-border); }
.button.secondary:hover { background: var(--subtle); }
.button:focus-visible, input:focus-visible, a:focus-visible {
  outline: 3px solid var(--ring);
  outline-offset: 2px;
}

.divider {
  display: flex;
  align-items: center;
  gap: 12px;
  margin: 24px 0 20px;
  color: var(--muted);
  font-size: 0.8rem;
  text-transform: uppercase;
  letter-spacing: 0.06em;
}
.divider::before, .divider::after { content: ""; flex: 1; height: 1px; background: var(--border); }

.secondary-section {
  padding: 18px 16px 16px;
  border: 1px solid var(--border);
  border-radius: 12px;
  background: var(--subtle);
}

label { display: block; margin-bottom: 6px; font-size: 0.9rem; font-weight: 500; }

input[type="password"], input[type="text"] {
  display: block;
  width: 100%;
  min-height: 44px;
  margin-bottom: 12px;
  padding: 10px 12px;
  border: 1px solid var(--field-border);
  border-radius: 10px;
  background: var(--field);
  color: var(--text);
  font: inherit;
}
input[aria-invalid="true"] { border-color: var(--error-text); }

.field-error {
  margin: -4px 0 12px;
  color: var(--error-text);
  font-size: 0.88rem;
  font-weight: 500;
}

.help { margin: 12px 0 0; color: var(--muted); font-size: 0.85rem; }

.hint {
  margin: 16px 0 0;
  padding: 12px 14px;
  border-radius: 10px;
  background: var(--subtle);
  border: 1px solid var(--border);
  color: var(--muted);
  font-size: 0.9rem;
  overflow-wrap: anywhere;
}

.actions { margin-top: 24px; }

.foot { color: var(--muted); font-size: 0.8rem; }

@media (max-width: 420px) {
  body { padding: 20px 12px; justify-content: flex-start; }
  .card { padding: 24px 20px 20px; border-radius: 14px; }
}

/* Tables (the users page). */
.card.wide { max-width: 1180px; }
.table-wrap { width: 100%; overflow-x: auto; margin: 0 0 24px; }
table.grid { width: 100%; border-collapse: collapse; font-size: 0.9rem; }
table.grid th, table.grid td {
  padding: 10px 8px;
  border-bottom: 1px solid var(--border);
  text-align: left;
  vertical-align: top;
  overflow-wrap: anywhere;
}
table.grid th {
  color: var(--muted);
  font-size: 0.75rem;
  font-weight: 600;
  letter-spacing: 0.06em;
  text-transform: uppercase;
}
table.grid tbody tr:hover { background: var(--subtle); }
table.grid td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.grid td.actions-cell { min-width: 260px; }
table.audit td { font-size: 0.85rem; }
.muted { color: var(--muted); }
.note { margin: 4px 0 8px; color: var(--muted); font-size: 0.82rem; }
.badge {
  display: inline-block;
  padding: 1px 8px;
  border-radius: 999px;
  background: var(--info-bg);
  color: var(--info-text);
  font-size: 0.78rem;
  font-weight: 600;
}
.badge.owner { background: var(--accent); color: var(--accent-text); }
.badge.warn { background: var(--warn-bg); color: var(--warn-text); }
.row-form { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin: 0 0 6px; }
select {
  min-height: 32px;
  padding: 4px 8px;
  border: 1px solid var(--field-border);
  border-radius: 8px;
  background: var(--field);
  color: var(--text);
  font: inherit;
  font-size: 0.85rem;
}
button.small {
  min-height: 32px;
  padding: 4px 12px;
  border: 1px solid var(--field-border);
  border-radius: 8px;
  background: var(--card);
  color: var(--text);
  font: inherit;
  font-size: 0.85rem;
  font-weight: 600;
  cursor: pointer;
}
button.small:hover { background: var(--subtle); }
button.small.danger { color: var(--error-text); border-color: var(--error-border); }
button.small:disabled, select:disabled { opacity: 0.55; cursor: not-allowed; }
button.small:focus-visible, select:focus-visible { outline: 3px solid var(--ring); outline-offset: 2px; }
.panel { margin: 0 0 24px; }
.pager { font-size: 0.9rem; }
/* Onboarding and own keys */
.card.wide { max-width: 600px; }
h2.spaced { margin-top: 24px; }
pre {
  margin: 0 0 12px;
  padding: 10px 12px;
  border-radius: 8px;
  background: var(--code-bg);
  overflow-x: auto;
  white-space: pre-wrap;
  overflow-wrap: anywhere;
}
pre code { padding: 0; background: none; }
.new-key pre { background: var(--card); color: var(--text); }
.choices { list-style: none; margin: 0 0 12px; padding: 0; }
.choices li {
  display: flex;
  align-items: flex-start;
  gap: 10px;
  padding: 10px 12px;
  border: 1px solid var(--border);
  border-radius: 10px;
}
.choices li + li { margin-top: 8px; }
.choices label { margin: 0; }
.choice-name { display: block; font-weight: 600; overflow-wrap: anywhere; }
.choice-meta { display: block; color: var(--muted); font-size: 0.85rem; overflow-wrap: anywhere; }
.steps {
  display: flex;
  gap: 8px;
  margin: 24px 0 0;
  padding: 0;
  list-style: none;
  color: var(--muted);
  font-size: 0.8rem;
}
.steps li { flex: 1; padding-top: 6px; border-top: 3px solid var(--border); }
.steps li.current { color: var(--text); border-top-color: var(--accent); font-weight: 600; }
.skip { margin-top: 12px; text-align: center; }
.button.link {
  display: inline;
  width: auto;
  min-height: 0;
  padding: 0;
  border: 0;
  background: none;
  color: var(--muted);
  font-weight: 500;
  text-decoration: underline;
}
.button.small {
  width: auto;
  min-height: 32px;
  padding: 4px 12px;
  background: var(--card);
  color: var(--text);
  border-color: var(--field-border);
  font-size: 0.85rem;
}
.actions + .actions, .actions form + form { margin-top: 12px; }
table.keys { width: 100%; margin: 0 0 12px; border-collapse: collapse; font-size: 0.9rem; }
table.keys th, table.keys td { padding: 8px 6px; border-bottom: 1px solid var(--border); text-align: left; vertical-align: top; }
table.keys th { color: var(--muted); font-weight: 600; font-size: 0.8rem; }
.inline { display: flex; gap: 8px; margin-bottom: 12px; }
input[type="number"], select {
  min-height: 44px;
  padding: 10px 12px;
  border: 1px solid var(--field-border);
  border-radius: 10px;
  background: var(--field);
  color: var(--text);
  font: inherit;
}
input[type="number"] { flex: 1; min-width: 0; }
"#;

#[cfg(test)]
pub(crate) mod test_support {
    //! Payloads and checks shared by the page tests (S18).

    /// Script payloads put into every field a page renders.
    pub const PAYLOADS: &[&str] = &[
        "<script>alert(1)</script>",
        "\"><img src=x onerror=alert(1)>",
        "' onmouseover='alert(1)",
        "Tom & Jerry's",
    ];

    /// The output contains no raw fragment of `payload` that could change the markup.
    pub fn assert_escaped(out: &str, payload: &str) {
        assert!(!out.contains("<script"), "a <script survived: {out}");
        assert!(!out.contains("<img"), "an <img survived: {out}");
        assert!(
            !out.contains("'alert(1)"),
            "a quote-breaking payload survived"
        );
        assert!(
            !out.contains(payload),
            "payload survived verbatim: {payload}"
        );
        assert!(!out.contains("Tom & Jerry"), "a bare & survived");
        assert!(!out.contains("Jerry's"), "a bare ' survived");
    }

    /// Every `&` in the output starts a character reference (no bare ampersands).
    pub fn assert_no_bare_ampersand(out: &str) {
        for (i, _) in out.match_indices('&') {
            let rest = &out[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                    .iter()
                    .any(|e| rest.starts_with(e)),
                "bare & at {i}: {}",
                &rest[..rest.len().min(20)]
            );
        }
    }

    /// No scripts, no inline styles or event handlers, no external assets.
    pub fn assert_self_contained(out: &str) {
        let lower = out.to_ascii_lowercase();
        assert!(!lower.contains("<script"), "script in page");
        assert!(
            !lower.contains("<style"),
            "inline <style> (blocked by the CSP)"
        );
        assert!(
            !lower.contains(" style="),
            "inline style attribute (blocked by the CSP)"
        );
        assert!(!lower.contains("http://"), "http:// reference in page");
        assert!(!lower.contains("https://"), "https:// reference in page");
        assert!(!lower.contains("javascript:"), "javascript: URL in page");
        for (i, _) in lower.match_indices(" on") {
            let name: String = lower[i + 3..]
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            assert!(
                name.is_empty() || !lower[i + 3 + name.len()..].starts_with('='),
                "event handler attribute on{name} in page"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_a_complete_document() {
        let out = layout("Sign in", Html::lit("<main>x</main>"));
        assert!(
            out.starts_with("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
        );
        assert!(
            out.contains(
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            )
        );
        assert!(out.contains("<title>Sign in</title>"));
        assert!(out.contains("<link rel=\"stylesheet\" href=\"/_headgate/static/headgate.css\">"));
        assert!(out.contains("<body><main>x</main></body></html>"));
        assert_eq!(out.matches("<link").count(), 1);
        test_support::assert_self_contained(&out);
    }

    #[test]
    fn layout_escapes_the_title() {
        for p in test_support::PAYLOADS {
            let out = layout(p, Html::new());
            test_support::assert_escaped(&out, p);
            test_support::assert_no_bare_ampersand(&out);
        }
    }

    #[test]
    fn stylesheet_has_dark_mode_and_no_external_references() {
        assert!(STYLESHEET.contains("@media (prefers-color-scheme: dark)"));
        assert!(!STYLESHEET.contains("url("));
        assert!(!STYLESHEET.contains("@import"));
        assert!(!STYLESHEET.contains("http"));
        assert_eq!(
            STYLESHEET.matches('{').count(),
            STYLESHEET.matches('}').count()
        );
        assert!(STYLESHEET_PATH.starts_with("/_headgate/"));
    }

    #[test]
    fn security_headers_are_complete() {
        let h = security_headers();
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        assert_eq!(
            get("content-security-policy"),
            Some("default-src 'self'; img-src 'self' https:; frame-ancestors 'none'")
        );
        assert_eq!(get("x-content-type-options"), Some("nosniff"));
        assert_eq!(get("referrer-policy"), Some("same-origin"));
        assert_eq!(get("x-frame-options"), Some("DENY"));
        assert_eq!(get("cache-control"), Some("no-store"));
        for (k, v) in h {
            assert_eq!(*k, k.to_ascii_lowercase());
            assert!(http::HeaderName::from_static(k).as_str() == *k);
            assert!(http::HeaderValue::from_str(v).is_ok());
        }
    }
}
