//! The sign-in page at `/admin/login`: the SSO button, the API-key form (unless disabled), the `?s=`
//! status message, API-key errors and operator warnings such as `cookie_secure` over plain HTTP.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::html::{Html, el, prose, void};
use super::{footer, layout, mark};

/// Whether single sign-on can be offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sso<'a> {
    /// Show the "Sign in with SSO" button.
    Available,
    /// OIDC is configured but cannot be used right now (e.g. discovery failed); `reason` is shown.
    Unavailable { reason: &'a str },
    /// No `[oidc]` section: no button, no notice.
    NotConfigured,
}

/// Everything the sign-in page shows. Every string may carry outside data and is escaped.
#[derive(Clone, Copy, Debug)]
pub struct LoginPage<'a> {
    pub sso: Sso<'a>,
    /// Show the API-key form (`!oidc.disable_api_key_login`).
    pub api_key_form: bool,
    /// The `?s=` code; unknown codes show nothing.
    pub status: Option<&'a str>,
    /// The message after a failed API-key sign-in (see the `API_KEY_*` constants).
    pub api_key_error: Option<&'a str>,
    /// Operator warnings shown in a warning box (e.g. `cookie_secure` over plain HTTP).
    pub warnings: &'a [String],
    /// Where to go after signing in; already validated by the caller.
    pub return_target: Option<&'a str>,
    /// The CSRF token for the API-key form's hidden `csrf` field (S8).
    pub csrf_token: &'a str,
    /// The SSO start path, normally `/admin/oidc/start`.
    pub start_path: &'a str,
    /// Where the API-key form posts, normally `/admin/login`.
    pub login_path: &'a str,
}

/// API-key sign-in messages (Headplane's wording, `spec/headplane.md`).
pub const API_KEY_MISSING: &str = "Missing API key";
pub const API_KEY_EMPTY: &str = "API key cannot be empty";
pub const API_KEY_NOT_FOUND: &str = "API key was not found";
pub const API_KEY_EXPIRED: &str = "API key has expired";
pub const API_KEY_INVALID: &str = "API key is invalid (it may be incorrect or expired)";
/// A direct post while `oidc.disable_api_key_login` is set.
pub const API_KEY_LOGIN_DISABLED: &str = "Signing in with an API key is turned off on this site";

/// "Too many failed attempts: try again in N minutes", with `retry_after_secs` rounded up to minutes.
pub fn too_many_attempts(retry_after_secs: u64) -> String {
    let minutes = retry_after_secs.div_ceil(60).max(1);
    let unit = if minutes == 1 { "minute" } else { "minutes" };
    format!("Too many failed attempts: try again in {minutes} {unit}")
}

/// How a `?s=` message is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Info,
    Error,
}

/// The text for one `?s=` code. `text` and `hint` may contain `` `code` `` spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusMessage {
    pub tone: Tone,
    pub title: &'static str,
    pub text: &'static str,
    pub hint: Option<&'static str>,
}

/// Every `?s=` code the page knows.
pub const STATUS_CODES: &[&str] = &[
    "logout",
    "error_expired",
    "error_no_query",
    "error_no_session",
    "error_invalid_session",
    "error_no_sub",
    "error_auth_failed",
    "error_not_allowed",
    "error_rate_limited",
];

