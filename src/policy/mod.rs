//! headgate's route policy (`spec/policy.md`): admission, then the decision of a row for a person.
//!
//! A pure module: no I/O, no clock, no async. The one fact it cannot know, whether Headscale lists a node
//! under the caller's Headscale user, comes back as [`Decision::AllowIfOwnsNode`]; the caller asks
//! Headscale (once, with a timeout, failing closed) and finishes with [`Decision::resolve_ownership`].
//!
//! The request path (DESIGN.md): [`Policy::admit`] → session → for a form post to a built-in row
//! ([`Admitted::needs_form`]) [`parse_form`] → [`Policy::decide`] → forward [`Form::encoded`] on an allow.
//! Forward-auth runs [`Policy::admit_for_hosts`] and [`Policy::decide_without_body`].
//!
//! In the API-key bridge Headplane sees full access, so this is the only gate; in `proxy_auth` mode it is a
//! second gate in front of Headplane's own roles; with `headplane_login = "none"` the built-in rows are off
//! and `[[policy.rule]]` entries decide.

mod admission;
mod form;
mod rows;
mod rules;
#[cfg(test)]
mod tests;

pub use admission::{
    Admission, Admitted, HostAllowlist, MAX_FORM_BYTES, OwnedRoute, Request, check_canonical,
    is_dns_label, is_node_id, parse_host_port,
};
pub use form::{FORWARD_CONTENT_TYPE, Form, FormError, SINGLE_FIELDS, parse_form};
pub use rows::{GetRule, Need, PostRule, Row};
pub use rules::{
    Access, PathMatch, Rule, RuleError, RuleMethod, RuleSpec, duplicates as duplicate_rules,
};

use crate::roles::Caps;

/// How Headplane learns who is there (`upstream.headplane_login`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `"api_key"`: the bridge; Headplane sees full access.
    Bridge,
    /// `"proxy_auth"`: Headplane 0.7's trusted-header mode; Headplane keeps its own roles.
    ProxyAuth,
    /// `"none"`: any other upstream; rules decide.
    None,
}

impl From<crate::config::HeadplaneLogin> for Mode {
    fn from(h: crate::config::HeadplaneLogin) -> Mode {
        use crate::config::HeadplaneLogin as H;
        match h {
            H::ApiKey => Mode::Bridge,
            H::ProxyAuth => Mode::ProxyAuth,
            H::None => Mode::None,
        }
    }
}

/// Everything the policy needs from the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) mode: Mode,
    pub(crate) hosts: HostAllowlist,
    pub(crate) rules: Vec<Rule>,
    pub(crate) callback_path: String,
}

impl Policy {
    pub fn new(mode: Mode, hosts: HostAllowlist, rules: Vec<Rule>, callback_path: &str) -> Policy {
        Policy {
            mode,
            hosts,
            rules,
            callback_path: callback_path.to_string(),
        }
    }

    pub fn from_config(c: &crate::config::Config) -> Policy {
        Policy::new(
            c.upstream.headplane_login.into(),
            HostAllowlist::new(&c.server.base_url, &c.server.allowed_hosts),
            c.policy.rules.clone(),
            c.oidc
                .as_ref()
                .map(|o| o.callback_path.as_str())
                .unwrap_or("/admin/oidc/callback"),
        )
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

/// The person behind a request (the caller has verified the session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub caps: Caps,
    /// An API-key session: every capability, no person, no Headscale link.
    pub api_key: bool,
    /// The Headscale user id of the person's approved link.
    pub headscale_user_id: Option<String>,
}

impl Who {
    pub fn person(role: crate::store::Role, headscale_user_id: Option<String>) -> Who {
        Who {
            caps: crate::roles::caps(role),
            api_key: false,
            headscale_user_id,
        }
    }

    pub fn api_key() -> Who {
        Who {
            caps: Caps::ALL,
            api_key: true,
            headscale_user_id: None,
        }
    }
}

/// Which page a refusal shows (the status is 403 for all of them; forward-auth answers 403 whatever the page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyPage {
    /// "Not allowed", naming the missing capabilities.
    Forbidden,
    /// headgate's no-access page (`/admin/` without ui_access).
    NoAccess,
    /// Browser SSH in the bridge: it needs Headplane's own identity (use `proxy_auth` mode).
    SshNeedsHeadplaneIdentity,
    /// Linking a Headscale user is headgate's (`/_headgate/onboarding`, `/_headgate/users`).
    LinkAtHeadgate,
}

