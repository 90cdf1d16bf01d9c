//! The built-in Headplane rows (`policy.md` sections 2 and 3): which row a canonical path under `/admin`
//! belongs to, and what each row requires for GET and for each POST `action_id`.

use crate::roles::Caps;

use super::Mode;
use super::admission::{is_dns_label, is_node_id};

/// The row that decides a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// `/assets/<file>`, `/favicon.ico`, `/fonts/<file>`, `/wasm_exec.js`, `/hp_ssh.wasm`, `/healthz`
    Public,
    /// `/` (and `/_root.data`)
    Root,
    /// `/__manifest`
    Manifest,
    /// `/machines`, `/machines/<id>`
    Machines {
        node: Option<String>,
    },
    Users,
    Acls,
    Dns,
    Settings,
    AuthKeys,
    Restrictions,
    Agent,
    /// `/ssh` (0.6), `/ssh/<target>` (0.7)
    Ssh {
        target: Option<String>,
    },
    EventsLive,
    ColorScheme,
    ApiInfo,
    /// A path under `/admin` no row matches (refused).
    UnknownAdmin,
    /// A `[[policy.rule]]` (its index in the configuration).
    Rule(usize),
    /// No row or rule: refused in the Headplane modes, `ui_access` with `headplane_login = "none"`.
    Unmatched,
}

impl Row {
    /// One of Headplane's rows under `/admin` (whose form posts are parsed and re-encoded).
    pub fn is_builtin(&self) -> bool {
        !matches!(self, Row::Rule(_) | Row::Unmatched)
    }

    /// A short name for the log.
    pub fn name(&self) -> &'static str {
        match self {
            Row::Public => "public",
            Row::Root => "root",
            Row::Manifest => "manifest",
            Row::Machines { .. } => "machines",
            Row::Users => "users",
            Row::Acls => "acls",
            Row::Dns => "dns",
            Row::Settings => "settings",
            Row::AuthKeys => "auth_keys",
            Row::Restrictions => "restrictions",
            Row::Agent => "agent",
            Row::Ssh { .. } => "ssh",
            Row::EventsLive => "events_live",
            Row::ColorScheme => "color_scheme",
            Row::ApiInfo => "api_info",
            Row::UnknownAdmin => "unknown_admin",
            Row::Rule(_) => "rule",
            Row::Unmatched => "unmatched",
        }
    }
}

/// The row of a canonical path under `/admin` after the decision form (section 2): `<path>.data` decides
/// like `<path>`, `/admin/_root.data` like `/admin/`. Returns the row and whether it is a data request.
/// Errors are 400 reasons (node ids are digits, SSH targets lower-case DNS labels).
pub fn classify(path: &str) -> Result<(Row, bool), &'static str> {
    let (decided, data) = if path == "/admin/_root.data" {
        ("/admin/", true)
    } else if let Some(p) = path.strip_suffix(".data") {
        (p, true)
    } else {
        (path, false)
    };
    if data && decided != "/admin/" {
        // `/admin/machines/.data` would decide like `/admin/machines/`: not canonical.
        super::admission::check_canonical(decided, true)?;
    }
    let Some(rest) = decided.strip_prefix("/admin") else {
        return Ok((Row::UnknownAdmin, data));
    };
    let segs: Vec<&str> = rest.split('/').skip(1).collect();
    let row = match segs.as_slice() {
        [""] => Row::Root,
        ["__manifest"] => Row::Manifest,
        ["assets" | "fonts", _, ..] => Row::Public,
        ["favicon.ico" | "wasm_exec.js" | "hp_ssh.wasm" | "healthz"] => Row::Public,
        ["machines"] => Row::Machines { node: None },
        ["machines", id] => {
            if !is_node_id(id) {
                return Err("node_id_not_digits");
            }
            Row::Machines {
                node: Some(id.to_string()),
            }
        }
        ["users"] => Row::Users,
        ["acls"] => Row::Acls,
        ["dns"] => Row::Dns,
        ["settings"] => Row::Settings,
        ["settings", "auth-keys"] => Row::AuthKeys,
        ["settings", "restrictions"] => Row::Restrictions,
        ["settings", "agent"] => Row::Agent,
        ["ssh"] => Row::Ssh { target: None },
        ["ssh", target] => {
            if !is_dns_label(target) {
                return Err("ssh_target_not_dns_label");
            }
            Row::Ssh {
                target: Some(target.to_string()),
            }
        }
        ["events", "live"] => Row::EventsLive,
        ["api", "color-scheme"] => Row::ColorScheme,
        ["api", "info"] => Row::ApiInfo,
        _ => Row::UnknownAdmin,
    };
    Ok((row, data))
}

