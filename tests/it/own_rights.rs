//! Own rights (`spec/policy.md` section 3, `spec/security.md` S5) through the real server in the API-key
//! bridge: a node's owner may rename, expire and delete that node and nothing else; ownership is asked of
//! Headscale, once, for the node named by the form's `node_id`, with a timeout, failing closed; a person
//! with own pre-auth keys only never reaches Headplane's key page and never receives another user's key.

use std::time::{Duration, Instant};

use crate::gated::{self, Gated, Principal};
use crate::harness::echo::Reply;

fn node_calls(e: &Gated) -> Vec<String> {
    e.hs.calls_to("/api/v1/node/")
        .into_iter()
        .map(|c| c.path.clone())
        .collect()
}

/// POST `fields` to `path` as `who`; returns (status, reached the upstream, node lookups at Headscale).
async fn post(
    e: &Gated,
    who: &Principal,
    path: &str,
    fields: &[(&str, String)],
) -> (u16, bool, Vec<String>) {
    let before = e.forwarded_count();
    e.hs.clear_calls();
    let r = who
        .browser
        .request(
            reqwest::Method::POST,
            &e.url(path),
            Some(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            ),
            &[("origin", &e.site.base())],
            None,
        )
        .await;
    let reached = e.forwarded_count() > before;
    if reached {
        let seen = e.forwarded().last().cloned().unwrap();
        assert_eq!(seen.uri, path);
    }
    (r.status(), reached, node_calls(e))
}

fn form(action: &str, node: impl ToString) -> Vec<(&'static str, String)> {
    vec![
        ("action_id", action.to_string()),
        ("node_id", node.to_string()),
        ("name", "renamed".to_string()),
    ]
}

#[tokio::test]
async fn a_node_owner_renames_expires_and_deletes_their_node_and_nothing_else() {
    let e = gated::start("api_key");
    e.prepare_links(&["p-vic"]);
    let _owner = e.person("owner", "p-owner", None, "owner", false).await;
    let vic = e
        .person("viewer", "p-vic", Some("viewer"), "viewer", true)
        .await;
    let una = e
        .person("unlinked viewer", "p-una", Some("viewer"), "viewer", false)
        .await;
    let mine = e.hs.add_node(vic.hs_user.unwrap(), "vics-laptop");
    let other_user = e.hs.add_user("other", "other@example.com");
    let theirs = e.hs.add_node(other_user, "others-laptop");
    let tagged = e.hs.add_tagged_node("router", &["tag:router"]);
    let missing = 999_999u64;

    // Rename, expire, delete of the own node: allowed, after exactly one question about that node.
    for path in [
        "/admin/machines".to_string(),
        "/admin/machines?index".to_string(),
        "/admin/machines.data".to_string(),
        format!("/admin/machines/{mine}"),
        format!("/admin/machines/{mine}.data?_routes=routes%2Fmachine"),
    ] {
        for action in ["rename", "expire", "delete"] {
            let (status, reached, calls) = post(&e, &vic, &path, &form(action, mine)).await;
            assert_eq!(
                (status, reached),
                (200, true),
                "{action} own node on {path}"
            );
            assert_eq!(
                calls,
                vec![format!("/api/v1/node/{mine}")],
                "{action} on {path}"
            );
        }
    }
    // Everything else about the own node: refused without asking (no own right exists for it).
    for action in [
        "update_tags",
        "update_routes",
        "reassign",
        "register",
        "move",
    ] {
        let mut f = form(action, mine);
        f.push(("user_id", other_user.to_string()));
        f.push(("tags", "tag:exit".to_string()));
        f.push(("routes", "0.0.0.0/0".to_string()));
        let (status, reached, calls) = post(&e, &vic, "/admin/machines", &f).await;
        assert_eq!((status, reached), (403, false), "{action} own node");
        assert!(calls.is_empty(), "{action}: {calls:?}");
    }
    // Someone else's node, a tagged node, a node that does not exist: asked about, refused.
    for node in [theirs, tagged, missing] {
        for action in ["rename", "expire", "delete"] {
            let (status, reached, calls) =
                post(&e, &vic, "/admin/machines", &form(action, node)).await;
            assert_eq!((status, reached), (403, false), "{action} node {node}");
            assert_eq!(
                calls,
                vec![format!("/api/v1/node/{node}")],
                "{action} {node}"
            );
        }
    }
    // The check uses the form's node_id: whatever the page, Headscale is asked about the form's node, and a
    // form naming another node than the machine page it is posted to is refused.
    let (status, reached, calls) = post(
        &e,
        &vic,
        &format!("/admin/machines/{mine}"),
        &form("delete", theirs),
    )
    .await;
    assert_eq!((status, reached), (403, false), "own page, other node");
    assert!(calls.is_empty(), "{calls:?}");
    let (status, reached, _) = post(
        &e,
        &vic,
        &format!("/admin/machines/{theirs}"),
        &form("delete", mine),
    )
    .await;
    assert_eq!((status, reached), (403, false), "other page, own node");
    // No node named: refused. The node in the query does not count (a query on a POST is refused).
    let (status, reached, calls) = post(
        &e,
        &vic,
        "/admin/machines",
        &[("action_id", "rename".to_string())],
    )
    .await;
    assert_eq!((status, reached), (403, false));
    assert!(calls.is_empty());
    let (status, reached, _) = post(
        &e,
        &vic,
        &format!("/admin/machines?node_id={mine}"),
        &[("action_id", "rename".to_string())],
    )
    .await;
    assert_eq!((status, reached), (400, false));
    // A node_id spelled two ways, or twice: refused before any question.
    for f in [
        vec![
            ("action_id", "rename".to_string()),
            ("node_id", mine.to_string()),
            ("node_id", theirs.to_string()),
        ],
        vec![
            ("action_id", "rename".to_string()),
            ("node_id", format!("0{mine}")),
        ],
        vec![
            ("action_id", "rename".to_string()),
            ("node_id", format!("{mine} ")),
        ],
    ] {
        let (status, reached, calls) = post(&e, &vic, "/admin/machines", &f).await;
        assert_eq!((status, reached), (400, false), "{f:?}");
        assert!(calls.is_empty(), "{f:?}: {calls:?}");
    }
    // Without a link there is nothing to own.
    let (status, reached, calls) = post(&e, &una, "/admin/machines", &form("rename", mine)).await;
    assert_eq!((status, reached), (403, false));
    assert!(calls.is_empty(), "{calls:?}");
    // A changed owner at Headscale applies to the next request: the node moved away, the right with it.
    e.hs.edit_node(mine, |n| n.user_id = Some(other_user));
    let (status, reached, _) = post(&e, &vic, "/admin/machines", &form("rename", mine)).await;
    assert_eq!((status, reached), (403, false), "after the node moved away");
}

