//! `[[policy.rule]]` entries (`policy.md` section 5): extra rows for paths outside Headplane's `/admin`
//! (other apps behind forward-auth), or every row when `upstream.headplane_login = "none"`.
//!
//! A rule is built and validated here ([`Rule::build`]); the configuration reader only maps the TOML keys and
//! prefixes each error with `policy.rule[<i>].`.

use crate::roles::Caps;

use super::Mode;
use super::admission::check_canonical;

/// Which paths a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Exactly this path.
    Exact(String),
    /// This path and everything below it, on a segment boundary: `/grafana` covers `/grafana` and
    /// `/grafana/x`, never `/grafanax`. `/` covers every path (outside `/admin` in the Headplane modes).
    Prefix(String),
}

impl PathMatch {
    pub fn as_str(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                path == p
                    || (path.starts_with(p.as_str())
                        && (p.ends_with('/') || path.as_bytes().get(p.len()) == Some(&b'/')))
            }
        }
    }

    /// Like [`PathMatch::matches`], ignoring ASCII case.
    pub fn matches_ignoring_case(&self, path: &str) -> bool {
        let lower = |s: &str| s.to_ascii_lowercase();
        match self {
            PathMatch::Exact(p) => PathMatch::Exact(lower(p)).matches(&lower(path)),
            PathMatch::Prefix(p) => PathMatch::Prefix(lower(p)).matches(&lower(path)),
        }
    }

    /// How specific a match is: exact paths beat prefixes, longer prefixes beat shorter ones.
    fn specificity(&self) -> (u8, usize) {
        match self {
            PathMatch::Exact(p) => (1, p.len()),
            PathMatch::Prefix(p) => (0, p.len()),
        }
    }
}

/// Who a rule lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Everyone, signed in or not (no upstream session is attached).
    Public,
    /// Signed-in people holding all of these capabilities (none: any signed-in person).
    Caps(Caps),
}

/// Methods a rule may allow. HEAD always goes with GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl RuleMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleMethod::Get => "GET",
            RuleMethod::Post => "POST",
            RuleMethod::Put => "PUT",
            RuleMethod::Patch => "PATCH",
            RuleMethod::Delete => "DELETE",
        }
    }

    /// The method of a request as rules see it (HEAD is GET); other methods are never allowed.
    pub fn of(m: &http::Method) -> Option<RuleMethod> {
        Some(match *m {
            http::Method::GET | http::Method::HEAD => RuleMethod::Get,
            http::Method::POST => RuleMethod::Post,
            http::Method::PUT => RuleMethod::Put,
            http::Method::PATCH => RuleMethod::Patch,
            http::Method::DELETE => RuleMethod::Delete,
            _ => return None,
        })
    }
}

/// One validated `[[policy.rule]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path: PathMatch,
    pub methods: Vec<RuleMethod>,
    pub access: Access,
    pub websocket: bool,
}

/// The raw keys of one `[[policy.rule]]` table, as the configuration reader found them.
#[derive(Debug, Clone, Default)]
pub struct RuleSpec {
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    pub capabilities: Option<Vec<String>>,
    pub public: Option<bool>,
    pub websocket: bool,
}

/// A problem with one key of a rule: the key (relative to the rule, e.g. `path` or `capabilities[1]`) and
/// the message.
pub type RuleError = (String, String);

pub const DEFAULT_METHODS: [RuleMethod; 2] = [RuleMethod::Get, RuleMethod::Post];

