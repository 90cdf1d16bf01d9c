//! `spec/policy.md` section 3 through the real server (the API-key bridge, where the policy is the only
//! gate): for each of the seven roles and an API-key session, GET and POST on every row, every `action_id`,
//! the `.data`, `?index` and `_routes` forms. An allow reaches the echo upstream with exactly the path,
//! query and form decided on; every refusal is answered by headgate and never reaches it.
//!
//! The expected outcomes are transcribed from the spec's table (not computed by headgate's code). Columns:
//! owner, admin, network_admin, it_admin, auditor, viewer, member, API key.
//! A allow · P public allow · O allow because the form's node is the caller's own (each person posts
//! about their own node here; someone else's node is `own_rights.rs`) · D 403 · N 403 no-access page ·
//! S 403 "browser SSH needs Headplane's identity" · L 403 "linking is headgate's" · K 302 to
//! `/_headgate/keys`.

use crate::gated::{self, BRIDGE_SESSION, Gated, Principal};

/// `{node}` in a target or a form value is the caller's own node id.
struct Row {
    method: &'static str,
    target: &'static str,
    form: &'static [(&'static str, &'static str)],
    expect: &'static str,
}

const fn get(target: &'static str, expect: &'static str) -> Row {
    Row {
        method: "GET",
        target,
        form: &[],
        expect,
    }
}

const fn post(
    target: &'static str,
    form: &'static [(&'static str, &'static str)],
    expect: &'static str,
) -> Row {
    Row {
        method: "POST",
        target,
        form,
        expect,
    }
}

const DENY: &str = "DDDDDDDD";

