//! The own pre-auth keys page at `/_headgate/keys` (`spec/policy.md` section 3): for people with
//! `generate_own_authkeys` but not `generate_authkeys`, the keys of their own linked Headscale user only
//! (masked prefixes), a form to create one (single use, no tags, expiry up to the configured cap) and a
//! button to expire one. A key just created is shown once.

use super::html::{Html, el, prose, void};
use super::{footer, layout, mark};

/// One of the person's own keys, as listed (never the full key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    /// The masked prefix (`hskey-auth-abcdefghijkl-***`).
    pub prefix: String,
    pub created: String,
    pub expires: String,
    pub used: bool,
    pub expired: bool,
    pub reusable: bool,
    pub ephemeral: bool,
    pub tags: Vec<String>,
}

/// The masked prefix of a listed key: `hskey-auth-<12>-***`, or the first 8 characters of an older key.
/// Whatever Headscale sends, no more than that reaches the page.
pub fn masked_prefix(key: &str) -> String {
    let visible: String = match key.strip_prefix("hskey-auth-") {
        Some(rest) => {
            let id: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .take(12)
                .collect();
            format!("hskey-auth-{id}-")
        }
        None => key
            .chars()
            .take_while(|c| *c != '*' && *c != '-')
            .take(8)
            .collect(),
    };
    format!("{visible}***")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewKey<'a> {
    pub key: &'a str,
    pub expires: &'a str,
}

#[derive(Clone, Debug)]
pub enum KeysView<'a> {
    /// The role has `generate_authkeys`: Headplane's own key page is theirs.
    UseHeadplane { href: &'a str },
    /// No effective link (none, or pending approval).
    NotLinked {
        pending: bool,
        onboarding_href: &'a str,
    },
    List {
        headscale_user: &'a str,
        keys: &'a [KeyRow],
        /// Listing failed (Headscale unreachable): the message to show.
        list_error: Option<&'a str>,
        /// `onboarding.own_key_max_expiry` in seconds.
        max_expiry_secs: u64,
        new_key: Option<NewKey<'a>>,
        login_server: &'a str,
        csrf_token: &'a str,
    },
}

#[derive(Clone, Debug)]
pub struct KeysPage<'a> {
    pub view: KeysView<'a>,
    pub info: Option<&'a str>,
    pub error: Option<&'a str>,
    pub path: &'a str,
}

/// "90 minutes", "24 hours", "7 days".
pub fn duration_words(secs: u64) -> String {
    let plural = |n: u64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    if secs.is_multiple_of(86400) && secs >= 86400 {
        plural(secs / 86400, "day")
    } else if secs.is_multiple_of(3600) && secs >= 3600 {
        plural(secs / 3600, "hour")
    } else {
        plural(secs.div_ceil(60), "minute")
    }
}

fn hidden(name: &'static str, value: &str) -> Html {
    void(
        "input",
        &[("type", "hidden"), ("name", name), ("value", value)],
    )
}

fn key_table(keys: &[KeyRow], path: &str, csrf: &str) -> Html {
    if keys.is_empty() {
        return el(
            "p",
            &[("class", "help")],
            Html::lit("You have no pre-auth keys yet."),
        );
    }
    let head = el(
        "thead",
        &[],
        el(
            "tr",
            &[],
            Html::lit("<th>Key</th><th>Expires</th><th>State</th><th></th>"),
        ),
    );
    let mut rows = Html::new();
    for k in keys {
        let state = if k.expired {
            "expired"
        } else if k.used {
            "used"
        } else {
            "usable"
        };
        let mut flags = Vec::new();
        if k.reusable {
            flags.push("reusable".to_string());
        }
        if k.ephemeral {
            flags.push("ephemeral".to_string());
        }
        flags.extend(k.tags.iter().cloned());
        let mut state_cell = Html::text(state);
        if !flags.is_empty() {
            state_cell.append(el(
                "span",
                &[("class", "choice-meta")],
                Html::text(&flags.join(", ")),
            ));
        }
        let action = if k.expired {
            Html::new()
        } else {
            el(
                "form",
                &[("method", "post"), ("action", path)],
                hidden("csrf", csrf)
                    .push(hidden("action", "expire"))
                    .push(hidden("key_id", &k.id))
                    .push(el(
                        "button",
                        &[("class", "button small"), ("type", "submit")],
                        Html::lit("Expire"),
                    )),
            )
        };
        rows.append(el(
            "tr",
            &[("data-key-id", &k.id)],
            el("td", &[], el("code", &[], Html::text(&k.prefix)))
                .push(el("td", &[], Html::text(&k.expires)))
                .push(el("td", &[], state_cell))
                .push(el("td", &[], action)),
        ));
    }
    el(
        "table",
        &[("class", "keys")],
        head.push(el("tbody", &[], rows)),
    )
}

fn create_form(path: &str, csrf: &str, max: u64) -> Html {
    let max_words = duration_words(max);
    el(
        "form",
        &[("method", "post"), ("action", path), ("class", "create-key")],
        hidden("csrf", csrf)
            .push(hidden("action", "create"))
            .push(el("label", &[("for", "expiry")], Html::lit("Valid for")))
            .push(el(
                "div",
                &[("class", "inline")],
                void(
                    "input",
                    &[
                        ("type", "number"),
                        ("id", "expiry"),
                        ("name", "expiry"),
                        ("min", "1"),
                        ("value", "1"),
                        ("required", ""),
                    ],
                )
                .push(el(
                    "select",
                    &[("name", "unit"), ("aria-label", "Unit")],
                    Html::lit(
                        "<option value=\"hours\" selected>hours</option><option value=\"minutes\">minutes</option>",
                    ),
                )),
            ))
            .push(el(
                "p",
                &[("class", "help")],
                Html::text(&format!(
                    "Single use, no tags, for your own Headscale user. At least 5 minutes, at most {max_words}."
                )),
            ))
            .push(el(
                "button",
                &[("class", "button primary"), ("type", "submit")],
                Html::lit("Create key"),
            )),
    )
}