#[tokio::test]
async fn the_ownership_question_fails_closed() {
    let e = gated::start("api_key");
    e.prepare_links(&["p-vic"]);
    let _owner = e.person("owner", "p-owner", None, "owner", false).await;
    let vic = e
        .person("viewer", "p-vic", Some("viewer"), "viewer", true)
        .await;
    let mine = e.hs.add_node(vic.hs_user.unwrap(), "vics-laptop");
    let allowed = || async { post(&e, &vic, "/admin/machines", &form("rename", mine)).await };
    assert_eq!(allowed().await.0, 200, "control: the own node is renamed");

    // Headscale down.
    e.hs.down(true);
    let (status, reached, _) = allowed().await;
    assert_eq!((status, reached), (403, false), "Headscale down");
    e.hs.down(false);
    // Headscale answering errors.
    for code in [500, 502, 503, 401, 404] {
        e.hs.fail_with(Some(code));
        let (status, reached, _) = allowed().await;
        assert_eq!((status, reached), (403, false), "Headscale answered {code}");
    }
    e.hs.fail_with(None);
    // Headscale too slow: the question times out (5 s) and the answer is a refusal, not a wait forever.
    e.hs.delay(Duration::from_secs(8));
    let began = Instant::now();
    let (status, reached, _) = allowed().await;
    let took = began.elapsed();
    assert_eq!((status, reached), (403, false), "Headscale slow");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(8),
        "the ownership question should time out after about 5 s, took {took:?}"
    );
    e.hs.delay(Duration::ZERO);
    // Healed: allowed again.
    let (status, reached, calls) = allowed().await;
    assert_eq!((status, reached), (200, true), "healed");
    assert_eq!(calls.len(), 1);
}