/// The message for a `?s=` code, `None` for unknown codes.
pub fn status_message(code: &str) -> Option<StatusMessage> {
    let (tone, title, text, hint) = match code {
        "logout" => (Tone::Info, "Signed out", "You have been logged out.", None),
        "error_expired" => (
            Tone::Info,
            "Session ended",
            "Your session has ended. Please sign in again to continue.",
            None,
        ),
        "error_no_query" => (
            Tone::Error,
            "Sign-in was not completed",
            "The identity provider sent you back without a sign-in code, so the sign-in could not be \
             finished.",
            Some(
                "Please try again. If it keeps happening, the identity provider is refusing the request: \
                 the administrator should check its log, and check that the redirect URI registered there \
                 is this site's callback (`server.base_url` followed by `oidc.callback_path`, by default \
                 `/admin/oidc/callback`).",
            ),
        ),
        "error_no_session" => (
            Tone::Error,
            "Sign-in cookie missing",
            "Your browser did not send the sign-in cookie back, so the sign-in could not be finished.",
            Some(
                "This usually means cookies are blocked for this site, or `server.cookie_secure` is on \
                 while the site is served over plain HTTP. Allow cookies for this site and try again; if \
                 that does not help, tell the administrator.",
            ),
        ),
        "error_invalid_session" => (
            Tone::Error,
            "Sign-in attempt not recognised",
            "This sign-in attempt could not be matched to your browser: it took longer than 10 minutes, \
             was already used, or was started in a different browser.",
            Some("Please sign in again, from start to finish in the same browser."),
        ),
        "error_no_sub" => (
            Tone::Error,
            "Your identity was not sent",
            "The identity provider did not say who you are: its answer has no user identifier (the \
             `sub` claim).",
            Some(
                "This needs the administrator: check the client's settings at the identity provider, or \
                 set `oidc.subject_claims` to a claim it does send.",
            ),
        ),
        "error_auth_failed" => (
            Tone::Error,
            "Sign-in failed",
            "The identity provider did not confirm your sign-in.",
            Some(
                "Please try again. If it keeps failing, the administrator will find the cause in \
                 headgate's log; common ones are a wrong `oidc.client_secret`, a redirect URI that does \
                 not match the one registered at the identity provider, or a provider that requires PKCE \
                 (`oidc.use_pkce`).",
            ),
        ),
        "error_not_allowed" => (
            Tone::Error,
            "Account not allowed",
            "You signed in at the identity provider, but that account is not allowed to use this site.",
            Some(
                "If you have another account, sign in with that one. If you think this one should have \
                 access, ask the administrator.",
            ),
        ),
        "error_rate_limited" => (
            Tone::Error,
            "Too many sign-in attempts",
            "Too many sign-in attempts came from your network in a short time.",
            Some("Please wait a minute, then try again."),
        ),
        _ => return None,
    };
    Some(StatusMessage {
        tone,
        title,
        text,
        hint,
    })
}

/// Characters left as they are in the `rd` query value: the RFC 3986 unreserved set.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `start_path?rd=<target>` with the target percent-encoded (`&rd=` when the path already has a query).
pub fn sso_href(start_path: &str, return_target: Option<&str>) -> String {
    match return_target {
        None => start_path.to_owned(),
        Some(rd) => {
            let sep = if start_path.contains('?') { '&' } else { '?' };
            format!(
                "{start_path}{sep}rd={}",
                utf8_percent_encode(rd, QUERY_VALUE)
            )
        }
    }
}

fn status_notice(code: &str) -> Html {
    let Some(m) = status_message(code) else {
        return Html::new();
    };
    let mut inner = el("strong", &[], Html::text(m.title)).push(el("p", &[], prose(m.text)));
    if let Some(hint) = m.hint {
        inner.append(el("p", &[], prose(hint)));
    }
    match m.tone {
        Tone::Info => el(
            "div",
            &[("class", "notice info"), ("role", "status")],
            inner,
        ),
        Tone::Error => el(
            "div",
            &[("class", "notice error"), ("role", "alert")],
            inner.push(el(
                "p",
                &[("class", "ref")],
                Html::lit("Reference: ").push(el("code", &[], Html::text(code))),
            )),
        ),
    }
}

fn warnings_notice(warnings: &[String]) -> Html {
    let items: Vec<&String> = warnings.iter().filter(|w| !w.trim().is_empty()).collect();
    if items.is_empty() {
        return Html::new();
    }
    let body = if let [only] = items.as_slice() {
        el("p", &[], prose(only))
    } else {
        el(
            "ul",
            &[],
            items.iter().map(|w| el("li", &[], prose(w))).collect(),
        )
    };
    el(
        "div",
        &[("class", "notice warning"), ("role", "alert")],
        el("strong", &[], Html::lit("Configuration warning")).push(body),
    )
}

fn api_key_form(page: &LoginPage<'_>, primary: bool) -> Html {
    let mut fields = void(
        "input",
        &[
            ("type", "hidden"),
            ("name", "csrf"),
            ("value", page.csrf_token),
        ],
    );
    if let Some(rd) = page.return_target {
        fields.append(void(
            "input",
            &[("type", "hidden"), ("name", "rd"), ("value", rd)],
        ));
    }
    fields.append(el(
        "label",
        &[("for", "api_key")],
        Html::lit("Headscale API key"),
    ));
    let mut input: Vec<(&'static str, &str)> = vec![
        ("id", "api_key"),
        ("name", "api_key"),
        ("type", "password"),
        ("autocomplete", "off"),
        ("autocapitalize", "off"),
        ("spellcheck", "false"),
        ("required", ""),
    ];
    if page.api_key_error.is_some() {
        input.extend([
            ("aria-invalid", "true"),
            ("aria-describedby", "api_key_error"),
            ("autofocus", ""),
        ]);
    }
    fields.append(void("input", &input));
    if let Some(err) = page.api_key_error {
        fields.append(el(
            "p",
            &[
                ("class", "field-error"),
                ("id", "api_key_error"),
                ("role", "alert"),
            ],
            Html::text(err),
        ));
    }
    let class = if primary {
        "button primary"
    } else {
        "button secondary"
    };
    fields.append(el(
        "button",
        &[("class", class), ("type", "submit")],
        Html::lit("Sign in with API key"),
    ));
    let form = el(
        "form",
        &[("method", "post"), ("action", page.login_path)],
        fields,
    );
    let help = Html::lit(
        "<p class=\"help\">An administrator can create one with <code>headscale apikeys create</code>.</p>",
    );
    let class = if primary {
        "api-key"
    } else {
        "secondary-section api-key"
    };
    el(
        "section",
        &[("class", class), ("aria-label", "Sign in with an API key")],
        form.push(help),
    )
}