/// The verdict. Only `Allow` (and `AllowIfOwnsNode` after a positive answer) is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward. `public`: a public row (no upstream session is attached, no identity needed).
    Allow { reason: &'static str, public: bool },
    /// Forward only if Headscale lists node `node_id` under Headscale user `headscale_user_id`
    /// (`GET /api/v1/node/{id}` → `node.user.id`; a tagged node has no user and is nobody's).
    /// `missing` is what to name if it does not.
    AllowIfOwnsNode {
        node_id: String,
        headscale_user_id: String,
        missing: Caps,
    },
    /// 403 (for a signed-in person).
    Deny {
        reason: &'static str,
        missing: Caps,
        page: DenyPage,
    },
    /// Send a signed-in person elsewhere (own pre-auth keys: `/_headgate/keys`). Not an allow: forward-auth
    /// answers 403.
    Redirect {
        location: &'static str,
        reason: &'static str,
    },
    /// Not signed in: the sign-in answer (302/303, the single-fetch redirect for a data request, 401).
    SignIn { reason: &'static str },
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// The reason code for the log.
    pub fn reason(&self) -> &'static str {
        match self {
            Decision::Allow { reason, .. }
            | Decision::Deny { reason, .. }
            | Decision::Redirect { reason, .. }
            | Decision::SignIn { reason } => reason,
            Decision::AllowIfOwnsNode { .. } => "own_node_pending",
        }
    }

    /// Finish an ownership decision with Headscale's answer (`false` also for any error: fail closed).
    pub fn resolve_ownership(self, owns: bool) -> Decision {
        match self {
            Decision::AllowIfOwnsNode { missing, .. } => {
                if owns {
                    Decision::Allow {
                        reason: "own_node",
                        public: false,
                    }
                } else {
                    Decision::Deny {
                        reason: "not_node_owner",
                        missing,
                        page: DenyPage::Forbidden,
                    }
                }
            }
            other => other,
        }
    }
}

fn deny(reason: &'static str, missing: Caps) -> Decision {
    Decision::Deny {
        reason,
        missing,
        page: DenyPage::Forbidden,
    }
}

fn refuse(reason: &'static str) -> Decision {
    deny(reason, Caps::NONE)
}

fn need(who: &Who, caps: Caps, reason: &'static str) -> Decision {
    if who.caps.has(caps) {
        Decision::Allow {
            reason,
            public: false,
        }
    } else {
        deny("missing_capability", who.caps.missing(caps))
    }
}

/// What the body tells the decision.
enum Body<'f> {
    Form(&'f Form),
    /// Forward-auth: there is no body.
    Absent,
}

static EMPTY_FORM: Form = Form::empty();

impl Policy {
    /// The decision for an admitted request. `form`: the parsed body of a POST to a built-in row (`None` is
    /// an empty form); `who`: `None` when signed out.
    pub fn decide(&self, a: &Admitted, form: Option<&Form>, who: Option<&Who>) -> Decision {
        self.decide_inner(a, Body::Form(form.unwrap_or(&EMPTY_FORM)), who)
    }

    /// Forward-auth (section 4): no body, so a POST to a row with `action_id`s needs the union of what its
    /// allowed actions require, never an "own" right.
    pub fn decide_without_body(&self, a: &Admitted, who: Option<&Who>) -> Decision {
        self.decide_inner(a, Body::Absent, who)
    }