impl Rule {
    /// Validate one rule for `mode`. Every problem is returned, each naming its key.
    pub fn build(spec: &RuleSpec, mode: Mode) -> Result<Rule, Vec<RuleError>> {
        let mut errors: Vec<RuleError> = Vec::new();
        let mut err = |k: &str, m: String| errors.push((k.to_string(), m));

        let path = match (&spec.path, &spec.path_prefix) {
            (Some(_), Some(_)) => {
                err(
                    "path",
                    "set either path (one exact path) or path_prefix (a path and everything below it), not both"
                        .into(),
                );
                None
            }
            (None, None) => {
                err(
                    "path",
                    "missing: set path (one exact path) or path_prefix (a path and everything below it)"
                        .into(),
                );
                None
            }
            (Some(p), None) => check_rule_path(p, mode, false)
                .map_err(|m| err("path", m))
                .ok()
                .map(PathMatch::Exact),
            (None, Some(p)) => check_rule_path(p, mode, true)
                .map_err(|m| err("path_prefix", m))
                .ok()
                .map(PathMatch::Prefix),
        };

        let methods = match &spec.methods {
            None => DEFAULT_METHODS.to_vec(),
            Some(list) => {
                let mut out = Vec::new();
                for (i, m) in list.iter().enumerate() {
                    let parsed = match m.trim().to_ascii_uppercase().as_str() {
                        "GET" | "HEAD" => Some(RuleMethod::Get),
                        "POST" => Some(RuleMethod::Post),
                        "PUT" => Some(RuleMethod::Put),
                        "PATCH" => Some(RuleMethod::Patch),
                        "DELETE" => Some(RuleMethod::Delete),
                        _ => None,
                    };
                    match parsed {
                        Some(p) if !out.contains(&p) => out.push(p),
                        Some(_) => {}
                        None => err(
                            &format!("methods[{i}]"),
                            format!(
                                "{m:?} is not allowed: use GET (HEAD goes with it), POST, PUT, PATCH or DELETE"
                            ),
                        ),
                    }
                }
                if list.is_empty() {
                    err(
                        "methods",
                        "is empty: list the methods to allow, or remove the key for GET, HEAD and POST"
                            .into(),
                    );
                }
                out.sort();
                out
            }
        };

        let access = match (&spec.capabilities, spec.public) {
            (Some(_), Some(true)) => {
                err(
                    "public",
                    "a public rule cannot also require capabilities: remove one of the two".into(),
                );
                None
            }
            (None, None | Some(false)) => {
                err(
                    "capabilities",
                    "missing: list the capabilities required (e.g. [\"ui_access\"]; [] means any signed-in \
                     person) or set public = true"
                        .into(),
                );
                None
            }
            (None, Some(true)) => Some(Access::Public),
            (Some(names), _) => {
                let mut caps = Caps::NONE;
                let mut ok = true;
                for (i, n) in names.iter().enumerate() {
                    match Caps::NAMES.iter().find(|(_, name)| name == n) {
                        Some((c, _)) => caps = caps | *c,
                        None => {
                            ok = false;
                            let known: Vec<&str> = Caps::NAMES.iter().map(|(_, n)| *n).collect();
                            let mut msg = format!("{n:?} is not a capability");
                            if let Some(s) = crate::config::nearest_name(n, &known) {
                                msg.push_str(&format!(": did you mean {s:?}?"));
                            } else {
                                msg.push_str(&format!(" (one of {})", known.join(", ")));
                            }
                            err(&format!("capabilities[{i}]"), msg);
                        }
                    }
                }
                ok.then_some(Access::Caps(caps))
            }
        };

        if spec.websocket && !methods.contains(&RuleMethod::Get) {
            err(
                "websocket",
                "websocket upgrades are GET requests: add GET to methods".into(),
            );
        }

        match (path, access) {
            (Some(path), Some(access)) if errors.is_empty() => Ok(Rule {
                path,
                methods,
                access,
                websocket: spec.websocket,
            }),
            _ => Err(errors),
        }
    }

    pub fn allows_method(&self, m: RuleMethod) -> bool {
        self.methods.contains(&m)
    }
}

/// A rule's path must be canonical (it would never match otherwise) and, in the Headplane modes, outside
/// Headplane's `/admin` (and headgate's `/_headgate`): rules never change a built-in row.
fn check_rule_path(p: &str, mode: Mode, prefix: bool) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with /"));
    }
    let lower_case_rule = mode != Mode::None;
    // A prefix may end in `/` (`/app/` covers `/app/…` only); an exact path follows the request rules.
    let body = if prefix && p.len() > 1 {
        p.strip_suffix('/').unwrap_or(p)
    } else {
        p
    };
    if let Err(reason) = check_canonical(body, lower_case_rule) {
        return Err(format!(
            "{p:?} is not a canonical path ({}), so no request could match it: write it as requests spell it \
             (no %-escapes, `;`, `\\`, `//`, `.` or `..` segments, trailing `/`{})",
            reason.replace('_', " "),
            if lower_case_rule { ", lower case" } else { "" }
        ));
    }
    if body.starts_with("/_headgate") {
        return Err(format!(
            "{p:?} is headgate's own: /_headgate paths are never forwarded"
        ));
    }
    if mode != Mode::None && body.starts_with("/admin") {
        return Err(format!(
            "{p:?} is inside Headplane's /admin: with upstream.headplane_login = \"api_key\" or \"proxy_auth\" \
             rules may only cover paths outside /admin (the built-in rows decide those)"
        ));
    }
    Ok(p.to_string())
}