/// The complete sign-in page.
pub fn render(page: &LoginPage<'_>) -> String {
    let mut card = mark().push(el("h1", &[], Html::lit("Sign in"))).push(el(
        "p",
        &[("class", "lead")],
        Html::lit("Continue to Headplane"),
    ));
    if let Some(code) = page.status {
        card.append(status_notice(code));
    }
    card.append(warnings_notice(page.warnings));

    let sso_button = page.sso == Sso::Available;
    match page.sso {
        Sso::Available => {
            let href = sso_href(page.start_path, page.return_target);
            card.append(el(
                "a",
                &[("class", "button primary"), ("href", &href)],
                Html::lit("Sign in with SSO"),
            ));
        }
        Sso::Unavailable { reason } => {
            card.append(el(
                "div",
                &[("class", "notice warning")],
                el(
                    "p",
                    &[],
                    Html::lit("Single sign-on is unavailable: ").push(prose(reason)),
                ),
            ));
        }
        Sso::NotConfigured => {}
    }

    if page.api_key_form {
        if sso_button {
            card.append(Html::lit(
                "<div class=\"divider\" role=\"separator\">or</div>",
            ));
        }
        card.append(api_key_form(page, !sso_button));
    } else {
        if let Some(err) = page.api_key_error {
            card.append(el(
                "div",
                &[("class", "notice error"), ("role", "alert")],
                el("p", &[], Html::text(err)),
            ));
        }
        if page.sso == Sso::NotConfigured {
            card.append(el(
                "div",
                &[("class", "notice error")],
                prose_p(
                    "No way to sign in is set up. The administrator needs to configure `[oidc]` or turn \
                     off `oidc.disable_api_key_login`.",
                ),
            ));
        }
    }

    let body = el("main", &[("class", "card")], card).push(footer());
    layout("Sign in · Headplane", body)
}

