//! The user administration page at `/_headgate/users`: the users table (name, email, role, link, last
//! sign-in, active sessions), the per-row forms for `write_users` holders, the owner's transfer form and the
//! audit log (newest first, paged). A pure function from data to a document: every string that comes from
//! a person, the IdP, Headscale or the store is escaped by [`Html`].

use time::OffsetDateTime;

use super::html::{Html, el, prose, void};
use super::{footer, layout, mark};
use crate::store::{AuditEvent, Role};

/// Where the page lives and where its forms post.
pub const USERS_PATH: &str = "/_headgate/users";

/// Audit rows per page.
pub const AUDIT_PAGE: usize = 50;

/// The roles a role change may assign, in the order the select offers them (never `owner`).
pub const ASSIGNABLE: [Role; 6] = [
    Role::Admin,
    Role::NetworkAdmin,
    Role::ItAdmin,
    Role::Auditor,
    Role::Viewer,
    Role::Member,
];

/// A role as people read it (Headplane's names).
pub fn role_label(r: Role) -> &'static str {
    match r {
        Role::Owner => "Owner",
        Role::Admin => "Admin",
        Role::NetworkAdmin => "Network Admin",
        Role::ItAdmin => "IT Admin",
        Role::Auditor => "Auditor",
        Role::Viewer => "Viewer",
        Role::Member => "Member",
    }
}

/// The `?done=` codes the page knows and the message each shows. Unknown codes show nothing: the page never
/// echoes what the query says.
pub fn flash_message(code: &str) -> Option<&'static str> {
    Some(match code {
        "role_changed" => "The role was changed. It applies from the person's next request.",
        "link_approved" => "The link was approved.",
        "link_refused" => "The pending link was refused.",
        "linked" => "The user was linked to the Headscale user.",
        "unlinked" => "The link was removed.",
        "sessions_revoked" => "The person's sessions were ended.",
        "ownership_transferred" => "Ownership was transferred. You are now an Admin.",
        _ => return None,
    })
}

/// A user's link as the table shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkView<'a> {
    None,
    Pending { hs_id: &'a str, hs_name: &'a str },
    Linked { hs_id: &'a str, hs_name: &'a str },
}

/// One row of the users table.
#[derive(Clone, Debug)]
pub struct UserRow<'a> {
    pub id: u64,
    pub name: Option<&'a str>,
    pub email: Option<&'a str>,
    pub email_verified: bool,
    pub subject: &'a str,
    pub role: Role,
    pub link: LinkView<'a>,
    /// Unix seconds.
    pub last_login: i64,
    /// Sessions that have not expired.
    pub sessions: usize,
    /// The row of the person looking at the page.
    pub is_self: bool,
}

/// An unclaimed Headscale user offered by the link picker.
#[derive(Clone, Debug)]
pub struct HsChoice {
    pub id: String,
    pub label: String,
}

/// The Headscale users the link picker offers.
#[derive(Clone, Debug)]
pub enum Picker<'a> {
    /// Unclaimed Headscale users (possibly none).
    Choices(&'a [HsChoice]),
    /// Headscale is not configured or did not answer: the reason is shown instead of a picker.
    Unavailable(&'a str),
}

/// Everything the page shows.
#[derive(Clone, Debug)]
pub struct UsersPage<'a> {
    /// Who is looking (name, email, subject or "API key …").
    pub viewer: &'a str,
    /// Their role's label (or "API key").
    pub viewer_role: &'a str,
    /// Show the forms (`write_users`).
    pub can_write: bool,
    /// Show the transfer form (the owner only).
    pub is_owner: bool,
    /// `oidc.role_claim`, when the IdP owns roles (S13): role forms are disabled.
    pub role_claim: Option<&'a str>,
    /// The session-bound CSRF token for every form.
    pub csrf_token: &'a str,
    /// The `?done=` code (shown only when it is a known one).
    pub flash: Option<&'a str>,
    pub users: &'a [UserRow<'a>],
    pub picker: Picker<'a>,
    /// Audit events, newest first (at most [`AUDIT_PAGE`]).
    pub audit: &'a [AuditEvent],
    /// The `before` id of the next (older) audit page, when there is one.
    pub older: Option<u64>,
    /// Whether this is not the newest audit page (offer a link back to it).
    pub paged: bool,
}

/// `2025-01-31 14:05 UTC`.
pub fn format_time(unix: i64) -> String {
    match OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => "—".to_string(),
    }
}