/// The rule that decides `path`: the most specific one that matches (an exact path, else the longest prefix).
/// In the Headplane modes paths in Headplane's and headgate's namespaces never match a rule.
pub fn find<'r>(rules: &'r [Rule], mode: Mode, path: &str) -> Option<(usize, &'r Rule)> {
    find_with(rules, mode, path, PathMatch::matches)
}

/// [`find`] ignoring ASCII case. With `headplane_login = "none"` the lower-case rule is off, so an upstream
/// that ignores case could serve `/GRAFANA` as `/grafana`: a path whose rule changes with case is refused.
pub fn find_ignoring_case<'r>(
    rules: &'r [Rule],
    mode: Mode,
    path: &str,
) -> Option<(usize, &'r Rule)> {
    find_with(rules, mode, path, PathMatch::matches_ignoring_case)
}

fn find_with<'r>(
    rules: &'r [Rule],
    mode: Mode,
    path: &str,
    matches: fn(&PathMatch, &str) -> bool,
) -> Option<(usize, &'r Rule)> {
    if mode != Mode::None && (path.starts_with("/admin") || path.starts_with("/_headgate")) {
        return None;
    }
    rules
        .iter()
        .enumerate()
        .filter(|(_, r)| matches(&r.path, path))
        .max_by_key(|(i, r)| (r.path.specificity(), std::cmp::Reverse(*i)))
}