#[tokio::test]
async fn own_key_people_never_reach_headplanes_key_page_nor_other_users_keys() {
    let e = gated::start("api_key");
    e.prepare_links(&["p-owner", "p-vic", "p-aud"]);
    let owner = e.person("owner", "p-owner", None, "owner", true).await;
    let vic = e
        .person("viewer", "p-vic", Some("viewer"), "viewer", true)
        .await;
    let aud = e
        .person("auditor", "p-aud", Some("auditor"), "auditor", true)
        .await;
    let later = Some(time::OffsetDateTime::now_utc() + time::Duration::hours(6));
    let other_user = e.hs.add_user("other", "other@example.com");
    let k_other = e.hs.add_preauth_key(Some(other_user), later);
    let k_owner = e.hs.add_preauth_key(owner.hs_user, later);
    let k_tagged = e.hs.add_preauth_key(None, later);
    let k_vic = e.hs.add_preauth_key(vic.hs_user, later);
    let k_aud = e.hs.add_preauth_key(aud.hs_user, later);
    let id12 = |k: &str| k["hskey-auth-".len().."hskey-auth-".len() + 12].to_string();
    // Headplane's key page lists every user's keys: the upstream answers with all of them.
    let all = [&k_other, &k_owner, &k_tagged, &k_vic, &k_aud]
        .iter()
        .map(|k| k.key.clone())
        .collect::<Vec<_>>()
        .join("\n");
    e.echo.set_reply(
        "/admin/settings/auth-keys*",
        Reply::status(200).body(all.clone()),
    );

    // Control: someone with generate_authkeys gets Headplane's page, every key on it.
    let r = owner.browser.get(e.url("/admin/settings/auth-keys")).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().contains(&id12(&k_other.key)), "{}", r.text());

    for (who, own) in [(&vic, &k_vic), (&aud, &k_aud)] {
        let strangers: Vec<String> = [&k_other, &k_owner, &k_tagged, &k_vic, &k_aud]
            .iter()
            .filter(|k| k.id != own.id)
            .map(|k| id12(&k.key))
            .collect();
        let mut received = Vec::new();
        let before = e.forwarded_count();
        for target in [
            "/admin/settings/auth-keys",
            "/admin/settings/auth-keys.data",
            "/admin/settings/auth-keys?index",
            "/admin/settings/auth-keys.data?_routes=routes%2Fsettings%2Fauth-keys",
        ] {
            for accept in ["text/html", "*/*"] {
                let r = who
                    .browser
                    .get_with(e.url(target), &[("accept", accept)])
                    .await;
                assert_eq!(r.status(), 302, "{} GET {target}", who.label);
                assert_eq!(
                    r.header("location").as_deref(),
                    Some("/_headgate/keys"),
                    "{} GET {target}",
                    who.label
                );
                received.push(format!("{:?}\n{}", r.headers, r.text()));
            }
            let head = who
                .browser
                .request(reqwest::Method::HEAD, &e.url(target), None, &[], None)
                .await;
            assert_eq!(head.status(), 302, "{} HEAD {target}", who.label);
            received.push(format!("{:?}", head.headers));
            for f in [
                vec![
                    ("action_id", "add_preauthkey".to_string()),
                    ("user_id", other_user.to_string()),
                    ("expiry", "90d".to_string()),
                    ("reusable", "on".to_string()),
                ],
                vec![
                    ("action_id", "add_preauthkey".to_string()),
                    ("user_id", who.hs_user.unwrap().to_string()),
                ],
                vec![
                    ("action_id", "expire_preauthkey".to_string()),
                    ("key_id", k_other.id.to_string()),
                    ("user_id", other_user.to_string()),
                ],
            ] {
                let r = who
                    .browser
                    .request(
                        reqwest::Method::POST,
                        &e.url(target),
                        Some(f.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()),
                        &[("origin", &e.site.base())],
                        None,
                    )
                    .await;
                assert_eq!(r.status(), 403, "{} POST {target} {f:?}", who.label);
                received.push(format!("{:?}\n{}", r.headers, r.text()));
            }
        }
        assert_eq!(
            e.forwarded_count(),
            before,
            "{}: Headplane's key page was reached",
            who.label
        );
        // headgate's own page: the person's own key only.
        let page = who.browser.get(e.url("/_headgate/keys")).await;
        assert_eq!(page.status(), 200, "{}", page.text());
        assert!(
            page.text().contains(&id12(&own.key)),
            "{}: own key missing: {}",
            who.label,
            page.text()
        );
        received.push(format!("{:?}\n{}", page.headers, page.text()));
        // Pages the person can see through Headplane carry nothing of the key page either.
        for target in ["/admin/machines", "/admin/users.data", "/_headgate/whoami"] {
            let r = who.browser.get(e.url(target)).await;
            received.push(format!("{:?}\n{}", r.headers, r.text()));
        }
        let everything = received.join("\n");
        for s in &strangers {
            assert!(
                !everything.contains(s.as_str()),
                "{} received another user's key prefix {s}",
                who.label
            );
        }
        // Nor a full key of anyone, their own included (listed keys are masked).
        assert!(
            !everything.contains(&own.key),
            "{} received a full key",
            who.label
        );
    }
}