fn prose_p(s: &'static str) -> Html {
    el("p", &[], prose(s))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{
        PAYLOADS, assert_escaped, assert_no_bare_ampersand, assert_self_contained,
    };
    use super::*;

    fn page<'a>() -> LoginPage<'a> {
        LoginPage {
            sso: Sso::Available,
            api_key_form: true,
            status: None,
            api_key_error: None,
            warnings: &[],
            return_target: None,
            csrf_token: "tok123",
            start_path: "/admin/oidc/start",
            login_path: "/admin/login",
        }
    }

    fn check_clean(out: &str) {
        assert_self_contained(out);
        assert_no_bare_ampersand(out);
    }

    #[test]
    fn default_page_has_sso_and_form() {
        let out = render(&page());
        check_clean(&out);
        assert!(out.contains(
            "<a class=\"button primary\" href=\"/admin/oidc/start\">Sign in with SSO</a>"
        ));
        assert!(out.contains("<form method=\"post\" action=\"/admin/login\">"));
        assert!(out.contains("<input type=\"hidden\" name=\"csrf\" value=\"tok123\">"));
        assert!(out.contains(
            "<input id=\"api_key\" name=\"api_key\" type=\"password\" autocomplete=\"off\""
        ));
        assert!(!out.contains("name=\"rd\""));
        assert!(!out.contains("notice"));
        assert_eq!(out.matches("<form").count(), 1);
    }

    #[test]
    fn form_posts_to_the_configured_path_with_csrf_and_rd() {
        let p = LoginPage {
            login_path: "/other/login",
            return_target: Some("/admin/machines?x=1&y=2"),
            ..page()
        };
        let out = render(&p);
        check_clean(&out);
        assert!(out.contains("<form method=\"post\" action=\"/other/login\">"));
        assert!(out.contains("<input type=\"hidden\" name=\"csrf\" value=\"tok123\">"));
        assert!(
            out.contains(
                "<input type=\"hidden\" name=\"rd\" value=\"/admin/machines?x=1&amp;y=2\">"
            )
        );
        // The hidden fields sit inside the form.
        let form = &out[out.find("<form").unwrap()..out.find("</form>").unwrap()];
        assert!(form.contains("name=\"csrf\""));
        assert!(form.contains("name=\"rd\""));
        assert!(form.contains("name=\"api_key\""));
    }

    #[test]
    fn sso_link_carries_the_urlencoded_return_target() {
        let p = LoginPage {
            return_target: Some("/admin/machines/1?tab=routes&q=a b"),
            ..page()
        };
        let out = render(&p);
        assert!(out.contains(
            "href=\"/admin/oidc/start?rd=%2Fadmin%2Fmachines%2F1%3Ftab%3Droutes%26q%3Da%20b\""
        ));
        assert_eq!(
            sso_href("/admin/oidc/start?x=1", Some("/a")),
            "/admin/oidc/start?x=1&rd=%2Fa"
        );
        assert_eq!(sso_href("/admin/oidc/start", None), "/admin/oidc/start");
        assert_eq!(sso_href("/s", Some("/ü")), "/s?rd=%2F%C3%BC");
    }

    #[test]
    fn disabled_form_is_absent() {
        let p = LoginPage {
            api_key_form: false,
            ..page()
        };
        let out = render(&p);
        check_clean(&out);
        assert!(!out.contains("<form"));
        assert!(!out.contains("api_key"));
        assert!(!out.contains("csrf"));
        assert!(!out.contains("divider"));
        assert!(out.contains("Sign in with SSO"));
    }

    #[test]
    fn disabled_form_still_shows_an_api_key_error() {
        let p = LoginPage {
            api_key_form: false,
            api_key_error: Some(API_KEY_LOGIN_DISABLED),
            ..page()
        };
        let out = render(&p);
        assert!(!out.contains("<form"));
        assert!(out.contains(API_KEY_LOGIN_DISABLED));
    }

    #[test]
    fn sso_unavailable_shows_the_reason_and_no_button() {
        let p = LoginPage {
            sso: Sso::Unavailable {
                reason: "the identity provider could not be reached",
            },
            ..page()
        };
        let out = render(&p);
        check_clean(&out);
        assert!(
            out.contains(
                "Single sign-on is unavailable: the identity provider could not be reached"
            )
        );
        assert!(!out.contains("Sign in with SSO"));
        assert!(!out.contains("/admin/oidc/start"));
        assert!(!out.contains("divider"));
        // The API-key form becomes the primary action.
        assert!(out.contains("<button class=\"button primary\" type=\"submit\">"));
    }

    #[test]
    fn sso_not_configured_shows_neither_button_nor_notice() {
        let p = LoginPage {
            sso: Sso::NotConfigured,
            ..page()
        };
        let out = render(&p);
        assert!(!out.contains("Sign in with SSO"));
        assert!(!out.contains("unavailable"));
        assert!(out.contains("<form"));
    }

    #[test]
    fn nothing_configured_says_so() {
        let p = LoginPage {
            sso: Sso::NotConfigured,
            api_key_form: false,
            ..page()
        };
        let out = render(&p);
        assert!(out.contains("No way to sign in is set up"));
        assert!(out.contains("<code>oidc.disable_api_key_login</code>"));
    }

    #[test]
    fn every_status_code_renders_its_text() {
        for code in STATUS_CODES {
            let m = status_message(code).expect(code);
            let p = LoginPage {
                status: Some(code),
                ..page()
            };
            let out = render(&p);
            check_clean(&out);
            assert!(out.contains(&escape_prose(m.title)), "{code}: title");
            assert!(out.contains(&escape_prose(m.text)), "{code}: text");
            if let Some(h) = m.hint {
                assert!(out.contains(&escape_prose(h)), "{code}: hint");
            }
            match m.tone {
                Tone::Info => assert!(out.contains("notice info")),
                Tone::Error => {
                    assert!(out.contains("notice error"));
                    assert!(out.contains(&format!("Reference: <code>{code}</code>")));
                    assert!(m.hint.is_some(), "{code}: errors say what to try");
                }
            }
        }
    }

    fn escape_prose(s: &str) -> String {
        prose(s).into_string()
    }

    #[test]
    fn specific_status_texts() {
        let text = |c| status_message(c).unwrap();
        assert_eq!(text("logout").text, "You have been logged out.");
        assert_eq!(text("logout").tone, Tone::Info);
        assert!(
            text("error_no_session")
                .hint
                .unwrap()
                .contains("`server.cookie_secure`")
        );
        assert!(text("error_no_session").text.contains("cookie"));
        assert!(text("error_no_sub").text.contains("`sub`"));
        assert!(
            text("error_no_sub")
                .hint
                .unwrap()
                .contains("`oidc.subject_claims`")
        );
        assert!(
            text("error_auth_failed")
                .hint
                .unwrap()
                .contains("`oidc.client_secret`")
        );
        assert!(
            text("error_no_query")
                .hint
                .unwrap()
                .contains("/admin/oidc/callback")
        );
        assert!(text("error_expired").text.contains("session has ended"));
        assert!(text("error_rate_limited").title.contains("Too many"));
        assert!(text("error_not_allowed").text.contains("not allowed"));
        let out = render(&LoginPage {
            status: Some("logout"),
            ..page()
        });
        assert!(out.contains("You have been logged out."));
    }

    #[test]
    fn unknown_status_codes_show_nothing() {
        let plain = render(&page());
        for code in ["", "error_", "bogus", "<script>alert(1)</script>", "LOGOUT"] {
            assert!(status_message(code).is_none());
            let out = render(&LoginPage {
                status: Some(code),
                ..page()
            });
            assert_eq!(out, plain, "{code}");
        }
    }

    #[test]
    fn api_key_errors_are_shown_at_the_field() {
        for msg in [
            API_KEY_EXPIRED,
            API_KEY_NOT_FOUND,
            API_KEY_INVALID,
            API_KEY_MISSING,
            API_KEY_EMPTY,
            &too_many_attempts(600),
        ] {
            let out = render(&LoginPage {
                api_key_error: Some(msg),
                ..page()
            });
            check_clean(&out);
            let form = &out[out.find("<form").unwrap()..out.find("</form>").unwrap()];
            assert!(form.contains(&format!(
                "<p class=\"field-error\" id=\"api_key_error\" role=\"alert\">{}</p>",
                super::super::escape(msg)
            )));
            assert!(form.contains("aria-invalid=\"true\""));
        }
    }

    #[test]
    fn too_many_attempts_wording() {
        assert_eq!(
            too_many_attempts(600),
            "Too many failed attempts: try again in 10 minutes"
        );
        assert_eq!(
            too_many_attempts(61),
            "Too many failed attempts: try again in 2 minutes"
        );
        assert_eq!(
            too_many_attempts(0),
            "Too many failed attempts: try again in 1 minute"
        );
    }

    #[test]
    fn warnings_are_shown_in_a_warning_box() {
        let one = vec![
            "`server.cookie_secure` is on but this page was loaded over plain HTTP".to_owned(),
        ];
        let out = render(&LoginPage {
            warnings: &one,
            ..page()
        });
        assert!(out.contains("class=\"notice warning\""));
        assert!(out.contains(
            "<code>server.cookie_secure</code> is on but this page was loaded over plain HTTP"
        ));
        let two = vec!["first".to_owned(), "second".to_owned(), "  ".to_owned()];
        let out = render(&LoginPage {
            warnings: &two,
            ..page()
        });
        assert!(out.contains("<ul><li>first</li><li>second</li></ul>"));
        let blank = vec![String::new()];
        assert!(
            !render(&LoginPage {
                warnings: &blank,
                ..page()
            })
            .contains("notice")
        );
    }

    #[test]
    fn every_outside_field_is_escaped() {
        for payload in PAYLOADS {
            let warnings = vec![payload.to_string(), format!("`{payload}`")];
            let pages = [
                LoginPage {
                    sso: Sso::Unavailable { reason: payload },
                    ..page()
                },
                LoginPage {
                    sso: Sso::Unavailable {
                        reason: &format!("`{payload}`"),
                    },
                    ..page()
                },
                LoginPage {
                    warnings: &warnings,
                    ..page()
                },
                LoginPage {
                    return_target: Some(payload),
                    ..page()
                },
                LoginPage {
                    return_target: Some(payload),
                    sso: Sso::NotConfigured,
                    ..page()
                },
                LoginPage {
                    csrf_token: payload,
                    ..page()
                },
                LoginPage {
                    api_key_error: Some(payload),
                    ..page()
                },
                LoginPage {
                    api_key_error: Some(payload),
                    api_key_form: false,
                    ..page()
                },
                LoginPage {
                    status: Some(payload),
                    ..page()
                },
                LoginPage {
                    start_path: payload,
                    login_path: payload,
                    return_target: Some(payload),
                    ..page()
                },
            ];
            for (i, p) in pages.iter().enumerate() {
                let out = render(p);
                assert_escaped(&out, payload);
                assert_no_bare_ampersand(&out);
                assert!(!out.contains("<script"), "case {i}");
            }
        }
    }
}