#[rustfmt::skip]
const ROWS: &[Row] = &[
    // ---- GET: who may GET ------------------------------------------------------------------------------
    get("/admin/assets/index-AbC.js",                         "PPPPPPPP"),
    get("/admin/favicon.ico",                                 "PPPPPPPP"),
    get("/admin/fonts/inter.woff2",                           "PPPPPPPP"),
    get("/admin/wasm_exec.js",                                "PPPPPPPP"),
    get("/admin/hp_ssh.wasm",                                 "PPPPPPPP"),
    get("/admin/healthz",                                     "PPPPPPPP"),
    get("/admin/",                                            "AAAAAANA"),
    get("/admin/_root.data",                                  "AAAAAANA"),
    get("/admin/?index",                                      "AAAAAANA"),
    get("/admin/__manifest?p=%2Fadmin%2Fmachines&version=1",  "AAAAAADA"),
    get("/admin/machines",                                    "AAAAAADA"),
    get("/admin/machines.data?_routes=routes%2Fmachines",     "AAAAAADA"),
    get("/admin/machines/{node}",                             "AAAAAADA"),
    get("/admin/machines/{node}.data",                        "AAAAAADA"),
    get("/admin/users",                                       "AAAAAADA"),
    get("/admin/users.data?index",                            "AAAAAADA"),
    get("/admin/acls",                                        "AAAAADDA"),
    get("/admin/acls.data?_routes=routes%2Facls",             "AAAAADDA"),
    get("/admin/dns",                                         "AAAAADDA"),
    get("/admin/dns.data",                                    "AAAAADDA"),
    get("/admin/settings",                                    "AAAAADDA"),
    get("/admin/settings.data?index",                         "AAAAADDA"),
    get("/admin/settings/auth-keys",                          "AAAAKKDA"),
    get("/admin/settings/auth-keys.data",                     "AAAAKKDA"),
    get("/admin/settings/auth-keys?index",                    "AAAAKKDA"),
    get("/admin/settings/restrictions",                       "AAAAAADA"),
    get("/admin/settings/restrictions.data",                  "AAAAAADA"),
    get("/admin/settings/agent",                              "AAAAADDA"),
    get("/admin/settings/agent.data?_routes=root",            "AAAAADDA"),
    get("/admin/ssh",                                         "SSSSSSSS"),
    get("/admin/ssh/laptop-1",                                "SSSSSSSS"),
    get("/admin/ssh/laptop-1.data",                           "SSSSSSSS"),
    get("/admin/events/live",                                 "AAAAAADA"),
    get("/admin/api/color-scheme",                            DENY),
    get("/admin/api/info",                                    DENY),
    get("/admin/nope",                                        DENY),
    get("/admin/machines/{node}/routes",                      DENY),
    get("/other",                                             DENY),

    // ---- POST /machines ---------------------------------------------------------------------------------
    // Own rights (O) also need read_machines: a member, even linked and owning the node, is refused. This is
    // stricter than policy.md's literal "write_machines, or the node ... belongs to the caller" (headgate's
    // choice: own rights belong to people who can see the machines page).
    post("/admin/machines",                 &[("action_id", "register"), ("register_key", "k"), ("user", "1")], "AADADDDA"),
    post("/admin/machines?index",           &[("action_id", "rename"), ("node_id", "{node}"), ("name", "new name")], "AAOAOODA"),
    post("/admin/machines.data",            &[("action_id", "expire"), ("node_id", "{node}")], "AAOAOODA"),
    post("/admin/machines",                 &[("action_id", "delete"), ("node_id", "{node}")], "AAOAOODA"),
    post("/admin/machines",                 &[("action_id", "update_tags"), ("node_id", "{node}"), ("tags", "tag:x")], "AADDDDDA"),
    post("/admin/machines",                 &[("action_id", "update_routes"), ("node_id", "{node}"), ("routes", "0.0.0.0/0"), ("enabled", "true")], "AADADDDA"),
    post("/admin/machines",                 &[("action_id", "reassign"), ("node_id", "{node}"), ("user_id", "1")], "AADADDDA"),
    post("/admin/machines",                 &[("action_id", "move"), ("node_id", "{node}")], DENY),
    post("/admin/machines",                 &[("node_id", "{node}")], DENY),
    post("/admin/machines/{node}",          &[("action_id", "register"), ("register_key", "k")], "AADADDDA"),
    post("/admin/machines/{node}.data",     &[("action_id", "rename"), ("node_id", "{node}"), ("name", "x")], "AAOAOODA"),
    post("/admin/machines/{node}?_routes=routes%2Fmachine", &[("action_id", "expire"), ("node_id", "{node}")], "AAOAOODA"),
    post("/admin/machines/{node}",          &[("action_id", "delete"), ("node_id", "{node}")], "AAOAOODA"),
    post("/admin/machines/{node}",          &[("action_id", "update_tags"), ("node_id", "{node}")], "AADDDDDA"),
    post("/admin/machines/{node}.data?index", &[("action_id", "update_routes"), ("node_id", "{node}")], "AADADDDA"),
    post("/admin/machines/{node}",          &[("action_id", "reassign"), ("node_id", "{node}"), ("user_id", "1")], "AADADDDA"),

    // ---- POST /users (bridge: Headplane's own user records are refused) ---------------------------------
    post("/admin/users",                    &[("action_id", "create_user"), ("username", "bob")], "AADADDDA"),
    post("/admin/users.data",               &[("action_id", "delete_user"), ("user_id", "3")], "AADADDDA"),
    post("/admin/users?index",              &[("action_id", "rename_user"), ("user_id", "3"), ("new_name", "x")], "AADADDDA"),
    post("/admin/users",                    &[("action_id", "reassign_user"), ("user_id", "u"), ("new_role", "viewer")], DENY),
    post("/admin/users",                    &[("action_id", "link_user"), ("user_id", "u"), ("headscale_user_id", "3")], DENY),
    post("/admin/users",                    &[("action_id", "transfer_ownership"), ("user_id", "u")], DENY),
    post("/admin/users",                    &[("action_id", "make_owner")], DENY),

    // ---- POST /acls, /dns, settings ---------------------------------------------------------------------
    post("/admin/acls",                     &[("policy", "{}")], "AAADDDDA"),
    post("/admin/acls.data?_routes=routes%2Facls", &[("action_id", "update_policy"), ("policy", "{}")], "AAADDDDA"),
    post("/admin/dns",                      &[("action_id", "rename_tailnet"), ("new_name", "t")], "AAADDDDA"),
    post("/admin/dns",                      &[("action_id", "toggle_magic"), ("new_state", "enabled")], "AAADDDDA"),
    post("/admin/dns.data",                 &[("action_id", "add_ns"), ("ns", "1.1.1.1")], "AAADDDDA"),
    post("/admin/dns",                      &[("action_id", "remove_ns"), ("ns", "1.1.1.1")], "AAADDDDA"),
    post("/admin/dns?index",                &[("action_id", "add_domain"), ("domain", "x.example")], "AAADDDDA"),
    post("/admin/dns",                      &[("action_id", "remove_domain"), ("domain", "x.example")], "AAADDDDA"),
    post("/admin/dns",                      &[("action_id", "add_record"), ("record_name", "a")], "AAADDDDA"),
    post("/admin/dns",                      &[("action_id", "remove_record"), ("record_name", "a")], "AAADDDDA"),
    post("/admin/dns?_routes=routes%2Fdns", &[("action_id", "override_dns"), ("override", "true")], "AAADDDDA"),
    post("/admin/dns",                      &[("action_id", "drop_all")], DENY),
    post("/admin/settings",                 &[("action_id", "x")], DENY),
    post("/admin/settings/auth-keys",       &[("action_id", "add_preauthkey"), ("user_id", "1"), ("expiry", "1 day")], "AAAADDDA"),
    post("/admin/settings/auth-keys.data",  &[("action_id", "expire_preauthkey"), ("key_id", "1"), ("user_id", "1")], "AAAADDDA"),
    post("/admin/settings/auth-keys",       &[("action_id", "list_all")], DENY),
    post("/admin/settings/restrictions",    &[("action_id", "add_domain"), ("domain", "x")], "AADADDDA"),
    post("/admin/settings/agent.data",      &[("action_id", "toggle")], "AADADDDA"),

    // ---- POST elsewhere ---------------------------------------------------------------------------------
    post("/admin/",                         &[("action_id", "link_user"), ("headscale_user_id", "1")], "LLLLLLLL"),
    post("/admin/_root.data?index",         &[("headscale_user_id", "1")], "LLLLLLLL"),
    post("/admin/api/color-scheme",         &[("theme", "dark")], "AAAAAAAA"),
    post("/admin/api/info",                 &[], DENY),
    post("/admin/__manifest",               &[], DENY),
    post("/admin/events/live",              &[], DENY),
    post("/admin/ssh/laptop-1",             &[], DENY),
    post("/admin/nope",                     &[("action_id", "x")], DENY),
];