/// What one POST `action_id` requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// These capabilities.
    Caps(Caps),
    /// These capabilities, or the form's `node_id` belongs to the caller's linked Headscale user (asked of
    /// Headscale by the caller).
    CapsOrOwnNode(Caps),
    /// In the bridge: refused (Headplane's own user records are not the source of roles there, headgate's
    /// `/_headgate/users` is); in `proxy_auth` mode these capabilities.
    ProxyAuthOnly(Caps),
    /// `reassign_user`: like [`Need::ProxyAuthOnly`], and the form's `new_role` must be a role other than
    /// owner (Headplane does not check it).
    ProxyAuthRoleChange(Caps),
}

const WM: Caps = Caps::WRITE_MACHINES;
const WU: Caps = Caps::WRITE_USERS;
const WN: Caps = Caps::WRITE_NETWORK;
const GA: Caps = Caps::GENERATE_AUTHKEYS;

pub const MACHINE_ACTIONS: &[(&str, Need)] = &[
    ("register", Need::Caps(WM)),
    ("rename", Need::CapsOrOwnNode(WM)),
    ("expire", Need::CapsOrOwnNode(WM)),
    ("delete", Need::CapsOrOwnNode(WM)),
    ("update_tags", Need::Caps(Caps(WM.0 | Caps::USE_TAGS.0))),
    ("update_routes", Need::Caps(WM)),
    ("reassign", Need::Caps(Caps(WM.0 | WU.0))),
];

pub const USER_ACTIONS: &[(&str, Need)] = &[
    ("create_user", Need::Caps(WU)),
    ("delete_user", Need::Caps(WU)),
    ("rename_user", Need::Caps(WU)),
    ("reassign_user", Need::ProxyAuthRoleChange(WU)),
    ("link_user", Need::ProxyAuthOnly(WU)),
    ("transfer_ownership", Need::ProxyAuthOnly(Caps::OWNER)),
];

pub const DNS_ACTIONS: &[(&str, Need)] = &[
    ("rename_tailnet", Need::Caps(WN)),
    ("toggle_magic", Need::Caps(WN)),
    ("add_ns", Need::Caps(WN)),
    ("remove_ns", Need::Caps(WN)),
    ("add_domain", Need::Caps(WN)),
    ("remove_domain", Need::Caps(WN)),
    ("add_record", Need::Caps(WN)),
    ("remove_record", Need::Caps(WN)),
    ("override_dns", Need::Caps(WN)),
];

pub const AUTH_KEY_ACTIONS: &[(&str, Need)] = &[
    ("add_preauthkey", Need::Caps(GA)),
    ("expire_preauthkey", Need::Caps(GA)),
];

/// What a built-in row requires of a GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetRule {
    Public,
    Caps(Caps),
    /// `/`: ui_access, others get headgate's no-access page.
    RootUi,
    /// `/settings/auth-keys`: generate_authkeys; own-key people are sent to `/_headgate/keys`.
    AuthKeys,
    /// `/ssh…`: header mode ui_access + a linked user; bridge: the page explaining why not.
    Ssh,
    Refused(&'static str),
}

/// What a built-in row requires of a POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostRule {
    /// Any form post (whatever its `action_id`) needs these capabilities.
    Any(Caps),
    /// Any signed-in person.
    SignedIn,
    /// Decided by `action_id`; unlisted or missing ones are refused.
    Actions(&'static [(&'static str, Need)]),
    Refused(&'static str),
}

pub fn get_rule(row: &Row) -> GetRule {
    use Caps as C;
    match row {
        Row::Public => GetRule::Public,
        Row::Root => GetRule::RootUi,
        Row::Manifest | Row::EventsLive => GetRule::Caps(C::UI_ACCESS),
        Row::Machines { .. } => GetRule::Caps(C::READ_MACHINES),
        Row::Users | Row::Restrictions => GetRule::Caps(C::READ_USERS),
        Row::Acls => GetRule::Caps(C::READ_POLICY),
        Row::Dns => GetRule::Caps(C::READ_NETWORK),
        Row::Settings | Row::Agent => GetRule::Caps(C::READ_FEATURE),
        Row::AuthKeys => GetRule::AuthKeys,
        Row::Ssh { .. } => GetRule::Ssh,
        Row::ColorScheme => GetRule::Refused("get_not_allowed"),
        Row::ApiInfo => GetRule::Refused("api_info_refused"),
        Row::UnknownAdmin | Row::Unmatched | Row::Rule(_) => GetRule::Refused("unknown_path"),
    }
}