/// Two rules for the same path (or prefix) are ambiguous: the second one is reported.
pub fn duplicates(rules: &[Rule]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (j, r) in rules.iter().enumerate() {
        if let Some(i) = rules[..j].iter().position(|q| q.path == r.path) {
            out.push((i, j));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(prefix: &str, caps: &[&str]) -> RuleSpec {
        RuleSpec {
            path_prefix: Some(prefix.into()),
            capabilities: Some(caps.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let p = PathMatch::Prefix("/grafana".into());
        assert!(p.matches("/grafana"));
        assert!(p.matches("/grafana/d/x"));
        assert!(!p.matches("/grafanax"));
        assert!(!p.matches("/grafan"));
        let slash = PathMatch::Prefix("/app/".into());
        assert!(slash.matches("/app/x"));
        assert!(!slash.matches("/app"));
        let root = PathMatch::Prefix("/".into());
        assert!(root.matches("/"));
        assert!(root.matches("/anything/below"));
        let exact = PathMatch::Exact("/status".into());
        assert!(exact.matches("/status"));
        assert!(!exact.matches("/status/x"));
    }

    #[test]
    fn the_most_specific_rule_wins() {
        let rules: Vec<Rule> = [
            spec("/", &["ui_access"]),
            spec("/grafana", &["read_users"]),
            spec("/grafana/public", &[]),
        ]
        .iter()
        .map(|s| Rule::build(s, Mode::Bridge).unwrap())
        .collect();
        let exact = Rule::build(
            &RuleSpec {
                path: Some("/grafana/public/x".into()),
                public: Some(true),
                ..Default::default()
            },
            Mode::Bridge,
        )
        .unwrap();
        let mut all = rules.clone();
        all.push(exact);
        assert_eq!(find(&all, Mode::Bridge, "/other").unwrap().0, 0);
        assert_eq!(find(&all, Mode::Bridge, "/grafana/d").unwrap().0, 1);
        assert_eq!(find(&all, Mode::Bridge, "/grafana/public/y").unwrap().0, 2);
        assert_eq!(find(&all, Mode::Bridge, "/grafana/public/x").unwrap().0, 3);
        // Headplane's and headgate's namespaces never reach a rule in the Headplane modes.
        for p in [
            "/admin",
            "/admin/",
            "/admin/users",
            "/admin.data",
            "/adminx",
            "/_headgate/keys",
        ] {
            assert!(find(&all, Mode::Bridge, p).is_none(), "{p}");
            assert!(find(&all, Mode::ProxyAuth, p).is_none(), "{p}");
        }
        assert_eq!(find(&all, Mode::None, "/admin/users").unwrap().0, 0);
    }

    #[test]
    fn rules_are_validated_with_their_keys() {
        let e = |s: RuleSpec, mode: Mode| -> Vec<String> {
            Rule::build(&s, mode)
                .unwrap_err()
                .into_iter()
                .map(|(k, m)| format!("{k}: {m}"))
                .collect()
        };
        let in_admin = e(spec("/admin/users", &["read_users"]), Mode::Bridge);
        assert!(in_admin[0].starts_with("path_prefix: ") && in_admin[0].contains("outside /admin"));
        assert!(e(spec("/admin", &[]), Mode::ProxyAuth)[0].contains("outside /admin"));
        assert!(e(spec("/adminx", &[]), Mode::ProxyAuth)[0].contains("outside /admin"));
        assert!(Rule::build(&spec("/admin/users", &[]), Mode::None).is_ok());
        assert!(e(spec("/_headgate/x", &[]), Mode::None)[0].contains("headgate's own"));
        assert!(e(spec("/Grafana", &[]), Mode::Bridge)[0].contains("upper case"));
        assert!(Rule::build(&spec("/Grafana", &[]), Mode::None).is_ok());
        assert!(e(spec("/a%2Fb", &[]), Mode::None)[0].contains("percent escape"));
        assert!(e(spec("/a//b", &[]), Mode::None)[0].contains("empty segment"));
        assert!(e(spec("grafana", &[]), Mode::None)[0].contains("must start with /"));
        let bad_cap = e(spec("/g", &["read_user"]), Mode::Bridge);
        assert!(bad_cap[0].starts_with("capabilities[0]: ") && bad_cap[0].contains("read_users"));
        let both = e(
            RuleSpec {
                path: Some("/a".into()),
                path_prefix: Some("/a".into()),
                public: Some(true),
                ..Default::default()
            },
            Mode::None,
        );
        assert!(both[0].starts_with("path: "));
        let neither = e(RuleSpec::default(), Mode::None);
        assert_eq!(neither.len(), 2, "{neither:?}");
        let public_and_caps = e(
            RuleSpec {
                public: Some(true),
                ..spec("/a", &["ui_access"])
            },
            Mode::None,
        );
        assert!(public_and_caps[0].starts_with("public: "));
        let bad_method = e(
            RuleSpec {
                methods: Some(vec!["GET".into(), "OPTIONS".into()]),
                ..spec("/a", &[])
            },
            Mode::None,
        );
        assert!(bad_method[0].starts_with("methods[1]: "));
        let ws_without_get = e(
            RuleSpec {
                methods: Some(vec!["POST".into()]),
                websocket: true,
                ..spec("/a", &[])
            },
            Mode::None,
        );
        assert!(ws_without_get[0].starts_with("websocket: "));
    }

    #[test]
    fn methods_default_to_get_head_post_and_may_add_put_patch_delete() {
        let r = Rule::build(&spec("/a", &[]), Mode::None).unwrap();
        assert_eq!(r.methods, vec![RuleMethod::Get, RuleMethod::Post]);
        let r = Rule::build(
            &RuleSpec {
                methods: Some(vec![
                    "get".into(),
                    "head".into(),
                    "DELETE".into(),
                    "put".into(),
                    "PATCH".into(),
                ]),
                ..spec("/a", &[])
            },
            Mode::None,
        )
        .unwrap();
        assert_eq!(
            r.methods,
            vec![
                RuleMethod::Get,
                RuleMethod::Put,
                RuleMethod::Patch,
                RuleMethod::Delete
            ]
        );
        assert_eq!(r.access, Access::Caps(Caps::NONE));
    }
}