fn time_el(unix: i64) -> Html {
    let iso = OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    el(
        "time",
        &[("datetime", &iso)],
        Html::text(&format_time(unix)),
    )
}

fn hidden(name: &'static str, value: &str) -> Html {
    void(
        "input",
        &[("type", "hidden"), ("name", name), ("value", value)],
    )
}

/// A POST form to the page with the action, the target and the token, then `fields` and a submit button.
fn action_form(
    p: &UsersPage<'_>,
    action: &'static str,
    user_id: &str,
    fields: Html,
    button: &'static str,
    danger: bool,
    disabled: bool,
) -> Html {
    let mut btn_attrs: Vec<(&'static str, &str)> = vec![
        ("type", "submit"),
        ("class", if danger { "small danger" } else { "small" }),
    ];
    if disabled {
        btn_attrs.push(("disabled", ""));
    }
    el(
        "form",
        &[
            ("method", "post"),
            ("action", USERS_PATH),
            ("class", "row-form"),
        ],
        hidden("action", action)
            .push(hidden("user_id", user_id))
            .push(hidden("csrf", p.csrf_token))
            .push(fields)
            .push(el("button", &btn_attrs, Html::lit(button))),
    )
}

fn role_select(current: Role, disabled: bool) -> Html {
    let options: Html = ASSIGNABLE
        .iter()
        .map(|r| {
            let mut attrs: Vec<(&'static str, &str)> = vec![("value", r.as_str())];
            if *r == current {
                attrs.push(("selected", ""));
            }
            el("option", &attrs, Html::text(role_label(*r)))
        })
        .collect();
    let mut attrs: Vec<(&'static str, &str)> = vec![("name", "role"), ("aria-label", "Role")];
    if disabled {
        attrs.push(("disabled", ""));
    }
    el("select", &attrs, options)
}

fn link_cell(link: &LinkView<'_>) -> Html {
    let named = |state: &'static str, class: &'static str, id: &str, name: &str| {
        el("span", &[("class", class)], Html::lit(state))
            .push(Html::lit(" "))
            .push(Html::text(if name.is_empty() { "(no name)" } else { name }))
            .push(el(
                "span",
                &[("class", "muted")],
                Html::text(&format!(" #{id}")),
            ))
    };
    match link {
        LinkView::None => el("span", &[("class", "muted")], Html::lit("not linked")),
        LinkView::Pending { hs_id, hs_name } => named("pending", "badge warn", hs_id, hs_name),
        LinkView::Linked { hs_id, hs_name } => named("linked", "badge", hs_id, hs_name),
    }
}

fn actions_cell(p: &UsersPage<'_>, u: &UserRow<'_>) -> Html {
    let id = u.id.to_string();
    let mut out = Html::new();
    // Role: never for the owner's row (the owner is never demoted; ownership is transferred instead).
    if u.role == Role::Owner {
        out.append(el(
            "p",
            &[("class", "note")],
            Html::lit("The owner's role changes only by a transfer."),
        ));
    } else {
        let locked = p.role_claim.is_some();
        out.append(action_form(
            p,
            "set_role",
            &id,
            role_select(u.role, locked),
            "Change role",
            false,
            locked,
        ));
        if let Some(claim) = p.role_claim {
            out.append(el(
                "p",
                &[("class", "note")],
                prose(&format!(
                    "Roles come from the identity provider's `{claim}` claim (`oidc.role_claim`): change them there."
                )),
            ));
        }
    }
    // Link.
    match &u.link {
        LinkView::Pending { .. } => {
            out.append(action_form(
                p,
                "approve_link",
                &id,
                Html::new(),
                "Approve link",
                false,
                false,
            ));
            out.append(action_form(
                p,
                "refuse_link",
                &id,
                Html::new(),
                "Refuse link",
                true,
                false,
            ));
        }
        LinkView::Linked { .. } => {
            out.append(action_form(
                p,
                "unlink",
                &id,
                Html::new(),
                "Unlink",
                true,
                false,
            ));
        }
        LinkView::None => match &p.picker {
            Picker::Choices(choices) if !choices.is_empty() => {
                let options: Html = choices
                    .iter()
                    .map(|c| el("option", &[("value", &c.id)], Html::text(&c.label)))
                    .collect();
                out.append(action_form(
                    p,
                    "link",
                    &id,
                    el(
                        "select",
                        &[
                            ("name", "headscale_user_id"),
                            ("aria-label", "Headscale user"),
                        ],
                        options,
                    ),
                    "Link",
                    false,
                    false,
                ));
            }
            Picker::Choices(_) => out.append(el(
                "p",
                &[("class", "note")],
                Html::lit("No unclaimed Headscale user to link."),
            )),
            Picker::Unavailable(why) => {
                out.append(el("p", &[("class", "note")], prose(why)));
            }
        },
    }
    if u.sessions > 0 {
        out.append(action_form(
            p,
            "revoke_sessions",
            &id,
            Html::new(),
            "Revoke sessions",
            true,
            false,
        ));
    }
    out
}

fn users_table(p: &UsersPage<'_>) -> Html {
    let mut head = Html::new();
    for h in [
        "Name",
        "Email",
        "Role",
        "Headscale user",
        "Last sign-in",
        "Sessions",
    ] {
        head.append(el("th", &[("scope", "col")], Html::text(h)));
    }
    if p.can_write {
        head.append(el("th", &[("scope", "col")], Html::lit("Actions")));
    }
    let rows: Html = p
        .users
        .iter()
        .map(|u| {
            let mut name = match u.name.filter(|n| !n.is_empty()) {
                Some(n) => Html::text(n),
                None => el("span", &[("class", "muted")], Html::text(u.subject)),
            };
            if u.is_self {
                name.append(el("span", &[("class", "muted")], Html::lit(" (you)")));
            }
            let email = match u.email {
                Some(e) if u.email_verified => Html::text(e),
                Some(e) => Html::text(e).push(el(
                    "span",
                    &[("class", "muted")],
                    Html::lit(" (unverified)"),
                )),
                None => el("span", &[("class", "muted")], Html::lit("—")),
            };
            let role_class = if u.role == Role::Owner {
                "badge owner"
            } else {
                "badge"
            };
            let mut row = el("td", &[], name)
                .push(el("td", &[], email))
                .push(el(
                    "td",
                    &[],
                    el(
                        "span",
                        &[("class", role_class)],
                        Html::text(role_label(u.role)),
                    ),
                ))
                .push(el("td", &[], link_cell(&u.link)))
                .push(el("td", &[], time_el(u.last_login)))
                .push(el(
                    "td",
                    &[("class", "num")],
                    Html::text(&u.sessions.to_string()),
                ));
            if p.can_write {
                row.append(el("td", &[("class", "actions-cell")], actions_cell(p, u)));
            }
            el("tr", &[("id", &format!("user-{}", u.id))], row)
        })
        .collect();
    let body = if p.users.is_empty() {
        el(
            "tr",
            &[],
            el(
                "td",
                &[("colspan", "7"), ("class", "muted")],
                Html::lit("Nobody has signed in yet."),
            ),
        )
    } else {
        rows
    };
    el(
        "div",
        &[("class", "table-wrap")],
        el(
            "table",
            &[("class", "grid")],
            el("thead", &[], el("tr", &[], head)).push(el("tbody", &[], body)),
        ),
    )
}

fn transfer_section(p: &UsersPage<'_>) -> Html {
    let candidates: Html = p
        .users
        .iter()
        .filter(|u| u.role != Role::Owner)
        .map(|u| {
            let who = u
                .name
                .filter(|n| !n.is_empty())
                .or(u.email)
                .unwrap_or(u.subject);
            let label = format!("{who} (user {})", u.id);
            el(
                "option",
                &[("value", &u.id.to_string())],
                Html::text(&label),
            )
        })
        .collect();
    let mut sec = el("h2", &[], Html::lit("Transfer ownership")).push(el(
        "p",
        &[("class", "note")],
        Html::lit(
            "The person you choose becomes the owner; you become an Admin. Only they can give ownership back.",
        ),
    ));
    if candidates.is_empty() {
        sec.append(el(
            "p",
            &[("class", "note")],
            Html::lit("Nobody else has signed in yet."),
        ));
    } else {
        sec.append(el(
            "form",
            &[
                ("method", "post"),
                ("action", USERS_PATH),
                ("class", "row-form"),
            ],
            hidden("action", "transfer_ownership")
                .push(hidden("csrf", p.csrf_token))
                .push(el(
                    "select",
                    &[("name", "user_id"), ("aria-label", "New owner")],
                    candidates,
                ))
                .push(el(
                    "button",
                    &[("type", "submit"), ("class", "small danger")],
                    Html::lit("Transfer ownership"),
                )),
        ));
    }
    el("section", &[("class", "panel")], sec)
}

fn audit_section(p: &UsersPage<'_>) -> Html {
    let mut head = Html::new();
    for h in ["Time", "Who", "Action", "Target", "Detail"] {
        head.append(el("th", &[("scope", "col")], Html::text(h)));
    }
    let rows: Html = p
        .audit
        .iter()
        .map(|e| {
            el(
                "tr",
                &[],
                el("td", &[], time_el(e.at))
                    .push(el("td", &[], Html::text(&e.actor)))
                    .push(el("td", &[], el("code", &[], Html::text(&e.action))))
                    .push(el("td", &[], Html::text(&e.target)))
                    .push(el("td", &[], Html::text(&e.detail))),
            )
        })
        .collect();
    let body = if p.audit.is_empty() {
        el(
            "tr",
            &[],
            el(
                "td",
                &[("colspan", "5"), ("class", "muted")],
                Html::lit("No entries."),
            ),
        )
    } else {
        rows
    };
    let mut nav = Html::new();
    if p.paged {
        nav.append(el(
            "a",
            &[("href", USERS_PATH)],
            Html::lit("Newest entries"),
        ));
    }
    if let Some(before) = p.older {
        if !nav.is_empty() {
            nav.append(Html::lit(" · "));
        }
        let href = format!("{USERS_PATH}?before={before}#audit");
        nav.append(el("a", &[("href", &href)], Html::lit("Older entries")));
    }
    let mut sec = el("h2", &[("id", "audit")], Html::lit("Audit log")).push(el(
        "div",
        &[("class", "table-wrap")],
        el(
            "table",
            &[("class", "grid audit")],
            el("thead", &[], el("tr", &[], head)).push(el("tbody", &[], body)),
        ),
    ));
    if !nav.is_empty() {
        sec.append(el("p", &[("class", "pager")], nav));
    }
    el("section", &[("class", "panel")], sec)
}

/// The complete page.
pub fn render(p: &UsersPage<'_>) -> String {
    let mut main = mark().push(el("h1", &[], Html::lit("Users"))).push(el(
        "p",
        &[("class", "lead")],
        Html::lit("Signed in as ")
            .push(el("strong", &[], Html::text(p.viewer)))
            .push(Html::lit(" · "))
            .push(Html::text(p.viewer_role)),
    ));
    if let Some(msg) = p.flash.and_then(flash_message) {
        main.append(el(
            "div",
            &[("class", "notice info"), ("role", "status")],
            el("p", &[], Html::text(msg)),
        ));
    }
    if p.can_write && p.role_claim.is_some() {
        main.append(el(
            "div",
            &[("class", "notice warning")],
            el(
                "p",
                &[],
                prose(
                    "Roles are read-only here: the identity provider assigns them (`oidc.role_claim`), and a \
                     change there applies at the person's next sign-in.",
                ),
            ),
        ));
    }
    main.append(users_table(p));
    if p.is_owner {
        main.append(transfer_section(p));
    }
    main.append(audit_section(p));
    main.append(el(
        "p",
        &[("class", "help")],
        el("a", &[("href", "/admin/")], Html::lit("Back to Headplane")),
    ));
    let body = el("main", &[("class", "card wide")], main).push(footer());
    layout("Users · headgate", body)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{
        PAYLOADS, assert_escaped, assert_no_bare_ampersand, assert_self_contained,
    };
    use super::*;

    fn row<'a>(
        id: u64,
        name: &'a str,
        email: &'a str,
        role: Role,
        link: LinkView<'a>,
    ) -> UserRow<'a> {
        UserRow {
            id,
            name: Some(name),
            email: Some(email),
            email_verified: true,
            subject: "sub",
            role,
            link,
            last_login: 1_700_000_000,
            sessions: 1,
            is_self: id == 1,
        }
    }

    fn page<'a>(
        users: &'a [UserRow<'a>],
        picker: Picker<'a>,
        audit: &'a [AuditEvent],
    ) -> UsersPage<'a> {
        UsersPage {
            viewer: "Olivia",
            viewer_role: "Owner",
            can_write: true,
            is_owner: true,
            role_claim: None,
            csrf_token: "tok",
            flash: None,
            users,
            picker,
            audit,
            older: None,
            paged: false,
        }
    }

    #[test]
    fn owner_view_has_every_form_and_never_offers_owner() {
        let users = [
            row(1, "Olivia", "o@example.com", Role::Owner, LinkView::None),
            row(
                2,
                "Max",
                "m@example.com",
                Role::Member,
                LinkView::Pending {
                    hs_id: "7",
                    hs_name: "max",
                },
            ),
            row(
                3,
                "Vic",
                "v@example.com",
                Role::Viewer,
                LinkView::Linked {
                    hs_id: "8",
                    hs_name: "vic",
                },
            ),
        ];
        let choices = [HsChoice {
            id: "9".into(),
            label: "free".into(),
        }];
        let out = render(&page(&users, Picker::Choices(&choices), &[]));
        assert_self_contained(&out);
        assert_no_bare_ampersand(&out);
        assert!(!out.contains("value=\"owner\""), "owner is never offered");
        // Two role forms (not for the owner's row).
        assert_eq!(out.matches("name=\"action\" value=\"set_role\"").count(), 2);
        assert!(out.contains("value=\"approve_link\""));
        assert!(out.contains("value=\"refuse_link\""));
        assert!(out.contains("value=\"unlink\""));
        assert!(out.contains("value=\"link\""));
        assert!(out.contains("value=\"transfer_ownership\""));
        assert!(out.contains("<option value=\"member\" selected=\"\">Member</option>"));
        assert_eq!(out.matches("name=\"csrf\" value=\"tok\"").count(), 10);
    }

    #[test]
    fn readers_see_no_forms_and_a_role_claim_disables_roles() {
        let users = [row(2, "Max", "m@example.com", Role::Member, LinkView::None)];
        let mut p = page(&users, Picker::Unavailable("x"), &[]);
        p.can_write = false;
        p.is_owner = false;
        let out = render(&p);
        assert!(!out.contains("<form"));
        assert!(!out.contains("Actions"));
        let mut p = page(&users, Picker::Choices(&[]), &[]);
        p.role_claim = Some("groups");
        let out = render(&p);
        assert!(out.contains("<select name=\"role\" aria-label=\"Role\" disabled=\"\">"));
        assert!(out.contains("<code>groups</code>"));
        assert!(out.contains("No unclaimed Headscale user"));
    }

    #[test]
    fn flash_is_a_fixed_list() {
        let users = [];
        let mut p = page(&users, Picker::Choices(&[]), &[]);
        p.flash = Some("<script>alert(1)</script>");
        let out = render(&p);
        assert!(!out.contains("notice info"));
        p.flash = Some("role_changed");
        assert!(render(&p).contains("The role was changed"));
    }

    #[test]
    fn every_field_is_escaped() {
        for pl in PAYLOADS {
            let users = [
                row(1, pl, pl, Role::Owner, LinkView::None),
                UserRow {
                    subject: pl,
                    name: None,
                    email_verified: false,
                    ..row(
                        2,
                        pl,
                        pl,
                        Role::Member,
                        LinkView::Pending {
                            hs_id: pl,
                            hs_name: pl,
                        },
                    )
                },
                row(
                    3,
                    pl,
                    pl,
                    Role::Viewer,
                    LinkView::Linked {
                        hs_id: pl,
                        hs_name: pl,
                    },
                ),
                row(4, pl, pl, Role::Admin, LinkView::None),
            ];
            let choices = [HsChoice {
                id: pl.to_string(),
                label: pl.to_string(),
            }];
            let audit = [AuditEvent {
                id: 1,
                at: 0,
                actor: pl.to_string(),
                action: pl.to_string(),
                target: pl.to_string(),
                detail: pl.to_string(),
            }];
            let mut p = page(&users, Picker::Choices(&choices), &audit);
            p.viewer = pl;
            p.viewer_role = pl;
            p.csrf_token = pl;
            p.role_claim = Some(pl);
            let out = render(&p);
            // (Not `assert_self_contained`: the escaped payload's text " onerror=" would trip its heuristic.)
            assert_escaped(&out, pl);
            assert_no_bare_ampersand(&out);
            p.picker = Picker::Unavailable(pl);
            let out = render(&p);
            assert_escaped(&out, pl);
            assert_no_bare_ampersand(&out);
        }
    }

    #[test]
    fn audit_paging_links() {
        let users = [];
        let mut p = page(&users, Picker::Choices(&[]), &[]);
        p.older = Some(42);
        p.paged = true;
        let out = render(&p);
        assert!(out.contains("href=\"/_headgate/users?before=42#audit\""));
        assert!(out.contains(">Newest entries</a>"));
        assert_eq!(format_time(0), "1970-01-01 00:00 UTC");
    }
}