/// The complete keys page.
pub fn render(page: &KeysPage<'_>) -> String {
    let mut card = mark().push(el("h1", &[], Html::lit("Your pre-auth keys")));
    if let Some(e) = page.error {
        card.append(el(
            "div",
            &[("class", "notice error"), ("role", "alert")],
            el("p", &[], prose(e)),
        ));
    }
    if let Some(i) = page.info {
        card.append(el(
            "div",
            &[("class", "notice info"), ("role", "status")],
            el("p", &[], prose(i)),
        ));
    }
    match &page.view {
        KeysView::UseHeadplane { href } => {
            card.append(el(
                "p",
                &[("class", "lead")],
                Html::lit(
                    "Your role can create pre-auth keys for every user: use Headplane's own key page instead.",
                ),
            ));
            card.append(el(
                "div",
                &[("class", "actions")],
                el(
                    "a",
                    &[("class", "button primary"), ("href", href)],
                    Html::lit("Open Headplane's key page"),
                ),
            ));
        }
        KeysView::NotLinked {
            pending,
            onboarding_href,
        } => {
            let text = if *pending {
                "Your pick of a Headscale user is waiting for an administrator's approval. Keys can be created \
                 once it is approved."
            } else {
                "Your account is not linked to a Headscale user, so there is nobody to create keys for. Pick \
                 your Headscale user during onboarding, or ask an administrator to link it."
            };
            card.append(el("p", &[("class", "lead")], Html::lit(text)));
            card.append(el(
                "div",
                &[("class", "actions")],
                el(
                    "a",
                    &[("class", "button secondary"), ("href", onboarding_href)],
                    Html::lit("Go to onboarding"),
                ),
            ));
        }
        KeysView::List {
            headscale_user,
            keys,
            list_error,
            max_expiry_secs,
            new_key,
            login_server,
            csrf_token,
        } => {
            card.append(el(
                "p",
                &[("class", "lead")],
                Html::lit("Keys of your Headscale user ")
                    .push(el("code", &[], Html::text(headscale_user)))
                    .push(Html::lit(". Each registers one device as yours.")),
            ));
            if let Some(k) = new_key {
                let up = format!(
                    "tailscale up --login-server {login_server} --authkey {}",
                    k.key
                );
                card.append(el(
                    "div",
                    &[("class", "notice info new-key"), ("role", "status")],
                    el("strong", &[], Html::lit("Your new key"))
                        .push(el(
                            "p",
                            &[],
                            Html::text(&format!(
                                "Copy it now: it is shown only this once. It expires {}.",
                                k.expires
                            )),
                        ))
                        .push(el(
                            "pre",
                            &[],
                            el("code", &[("class", "secret")], Html::text(k.key)),
                        ))
                        .push(el("pre", &[], el("code", &[], Html::text(&up)))),
                ));
            }
            if let Some(e) = list_error {
                card.append(el(
                    "div",
                    &[("class", "notice error"), ("role", "alert")],
                    el("p", &[], prose(e)),
                ));
            } else {
                card.append(key_table(keys, page.path, csrf_token));
            }
            card.append(el("h2", &[("class", "spaced")], Html::lit("New key")));
            card.append(create_form(page.path, csrf_token, *max_expiry_secs));
        }
    }
    let body = el("main", &[("class", "card wide")], card).push(footer());
    layout("Your pre-auth keys", body)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{PAYLOADS, assert_escaped, assert_no_bare_ampersand};
    use super::*;

    #[test]
    fn masking() {
        assert_eq!(
            masked_prefix("hskey-auth-abcdefghijkl-0123456789"),
            "hskey-auth-abcdefghijkl-***"
        );
        assert_eq!(
            masked_prefix("hskey-auth-abcdefghijkl-***"),
            "hskey-auth-abcdefghijkl-***"
        );
        assert_eq!(
            masked_prefix("0123456789abcdef0123456789abcdef"),
            "01234567***"
        );
        assert_eq!(masked_prefix("abc***"), "abc***");
        assert_eq!(masked_prefix(""), "***");
    }

    #[test]
    fn durations() {
        assert_eq!(duration_words(86400), "1 day");
        assert_eq!(duration_words(7 * 86400), "7 days");
        assert_eq!(duration_words(3600), "1 hour");
        assert_eq!(duration_words(5400), "90 minutes");
        assert_eq!(duration_words(300), "5 minutes");
    }

    #[test]
    fn every_field_is_escaped() {
        for p in PAYLOADS {
            let rows = vec![KeyRow {
                id: p.to_string(),
                prefix: p.to_string(),
                created: p.to_string(),
                expires: p.to_string(),
                used: false,
                expired: false,
                reusable: true,
                ephemeral: false,
                tags: vec![p.to_string()],
            }];
            let page = KeysPage {
                view: KeysView::List {
                    headscale_user: p,
                    keys: &rows,
                    list_error: None,
                    max_expiry_secs: 86400,
                    new_key: Some(NewKey { key: p, expires: p }),
                    login_server: p,
                    csrf_token: p,
                },
                info: Some(p),
                error: Some(p),
                path: "/_headgate/keys",
            };
            let out = render(&page);
            assert_escaped(&out, p);
            assert_no_bare_ampersand(&out);
        }
    }
}