    fn decide_inner(&self, a: &Admitted, body: Body<'_>, who: Option<&Who>) -> Decision {
        // Rules and the "none" mode's default.
        match &a.row {
            Row::Rule(i) => {
                let rule = &self.rules[*i];
                if !rule.allows_method(a.method) || (a.websocket && !rule.websocket) {
                    // Admission refuses these; kept so a hand-built `Admitted` cannot slip through.
                    return refuse("rule_method");
                }
                return match (rule.access, who) {
                    (Access::Public, _) => Decision::Allow {
                        reason: "rule_public",
                        public: true,
                    },
                    (Access::Caps(_), None) => Decision::SignIn {
                        reason: "signed_out",
                    },
                    (Access::Caps(c), Some(w)) => need(w, c, "rule"),
                };
            }
            Row::Unmatched if self.mode == Mode::None => {
                return match who {
                    None => Decision::SignIn {
                        reason: "signed_out",
                    },
                    Some(w) => need(w, Caps::UI_ACCESS, "unmatched_ui_access"),
                };
            }
            _ => {}
        }
        if a.websocket || !matches!(a.method, RuleMethod::Get | RuleMethod::Post) {
            return refuse("method_or_upgrade");
        }

        let is_get = a.method == RuleMethod::Get;
        // Public rows need nobody; everything else needs a signed-in person first.
        if is_get && rows::get_rule(&a.row) == GetRule::Public {
            return Decision::Allow {
                reason: "public_row",
                public: true,
            };
        }
        let Some(who) = who else {
            return Decision::SignIn {
                reason: "signed_out",
            };
        };

        if is_get {
            return match rows::get_rule(&a.row) {
                GetRule::Public => unreachable!("handled above"),
                GetRule::Caps(c) => need(who, c, "capability"),
                GetRule::RootUi => {
                    if who.caps.has(Caps::UI_ACCESS) {
                        Decision::Allow {
                            reason: "capability",
                            public: false,
                        }
                    } else {
                        Decision::Deny {
                            reason: "no_ui_access",
                            missing: Caps::UI_ACCESS,
                            page: DenyPage::NoAccess,
                        }
                    }
                }
                GetRule::AuthKeys => {
                    if who.caps.has(Caps::GENERATE_AUTHKEYS) {
                        Decision::Allow {
                            reason: "capability",
                            public: false,
                        }
                    } else if who.caps.has(Caps::GENERATE_OWN_AUTHKEYS) {
                        Decision::Redirect {
                            location: "/_headgate/keys",
                            reason: "own_keys_at_headgate",
                        }
                    } else {
                        deny("missing_capability", Caps::GENERATE_AUTHKEYS)
                    }
                }
                GetRule::Ssh => self.ssh(who),
                GetRule::Refused(r) => refuse(r),
            };
        }

        match rows::post_rule(&a.row) {
            PostRule::Refused("self_link_is_headgates") => Decision::Deny {
                reason: "self_link_is_headgates",
                missing: Caps::NONE,
                page: DenyPage::LinkAtHeadgate,
            },
            PostRule::Refused(r) => refuse(r),
            PostRule::SignedIn => Decision::Allow {
                reason: "signed_in",
                public: false,
            },
            PostRule::Any(c) => need(who, c, "capability"),
            PostRule::Actions(actions) => match body {
                Body::Absent => match rows::union_of_actions(actions, self.mode) {
                    Some(c) => need(who, c, "union_of_actions"),
                    None => refuse("no_allowed_action"),
                },
                Body::Form(form) => self.action(a, actions, form, who),
            },
        }
    }

    fn ssh(&self, who: &Who) -> Decision {
        match self.mode {
            Mode::ProxyAuth => {
                if !who.caps.has(Caps::UI_ACCESS) {
                    deny("missing_capability", Caps::UI_ACCESS)
                } else if who.api_key || who.headscale_user_id.is_none() {
                    refuse("ssh_needs_linked_user")
                } else {
                    Decision::Allow {
                        reason: "ssh_linked_user",
                        public: false,
                    }
                }
            }
            _ => Decision::Deny {
                reason: "ssh_needs_headplane_identity",
                missing: Caps::NONE,
                page: DenyPage::SshNeedsHeadplaneIdentity,
            },
        }
    }

    fn action(&self, a: &Admitted, actions: &[(&str, Need)], form: &Form, who: &Who) -> Decision {
        let Some(action_id) = form.action_id() else {
            return refuse("missing_action_id");
        };
        let Some((_, need_of)) = actions.iter().find(|(id, _)| *id == action_id) else {
            return refuse("unknown_action");
        };
        match (*need_of, self.mode) {
            (Need::Caps(c), _) => need(who, c, "capability"),
            (Need::ProxyAuthOnly(_) | Need::ProxyAuthRoleChange(_), Mode::Bridge | Mode::None) => {
                refuse("bridge_user_records")
            }
            (Need::ProxyAuthOnly(c), Mode::ProxyAuth) => need(who, c, "capability"),
            (Need::ProxyAuthRoleChange(c), Mode::ProxyAuth) => {
                match form.get("new_role").and_then(crate::store::Role::from_name) {
                    Some(r) if r != crate::store::Role::Owner => need(who, c, "capability"),
                    Some(_) => refuse("owner_not_assignable"),
                    None => refuse("invalid_new_role"),
                }
            }
            (Need::CapsOrOwnNode(c), _) => {
                if who.caps.has(c) {
                    return Decision::Allow {
                        reason: "capability",
                        public: false,
                    };
                }
                let missing = who.caps.missing(c);
                // Own rights: a linked person who can see the machines page, for the node in the form (which
                // must be the page's node on `/machines/<id>`, whichever of the two Headplane acts on).
                let Some(user) = who.headscale_user_id.as_deref().filter(|_| !who.api_key) else {
                    return deny("missing_capability", missing);
                };
                if !who.caps.has(Caps::READ_MACHINES) {
                    return deny("missing_capability", missing);
                }
                let Some(node_id) = form.get("node_id") else {
                    return deny("own_node_needs_node_id", missing);
                };
                if !is_node_id(node_id) {
                    return deny("own_node_needs_node_id", missing);
                }
                if let Row::Machines { node: Some(page) } = &a.row
                    && page != node_id
                {
                    return deny("node_id_differs_from_page", missing);
                }
                Decision::AllowIfOwnsNode {
                    node_id: node_id.to_string(),
                    headscale_user_id: user.to_string(),
                    missing,
                }
            }
        }
    }
}
