//! The policy, row by row, against `spec/policy.md`: every role and an API key, GET and POST, every
//! `action_id`, every decision form, both Headplane modes; admission refusals; rules; forward-auth; and a
//! canonicalisation property (no equivalent spelling is ever decided differently from the canonical one).

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::*;
use crate::store::Role;

// ---------------------------------------------------------------------------------------------------------
// Fixtures

const BASE: &str = "https://hp.example.com";
const HOST: &str = "hp.example.com";
const LINK: &str = "hs-7";

fn policy_with(mode: Mode, rules: Vec<Rule>) -> Policy {
    let base = url::Url::parse(BASE).unwrap();
    Policy::new(
        mode,
        HostAllowlist::new(
            &base,
            &["hp.internal:4180".to_string(), "[::1]:4180".to_string()],
        ),
        rules,
        "/admin/oidc/callback",
    )
}

fn policy(mode: Mode) -> Policy {
    policy_with(mode, Vec::new())
}

fn rule(
    prefix: Option<&str>,
    exact: Option<&str>,
    caps: Option<&[&str]>,
    extra: impl FnOnce(&mut RuleSpec),
) -> RuleSpec {
    let mut s = RuleSpec {
        path_prefix: prefix.map(str::to_string),
        path: exact.map(str::to_string),
        capabilities: caps.map(|c| c.iter().map(|s| s.to_string()).collect()),
        public: caps.is_none().then_some(true),
        ..Default::default()
    };
    extra(&mut s);
    s
}

fn build(mode: Mode, specs: &[RuleSpec]) -> Vec<Rule> {
    specs
        .iter()
        .map(|s| Rule::build(s, mode).unwrap())
        .collect()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v.as_bytes()).unwrap(),
        );
    }
    h
}

/// Admission of `method target` (target = raw path [? query]) with `Host: hp.example.com`.
fn admit(p: &Policy, method: &str, target: &str) -> Admission {
    admit_h(p, method, target, &[("host", HOST)], None)
}

fn admit_h(
    p: &Policy,
    method: &str,
    target: &str,
    hdrs: &[(&str, &str)],
    authority: Option<&str>,
) -> Admission {
    let m = Method::from_bytes(method.as_bytes()).unwrap();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let h = headers(hdrs);
    p.admit(&Request {
        method: &m,
        raw_path: path,
        query,
        authority,
        headers: &h,
    })
}

fn admitted(p: &Policy, method: &str, target: &str) -> Admitted {
    match admit(p, method, target) {
        Admission::Ok(a) => a,
        other => panic!("{method} {target}: expected admission, got {other:?}"),
    }
}