fn fill(s: &str, node: u64) -> String {
    s.replace("{node}", &node.to_string())
}

fn urlencoded(fields: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields.iter())
        .finish()
}

#[tokio::test]
async fn every_role_and_an_api_key_through_the_real_server() {
    let e = gated::start("api_key");
    let everyone = e.everyone().await;
    // Each linked person owns one node; the API-key session (no link) posts about the owner's.
    let nodes: Vec<u64> = everyone
        .iter()
        .map(|p| match p.hs_user {
            Some(u) => e.hs.add_node(u, &format!("node-{}", p.label)),
            None => 0,
        })
        .collect();
    let owner_node = nodes[0];
    let mut checked = 0;
    let mut failures = Vec::new();
    for row in ROWS {
        assert_eq!(row.expect.len(), everyone.len(), "{}", row.target);
        for (i, (who, code)) in everyone.iter().zip(row.expect.chars()).enumerate() {
            let node = if nodes[i] == 0 { owner_node } else { nodes[i] };
            if let Err(f) = check(&e, who, row, node, code).await {
                failures.push(f);
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases differ from policy.md:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Signed out: public rows reach the upstream, everything else gets the sign-in answer.
    let b = crate::harness::browser::Browser::new();
    for row in ROWS.iter().filter(|r| r.method == "GET") {
        let target = fill(row.target, owner_node);
        let before = e.forwarded_count();
        let r = b.get_with(e.url(&target), &[("accept", "text/html")]).await;
        if row.expect == "PPPPPPPP" {
            assert_eq!(r.status(), 200, "signed out GET {target}");
            assert_eq!(e.forwarded_count(), before + 1, "signed out GET {target}");
        } else {
            assert!(
                matches!(r.status(), 302 | 202),
                "signed out GET {target}: {}",
                r.status()
            );
            assert_eq!(e.forwarded_count(), before, "signed out GET {target}");
        }
    }
    println!("policy matrix through the server: {checked} cases");
}

/// One request of `who`, checked against the expected outcome `code`.
async fn check(e: &Gated, who: &Principal, row: &Row, node: u64, code: char) -> Result<(), String> {
    let target = fill(row.target, node);
    let fields: Vec<(String, String)> = row
        .form
        .iter()
        .map(|(k, v)| (k.to_string(), fill(v, node)))
        .collect();
    let what = format!(
        "{} {} {target} {:?} (expected {code})",
        who.label, row.method, row.form
    );
    let before = e.forwarded_count();
    let data = target.contains(".data");
    let accept = if data { "*/*" } else { "text/html" };
    let r = if row.method == "GET" {
        who.browser
            .get_with(e.url(&target), &[("accept", accept)])
            .await
    } else {
        who.browser
            .request(
                reqwest::Method::POST,
                &e.url(&target),
                Some(fields.clone()),
                &[("origin", &e.site.base()), ("accept", accept)],
                None,
            )
            .await
    };
    let forwarded = e.forwarded();
    let reached = forwarded.len() > before;
    let fail = |msg: String| Err(format!("{what}: {msg}"));
    match code {
        'A' | 'P' | 'O' => {
            if r.status() != 200 || !reached {
                return fail(format!(
                    "status {} reached upstream {reached}: {}",
                    r.status(),
                    r.text().chars().take(200).collect::<String>()
                ));
            }
            if forwarded.len() != before + 1 {
                return fail(format!("{} upstream requests", forwarded.len() - before));
            }
            let seen = forwarded.last().unwrap();
            if seen.uri != target || seen.method != row.method {
                return fail(format!("upstream saw {} {}", seen.method, seen.uri));
            }
            if row.method == "POST" && seen.body_str() != urlencoded(&fields) {
                return fail(format!("upstream got the form {:?}", seen.body_str()));
            }
            // The bridge's Headplane session only after an allow on a row that is not public.
            let cookie = seen.header("cookie").unwrap_or("");
            if (code == 'P') == cookie.contains(BRIDGE_SESSION) {
                return fail(format!("upstream cookie {cookie:?}"));
            }
        }
        'D' | 'N' | 'S' | 'L' => {
            if r.status() != 403 || reached {
                return fail(format!("status {} reached upstream {reached}", r.status()));
            }
            let page = match code {
                'N' => "No access yet",
                'S' => "Browser SSH is not available here",
                'L' => "Linking happens in headgate",
                _ => "Not allowed",
            };
            if !r.text().contains(page) {
                return fail(format!("not the {page:?} page: {}", r.text()));
            }
        }
        'K' => {
            if r.status() != 302
                || r.header("location").as_deref() != Some("/_headgate/keys")
                || reached
            {
                return fail(format!(
                    "status {} location {:?} reached upstream {reached}",
                    r.status(),
                    r.header("location")
                ));
            }
        }
        other => panic!("unknown code {other}"),
    }
    Ok(())
}