pub fn post_rule(row: &Row) -> PostRule {
    use Caps as C;
    match row {
        Row::Root => PostRule::Refused("self_link_is_headgates"),
        Row::Machines { .. } => PostRule::Actions(MACHINE_ACTIONS),
        Row::Users => PostRule::Actions(USER_ACTIONS),
        Row::Acls => PostRule::Any(C::WRITE_POLICY),
        Row::Dns => PostRule::Actions(DNS_ACTIONS),
        Row::AuthKeys => PostRule::Actions(AUTH_KEY_ACTIONS),
        Row::Restrictions => PostRule::Any(C::CONFIGURE_IAM),
        Row::Agent => PostRule::Any(C::WRITE_FEATURE),
        Row::ColorScheme => PostRule::SignedIn,
        Row::ApiInfo => PostRule::Refused("api_info_refused"),
        Row::UnknownAdmin | Row::Unmatched | Row::Rule(_) => PostRule::Refused("unknown_path"),
        Row::Public | Row::Manifest | Row::Settings | Row::Ssh { .. } | Row::EventsLive => {
            PostRule::Refused("post_not_allowed")
        }
    }
}

/// Forward-auth (section 4): without a body a POST to an action row needs the union of what its allowed
/// actions require, never an "own" right. `None`: no action is allowed in this mode.
pub fn union_of_actions(actions: &[(&str, Need)], mode: Mode) -> Option<Caps> {
    let mut union = None;
    for (_, need) in actions {
        let caps = match (need, mode) {
            (Need::Caps(c) | Need::CapsOrOwnNode(c), _) => *c,
            (Need::ProxyAuthOnly(c) | Need::ProxyAuthRoleChange(c), Mode::ProxyAuth) => *c,
            (Need::ProxyAuthOnly(_) | Need::ProxyAuthRoleChange(_), _) => continue,
        };
        union = Some(union.unwrap_or(Caps::NONE) | caps);
    }
    union
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_form() {
        let c = |p: &str| classify(p).unwrap();
        assert_eq!(c("/admin/"), (Row::Root, false));
        assert_eq!(c("/admin/_root.data"), (Row::Root, true));
        assert_eq!(c("/admin/.data"), (Row::Root, true));
        assert_eq!(
            c("/admin/machines.data"),
            (Row::Machines { node: None }, true)
        );
        assert_eq!(
            c("/admin/machines/7.data"),
            (
                Row::Machines {
                    node: Some("7".into())
                },
                true
            )
        );
        assert_eq!(c("/admin/users.data.data"), (Row::UnknownAdmin, true));
        assert_eq!(c("/admin/_root"), (Row::UnknownAdmin, false));
        assert_eq!(c("/admin/settings/auth-keys.data"), (Row::AuthKeys, true));
        assert_eq!(c("/admin/assets/a/b.js"), (Row::Public, false));
        assert_eq!(c("/admin/assets"), (Row::UnknownAdmin, false));
        assert_eq!(
            c("/admin/ssh/laptop.data"),
            (
                Row::Ssh {
                    target: Some("laptop".into())
                },
                true
            )
        );
        assert_eq!(c("/admin/machines/7/x"), (Row::UnknownAdmin, false));
        assert_eq!(classify("/admin/machines/x7"), Err("node_id_not_digits"));
        assert_eq!(
            classify("/admin/machines/07.data"),
            Err("node_id_not_digits")
        );
        assert_eq!(classify("/admin/ssh/a_b"), Err("ssh_target_not_dns_label"));
        assert_eq!(classify("/admin/machines/.data"), Err("trailing_slash"));
    }

    #[test]
    fn forward_auth_unions() {
        let m = union_of_actions(MACHINE_ACTIONS, Mode::Bridge).unwrap();
        assert_eq!(m, Caps::WRITE_MACHINES | Caps::USE_TAGS | Caps::WRITE_USERS);
        assert_eq!(
            union_of_actions(USER_ACTIONS, Mode::Bridge),
            Some(Caps::WRITE_USERS)
        );
        assert_eq!(
            union_of_actions(USER_ACTIONS, Mode::ProxyAuth),
            Some(Caps::WRITE_USERS | Caps::OWNER)
        );
        assert_eq!(
            union_of_actions(DNS_ACTIONS, Mode::Bridge),
            Some(Caps::WRITE_NETWORK)
        );
        assert_eq!(
            union_of_actions(AUTH_KEY_ACTIONS, Mode::ProxyAuth),
            Some(Caps::GENERATE_AUTHKEYS)
        );
        assert_eq!(
            union_of_actions(&[("x", Need::ProxyAuthOnly(WU))], Mode::Bridge),
            None
        );
    }
}