fn status(a: &Admission) -> u16 {
    match a {
        Admission::Refuse { status, .. } => *status,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

const ROLE_NAMES: [&str; 8] = [
    "owner",
    "admin",
    "network_admin",
    "it_admin",
    "auditor",
    "viewer",
    "member",
    "api_key",
];

/// The seven roles (each linked to Headscale user `hs-7` when `linked`) and an API-key session.
fn principals(linked: bool) -> Vec<Who> {
    let link = || linked.then(|| LINK.to_string());
    Role::ALL
        .iter()
        .map(|r| Who::person(*r, link()))
        .chain(std::iter::once(Who::api_key()))
        .collect()
}

/// One character per outcome, so a row of the table reads like the spec's columns.
fn code(d: &Decision) -> char {
    match d {
        Decision::Allow { public: true, .. } => 'P',
        Decision::Allow { public: false, .. } => 'A',
        Decision::AllowIfOwnsNode { .. } => 'O',
        Decision::Deny {
            page: DenyPage::Forbidden,
            ..
        } => 'D',
        Decision::Deny {
            page: DenyPage::NoAccess,
            ..
        } => 'N',
        Decision::Deny {
            page: DenyPage::SshNeedsHeadplaneIdentity,
            ..
        } => 'S',
        Decision::Deny {
            page: DenyPage::LinkAtHeadgate,
            ..
        } => 'L',
        Decision::Redirect {
            location: "/_headgate/keys",
            ..
        } => 'K',
        Decision::Redirect { .. } => 'R',
        Decision::SignIn { .. } => 'I',
    }
}

fn codes(p: &Policy, a: &Admitted, form: Option<&Form>, linked: bool) -> String {
    principals(linked)
        .iter()
        .map(|w| code(&p.decide(a, form, Some(w))))
        .collect()
}

fn form(pairs: &[(&str, &str)]) -> Form {
    Form::new(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------------------
// The table. Columns: owner, admin, network_admin, it_admin, auditor, viewer, member, API key.
// A allow · P public · O allow if Headscale lists the form's node under the caller's user · D 403
// N no-access page · S "SSH needs Headplane's identity" page · L "linking is headgate's" page
// K redirect to /_headgate/keys · I sign in

const BOTH: &[Mode] = &[Mode::Bridge, Mode::ProxyAuth];
const BRIDGE: &[Mode] = &[Mode::Bridge];
const PROXY: &[Mode] = &[Mode::ProxyAuth];

struct Case {
    modes: &'static [Mode],
    method: &'static str,
    path: &'static str,
    /// The form (POST): `action_id` first; `node_id=7` is added on machine rows.
    form: &'static [(&'static str, &'static str)],
    expect: &'static str,
    signed_out: char,
}

const fn get(modes: &'static [Mode], path: &'static str, expect: &'static str) -> Case {
    Case {
        modes,
        method: "GET",
        path,
        form: &[],
        expect,
        signed_out: 'I',
    }
}

const fn public(path: &'static str) -> Case {
    Case {
        modes: BOTH,
        method: "GET",
        path,
        form: &[],
        expect: "PPPPPPPP",
        signed_out: 'P',
    }
}

const fn post(
    modes: &'static [Mode],
    path: &'static str,
    form: &'static [(&'static str, &'static str)],
    expect: &'static str,
) -> Case {
    Case {
        modes,
        method: "POST",
        path,
        form,
        expect,
        signed_out: 'I',
    }
}

const NONE: &[(&str, &str)] = &[];
const DENY: &str = "DDDDDDDD";

#[rustfmt::skip]
const TABLE: &[Case] = &[
    // ---- GET ------------------------------------------------------------------------------------------
    public("/admin/assets/index-AbC_12.js"),
    public("/admin/assets/nested/Font.woff2"),
    public("/admin/favicon.ico"),
    public("/admin/fonts/inter.woff2"),
    public("/admin/wasm_exec.js"),
    public("/admin/hp_ssh.wasm"),
    public("/admin/healthz"),
    get(BOTH, "/admin/",                      "AAAAAANA"),
    get(BOTH, "/admin/__manifest",            "AAAAAADA"),
    get(BOTH, "/admin/machines",              "AAAAAADA"),
    get(BOTH, "/admin/machines/7",            "AAAAAADA"),
    get(BOTH, "/admin/users",                 "AAAAAADA"),
    get(BOTH, "/admin/acls",                  "AAAAADDA"),
    get(BOTH, "/admin/dns",                   "AAAAADDA"),
    get(BOTH, "/admin/settings",              "AAAAADDA"),
    get(BOTH, "/admin/settings/auth-keys",    "AAAAKKDA"),
    get(BOTH, "/admin/settings/restrictions", "AAAAAADA"),
    get(BOTH, "/admin/settings/agent",        "AAAAADDA"),
    get(BRIDGE, "/admin/ssh",                 "SSSSSSSS"),
    get(BRIDGE, "/admin/ssh/laptop-1",        "SSSSSSSS"),
    get(PROXY, "/admin/ssh",                  "AAAAAADD"),
    get(PROXY, "/admin/ssh/laptop-1",         "AAAAAADD"),
    get(BOTH, "/admin/events/live",           "AAAAAADA"),
    get(BOTH, "/admin/api/color-scheme",      DENY),
    get(BOTH, "/admin/api/info",              DENY),
    get(BOTH, "/admin/api",                   DENY),
    get(BOTH, "/admin/nope",                  DENY),
    get(BOTH, "/admin/machines/7/routes",     DENY),
    get(BOTH, "/admin/settings/other",        DENY),
    get(BOTH, "/admin/oidc/other",            DENY),
    get(BOTH, "/admin/assets",                DENY),
    get(BOTH, "/other",                       DENY),
    get(BOTH, "/admin.data",                  DENY),
    get(BOTH, "/adminx",                      DENY),

    // ---- POST: machines -------------------------------------------------------------------------------
    // Own rights (O) also need read_machines: a member, even linked and owning the node, is refused. This is
    // stricter than policy.md's literal "write_machines, or the node ... belongs to the caller" (headgate's
    // choice: own rights belong to people who can see the machines page).
    post(BOTH, "/admin/machines", &[("action_id", "register"), ("register_key", "k"), ("user", "1")], "AADADDDA"),
    post(BOTH, "/admin/machines", &[("action_id", "rename"), ("name", "x")], "AAOAOODA"),
    post(BOTH, "/admin/machines", &[("action_id", "expire")],                 "AAOAOODA"),
    post(BOTH, "/admin/machines", &[("action_id", "delete")],                 "AAOAOODA"),
    post(BOTH, "/admin/machines", &[("action_id", "update_tags"), ("tags", "tag:x")], "AADDDDDA"),
    post(BOTH, "/admin/machines", &[("action_id", "update_routes"), ("routes", "0.0.0.0/0"), ("enabled", "true")], "AADADDDA"),
    post(BOTH, "/admin/machines", &[("action_id", "reassign"), ("user_id", "2")], "AADADDDA"),
    post(BOTH, "/admin/machines", &[("action_id", "move")],                   DENY),
    post(BOTH, "/admin/machines", NONE,                                       DENY),
    post(BOTH, "/admin/machines/7", &[("action_id", "register"), ("register_key", "k")], "AADADDDA"),
    post(BOTH, "/admin/machines/7", &[("action_id", "rename"), ("name", "x")], "AAOAOODA"),
    post(BOTH, "/admin/machines/7", &[("action_id", "expire")],               "AAOAOODA"),
    post(BOTH, "/admin/machines/7", &[("action_id", "delete")],               "AAOAOODA"),
    post(BOTH, "/admin/machines/7", &[("action_id", "update_tags")],          "AADDDDDA"),
    post(BOTH, "/admin/machines/7", &[("action_id", "update_routes")],        "AADADDDA"),
    post(BOTH, "/admin/machines/7", &[("action_id", "reassign"), ("user_id", "2")], "AADADDDA"),
    post(BOTH, "/admin/machines/7", &[("action_id", "RENAME")],               DENY),
    post(BOTH, "/admin/machines/7", NONE,                                     DENY),

    // ---- POST: users ----------------------------------------------------------------------------------
    post(BOTH, "/admin/users", &[("action_id", "create_user"), ("username", "bob")], "AADADDDA"),
    post(BOTH, "/admin/users", &[("action_id", "delete_user"), ("headscale_user_id", "3")], "AADADDDA"),
    post(BOTH, "/admin/users", &[("action_id", "rename_user"), ("headscale_user_id", "3"), ("new_name", "x")], "AADADDDA"),
    post(BRIDGE, "/admin/users", &[("action_id", "reassign_user"), ("headplane_user_id", "u"), ("new_role", "viewer")], DENY),
    post(BRIDGE, "/admin/users", &[("action_id", "link_user"), ("headplane_user_id", "u"), ("headscale_user_id", "3")], DENY),
    post(BRIDGE, "/admin/users", &[("action_id", "transfer_ownership"), ("headplane_user_id", "u")], DENY),
    post(PROXY, "/admin/users", &[("action_id", "reassign_user"), ("headplane_user_id", "u"), ("new_role", "viewer")], "AADADDDA"),
    post(PROXY, "/admin/users", &[("action_id", "reassign_user"), ("headplane_user_id", "u"), ("new_role", "admin")], "AADADDDA"),
    post(PROXY, "/admin/users", &[("action_id", "reassign_user"), ("headplane_user_id", "u"), ("new_role", "owner")], DENY),
    post(PROXY, "/admin/users", &[("action_id", "reassign_user"), ("headplane_user_id", "u"), ("new_role", "root")], DENY),
    post(PROXY, "/admin/users", &[("action_id", "reassign_user"), ("headplane_user_id", "u")], DENY),
    post(PROXY, "/admin/users", &[("action_id", "link_user"), ("headplane_user_id", "u"), ("headscale_user_id", "3")], "AADADDDA"),
    post(PROXY, "/admin/users", &[("action_id", "transfer_ownership"), ("headplane_user_id", "u")], "ADDDDDDA"),
    post(BOTH, "/admin/users", &[("action_id", "make_owner")],                DENY),
    post(BOTH, "/admin/users", NONE,                                          DENY),

    // ---- POST: policy, DNS, settings ------------------------------------------------------------------
    post(BOTH, "/admin/acls", &[("policy", "{}")],                            "AAADDDDA"),
    post(BOTH, "/admin/acls", &[("action_id", "update_policy"), ("policy", "{}")], "AAADDDDA"),
    post(BOTH, "/admin/acls", &[("action_id", "anything")],                   "AAADDDDA"),
    post(BOTH, "/admin/dns", &[("action_id", "rename_tailnet"), ("new_name", "t")], "AAADDDDA"),
    post(BOTH, "/admin/dns", &[("action_id", "toggle_magic")],                "AAADDDDA"),
    post(BOTH, "/admin/dns", &[("action_id", "add_ns")],                      "AAADDDDA"),
    post(BOTH, "/admin/dns", &[("action_id", "remove_ns")],                   "AAADDDDA"),
    post(BOTH, "/admin/dns", &[("action_id", "add_domain")],                  "AAADDDDA"),
    post(BOTH, "/admin/dns", &[("action_id", "remove_domain")],               "AAADDDDA"),
    post(BOTH, "/admin/dns", &[("action_id", "add_record")],                  "AAADDDDA"),
    post(BOTH, "/admin/dns", &[("action_id", "remove_record")],               "AAADDDDA"),
    post(BOTH, "/admin/dns", &[("action_id", "override_dns")],                "AAADDDDA"),
    post(BOTH, "/admin/dns", &[("action_id", "drop_all")],                    DENY),
    post(BOTH, "/admin/dns", NONE,                                            DENY),
    post(BOTH, "/admin/settings", NONE,                                       DENY),
    post(BOTH, "/admin/settings", &[("action_id", "x")],                      DENY),
    post(BOTH, "/admin/settings/auth-keys", &[("action_id", "add_preauthkey"), ("user_id", "7"), ("expiry", "1 day")], "AAAADDDA"),
    post(BOTH, "/admin/settings/auth-keys", &[("action_id", "expire_preauthkey"), ("key_id", "1"), ("user_id", "7")], "AAAADDDA"),
    post(BOTH, "/admin/settings/auth-keys", &[("action_id", "list_all")],     DENY),
    post(BOTH, "/admin/settings/auth-keys", NONE,                             DENY),
    post(BOTH, "/admin/settings/restrictions", &[("action_id", "add_domain")], "AADADDDA"),
    post(BOTH, "/admin/settings/restrictions", NONE,                          "AADADDDA"),
    post(BOTH, "/admin/settings/agent", &[("action_id", "x")],                "AADADDDA"),
    post(BOTH, "/admin/settings/agent", NONE,                                 "AADADDDA"),

    // ---- POST: everything else ------------------------------------------------------------------------
    post(BOTH, "/admin/", NONE,                                               "LLLLLLLL"),
    post(BOTH, "/admin/", &[("action_id", "link_user"), ("headscale_user_id", "3")], "LLLLLLLL"),
    post(BOTH, "/admin/api/color-scheme", &[("theme", "dark")],               "AAAAAAAA"),
    post(BOTH, "/admin/api/info", NONE,                                       DENY),
    post(BOTH, "/admin/__manifest", NONE,                                     DENY),
    post(BOTH, "/admin/events/live", NONE,                                    DENY),
    post(BOTH, "/admin/ssh", NONE,                                            DENY),
    post(BOTH, "/admin/ssh/laptop-1", NONE,                                   DENY),
    post(BOTH, "/admin/healthz", NONE,                                        DENY),
    post(BOTH, "/admin/assets/x.js", NONE,                                    DENY),
    post(BOTH, "/admin/nope", &[("action_id", "x")],                          DENY),
    post(BOTH, "/other", NONE,                                                DENY),
];

/// The decision forms of a path (section 2): itself, `.data` (`/_root.data` for the index), `?index`,
/// `_routes`, and both; GET also with an arbitrary query.
fn forms_of(path: &str, method: &str) -> Vec<String> {
    let data = if path == "/admin/" {
        "/admin/_root.data".to_string()
    } else {
        format!("{path}.data")
    };
    let mut v = vec![
        path.to_string(),
        data.clone(),
        format!("{path}?index"),
        format!("{path}?_routes=routes%2Fx"),
        format!("{data}?index&_routes=root,routes%2Fx"),
        format!("{data}?_routes=root"),
    ];
    if method == "GET" {
        v.push(format!("{path}?x=1&index=2&_data=y"));
        v.push(format!("{data}?q=%2F..%2F"));
    }
    v
}

#[test]
fn the_table_row_by_row() {
    let mut checked = 0;
    for case in TABLE {
        for mode in case.modes {
            let p = policy(*mode);
            for target in forms_of(case.path, case.method) {
                let a = admitted(&p, case.method, &target);
                let is_machine = matches!(a.row, Row::Machines { .. });
                let mut fields = case.form.to_vec();
                if case.method == "POST" && is_machine {
                    fields.push(("node_id", "7"));
                }
                let f = form(&fields);
                let f = (case.method == "POST").then_some(&f);
                let got = codes(&p, &a, f, true);
                assert_eq!(
                    got, case.expect,
                    "{mode:?} {} {target} {:?}\n  columns: {ROLE_NAMES:?}",
                    case.method, case.form
                );
                let out = p.decide(&a, f, None);
                assert_eq!(
                    code(&out),
                    case.signed_out,
                    "{mode:?} {} {target} signed out: {out:?}",
                    case.method
                );
                // The data flag follows the decision form.
                assert_eq!(
                    a.data,
                    target.contains(".data") && target.starts_with("/admin/"),
                    "{target}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 900, "{checked} cases");
}

#[test]
fn unlinked_people_have_no_own_rights_and_every_refusal_has_a_reason() {
    // The same table for people without an approved link: an own right ('O') needs the caller's linked
    // Headscale user (policy.md section 3), so it becomes a refusal; browser SSH in header mode needs a
    // linked user too. Everything else is as for linked people.
    let mut checked = 0;
    for case in TABLE {
        for mode in case.modes {
            let p = policy(*mode);
            let header_mode_ssh = *mode == Mode::ProxyAuth && case.path.starts_with("/admin/ssh");
            let expect: String = case
                .expect
                .chars()
                .enumerate()
                .map(|(i, c)| match c {
                    'O' => 'D',
                    'A' if header_mode_ssh && i < 7 => 'D',
                    c => c,
                })
                .collect();
            for target in forms_of(case.path, case.method) {
                let a = admitted(&p, case.method, &target);
                let mut fields = case.form.to_vec();
                if case.method == "POST" && matches!(a.row, Row::Machines { .. }) {
                    fields.push(("node_id", "7"));
                }
                let f = form(&fields);
                let f = (case.method == "POST").then_some(&f);
                assert_eq!(
                    codes(&p, &a, f, false),
                    expect,
                    "unlinked {mode:?} {} {target} {:?}",
                    case.method,
                    case.form
                );
                // Every decision names its reason; a refusal names only capabilities the caller lacks.
                for linked in [true, false] {
                    for who in principals(linked) {
                        let d = p.decide(&a, f, Some(&who));
                        let r = d.reason();
                        assert!(
                            !r.is_empty() && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                            "{target}: reason {r:?}"
                        );
                        if let Decision::Deny { missing, .. } = &d {
                            assert_eq!(who.caps.0 & missing.0, 0, "{target}: {d:?} for {who:?}");
                        }
                        checked += 1;
                    }
                }
                assert!(!p.decide(&a, f, None).reason().is_empty());
            }
        }
    }
    assert!(checked > 10_000, "{checked}");
}

#[test]
fn every_action_id_of_every_row_is_in_the_table() {
    for (path, actions) in [
        ("/admin/machines", rows::MACHINE_ACTIONS),
        ("/admin/machines/7", rows::MACHINE_ACTIONS),
        ("/admin/users", rows::USER_ACTIONS),
        ("/admin/dns", rows::DNS_ACTIONS),
        ("/admin/settings/auth-keys", rows::AUTH_KEY_ACTIONS),
    ] {
        for (id, _) in actions {
            for mode in [Mode::Bridge, Mode::ProxyAuth] {
                assert!(
                    TABLE.iter().any(|c| c.path == path
                        && c.modes.contains(&mode)
                        && c.form.first() == Some(&("action_id", *id))),
                    "{mode:?} POST {path} action_id={id} has no row in the table"
                );
            }
        }
    }
    // The DNS actions are policy.md's list, exactly.
    let dns: Vec<&str> = rows::DNS_ACTIONS.iter().map(|(a, _)| *a).collect();
    assert_eq!(
        dns,
        [
            "rename_tailnet",
            "toggle_magic",
            "add_ns",
            "remove_ns",
            "add_domain",
            "remove_domain",
            "add_record",
            "remove_record",
            "override_dns"
        ]
    );
}

#[test]
fn head_is_get() {
    for mode in [Mode::Bridge, Mode::ProxyAuth] {
        let p = policy(mode);
        for case in TABLE
            .iter()
            .filter(|c| c.method == "GET" && c.modes.contains(&mode))
        {
            let a = admitted(&p, "HEAD", case.path);
            assert_eq!(a.method, RuleMethod::Get);
            assert_eq!(codes(&p, &a, None, true), case.expect, "HEAD {}", case.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Own rights

#[test]
fn own_rights_are_rename_expire_delete_only_and_always_asked_of_headscale() {
    let p = policy(Mode::Bridge);
    let viewer = Who::person(Role::Viewer, Some(LINK.into()));
    for path in [
        "/admin/machines",
        "/admin/machines/7",
        "/admin/machines.data",
        "/admin/machines/7.data?index",
    ] {
        let a = admitted(&p, "POST", path);
        for action in ["rename", "expire", "delete"] {
            let d = p.decide(
                &a,
                Some(&form(&[("action_id", action), ("node_id", "7")])),
                Some(&viewer),
            );
            assert_eq!(
                d,
                Decision::AllowIfOwnsNode {
                    node_id: "7".into(),
                    headscale_user_id: LINK.into(),
                    missing: Caps::WRITE_MACHINES
                },
                "{path} {action}"
            );
            assert_eq!(
                d.clone().resolve_ownership(true),
                Decision::Allow {
                    reason: "own_node",
                    public: false
                }
            );
            let no = d.resolve_ownership(false);
            assert!(
                matches!(
                    no,
                    Decision::Deny {
                        reason: "not_node_owner",
                        missing: Caps::WRITE_MACHINES,
                        ..
                    }
                ),
                "{no:?}"
            );
        }
        for action in ["update_tags", "update_routes", "reassign", "register"] {
            let d = p.decide(
                &a,
                Some(&form(&[("action_id", action), ("node_id", "7")])),
                Some(&viewer),
            );
            assert!(
                matches!(
                    d,
                    Decision::Deny {
                        reason: "missing_capability",
                        ..
                    }
                ),
                "{action}: {d:?}"
            );
        }
    }
    let a = admitted(&p, "POST", "/admin/machines");
    // No link: no own rights.
    let unlinked = Who::person(Role::Viewer, None);
    let d = p.decide(
        &a,
        Some(&form(&[("action_id", "rename"), ("node_id", "7")])),
        Some(&unlinked),
    );
    assert!(matches!(
        d,
        Decision::Deny {
            reason: "missing_capability",
            ..
        }
    ));
    // The node must be named.
    let d = p.decide(&a, Some(&form(&[("action_id", "rename")])), Some(&viewer));
    assert!(matches!(
        d,
        Decision::Deny {
            reason: "own_node_needs_node_id",
            ..
        }
    ));
    // On a machine's page the form's node must be that page's node.
    let a7 = admitted(&p, "POST", "/admin/machines/7");
    let d = p.decide(
        &a7,
        Some(&form(&[("action_id", "delete"), ("node_id", "8")])),
        Some(&viewer),
    );
    assert!(matches!(
        d,
        Decision::Deny {
            reason: "node_id_differs_from_page",
            ..
        }
    ));
    // A member (no read_machines) has no own rights, linked or not.
    let member = Who::person(Role::Member, Some(LINK.into()));
    let d = p.decide(
        &a,
        Some(&form(&[("action_id", "rename"), ("node_id", "7")])),
        Some(&member),
    );
    assert!(matches!(d, Decision::Deny { .. }));
    // write_machines holders are never asked about ownership.
    let it = Who::person(Role::ItAdmin, Some(LINK.into()));
    let d = p.decide(
        &a,
        Some(&form(&[("action_id", "rename"), ("node_id", "7")])),
        Some(&it),
    );
    assert!(d.is_allow());
    // Decision::resolve_ownership leaves other decisions alone.
    let allow = Decision::Allow {
        reason: "capability",
        public: false,
    };
    assert_eq!(allow.clone().resolve_ownership(false), allow);
}

// ---------------------------------------------------------------------------------------------------------
// Forward-auth (section 4)

#[test]
fn forward_auth_without_a_body_needs_the_union_never_an_own_right() {
    #[rustfmt::skip]
    let cases: &[(&[Mode], &str, &str)] = &[
        (BOTH, "/admin/machines",              "AADDDDDA"),
        (BOTH, "/admin/machines/7",            "AADDDDDA"),
        (BRIDGE, "/admin/users",               "AADADDDA"),
        (PROXY, "/admin/users",                "ADDDDDDA"),
        (BOTH, "/admin/acls",                  "AAADDDDA"),
        (BOTH, "/admin/dns",                   "AAADDDDA"),
        (BOTH, "/admin/settings/auth-keys",    "AAAADDDA"),
        (BOTH, "/admin/settings/restrictions", "AADADDDA"),
        (BOTH, "/admin/settings/agent",        "AADADDDA"),
        (BOTH, "/admin/api/color-scheme",      "AAAAAAAA"),
        (BOTH, "/admin/",                      "LLLLLLLL"),
        (BOTH, "/admin/settings",              DENY),
        (BOTH, "/admin/api/info",              DENY),
        (BOTH, "/admin/nope",                  DENY),
    ];
    for (modes, path, expect) in cases {
        for mode in *modes {
            let p = policy(*mode);
            for target in forms_of(path, "POST") {
                let a = admitted(&p, "POST", &target);
                let got: String = principals(true)
                    .iter()
                    .map(|w| code(&p.decide_without_body(&a, Some(w))))
                    .collect();
                assert_eq!(&got, expect, "{mode:?} POST {target}");
                assert!(!got.contains('O'));
                assert_eq!(code(&p.decide_without_body(&a, None)), 'I');
            }
        }
    }
    // GETs decide exactly as with a body.
    for case in TABLE.iter().filter(|c| c.method == "GET") {
        for mode in case.modes {
            let p = policy(*mode);
            let a = admitted(&p, "GET", case.path);
            let got: String = principals(true)
                .iter()
                .map(|w| code(&p.decide_without_body(&a, Some(w))))
                .collect();
            assert_eq!(got, case.expect, "{mode:?} GET {}", case.path);
        }
    }
    // Only an allow is an allow: a redirect or a page is never a 2xx.
    assert!(
        !Decision::Redirect {
            location: "/_headgate/keys",
            reason: "x"
        }
        .is_allow()
    );
}

#[test]
fn forward_auth_admission_uses_its_own_hosts() {
    let p = policy(Mode::Bridge);
    let fa_hosts = HostAllowlist::from_entries(&["grafana.example.com", "hp.example.com"], 443);
    let h = headers(&[("host", "grafana.example.com")]);
    let req = Request {
        method: &Method::GET,
        raw_path: "/admin/users",
        query: None,
        authority: None,
        headers: &h,
    };
    assert!(matches!(
        p.admit_for_hosts(&req, &fa_hosts),
        Admission::Ok(_)
    ));
    assert_eq!(status(&p.admit(&req)), 421);
    let h = headers(&[("host", "evil.example.com")]);
    let req = Request { headers: &h, ..req };
    assert_eq!(status(&p.admit_for_hosts(&req, &fa_hosts)), 421);
}

// ---------------------------------------------------------------------------------------------------------
// Admission (section 1)

#[test]
fn admission_refusals() {
    let p = policy(Mode::Bridge);
    #[rustfmt::skip]
    let cases: &[(&str, &str, u16, &str)] = &[
        ("GET", "/admin/USERS",                 400, "upper_case"),
        ("GET", "/admin/Users.data",            400, "upper_case"),
        ("GET", "/ADMIN/users",                 400, "upper_case"),
        ("GET", "/admin/ASSETS/x.js",           400, "upper_case"),
        ("GET", "/admin/users/",                400, "trailing_slash"),
        ("GET", "/admin/machines/7/",           400, "trailing_slash"),
        ("GET", "/admin/assets\\..\\users",     400, "backslash"),
        ("GET", "/admin/assets/..%2fusers",     400, "percent_escape"),
        ("GET", "/admin/%2e%2e/admin/users",    400, "percent_escape"),
        ("GET", "/admin/assets/%2E%2E/users",   400, "percent_escape"),
        ("GET", "/admin%2Fusers",               400, "percent_escape"),
        ("GET", "/admin/%75sers",               400, "percent_escape"),
        ("GET", "/admin//users",                400, "empty_segment"),
        ("GET", "//admin/users",                400, "empty_segment"),
        ("GET", "/admin/users;jsessionid=1",    400, "semicolon"),
        ("GET", "/admin/users;",                400, "semicolon"),
        ("GET", "/admin/./users",               400, "dot_segment"),
        ("GET", "/admin/assets/../users",       400, "dot_segment"),
        ("GET", "/admin/users/.",               400, "dot_segment"),
        ("GET", "/admin/users.",                400, "trailing_dot"),
        ("GET", "/admin/users\r\nX: y",         400, "control_character"),
        ("GET", "/admin/users\u{0}",            400, "control_character"),
        ("GET", "/admin/users\u{1b}",           400, "control_character"),
        ("GET", "/admin/usérs",                 400, "non_ascii"),
        ("GET", "/admin/users\u{ff0f}x",        400, "non_ascii"),
        ("GET", "/admin/us ers",                400, "invalid_character"),
        ("GET", "/admin/machines/abc",          400, "node_id_not_digits"),
        ("GET", "/admin/machines/007",          400, "node_id_not_digits"),
        ("GET", "/admin/machines/-1",           400, "node_id_not_digits"),
        ("GET", "/admin/machines/1e3.data",     400, "node_id_not_digits"),
        ("GET", "/admin/ssh/-x",                400, "ssh_target_not_dns_label"),
        ("GET", "/admin/ssh/a_b",               400, "ssh_target_not_dns_label"),
        ("GET", "/admin/ssh/a.b",               400, "ssh_target_not_dns_label"),
        ("PUT", "/admin/users",                 405, "method_not_allowed"),
        ("PATCH", "/admin/users",               405, "method_not_allowed"),
        ("DELETE", "/admin/machines/7",         405, "method_not_allowed"),
        ("OPTIONS", "/admin/users",             405, "method_not_allowed"),
        ("TRACE", "/admin/users",               405, "method_not_allowed"),
        ("CONNECT", "/admin/users",             405, "method_not_allowed"),
        ("PROPFIND", "/admin/users",            405, "method_not_allowed"),
        ("PUT", "/admin/login",                 405, "method_not_allowed"),
        ("DELETE", "/",                         405, "method_not_allowed"),
        ("POST", "/admin",                      405, "method_not_allowed"),
        ("PUT", "/other",                       405, "method_not_allowed"),
        ("POST", "/admin/users?index=x",        400, "query_on_post"),
        ("POST", "/admin/users?index=",         400, "query_on_post"),
        ("POST", "/admin/users?index&index",    400, "query_on_post"),
        ("POST", "/admin/users?_routes=a&_routes=b", 400, "query_on_post"),
        ("POST", "/admin/users?action_id=create_user", 400, "query_on_post"),
        ("POST", "/admin/users?_routes=a&x=1",  400, "query_on_post"),
        ("POST", "/admin/users?_routes",        400, "query_on_post"),
        ("POST", "/admin/users?Index",          400, "query_on_post"),
        ("POST", "/admin/users?&",              400, "query_on_post"),
    ];
    for (m, target, st, reason) in cases {
        let got = admit(&p, m, target);
        assert_eq!(
            got,
            Admission::Refuse {
                status: *st,
                reason
            },
            "{m} {target:?}"
        );
    }
    // Queries are free on GET; a bare index and _routes are fine on POST.
    for ok in [
        ("GET", "/admin/users?index=x&anything=%2F..%2F"),
        ("POST", "/admin/users?index"),
        ("POST", "/admin/users?_routes=routes%2Fusers"),
        ("POST", "/admin/users?_routes=a&index"),
        ("POST", "/admin/users?"),
    ] {
        assert!(matches!(admit(&p, ok.0, ok.1), Admission::Ok(_)), "{ok:?}");
    }
    // Upper case is fine under /admin/assets/ only.
    assert!(matches!(
        admit(&p, "GET", "/admin/assets/Index-X.js"),
        Admission::Ok(_)
    ));
}

/// Headers, `:authority`, expected status and reason.
type FramingCase = (
    &'static [(&'static str, &'static str)],
    Option<&'static str>,
    u16,
    &'static str,
);

#[test]
fn framing_and_host() {
    let p = policy(Mode::Bridge);
    let refuse = |hdrs: &[(&str, &str)], authority: Option<&str>, m: &str| {
        admit_h(&p, m, "/admin/users", hdrs, authority)
    };
    #[rustfmt::skip]
    let cases: &[FramingCase] = &[
        (&[("host", HOST), ("content-length", "3"), ("transfer-encoding", "chunked")], None, 400, "content_length_and_transfer_encoding"),
        (&[("host", HOST), ("content-length", "3"), ("content-length", "4")], None, 400, "repeated_content_length"),
        (&[("host", HOST), ("content-length", "3"), ("content-length", "3")], None, 400, "repeated_content_length"),
        (&[("host", HOST), ("content-length", "3, 3")], None, 400, "content_length_malformed"),
        (&[("host", HOST), ("content-length", "+3")], None, 400, "content_length_malformed"),
        (&[("host", HOST), ("content-length", "")], None, 400, "content_length_malformed"),
        (&[("host", HOST), ("transfer-encoding", "gzip, chunked")], None, 400, "transfer_encoding_not_chunked"),
        (&[("host", HOST), ("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")], None, 400, "repeated_transfer_encoding"),
        (&[("host", HOST), ("transfer-encoding", "xchunked")], None, 400, "transfer_encoding_not_chunked"),
        (&[("host", HOST)], Some("evil.example.com"), 400, "authority_differs_from_host"),
        (&[("host", HOST)], Some("hp.example.com:443"), 400, "authority_differs_from_host"),
        (&[("host", HOST), ("host", HOST)], None, 400, "repeated_host"),
        (&[], None, 400, "missing_host"),
        (&[("host", "user@hp.example.com")], None, 400, "host_malformed"),
        (&[("host", "hp.example.com:")], None, 400, "host_malformed"),
        (&[("host", "evil.example.com")], None, 421, "unknown_host"),
        (&[("host", "hp.example.com.")], None, 400, "host_malformed"),
        (&[("host", "hp.example.com:80")], None, 421, "unknown_host"),
        (&[("host", "hp.example.com:4180")], None, 421, "unknown_host"),
        (&[("host", "hp.internal")], None, 421, "unknown_host"),
        (&[("host", "hp.example.com.evil.example")], None, 421, "unknown_host"),
        (&[("host", "[::1]")], None, 421, "unknown_host"),
        (&[("host", HOST), ("upgrade", "websocket")], None, 400, "upgrade_not_allowed"),
        (&[("host", HOST), ("upgrade", "h2c")], None, 400, "upgrade_not_allowed"),
        (&[("host", HOST), ("content-length", "5")], None, 400, "body_on_get"),
        (&[("host", HOST), ("transfer-encoding", "chunked")], None, 400, "body_on_get"),
    ];
    for (hdrs, authority, st, reason) in cases {
        assert_eq!(
            refuse(hdrs, *authority, "GET"),
            Admission::Refuse {
                status: *st,
                reason
            },
            "{hdrs:?} {authority:?}"
        );
    }
    // Over 1 MiB declared: 413 before the body is read.
    let big = (MAX_FORM_BYTES + 1).to_string();
    assert_eq!(
        refuse(&[("host", HOST), ("content-length", &big)], None, "POST"),
        Admission::Refuse {
            status: 413,
            reason: "form_too_large"
        }
    );
    let ok = MAX_FORM_BYTES.to_string();
    assert!(matches!(
        refuse(&[("host", HOST), ("content-length", &ok)], None, "POST"),
        Admission::Ok(_)
    ));
    // Accepted hosts: base_url's (any case, explicit default port), allowed_hosts, HTTP/2 :authority alone.
    for (hdrs, authority) in [
        (&[("host", "HP.Example.COM")][..], None),
        (&[("host", "hp.example.com:443")][..], None),
        (&[("host", "hp.internal:4180")][..], None),
        (&[("host", "[::1]:4180")][..], None),
        (&[][..], Some("hp.example.com")),
        (&[("host", HOST)][..], Some("HP.example.com")),
        (&[("host", HOST), ("content-length", "0")][..], None),
    ] {
        assert!(
            matches!(refuse(hdrs, authority, "GET"), Admission::Ok(_)),
            "{hdrs:?} {authority:?}"
        );
    }
    // A POST may carry a chunked body.
    assert!(matches!(
        refuse(
            &[("host", HOST), ("transfer-encoding", "chunked")],
            None,
            "POST"
        ),
        Admission::Ok(_)
    ));
}

#[test]
fn form_refusals_at_the_door() {
    // Through the public entry point, with the statuses admission answers.
    let e = |ct: Option<&str>, ce: Option<&str>, body: &[u8]| parse_form(ct, ce, body).unwrap_err();
    let urlenc = Some("application/x-www-form-urlencoded");
    assert_eq!(
        e(urlenc, None, b"action_id=rename&action_id=delete").status(),
        400
    );
    assert_eq!(
        e(urlenc, None, b"action_id=rename&node_id=7&node_id=8").status(),
        400
    );
    let file =
        b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x\"\r\n\r\nx\r\n--b--\r\n";
    assert_eq!(
        e(Some("multipart/form-data; boundary=b"), None, file),
        FormError::FilePart
    );
    assert_eq!(
        e(Some("multipart/form-data; boundary=b"), None, file).status(),
        400
    );
    let utf16: Vec<u8> = "action_id=rename"
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    assert_eq!(
        e(
            Some("application/x-www-form-urlencoded; charset=UTF-16"),
            None,
            &utf16
        )
        .status(),
        415
    );
    assert_eq!(
        e(urlenc, None, &utf16).status(),
        400,
        "unlabelled UTF-16 is not a form"
    );
    assert_eq!(e(urlenc, Some("gzip"), b"\x1f\x8b\x08").status(), 415);
    let big = vec![b'a'; MAX_FORM_BYTES + 1];
    assert_eq!(e(urlenc, None, &big).status(), 413);
    assert_eq!(e(urlenc, None, b"node_id=7a").status(), 400);
}

#[test]
fn the_forwarded_form_is_the_decided_one() {
    let p = policy(Mode::Bridge);
    let a = admitted(&p, "POST", "/admin/machines/7.data?index");
    assert!(a.needs_form());
    let body = "--B\r\nContent-Disposition: form-data; name=\"action_id\"\r\n\r\nrename\r\n\
                --B\r\nContent-Disposition: form-data; name=\"node_id\"\r\n\r\n7\r\n\
                --B\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nmy laptop & co=1\r\n--B--\r\n";
    let f = parse_form(
        Some("multipart/form-data; boundary=B"),
        None,
        body.as_bytes(),
    )
    .unwrap();
    let it = Who::person(Role::ItAdmin, None);
    assert!(p.decide(&a, Some(&f), Some(&it)).is_allow());
    assert_eq!(
        f.encoded(),
        "action_id=rename&node_id=7&name=my+laptop+%26+co%3D1"
    );
    // Headplane reading the forwarded body sees exactly the decided fields.
    let reread = parse_form(Some(FORWARD_CONTENT_TYPE), None, f.encoded().as_bytes()).unwrap();
    assert_eq!(reread, f);
    // Rules' bodies are not forms.
    let p = policy_with(
        Mode::None,
        build(
            Mode::None,
            &[rule(Some("/api"), None, Some(&[][..]), |_| {})],
        ),
    );
    assert!(!admitted(&p, "POST", "/api/x?any=query").needs_form());
    assert!(!admitted(&p, "GET", "/admin/users").needs_form());
}

// ---------------------------------------------------------------------------------------------------------
// Owned paths, the root, sign-in

#[test]
fn headgate_owned_paths_and_redirects() {
    for mode in [Mode::Bridge, Mode::ProxyAuth] {
        let p = policy(mode);
        for (m, path, route, data) in [
            ("GET", "/admin/login", OwnedRoute::Login, false),
            ("POST", "/admin/login", OwnedRoute::Login, false),
            ("POST", "/admin/login.data", OwnedRoute::Login, true),
            ("GET", "/admin/logout", OwnedRoute::Logout, false),
            ("POST", "/admin/logout.data", OwnedRoute::Logout, true),
            ("GET", "/admin/oidc/start", OwnedRoute::OidcStart, false),
            (
                "GET",
                "/admin/oidc/callback",
                OwnedRoute::OidcCallback,
                false,
            ),
            ("GET", "/admin/onboarding", OwnedRoute::Onboarding, false),
            (
                "GET",
                "/admin/onboarding.data",
                OwnedRoute::Onboarding,
                true,
            ),
            (
                "POST",
                "/admin/onboarding/skip",
                OwnedRoute::OnboardingSkip,
                false,
            ),
            (
                "GET",
                "/admin/pending-approval",
                OwnedRoute::PendingApproval,
                false,
            ),
        ] {
            assert_eq!(
                admit(&p, m, &format!("{path}?rd=%2Fadmin%2Fusers&x=1")),
                Admission::HeadgateOwned { route, data },
                "{mode:?} {m} {path}"
            );
        }
        for root in ["/", "/admin", "/?x=1"] {
            assert_eq!(admit(&p, "GET", root), Admission::RedirectToAdmin);
            assert_eq!(admit(&p, "HEAD", root), Admission::RedirectToAdmin);
        }
        // The owned paths' spellings are exact.
        assert_eq!(status(&admit(&p, "GET", "/admin/LOGIN")), 400);
        assert_eq!(status(&admit(&p, "GET", "/admin/login/")), 400);
        // Data forms of the OIDC paths are not headgate's and match no row.
        let a = admitted(&p, "GET", "/admin/oidc/start.data");
        assert_eq!(a.row, Row::UnknownAdmin);
    }
    // A moved callback: the new path is headgate's, the old one matches no row.
    let base = url::Url::parse(BASE).unwrap();
    let p = Policy::new(
        Mode::Bridge,
        HostAllowlist::new(&base, &[]),
        vec![],
        "/oauth2/callback",
    );
    assert_eq!(
        admit(&p, "GET", "/oauth2/callback?code=x&state=y"),
        Admission::HeadgateOwned {
            route: OwnedRoute::OidcCallback,
            data: false
        }
    );
    assert_eq!(
        admitted(&p, "GET", "/admin/oidc/callback").row,
        Row::UnknownAdmin
    );
    // In "none" mode Headplane 0.6's onboarding pages are not headgate's; the sign-in paths still are.
    let p = policy(Mode::None);
    assert!(matches!(
        admit(&p, "GET", "/admin/login"),
        Admission::HeadgateOwned { .. }
    ));
    assert!(matches!(
        admit(&p, "GET", "/admin/onboarding"),
        Admission::Ok(_)
    ));
    assert!(matches!(admit(&p, "GET", "/"), Admission::Ok(_)));
}

#[test]
fn unknown_paths_are_403_signed_in_and_sign_in_otherwise() {
    let p = policy(Mode::Bridge);
    for path in [
        "/admin/nope",
        "/admin/api/info",
        "/other",
        "/admin/machines/7/x",
    ] {
        let a = admitted(&p, "GET", path);
        for w in principals(true) {
            assert!(matches!(
                p.decide(&a, None, Some(&w)),
                Decision::Deny {
                    page: DenyPage::Forbidden,
                    ..
                }
            ));
        }
        assert!(matches!(p.decide(&a, None, None), Decision::SignIn { .. }));
    }
    let a = admitted(&p, "GET", "/admin/api/info");
    assert!(matches!(
        p.decide(&a, None, Some(&Who::api_key())),
        Decision::Deny {
            reason: "api_info_refused",
            ..
        }
    ));
}

#[test]
fn denials_name_what_is_missing() {
    let p = policy(Mode::Bridge);
    let viewer = Who::person(Role::Viewer, None);
    let a = admitted(&p, "GET", "/admin/acls");
    assert_eq!(
        p.decide(&a, None, Some(&viewer)),
        Decision::Deny {
            reason: "missing_capability",
            missing: Caps::READ_POLICY,
            page: DenyPage::Forbidden
        }
    );
    let a = admitted(&p, "POST", "/admin/machines");
    let net = Who::person(Role::NetworkAdmin, None);
    assert_eq!(
        p.decide(
            &a,
            Some(&form(&[("action_id", "reassign"), ("node_id", "1")])),
            Some(&net)
        ),
        Decision::Deny {
            reason: "missing_capability",
            missing: Caps::WRITE_MACHINES | Caps::WRITE_USERS,
            page: DenyPage::Forbidden
        }
    );
    let it = Who::person(Role::ItAdmin, None);
    assert_eq!(
        p.decide(
            &a,
            Some(&form(&[("action_id", "update_tags"), ("node_id", "1")])),
            Some(&it)
        ),
        Decision::Deny {
            reason: "missing_capability",
            missing: Caps::USE_TAGS,
            page: DenyPage::Forbidden
        }
    );
    let a = admitted(&p, "GET", "/admin/settings/auth-keys");
    assert_eq!(
        p.decide(&a, None, Some(&Who::person(Role::Auditor, None))),
        Decision::Redirect {
            location: "/_headgate/keys",
            reason: "own_keys_at_headgate"
        }
    );
    let a = admitted(&p, "POST", "/admin/settings/auth-keys");
    let d = p.decide(
        &a,
        Some(&form(&[("action_id", "add_preauthkey"), ("user_id", "7")])),
        Some(&Who::person(Role::Viewer, Some("7".into()))),
    );
    assert_eq!(
        d,
        Decision::Deny {
            reason: "missing_capability",
            missing: Caps::GENERATE_AUTHKEYS,
            page: DenyPage::Forbidden
        }
    );
    let a = admitted(&p, "POST", "/admin/users");
    assert_eq!(
        p.decide(
            &a,
            Some(&form(&[("action_id", "link_user")])),
            Some(&Who::api_key())
        )
        .reason(),
        "bridge_user_records"
    );
}

#[test]
fn ssh_rows_per_mode() {
    let bridge = policy(Mode::Bridge);
    let proxy = policy(Mode::ProxyAuth);
    for path in ["/admin/ssh", "/admin/ssh/laptop", "/admin/ssh/laptop.data"] {
        let a = admitted(&bridge, "GET", path);
        for w in principals(true).iter().chain(principals(false).iter()) {
            assert_eq!(code(&bridge.decide(&a, None, Some(w))), 'S', "{path}");
        }
        let a = admitted(&proxy, "GET", path);
        // Unlinked people cannot use browser SSH in header mode either.
        let got: String = principals(false)
            .iter()
            .map(|w| code(&proxy.decide(&a, None, Some(w))))
            .collect();
        assert_eq!(got, DENY, "{path}");
        assert_eq!(
            proxy.decide(&a, None, Some(&Who::api_key())).reason(),
            "ssh_needs_linked_user"
        );
    }
}

#[test]
fn root_without_ui_access_is_the_no_access_page() {
    let p = policy(Mode::Bridge);
    for path in [
        "/admin/",
        "/admin/_root.data",
        "/admin/?index",
        "/admin/_root.data?_routes=root",
    ] {
        let a = admitted(&p, "GET", path);
        assert_eq!(
            p.decide(&a, None, Some(&Who::person(Role::Member, None))),
            Decision::Deny {
                reason: "no_ui_access",
                missing: Caps::UI_ACCESS,
                page: DenyPage::NoAccess
            }
        );
        assert_eq!(a.row, Row::Root);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Rules (section 5)

#[test]
fn rules_in_the_headplane_modes_cover_other_paths_only() {
    let specs = [
        rule(Some("/grafana"), None, Some(&["read_policy"][..]), |_| {}),
        rule(None, Some("/status"), None, |_| {}),
        rule(Some("/live"), None, Some(&[][..]), |s| s.websocket = true),
        rule(Some("/files"), None, Some(&["ui_access"][..]), |s| {
            s.methods = Some(vec!["GET".into(), "PUT".into(), "DELETE".into()])
        }),
    ];
    for mode in [Mode::Bridge, Mode::ProxyAuth] {
        let p = policy_with(mode, build(mode, &specs));
        let a = admitted(&p, "GET", "/grafana/d/abc?orgId=1");
        assert_eq!(a.row, Row::Rule(0));
        assert_eq!(codes(&p, &a, None, false), "AAAAADDA");
        assert_eq!(code(&p.decide(&a, None, None)), 'I');
        // A rule's POST takes any query and its body is not read.
        let a = admitted(&p, "POST", "/grafana/api/x?a=1&b=2");
        assert!(!a.needs_form());
        assert_eq!(codes(&p, &a, None, false), "AAAAADDA");
        // Public rule: everyone, signed in or not, no upstream session.
        let a = admitted(&p, "GET", "/status");
        assert_eq!(codes(&p, &a, None, false), "PPPPPPPP");
        assert_eq!(code(&p.decide(&a, None, None)), 'P');
        assert_eq!(admitted(&p, "GET", "/status/x").row, Row::Unmatched);
        // Websockets only where a rule allows them.
        let ws = admit_h(
            &p,
            "GET",
            "/live/socket",
            &[("host", HOST), ("upgrade", "websocket")],
            None,
        );
        let Admission::Ok(a) = ws else {
            panic!("{ws:?}")
        };
        assert!(a.websocket);
        assert_eq!(codes(&p, &a, None, false), "AAAAAAAA");
        assert_eq!(
            status(&admit_h(
                &p,
                "GET",
                "/grafana/live",
                &[("host", HOST), ("upgrade", "websocket")],
                None
            )),
            400
        );
        assert_eq!(
            status(&admit_h(
                &p,
                "POST",
                "/live/socket",
                &[("host", HOST), ("upgrade", "websocket")],
                None
            )),
            400
        );
        assert_eq!(
            status(&admit_h(
                &p,
                "GET",
                "/live/socket",
                &[("host", HOST), ("upgrade", "h2c")],
                None
            )),
            400
        );
        // Methods as listed.
        assert!(matches!(admit(&p, "PUT", "/files/a"), Admission::Ok(_)));
        assert!(matches!(admit(&p, "DELETE", "/files/a"), Admission::Ok(_)));
        assert!(matches!(admit(&p, "HEAD", "/files/a"), Admission::Ok(_)));
        assert_eq!(status(&admit(&p, "POST", "/files/a")), 405);
        assert_eq!(status(&admit(&p, "PATCH", "/files/a")), 405);
        assert_eq!(status(&admit(&p, "PUT", "/grafana/x")), 405);
        // Rules never change a built-in row, and the lower-case rule still applies.
        let a = admitted(&p, "GET", "/admin/acls");
        assert_eq!(a.row, Row::Acls);
        assert_eq!(status(&admit(&p, "GET", "/Grafana/d")), 400);
        assert_eq!(admitted(&p, "GET", "/grafanax").row, Row::Unmatched);
        // `/` is the redirect unless a rule covers it.
        assert_eq!(admit(&p, "GET", "/"), Admission::RedirectToAdmin);
    }
    let root_rule = [rule(Some("/"), None, Some(&["ui_access"][..]), |_| {})];
    let p = policy_with(Mode::Bridge, build(Mode::Bridge, &root_rule));
    assert_eq!(admitted(&p, "GET", "/").row, Row::Rule(0));
    assert_eq!(admitted(&p, "GET", "/anything/else").row, Row::Rule(0));
    // ...but never Headplane's or headgate's paths.
    assert_eq!(admitted(&p, "GET", "/admin/users").row, Row::Users);
    assert_eq!(admitted(&p, "GET", "/admin.data").row, Row::Unmatched);
    assert_eq!(admitted(&p, "GET", "/_headgate/x").row, Row::Unmatched);
    assert_eq!(admit(&p, "GET", "/admin"), Admission::RedirectToAdmin);
}

#[test]
fn none_mode_rules_decide_and_unmatched_paths_need_ui_access() {
    let specs = [
        rule(
            Some("/admin"),
            None,
            Some(&["read_users", "write_users"][..]),
            |_| {},
        ),
        rule(Some("/assets"), None, None, |_| {}),
        rule(None, Some("/api/delete"), Some(&["owner"][..]), |s| {
            s.methods = Some(vec!["DELETE".into()])
        }),
    ];
    let p = policy_with(Mode::None, build(Mode::None, &specs));
    // Built-in rows are off: /admin/users is rule 0, not the users row.
    let a = admitted(&p, "GET", "/admin/users");
    assert_eq!(a.row, Row::Rule(0));
    assert!(!a.data);
    assert_eq!(codes(&p, &a, None, false), "AADADDDA");
    assert_eq!(
        codes(&p, &admitted(&p, "GET", "/admin/users.data"), None, false),
        "AADADDDA"
    );
    // Unmatched: ui_access.
    for path in ["/", "/dashboard", "/Dashboard/Main", "/admin.data"] {
        let a = admitted(&p, "GET", path);
        assert_eq!(a.row, Row::Unmatched, "{path}");
        assert_eq!(codes(&p, &a, None, false), "AAAAAADA", "{path}");
        assert_eq!(code(&p.decide(&a, None, None)), 'I');
        let a = admitted(&p, "POST", &format!("{path}?any=query"));
        assert_eq!(codes(&p, &a, None, false), "AAAAAADA", "{path}");
    }
    assert_eq!(
        codes(&p, &admitted(&p, "GET", "/assets/x.css"), None, false),
        "PPPPPPPP"
    );
    // PUT/PATCH/DELETE only where listed.
    assert_eq!(
        codes(&p, &admitted(&p, "DELETE", "/api/delete"), None, false),
        "ADDDDDDA"
    );
    assert_eq!(status(&admit(&p, "GET", "/api/delete")), 405);
    assert_eq!(status(&admit(&p, "DELETE", "/dashboard")), 405);
    // Admission applies except the lower-case rule.
    for (target, st) in [
        ("/dashboard/", 400),
        ("/a//b", 400),
        ("/a/%2e%2e/b", 400),
        ("/a;b", 400),
        ("/a/./b", 400),
        ("/a\\b", 400),
        ("/caf\u{e9}", 400),
        ("/a\tb", 400),
        ("OPTIONS /a", 405),
    ] {
        let (m, t) = target.split_once(' ').unwrap_or(("GET", target));
        assert_eq!(status(&admit(&p, m, t)), st, "{target}");
    }
    // ...but an upper-case spelling of a rule's path is refused rather than decided by another rule.
    assert_eq!(
        admit(&p, "GET", "/ADMIN/users"),
        Admission::Refuse {
            status: 400,
            reason: "case_variant_of_rule"
        }
    );
    assert_eq!(
        admit(&p, "GET", "/Assets/x.css"),
        Admission::Refuse {
            status: 400,
            reason: "case_variant_of_rule"
        }
    );
    assert_eq!(
        admit(&p, "DELETE", "/API/DELETE"),
        Admission::Refuse {
            status: 400,
            reason: "case_variant_of_rule"
        }
    );
}

// ---------------------------------------------------------------------------------------------------------
// Canonicalisation property (forward-auth.md class 3)

/// Spellings that a lenient server could treat as `path`.
fn spellings(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = path.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        let (head, tail) = (&path[..i], &path[i + 1..]);
        // Percent-encode one byte (upper and lower hex), `%2e`/`%2f` included.
        out.push(format!("{head}%{c:02X}{tail}"));
        out.push(format!("{head}%{c:02x}{tail}"));
        out.push(format!("{head}%25{c:02X}{tail}"));
        if c.is_ascii_lowercase() {
            out.push(format!("{head}{}{tail}", c.to_ascii_uppercase() as char));
        }
        if c == b'/' {
            out.push(format!("{head}//{tail}"));
            out.push(format!("{head}/./{tail}"));
            out.push(format!("{head}/x/../{tail}"));
            out.push(format!("{head}\\{tail}"));
            out.push(format!("{head}/;x=1/{tail}"));
            out.push(format!("{head};/{tail}"));
            out.push(format!("{head}/%2e/{tail}"));
            out.push(format!("{head}%2F{tail}"));
            out.push(format!("{head}/\t/{tail}"));
        }
        if c == b'.' {
            out.push(format!("{head}%2e{tail}"));
        }
        if c == b'i' {
            // Unicode case folding: dotless i and the Kelvin sign fold to ASCII in some servers.
            out.push(format!("{head}\u{131}{tail}"));
        }
        if c == b'k' {
            out.push(format!("{head}\u{212a}{tail}"));
        }
    }
    out.push(path.to_ascii_uppercase());
    for suffix in [
        "/", "//", "/.", "/..", ".", "%20", " ", ";", ";x=1", "%00", "\0", "#", "%23x", "/x/..",
        "\\", "%2F", "\u{3002}",
    ] {
        out.push(format!("{path}{suffix}"));
    }
    for prefix in ["/", "/.", "/./", "//", "/%2e"] {
        out.push(format!("{prefix}{path}"));
    }
    out.retain(|s| s != path);
    out
}

#[test]
fn equivalent_spellings_are_refused_or_decided_like_the_canonical_path() {
    let paths = [
        "/admin/",
        "/admin/users",
        "/admin/acls",
        "/admin/dns",
        "/admin/machines",
        "/admin/machines/7",
        "/admin/settings",
        "/admin/settings/auth-keys",
        "/admin/settings/restrictions",
        "/admin/settings/agent",
        "/admin/ssh/laptop",
        "/admin/__manifest",
        "/admin/events/live",
        "/admin/api/color-scheme",
        "/admin/api/info",
        "/admin/assets/index-a.js",
        "/admin/healthz",
        "/admin/nope",
        "/grafana/d/kpi",
        "/public/kit",
        "/other",
    ];
    let specs = [
        rule(Some("/grafana"), None, Some(&["read_policy"][..]), |_| {}),
        rule(Some("/public"), None, None, |_| {}),
    ];
    // Forms covering every action of every row, and none.
    let mut forms: Vec<Form> = vec![Form::default()];
    for (_, actions) in [
        ("m", rows::MACHINE_ACTIONS),
        ("u", rows::USER_ACTIONS),
        ("d", rows::DNS_ACTIONS),
        ("k", rows::AUTH_KEY_ACTIONS),
    ] {
        for (id, _) in actions {
            forms.push(form(&[
                ("action_id", id),
                ("node_id", "7"),
                ("new_role", "viewer"),
            ]));
        }
    }
    let everyone: Vec<Option<Who>> = principals(true)
        .into_iter()
        .chain(principals(false))
        .map(Some)
        .chain(std::iter::once(None))
        .collect();
    let decisions = |p: &Policy, a: &Admitted| -> Vec<Decision> {
        let mut v = Vec::new();
        for who in &everyone {
            if a.method == RuleMethod::Post {
                for f in &forms {
                    v.push(p.decide(a, Some(f), who.as_ref()));
                }
                v.push(p.decide_without_body(a, who.as_ref()));
            } else {
                v.push(p.decide(a, None, who.as_ref()));
            }
        }
        v
    };
    let mut variants = 0;
    let mut admitted_variants = 0;
    for mode in [Mode::Bridge, Mode::ProxyAuth, Mode::None] {
        let p = policy_with(mode, build(mode, &specs));
        for path in paths {
            for method in ["GET", "POST"] {
                let canonical = admit(&p, method, path);
                let canon_decisions = match &canonical {
                    Admission::Ok(a) => Some(decisions(&p, a)),
                    _ => None,
                };
                for s in spellings(path) {
                    variants += 1;
                    match admit(&p, method, &s) {
                        Admission::Refuse { .. } | Admission::RedirectToAdmin => {}
                        Admission::HeadgateOwned { .. } => {
                            panic!("{mode:?} {method} {s:?} became headgate's own")
                        }
                        Admission::Ok(a) => {
                            admitted_variants += 1;
                            let Some(expect) = &canon_decisions else {
                                panic!(
                                    "{mode:?} {method} {s:?} admitted, {path} is not: {canonical:?}"
                                );
                            };
                            assert_eq!(
                                &decisions(&p, &a),
                                expect,
                                "{mode:?} {method} {s:?} decides unlike {path}"
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(variants > 5000, "{variants}");
    // Upper-case asset names and the "none" mode's case-insensitive paths are the admitted ones.
    assert!(admitted_variants > 0);
}

#[test]
fn data_and_query_forms_never_change_the_row() {
    for mode in [Mode::Bridge, Mode::ProxyAuth] {
        let p = policy(mode);
        for case in TABLE {
            if !case.modes.contains(&mode) || !case.path.starts_with("/admin/") {
                continue;
            }
            let base = admitted(&p, case.method, case.path).row;
            for t in forms_of(case.path, case.method) {
                assert_eq!(admitted(&p, case.method, &t).row, base, "{t}");
            }
        }
    }
}
