//! Tests of the test doubles themselves: the fake Headscale is checked against Headscale v0.29.2's own
//! Swagger file and the example responses in `../shared/headscale/`, and against the facts of
//! `../shared/spec/headscale.md`; the echo upstream is checked at the bottom (`mod echo_upstream`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::harness::fake_headscale::{
    FakeHeadscale, clean_identifier, headscale_provider_id, zero_time,
};

// ---------------------------------------------------------------------------------------------------------
// A small Swagger 2.0 validator
// ---------------------------------------------------------------------------------------------------------

/// Validates JSON against the schemas of a Swagger 2.0 document as grpc-gateway (protojson with
/// `EmitUnpopulated`) writes them: `$ref` to `#/definitions/…`; `type` object/array/string/boolean/integer;
/// `format` `uint64`/`int64` as decimal strings, `date-time` as RFC 3339 UTC (`Z`), `int32` as a JSON integer;
/// `properties` (every listed property must be present, since Headscale emits all fields; unlisted ones
/// are errors unless `additionalProperties`); `items`; `enum`. `null` is accepted only where protojson
/// writes it: for unset sub-messages (object schemas) and unset `google.protobuf.Timestamp`s (`date-time`).
pub struct Swagger {
    doc: Value,
}

impl Swagger {
    pub fn load() -> Swagger {
        let p = crate::harness::shared().join("headscale/headscale.swagger.json");
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(doc["swagger"], "2.0");
        Swagger { doc }
    }

    /// The schema of `method template`'s response for `status` (`"200"` or `"default"`).
    pub fn response_schema(&self, method: &str, template: &str, status: &str) -> &Value {
        let op = &self.doc["paths"][template][method.to_ascii_lowercase()];
        assert!(
            op.is_object(),
            "the Swagger file has no operation {method} {template}"
        );
        let s = &op["responses"][status]["schema"];
        assert!(
            s.is_object(),
            "{method} {template} has no {status} response schema"
        );
        s
    }

    pub fn definition(&self, name: &str) -> &Value {
        let d = &self.doc["definitions"][name];
        assert!(d.is_object(), "no definition {name}");
        d
    }

    /// Validate `v` against `schema`; returns the errors and records the definitions met (non-null).
    pub fn validate(&self, schema: &Value, v: &Value, seen: &mut BTreeSet<String>) -> Vec<String> {
        let mut errors = Vec::new();
        self.check(schema, v, "$", &mut errors, seen);
        errors
    }

    fn check(
        &self,
        schema: &Value,
        v: &Value,
        at: &str,
        errors: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) {
        let mut s = schema;
        while let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let name = r
                .strip_prefix("#/definitions/")
                .unwrap_or_else(|| panic!("unsupported $ref {r}"));
            if !v.is_null() {
                seen.insert(name.to_string());
            }
            s = self.definition(name);
        }
        let ty = s.get("type").and_then(Value::as_str);
        let format = s.get("format").and_then(Value::as_str);
        if v.is_null() {
            if ty == Some("object") || format == Some("date-time") {
                return;
            }
            errors.push(format!(
                "{at}: null where a {} is expected",
                ty.unwrap_or("value")
            ));
            return;
        }
        if let Some(f @ ("uint64" | "int64")) = format {
            let ok = v.as_str().is_some_and(|s| {
                let digits = if f == "int64" {
                    s.strip_prefix('-').unwrap_or(s)
                } else {
                    s
                };
                !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
            });
            if !ok {
                errors.push(format!("{at}: {f} must be a decimal string, got {v}"));
            }
            return;
        }
        match ty {
            Some("object") => {
                let Some(obj) = v.as_object() else {
                    errors.push(format!("{at}: expected an object, got {v}"));
                    return;
                };
                let empty = serde_json::Map::new();
                let props = s
                    .get("properties")
                    .and_then(Value::as_object)
                    .unwrap_or(&empty);
                for k in props.keys() {
                    if !obj.contains_key(k) {
                        errors.push(format!("{at}: property {k} is missing"));
                    }
                }
                for (k, val) in obj {
                    match props.get(k) {
                        Some(sub) => self.check(sub, val, &format!("{at}.{k}"), errors, seen),
                        None if s.get("additionalProperties").is_some() => {}
                        None => errors.push(format!("{at}: unexpected property {k}")),
                    }
                }
            }
            Some("array") => {
                let Some(items) = v.as_array() else {
                    errors.push(format!("{at}: expected an array, got {v}"));
                    return;
                };
                for (i, item) in items.iter().enumerate() {
                    self.check(&s["items"], item, &format!("{at}[{i}]"), errors, seen);
                }
            }
            Some("string") => {
                let Some(sv) = v.as_str() else {
                    errors.push(format!("{at}: expected a string, got {v}"));
                    return;
                };
                if format == Some("date-time")
                    && (OffsetDateTime::parse(sv, &Rfc3339).is_err() || !sv.ends_with('Z'))
                {
                    errors.push(format!("{at}: not an RFC 3339 UTC timestamp: {sv}"));
                }
                if let Some(allowed) = s.get("enum").and_then(Value::as_array)
                    && !allowed.iter().any(|a| a == v)
                {
                    errors.push(format!("{at}: {sv} is not one of {allowed:?}"));
                }
            }
            Some("boolean") if !v.is_boolean() => {
                errors.push(format!("{at}: expected a boolean, got {v}"))
            }
            Some("boolean") => {}
            Some("integer") => {
                let ok = match format {
                    Some("int32") => v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
                    Some("uint32") => v.as_u64().is_some_and(|n| u32::try_from(n).is_ok()),
                    _ => v.is_i64() || v.is_u64(),
                };
                if !ok {
                    errors.push(format!("{at}: expected an integer ({format:?}), got {v}"));
                }
            }
            Some("number") if !v.is_number() => {
                errors.push(format!("{at}: expected a number, got {v}"))
            }
            Some("number") => {}
            None => {}
            Some(other) => errors.push(format!("{at}: unsupported schema type {other}")),
        }
    }
}

#[test]
fn the_validator_catches_wire_format_mistakes() {
    let sw = Swagger::load();
    let user = json!({"$ref": "#/definitions/v1User"});
    let good = json!({"id": "1", "name": "a", "createdAt": "2026-05-02T08:15:30.123Z", "displayName": "",
        "email": "", "providerId": "", "provider": "", "profilePicUrl": ""});
    let mut seen = BTreeSet::new();
    assert_eq!(sw.validate(&user, &good, &mut seen), Vec::<String>::new());
    assert!(seen.contains("v1User"));
    let mut bad = good.clone();
    bad["id"] = json!(1);
    assert!(
        !sw.validate(&user, &bad, &mut seen).is_empty(),
        "numeric id must be refused"
    );
    let mut bad = good.clone();
    bad.as_object_mut().unwrap().remove("profilePicUrl");
    assert!(
        !sw.validate(&user, &bad, &mut seen).is_empty(),
        "a missing field must be refused"
    );
    let mut bad = good.clone();
    bad["providerID"] = json!("");
    assert!(
        !sw.validate(&user, &bad, &mut seen).is_empty(),
        "an unknown field must be refused"
    );
    let mut bad = good.clone();
    bad["createdAt"] = json!("2026-05-02 08:15:30");
    assert!(
        !sw.validate(&user, &bad, &mut seen).is_empty(),
        "a bad timestamp must be refused"
    );
    let mut ok = good.clone();
    ok["createdAt"] = Value::Null;
    assert!(
        sw.validate(&user, &ok, &mut seen).is_empty(),
        "an unset timestamp is null"
    );
    let mut bad = good;
    bad["name"] = Value::Null;
    assert!(
        !sw.validate(&user, &bad, &mut seen).is_empty(),
        "a null string must be refused"
    );
    let node = json!({"$ref": "#/definitions/v1Node"});
    let errors = sw.validate(
        &node,
        &json!({"registerMethod": "REGISTER_METHOD_PASSWORD"}),
        &mut seen,
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("REGISTER_METHOD_PASSWORD")),
        "{errors:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

struct Answer {
    status: u16,
    content_type: Option<String>,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
}

async fn call(
    fake: &FakeHeadscale,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let client = reqwest::Client::new();
    let mut rb = client.request(method.parse().unwrap(), format!("{}{}", fake.url(), path));
    if let Some(a) = auth {
        rb = rb.header("Authorization", a);
    }
    if let Some(b) = body {
        rb = rb
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    let resp = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap();
    Answer {
        status,
        content_type,
        text,
    }
}

async fn get(fake: &FakeHeadscale, path: &str) -> Answer {
    let key = format!("Bearer {}", fake.admin_key());
    call(fake, "GET", path, Some(&key), None).await
}

async fn post(fake: &FakeHeadscale, path: &str, body: Value) -> Answer {
    let key = format!("Bearer {}", fake.admin_key());
    call(fake, "POST", path, Some(&key), Some(body)).await
}

fn ts(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(
        v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}")),
        &Rfc3339,
    )
    .unwrap()
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect()
}

/// Timestamps replaced by their instant (so `.5Z` equals `.500Z`), everything else as is.
fn normalize(v: &Value) -> Value {
    match v {
        Value::String(s) => match OffsetDateTime::parse(s, &Rfc3339) {
            Ok(t) => json!(format!("@{}", t.unix_timestamp_nanos())),
            Err(_) => v.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), normalize(v))).collect())
        }
        _ => v.clone(),
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn example(name: &str) -> Value {
    let p = crate::harness::shared()
        .join("headscale/examples")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// Schema conformance
// ---------------------------------------------------------------------------------------------------------

/// The operations the fake implements, as (method, Swagger path template).
const SERVED: &[(&str, &str)] = &[
    ("GET", "/api/v1/user"),
    ("GET", "/api/v1/node"),
    ("GET", "/api/v1/node/{nodeId}"),
    ("POST", "/api/v1/preauthkey"),
    ("GET", "/api/v1/preauthkey"),
    ("POST", "/api/v1/preauthkey/expire"),
    ("GET", "/api/v1/apikey"),
    ("GET", "/api/v1/health"),
];

#[tokio::test]
async fn every_endpoint_answers_as_the_swagger_file_says() {
    let sw = Swagger::load();
    let fake = FakeHeadscale::builder().with_examples().start();
    // More variety than the examples: an OIDC user with an odd subject, a legacy key, an expired key, a key
    // without expiration, a tags-only pre-auth key, a node registered with a key.
    let dave = fake.add_oidc_user(
        "dave",
        "https://auth.example.com/",
        "auth0|dave",
        "dave@example.com",
    );
    let n = fake.add_node(dave, "dave-phone");
    let k = fake.add_preauth_key(
        Some(dave),
        Some(OffsetDateTime::now_utc() + time::Duration::hours(1)),
    );
    fake.edit_node(n, |n| n.pre_auth_key_id = Some(k.id));
    fake.add_preauth_key(None, None);
    fake.add_legacy_api_key(Some(OffsetDateTime::now_utc() + time::Duration::days(1)));
    fake.add_api_key(Some(OffsetDateTime::now_utc() - time::Duration::days(1)));
    fake.add_api_key(None);

    let expiration = (OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&Rfc3339)
        .unwrap();
    let cases: Vec<(&str, &str, String, Option<Value>)> = vec![
        ("GET", "/api/v1/user", "/api/v1/user".into(), None),
        ("GET", "/api/v1/user", "/api/v1/user?id=2".into(), None),
        (
            "GET",
            "/api/v1/user",
            "/api/v1/user?name=alice".into(),
            None,
        ),
        (
            "GET",
            "/api/v1/user",
            "/api/v1/user?email=bob%40example.com".into(),
            None,
        ),
        (
            "GET",
            "/api/v1/user",
            "/api/v1/user?id=987654321".into(),
            None,
        ),
        ("GET", "/api/v1/node", "/api/v1/node".into(), None),
        (
            "GET",
            "/api/v1/node",
            "/api/v1/node?user=alice".into(),
            None,
        ),
        (
            "GET",
            "/api/v1/node/{nodeId}",
            "/api/v1/node/1".into(),
            None,
        ),
        (
            "GET",
            "/api/v1/node/{nodeId}",
            "/api/v1/node/2".into(),
            None,
        ),
        (
            "GET",
            "/api/v1/node/{nodeId}",
            "/api/v1/node/3".into(),
            None,
        ),
        (
            "POST",
            "/api/v1/preauthkey",
            "/api/v1/preauthkey".into(),
            Some(
                json!({"user": dave.to_string(), "reusable": false, "ephemeral": false,
                "expiration": expiration, "aclTags": []}),
            ),
        ),
        (
            "POST",
            "/api/v1/preauthkey",
            "/api/v1/preauthkey".into(),
            Some(json!({"user": "1"})),
        ),
        (
            "POST",
            "/api/v1/preauthkey",
            "/api/v1/preauthkey".into(),
            Some(json!({"reusable": true, "expiration": expiration, "aclTags": ["tag:ci"]})),
        ),
        (
            "GET",
            "/api/v1/preauthkey",
            "/api/v1/preauthkey".into(),
            None,
        ),
        (
            "POST",
            "/api/v1/preauthkey/expire",
            "/api/v1/preauthkey/expire".into(),
            Some(json!({"id": "4"})),
        ),
        (
            "POST",
            "/api/v1/preauthkey/expire",
            "/api/v1/preauthkey/expire".into(),
            Some(json!({"id": "999"})),
        ),
        (
            "POST",
            "/api/v1/preauthkey/expire",
            "/api/v1/preauthkey/expire".into(),
            Some(json!({})),
        ),
        ("GET", "/api/v1/apikey", "/api/v1/apikey".into(), None),
        ("GET", "/api/v1/health", "/api/v1/health".into(), None),
    ];
    let mut covered = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (method, template, path, body) in cases {
        let a = match body {
            Some(b) => post(&fake, &path, b).await,
            None => get(&fake, &path).await,
        };
        assert_eq!(a.status, 200, "{method} {path}: {}", a.text);
        assert_eq!(
            a.content_type.as_deref(),
            Some("application/json"),
            "{method} {path}"
        );
        let schema = sw.response_schema(method, template, "200");
        let errors = sw.validate(schema, &a.json(), &mut seen);
        assert!(
            errors.is_empty(),
            "{method} {path} does not match the Swagger file:\n{}\n{}",
            errors.join("\n"),
            a.text
        );
        covered.insert((method, template));
    }
    let served: BTreeSet<(&str, &str)> = SERVED.iter().copied().collect();
    assert_eq!(
        covered, served,
        "every operation the fake serves is validated"
    );
    for d in [
        "v1User",
        "v1Node",
        "v1PreAuthKey",
        "v1ApiKey",
        "v1RegisterMethod",
    ] {
        assert!(
            seen.contains(d),
            "no response contained a {d}; seen {seen:?}"
        );
    }

    // Error bodies match the `default` (rpcStatus) schema.
    let errors: Vec<(&str, &str, String, Option<Value>, u16)> = vec![
        (
            "GET",
            "/api/v1/node/{nodeId}",
            "/api/v1/node/4242".into(),
            None,
            404,
        ),
        (
            "GET",
            "/api/v1/node/{nodeId}",
            "/api/v1/node/abc".into(),
            None,
            400,
        ),
        ("GET", "/api/v1/user", "/api/v1/user?id=x".into(), None, 400),
        (
            "GET",
            "/api/v1/node",
            "/api/v1/node?user=nobody".into(),
            None,
            500,
        ),
        (
            "POST",
            "/api/v1/preauthkey",
            "/api/v1/preauthkey".into(),
            Some(json!({"user": "77"})),
            500,
        ),
        (
            "POST",
            "/api/v1/preauthkey",
            "/api/v1/preauthkey".into(),
            Some(json!({"user": "1", "aclTags": ["ci"]})),
            400,
        ),
    ];
    for (method, template, path, body, status) in errors {
        let a = match body {
            Some(b) => post(&fake, &path, b).await,
            None => get(&fake, &path).await,
        };
        assert_eq!(a.status, status, "{method} {path}: {}", a.text);
        assert_eq!(
            a.content_type.as_deref(),
            Some("application/json"),
            "{method} {path}"
        );
        let errs = sw.validate(
            sw.response_schema(method, template, "default"),
            &a.json(),
            &mut seen,
        );
        assert!(errs.is_empty(), "{method} {path}: {errs:?}\n{}", a.text);
    }
}

#[tokio::test]
async fn output_is_the_examples_exactly_and_has_their_key_sets() {
    let fake = FakeHeadscale::builder().with_examples().start();
    let users = get(&fake, "/api/v1/user").await.json();
    assert_eq!(normalize(&users), normalize(&example("list_users.json")));
    let nodes = get(&fake, "/api/v1/node").await.json();
    assert_eq!(normalize(&nodes), normalize(&example("list_nodes.json")));

    // A fake filled through its methods (not from the examples) has the same shapes.
    let fake = FakeHeadscale::start();
    let alice = fake.add_user("alice", "");
    let bob = fake.add_oidc_user(
        "bob",
        "https://sso.example.com/realms/acme",
        "6f1c",
        "bob@example.com",
    );
    let n = fake.add_node(alice, "alice-desktop");
    let k = fake.add_preauth_key(Some(alice), Some(OffsetDateTime::now_utc()));
    fake.edit_node(n, |n| n.pre_auth_key_id = Some(k.id));
    fake.add_node(bob, "bob-laptop");
    let t = fake.add_tagged_node("ci-runner", &["tag:ci"]);
    let tk = fake.add_preauth_key(None, Some(OffsetDateTime::now_utc()));
    fake.edit_node(t, |n| n.pre_auth_key_id = Some(tk.id));

    let ex_users = example("list_users.json");
    let ex_nodes = example("list_nodes.json");
    let user_keys = keys(&ex_users["users"][0]);
    let node_keys = keys(&ex_nodes["nodes"][0]);
    let pak_keys = keys(&ex_nodes["nodes"][1]["preAuthKey"]);
    assert_eq!(
        keys(&ex_users),
        keys(&get(&fake, "/api/v1/user").await.json())
    );
    for u in get(&fake, "/api/v1/user").await.json()["users"]
        .as_array()
        .unwrap()
    {
        assert_eq!(keys(u), user_keys);
    }
    let nodes = get(&fake, "/api/v1/node").await.json();
    assert_eq!(keys(&ex_nodes), keys(&nodes));
    for n in nodes["nodes"].as_array().unwrap() {
        assert_eq!(keys(n), node_keys);
        assert_eq!(keys(&n["user"]), user_keys);
        if !n["preAuthKey"].is_null() {
            assert_eq!(keys(&n["preAuthKey"]), pak_keys);
        }
    }
    let tagged = &nodes["nodes"][2];
    assert_eq!(
        tagged["user"], ex_nodes["nodes"][2]["user"],
        "the synthetic tagged-devices user"
    );
    assert!(tagged["preAuthKey"]["user"].is_null());
    for k in get(&fake, "/api/v1/preauthkey").await.json()["preAuthKeys"]
        .as_array()
        .unwrap()
    {
        assert_eq!(keys(k), pak_keys);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------------------

fn assert_unauthorized(a: &Answer, status: u16, what: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.text);
    assert_eq!(a.text, "Unauthorized", "{what}");
    assert_eq!(a.content_type, None, "{what}: no content type");
}

#[tokio::test]
async fn api_calls_need_exactly_bearer_and_a_live_key() {
    let fake = FakeHeadscale::start();
    let key = fake.admin_key();
    assert!(
        key.starts_with("hskey-api-") && key.len() == "hskey-api-".len() + 12 + 1 + 64,
        "{key}"
    );
    assert_eq!(
        call(
            &fake,
            "GET",
            "/api/v1/user",
            Some(&format!("Bearer {key}")),
            None
        )
        .await
        .status,
        200
    );

    assert_unauthorized(
        &call(&fake, "GET", "/api/v1/user", None, None).await,
        401,
        "no header",
    );
    assert_unauthorized(
        &call(
            &fake,
            "GET",
            "/api/v1/user",
            Some(&format!("bearer {key}")),
            None,
        )
        .await,
        401,
        "bearer",
    );
    assert_unauthorized(
        &call(
            &fake,
            "GET",
            "/api/v1/user",
            Some(&format!("Bearer  {key}")),
            None,
        )
        .await,
        401,
        "2 spaces",
    );
    assert_unauthorized(
        &call(
            &fake,
            "GET",
            "/api/v1/user",
            Some(&format!("Token {key}")),
            None,
        )
        .await,
        401,
        "Token",
    );
    assert_unauthorized(
        &call(&fake, "GET", "/api/v1/user", Some(&key), None).await,
        401,
        "bare key",
    );
    let wrong = format!("Bearer {}x", &key[..key.len() - 1]);
    assert_unauthorized(
        &call(&fake, "GET", "/api/v1/user", Some(&wrong), None).await,
        401,
        "wrong secret",
    );

    let expired = fake.add_api_key(Some(OffsetDateTime::now_utc() - time::Duration::seconds(1)));
    assert_unauthorized(
        &call(
            &fake,
            "GET",
            "/api/v1/user",
            Some(&format!("Bearer {expired}")),
            None,
        )
        .await,
        401,
        "expired",
    );
    let soon = fake.add_api_key(Some(OffsetDateTime::now_utc() + time::Duration::hours(1)));
    let soon_h = format!("Bearer {soon}");
    assert_eq!(
        call(&fake, "GET", "/api/v1/apikey", Some(&soon_h), None)
            .await
            .status,
        200
    );
    fake.expire_api_key(&soon);
    assert_unauthorized(
        &call(&fake, "GET", "/api/v1/apikey", Some(&soon_h), None).await,
        401,
        "expired later",
    );
    let revoked = fake.add_api_key(Some(OffsetDateTime::now_utc() + time::Duration::hours(1)));
    fake.revoke_api_key(&revoked);
    assert_unauthorized(
        &call(
            &fake,
            "GET",
            "/api/v1/user",
            Some(&format!("Bearer {revoked}")),
            None,
        )
        .await,
        401,
        "revoked",
    );

    let legacy =
        fake.add_legacy_api_key(Some(OffsetDateTime::now_utc() + time::Duration::hours(1)));
    let (prefix, secret) = legacy.split_once('.').unwrap();
    assert_eq!((prefix.len(), secret.len()), (7, 32));
    assert_eq!(
        call(
            &fake,
            "GET",
            "/api/v1/user",
            Some(&format!("Bearer {legacy}")),
            None
        )
        .await
        .status,
        200
    );

    // The key is checked before routing: an unknown route without a key is 401, not 404.
    assert_unauthorized(
        &call(&fake, "GET", "/api/v1/nope", None, None).await,
        401,
        "unknown route",
    );
    let a = get(&fake, "/api/v1/nope").await;
    assert_eq!(
        (a.status, a.json()),
        (
            404,
            json!({"code": 5, "message": "Not Found", "details": []})
        )
    );
    let a = call(
        &fake,
        "DELETE",
        "/api/v1/health",
        Some(&format!("Bearer {key}")),
        None,
    )
    .await;
    assert_eq!(
        (a.status, a.json()),
        (
            501,
            json!({"code": 12, "message": "Method Not Allowed", "details": []})
        )
    );
    // Real operations the fake does not implement say so.
    let a = post(&fake, "/api/v1/user", json!({"name": "x"})).await;
    assert_eq!(a.status, 501);
    assert!(
        a.json()["message"]
            .as_str()
            .unwrap()
            .contains("does not implement POST /api/v1/user")
    );

    // Headscale's own health probe needs no key.
    let a = call(&fake, "GET", "/health", None, None).await;
    assert_eq!((a.status, a.json()), (200, json!({"status": "pass"})));
    let a = get(&fake, "/api/v1/health").await;
    assert_eq!(a.json(), json!({"databaseConnectivity": true}));

    // Every request is in the log, with its answer.
    let calls = fake.calls();
    assert!(calls.iter().any(|c| c.method == "GET"
        && c.path == "/api/v1/user"
        && c.status == 401
        && c.authorization.is_none()));
    assert!(
        calls
            .iter()
            .any(|c| c.target() == "/health" && c.status == 200)
    );
}

#[tokio::test]
async fn legacy_and_v030_unauthorized_variants() {
    let fake = FakeHeadscale::builder()
        .legacy_500_unauthorized(true)
        .start();
    let expired = fake.add_api_key(Some(OffsetDateTime::now_utc() - time::Duration::seconds(1)));
    let unknown = "Bearer hskey-api-AAAAAAAAAAAA-0000000000000000000000000000000000000000000000000000000000000000";
    assert_unauthorized(
        &call(&fake, "GET", "/api/v1/user", Some(unknown), None).await,
        500,
        "legacy unknown",
    );
    assert_unauthorized(
        &call(&fake, "GET", "/api/v1/user", Some("Bearer junk"), None).await,
        500,
        "legacy malformed",
    );
    assert_unauthorized(
        &call(
            &fake,
            "GET",
            "/api/v1/user",
            Some(&format!("Bearer {expired}")),
            None,
        )
        .await,
        401,
        "legacy expired",
    );
    assert_unauthorized(
        &call(&fake, "GET", "/api/v1/user", None, None).await,
        401,
        "legacy missing",
    );
    assert_eq!(get(&fake, "/api/v1/user").await.status, 200);
    fake.legacy_500_unauthorized(false);
    assert_unauthorized(
        &call(&fake, "GET", "/api/v1/user", Some(unknown), None).await,
        401,
        "0.29 unknown",
    );

    fake.go_content_sniffing(true);
    let a = call(&fake, "GET", "/api/v1/user", None, None).await;
    assert_eq!(
        (a.status, a.text.as_str(), a.content_type.as_deref()),
        (401, "Unauthorized", Some("text/plain; charset=utf-8"))
    );
    fake.go_content_sniffing(false);

    fake.v030_errors(true);
    for auth in [None, Some(unknown)] {
        let a = call(&fake, "GET", "/api/v1/user", auth, None).await;
        assert_eq!(a.status, 401);
        assert_eq!(a.content_type.as_deref(), Some("application/problem+json"));
        let p = a.json();
        assert_eq!(
            keys(&p),
            ["detail", "errors", "status", "title"]
                .map(String::from)
                .into()
        );
        assert_eq!(
            (p["status"].clone(), p["title"].clone()),
            (json!(401), json!("Unauthorized"))
        );
    }
    // Corrected statuses: user not found is a 404 in 0.30.
    let a = post(
        &fake,
        "/api/v1/preauthkey",
        json!({"user": "99", "expiration": "2030-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        (a.status, a.content_type.as_deref()),
        (404, Some("application/problem+json"))
    );
    assert_eq!(a.json()["detail"], "user not found");
    assert_eq!(get(&fake, "/api/v1/node?user=nobody").await.status, 404);
}

#[tokio::test]
async fn health_endpoints_and_pre_027_headscale() {
    let fake = FakeHeadscale::builder().no_health_endpoint(true).start();
    let a = get(&fake, "/api/v1/health").await;
    assert_eq!(
        (a.status, a.content_type.as_deref()),
        (404, Some("application/json"))
    );
    assert_eq!(
        a.json(),
        json!({"code": 5, "message": "Not Found", "details": []})
    );
    assert_unauthorized(
        &call(&fake, "GET", "/api/v1/health", None, None).await,
        401,
        "key first",
    );
    // The any-version probe.
    assert_eq!(
        get(&fake, "/api/v1/user?id=987654321").await.json(),
        json!({"users": []})
    );
    let a = call(&fake, "GET", "/health", None, None).await;
    assert_eq!(
        a.content_type.as_deref(),
        Some("application/health+json; charset=utf-8")
    );
    assert_eq!(a.json(), json!({"status": "pass"}));
    fake.no_health_endpoint(false);
    assert_eq!(
        get(&fake, "/api/v1/health").await.json(),
        json!({"databaseConnectivity": true})
    );
}

// ---------------------------------------------------------------------------------------------------------
// Data semantics
// ---------------------------------------------------------------------------------------------------------

#[test]
fn provider_id_is_normalised_like_headscale() {
    let cases = [
        (
            "https://sso.example.com/realms/acme",
            "6f1c0b9e",
            "https://sso.example.com/realms/acme/6f1c0b9e",
        ),
        (
            "https://sso.example.com/realms/acme/",
            "6f1c0b9e",
            "https://sso.example.com/realms/acme/6f1c0b9e",
        ),
        (
            "https://accounts.google.com",
            "110169484474386276334",
            "https://accounts.google.com/110169484474386276334",
        ),
        (
            "https://example.auth0.com/",
            "auth0|x",
            "https://example.auth0.com/auth0%7Cx",
        ),
        (
            "HTTPS://Idp.Example.com//realms//x/",
            "/sub",
            "https://Idp.Example.com/realms/x/sub",
        ),
        (
            "https://idp.example.com",
            "a b",
            "https://idp.example.com/a%20b",
        ),
        (
            "https://idp.example.com",
            "user@example.com",
            "https://idp.example.com/user@example.com",
        ),
        (
            "https://idp.example.com",
            "a%2Fb",
            "https://idp.example.com/a%2Fb",
        ),
        (
            "https://idp.example.com:8443/",
            "x",
            "https://idp.example.com:8443/x",
        ),
        ("issuer", "sub", "issuer/sub"),
        ("issuer/", "/sub", "issuer/sub"),
        ("", "sub", "sub"),
        ("https://idp.example.com", "", "https://idp.example.com"),
        ("", "", ""),
    ];
    for (iss, sub, want) in cases {
        assert_eq!(
            headscale_provider_id(iss, sub),
            want,
            "iss {iss:?} sub {sub:?}"
        );
    }
    assert_eq!(
        clean_identifier("  https://a.example//b// "),
        "https://a.example/b"
    );
    assert_eq!(clean_identifier("a//b/"), "a/b");
}

#[tokio::test]
async fn oidc_users_carry_provider_and_normalised_provider_id() {
    let fake = FakeHeadscale::start();
    let id = fake.add_oidc_user(
        "x",
        "https://example.auth0.com/",
        "auth0|x",
        "x@example.com",
    );
    let local = fake.add_user("local", "");
    let u = &get(&fake, &format!("/api/v1/user?id={id}")).await.json()["users"][0];
    assert_eq!(u["provider"], "oidc");
    assert_eq!(u["providerId"], "https://example.auth0.com/auth0%7Cx");
    assert_eq!(u["email"], "x@example.com");
    // The subject is the last path segment, percent-decoded.
    let last = u["providerId"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    assert_eq!(
        percent_encoding::percent_decode_str(last)
            .decode_utf8()
            .unwrap(),
        "auth0|x"
    );
    let l = &get(&fake, &format!("/api/v1/user?id={local}")).await.json()["users"][0];
    assert_eq!(
        (
            l["provider"].as_str(),
            l["providerId"].as_str(),
            l["email"].as_str()
        ),
        (Some(""), Some(""), Some(""))
    );

    // Recreated (Headscale reinstalled): same id, later createdAt.
    let before = ts(&u["createdAt"]);
    fake.recreate_user(id);
    let after =
        ts(&get(&fake, &format!("/api/v1/user?id={id}")).await.json()["users"][0]["createdAt"]);
    assert!(after > before);
    fake.remove_user(id);
    assert_eq!(
        get(&fake, &format!("/api/v1/user?id={id}")).await.json(),
        json!({"users": []})
    );
}

#[tokio::test]
async fn json_has_random_spaces_after_commas_unless_turned_off() {
    let fake = FakeHeadscale::builder().with_examples().start();
    let (mut spaced, mut compact) = (0, 0);
    let mut first: Option<Value> = None;
    for _ in 0..40 {
        let a = get(&fake, "/api/v1/user").await;
        if a.text.contains(", ") {
            spaced += 1
        } else {
            compact += 1
        }
        let v = a.json();
        assert_eq!(
            first.get_or_insert_with(|| v.clone()),
            &v,
            "same data whatever the spacing"
        );
    }
    assert!(
        spaced > 0 && compact > 0,
        "spaced {spaced} compact {compact}"
    );
    fake.random_spaces(false);
    for _ in 0..10 {
        let a = get(&fake, "/api/v1/user").await;
        assert!(!a.text.contains(", "), "{}", a.text);
        assert!(
            a.text.starts_with(r#"{"users":[{"id":"1","name":"alice","createdAt":"2026-05-02T08:15:30.123456789Z","#),
            "{}",
            a.text
        );
    }
}

#[tokio::test]
async fn user_filters() {
    let fake = FakeHeadscale::start();
    let a = fake.add_user("alice", "alice@example.com");
    let b = fake.add_user("bob", "bob@example.com");
    let c = fake.add_user("carol", "bob@example.com");
    let all = get(&fake, "/api/v1/user").await.json();
    assert_eq!(ids(&all["users"]), [a, b, c].map(|i| i.to_string()));
    assert_eq!(
        ids(&get(&fake, &format!("/api/v1/user?id={b}")).await.json()["users"]),
        [b.to_string()]
    );
    assert_eq!(
        ids(&get(&fake, "/api/v1/user?name=carol").await.json()["users"]),
        [c.to_string()]
    );
    assert_eq!(
        ids(&get(&fake, "/api/v1/user?email=bob@example.com")
            .await
            .json()["users"]),
        [b, c].map(|i| i.to_string())
    );
    // One filter only, name first (as Headscale's ListUsers).
    assert_eq!(
        ids(&get(&fake, &format!("/api/v1/user?name=alice&id={b}"))
            .await
            .json()["users"]),
        [a.to_string()]
    );
    for q in ["id=4242", "name=Alice", "email=nobody@example.com"] {
        assert_eq!(
            get(&fake, &format!("/api/v1/user?{q}")).await.json(),
            json!({"users": []}),
            "{q}"
        );
    }
    assert_eq!(
        get(&fake, "/api/v1/user?id=0").await.json()["users"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let bad = get(&fake, "/api/v1/user?id=abc").await;
    assert_eq!((bad.status, bad.json()["code"].clone()), (400, json!(3)));
}

#[tokio::test]
async fn nodes_listing_lookup_and_tagged_devices() {
    let fake = FakeHeadscale::start();
    let alice = fake.add_user("alice", "");
    let bob = fake.add_user("bob", "");
    let an = fake.add_node(alice, "alice-pc");
    let bn = fake.add_node(bob, "bob-pc");
    let tn = fake.add_tagged_node("ci", &["tag:ci"]);
    let all = get(&fake, "/api/v1/node").await.json();
    assert_eq!(ids(&all["nodes"]), [an, bn, tn].map(|i| i.to_string()));
    assert_eq!(all["nodes"][0]["user"]["id"], alice.to_string());
    assert_eq!(all["nodes"][2]["user"]["id"], "2147455555");
    assert_eq!(all["nodes"][2]["user"]["name"], "tagged-devices");
    assert_eq!(all["nodes"][2]["tags"], json!(["tag:ci"]));
    assert_eq!(
        ids(&get(&fake, "/api/v1/node?user=bob").await.json()["nodes"]),
        [bn.to_string()]
    );

    let one = get(&fake, &format!("/api/v1/node/{an}")).await.json();
    assert_eq!(one["node"]["name"], "alice-pc");
    assert_eq!(one["node"]["user"]["name"], "alice");
    assert!(one["node"]["lastSeen"].is_null() && one["node"]["preAuthKey"].is_null());
    let tagged = get(&fake, &format!("/api/v1/node/{tn}")).await.json();
    assert!(tagged["node"]["user"].is_null(), "{tagged}");

    let missing = get(&fake, "/api/v1/node/4242").await;
    assert_eq!(
        (missing.status, missing.json()),
        (
            404,
            json!({"code": 5, "message": "node not found", "details": []})
        )
    );
    let unknown = get(&fake, "/api/v1/node?user=nobody").await;
    assert_eq!(
        (unknown.status, unknown.json()),
        (
            500,
            json!({"code": 2, "message": "user not found", "details": []})
        )
    );
    fake.add_oidc_user("bob", "https://idp.example.com", "b", "");
    let dup = get(&fake, "/api/v1/node?user=bob").await;
    assert_eq!((dup.status, dup.json()["code"].clone()), (500, json!(2)));
}

#[tokio::test]
async fn preauth_keys_create_list_expire() {
    let fake = FakeHeadscale::start();
    let alice = fake.add_user("alice", "");
    let exp = OffsetDateTime::now_utc() + time::Duration::hours(2);
    let exp_s = exp.format(&Rfc3339).unwrap();
    let a = post(
        &fake,
        "/api/v1/preauthkey",
        json!({"user": alice.to_string(), "reusable": false,
        "ephemeral": false, "expiration": exp_s, "aclTags": []}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let k = a.json()["preAuthKey"].clone();
    let full = k["key"].as_str().unwrap().to_string();
    assert!(
        full.starts_with("hskey-auth-") && !full.contains('*'),
        "the full key is returned: {full}"
    );
    assert_eq!(k["user"]["id"], alice.to_string());
    assert_eq!(
        (
            k["reusable"].clone(),
            k["ephemeral"].clone(),
            k["used"].clone()
        ),
        (json!(false), json!(false), json!(false))
    );
    assert_eq!(ts(&k["expiration"]), exp);
    let id: u64 = k["id"].as_str().unwrap().parse().unwrap();

    // Omitted expiration: born expired (Go's zero time).
    let b = post(&fake, "/api/v1/preauthkey", json!({"user": alice}))
        .await
        .json()["preAuthKey"]
        .clone();
    assert_eq!(b["expiration"], "0001-01-01T00:00:00Z");
    let created = fake.preauth_keys();
    assert_eq!(created.len(), 2);
    assert_eq!(created[0].key, full);
    assert_eq!(created[0].user_id, Some(alice));
    assert!(!created[0].is_expired() && created[1].is_expired());
    assert_eq!(created[1].expiration, Some(zero_time()));

    // Listing masks the keys.
    let list = get(&fake, "/api/v1/preauthkey").await.json();
    let listed = &list["preAuthKeys"][0];
    assert_eq!(
        listed["key"].as_str().unwrap(),
        format!("{}-***", &full[..full.len() - 65])
    );
    assert_eq!(listed["user"]["name"], "alice");

    // Expire by id.
    let e = post(
        &fake,
        "/api/v1/preauthkey/expire",
        json!({"id": id.to_string()}),
    )
    .await;
    assert_eq!((e.status, e.json()), (200, json!({})));
    let k = fake
        .preauth_keys()
        .into_iter()
        .find(|k| k.id == id)
        .unwrap();
    assert!(k.is_expired());
    // A missing id is silently fine.
    assert_eq!(
        post(&fake, "/api/v1/preauthkey/expire", json!({"id": "4242"}))
            .await
            .json(),
        json!({})
    );

    // Unknown user: 500 code 2; bad tag: 400 code 3; bad timestamp: 400.
    let u = post(
        &fake,
        "/api/v1/preauthkey",
        json!({"user": "4242", "expiration": exp_s}),
    )
    .await;
    assert_eq!(
        (u.status, u.json()),
        (
            500,
            json!({"code": 2, "message": "user not found", "details": []})
        )
    );
    let t = post(
        &fake,
        "/api/v1/preauthkey",
        json!({"user": alice.to_string(), "aclTags": ["Tag:x"]}),
    )
    .await;
    assert_eq!((t.status, t.json()["code"].clone()), (400, json!(3)));
    let d = post(
        &fake,
        "/api/v1/preauthkey",
        json!({"user": alice.to_string(), "expiration": "tomorrow"}),
    )
    .await;
    assert_eq!(d.status, 400);
    assert_eq!(
        fake.preauth_keys().len(),
        2,
        "failed creations create nothing"
    );
    assert_eq!(fake.calls_to("/api/v1/preauthkey").len(), 8);
}

#[tokio::test]
async fn api_key_listing_masks_prefixes() {
    let fake = FakeHeadscale::start();
    let legacy = fake.add_legacy_api_key(Some(OffsetDateTime::now_utc() + time::Duration::days(1)));
    let expired = fake.add_api_key(Some(OffsetDateTime::now_utc() - time::Duration::days(1)));
    let revoked = fake.add_api_key(Some(OffsetDateTime::now_utc() + time::Duration::days(1)));
    fake.revoke_api_key(&revoked);
    let keys = get(&fake, "/api/v1/apikey").await.json()["apiKeys"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        keys.len(),
        3,
        "admin, legacy, expired; the revoked key is gone"
    );
    for (k, full) in keys
        .iter()
        .zip([fake.admin_key(), legacy.clone(), expired.clone()])
    {
        let prefix = k["prefix"].as_str().unwrap();
        assert!(prefix.ends_with("***"), "{prefix}");
        assert!(
            full.starts_with(prefix.trim_end_matches('*')),
            "{prefix} is a prefix of {full}"
        );
        assert!(k["lastSeen"].is_null());
        ts(&k["createdAt"]);
    }
    assert_eq!(
        keys[0]["prefix"].as_str().unwrap().len(),
        "hskey-api-".len() + 12 + 4
    );
    assert_eq!(
        keys[1]["prefix"].as_str().unwrap(),
        format!("{}***", &legacy[..7])
    );
    assert!(ts(&keys[2]["expiration"]) < OffsetDateTime::now_utc());
}

// ---------------------------------------------------------------------------------------------------------
// Failure modes
// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn delay_failures_and_down() {
    let fake = FakeHeadscale::builder()
        .delay(Duration::from_millis(300))
        .start();
    let t = Instant::now();
    assert_eq!(get(&fake, "/api/v1/health").await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    fake.delay(Duration::ZERO);

    fake.fail_with(Some(503));
    let a = get(&fake, "/api/v1/user").await;
    assert_eq!((a.status, a.json()["code"].clone()), (503, json!(14)));
    let h = call(&fake, "GET", "/health", None, None).await;
    assert_eq!((h.status, h.json()["status"].clone()), (503, json!("fail")));
    fake.fail_with(None);
    assert_eq!(get(&fake, "/api/v1/user").await.status, 200);

    fake.down(true);
    let err = reqwest::Client::new()
        .get(format!("{}/health", fake.url()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    fake.down(false);
    assert_eq!(call(&fake, "GET", "/health", None, None).await.status, 200);
}

#[tokio::test]
async fn going_down_drops_open_connections() {
    let fake = FakeHeadscale::builder()
        .delay(Duration::from_secs(5))
        .start();
    let url = format!("{}/health", fake.url());
    let pending = tokio::spawn(async move { reqwest::Client::new().get(url).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    fake.down(true);
    let r = pending.await.unwrap();
    assert!(
        r.is_err(),
        "the in-flight request fails when Headscale dies: {r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
}

// ---------------------------------------------------------------------------------------------------------
// The echo upstream
// ---------------------------------------------------------------------------------------------------------

mod echo_upstream {
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::harness::echo::{Echo, Reply, read_ws_frame, sha1, websocket_accept, ws_frame};

    /// Send raw bytes, read one HTTP/1.1 response: (status, headers, body).
    async fn exchange(s: &mut TcpStream, request: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        s.write_all(request).await.unwrap();
        read_response(s).await
    }

    async fn read_response(s: &mut TcpStream) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "connection closed: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end - 4].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_string(), v.trim().to_string())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            body.extend_from_slice(&chunk[..n]);
        }
        (status, headers, body)
    }

    fn pairs(v: &Value) -> Vec<(String, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_string(),
                    p[1].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn http1_raw_target_and_headers_in_order_with_repeats() {
        let echo = Echo::start();
        let mut s = TcpStream::connect(echo.addr()).await.unwrap();
        let req1 = b"POST /a/b%2Fc/../d?x=1&y=%zz&y=2 HTTP/1.1\r\nHost: up.example\r\nX-Dup: 1\r\nremote-user: spoof\r\nx-dup: 2\r\nX_Under: u\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let (status, headers, body) = exchange(&mut s, req1).await;
        assert_eq!(status, 200);
        assert!(
            headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case("content-type") && v == "application/json")
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["uri"], "/a/b%2Fc/../d?x=1&y=%zz&y=2");
        assert_eq!(v["version"], "HTTP/1.1");
        assert_eq!(v["body"], "hello world");
        assert!(v["body_base64"].is_null());
        let want: Vec<(String, String)> = [
            ("Host", "up.example"),
            ("X-Dup", "1"),
            ("remote-user", "spoof"),
            ("x-dup", "2"),
            ("X_Under", "u"),
            ("Transfer-Encoding", "chunked"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(pairs(&v["headers"]), want);

        // Same connection, next request: the raw head of the second request is found.
        let req2 = b"GET /second HTTP/1.1\r\nHost: up.example\r\nB: 1\r\nA: 2\r\nContent-Length: 3\r\n\r\nabc";
        let (_, _, body) = exchange(&mut s, req2).await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["uri"], "/second");
        assert_eq!(v["body"], "abc");
        assert_eq!(
            pairs(&v["headers"])[1..],
            [
                ("B".into(), "1".into()),
                ("A".into(), "2".into()),
                ("Content-Length".into(), "3".into())
            ]
        );
        let (_, _, body) = exchange(&mut s, b"GET /third HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap()["uri"],
            "/third"
        );

        let log = echo.requests();
        assert_eq!(echo.count(), 3);
        assert_eq!(log[0].header_all("x-dup"), ["1", "2"]);
        assert_eq!(log[0].header("REMOTE-USER"), Some("spoof"));
        assert_eq!(log[0].path(), "/a/b%2Fc/../d");
        assert_eq!(log[0].query(), Some("x=1&y=%zz&y=2"));
        assert_eq!(log[1].body_str(), "abc");
        echo.clear();
        assert_eq!(echo.count(), 0);
    }

    #[tokio::test]
    async fn h2_prior_knowledge_and_binary_bodies() {
        let echo = Echo::start();
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let v: Value = client
            .post(format!("{}/h2?q=1", echo.url()))
            .header("x-a", "1")
            .header("x-b", "2")
            .body(vec![0xffu8, 0xfe])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["version"], "HTTP/2.0");
        assert_eq!(v["uri"], "/h2?q=1");
        assert_eq!(v["authority"], echo.addr().to_string());
        assert_eq!(v["body_base64"], "//4=");
        let h = pairs(&v["headers"]);
        assert!(
            h.contains(&("x-a".into(), "1".into())) && h.contains(&("x-b".into(), "2".into())),
            "{h:?}"
        );
        assert_eq!(echo.last().unwrap().body, vec![0xff, 0xfe]);

        // HTTP/1.1 through reqwest as well.
        let v: Value = reqwest::get(format!("{}/plain", echo.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["version"], "HTTP/1.1");
        assert_eq!(echo.count(), 2);
    }

    #[tokio::test]
    async fn canned_replies_and_delay() {
        let echo = Echo::builder()
            .reply(
                "/login",
                Reply::status(302)
                    .header("Location", "/home")
                    .set_cookie("a=1; Path=/")
                    .set_cookie("b=2; HttpOnly"),
            )
            .reply(
                "/static/*",
                Reply::status(404)
                    .header("Content-Type", "text/plain")
                    .body("nope"),
            )
            .start();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = client
            .get(format!("{}/login?x", echo.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
        assert_eq!(r.headers()["location"], "/home");
        let cookies: Vec<_> = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2; HttpOnly"]);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["uri"], "/login?x", "the body is still the echo");
        let r = client
            .get(format!("{}/static/app.js", echo.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            (r.status().as_u16(), r.text().await.unwrap()),
            (404, "nope".to_string())
        );

        echo.set_delay(Duration::from_millis(400));
        let url = format!("{}/slow", echo.url());
        let t = Instant::now();
        let before = echo.count();
        let pending = tokio::spawn(async move { reqwest::get(url).await.unwrap().status() });
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            echo.count(),
            before + 1,
            "logged on arrival, before the delayed answer"
        );
        assert!(!pending.is_finished());
        assert_eq!(pending.await.unwrap(), 200);
        assert!(t.elapsed() >= Duration::from_millis(400));
        assert_eq!(echo.last().unwrap().uri, "/slow");
        echo.set_delay(Duration::ZERO);
        echo.clear_replies();
        assert_eq!(
            client
                .get(format!("{}/login", echo.url()))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }

    #[tokio::test]
    async fn server_sent_events_until_the_client_leaves() {
        let echo = Echo::start();
        let mut r = reqwest::get(format!("{}/sse", echo.url())).await.unwrap();
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let mut text = String::new();
        let t = Instant::now();
        while text.matches("\n\n").count() < 3 {
            let chunk = r.chunk().await.unwrap().expect("the stream goes on");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(
            text.starts_with("id: 0\nevent: tick\ndata: {\"n\":0}\n\n"),
            "{text:?}"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(180),
            "one event every 100 ms"
        );
        assert_eq!(echo.sse_open(), 1);
        drop(r);
        let deadline = Instant::now() + Duration::from_secs(3);
        while echo.sse_open() > 0 {
            assert!(
                Instant::now() < deadline,
                "the stream did not stop after the client left"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn websocket_handshake_and_echo() {
        let echo = Echo::start();
        let mut s = TcpStream::connect(echo.addr()).await.unwrap();
        let req = b"GET /ws?room=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let (status, headers, _) = exchange(&mut s, req).await;
        assert_eq!(status, 101);
        let accept = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-accept"))
            .unwrap();
        assert_eq!(
            accept.1, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            "RFC 6455 section 1.3 example"
        );
        s.write_all(&ws_frame(0x81, b"hello", Some([1, 2, 3, 4])))
            .await
            .unwrap();
        assert_eq!(
            read_ws_frame(&mut s).await.unwrap(),
            (0x81, b"hello".to_vec())
        );
        let long = vec![b'x'; 300];
        s.write_all(&ws_frame(0x82, &long, Some([9, 8, 7, 6])))
            .await
            .unwrap();
        assert_eq!(read_ws_frame(&mut s).await.unwrap(), (0x82, long));
        s.write_all(&ws_frame(0x89, b"p", Some([0, 0, 0, 1])))
            .await
            .unwrap();
        assert_eq!(read_ws_frame(&mut s).await.unwrap(), (0x8A, b"p".to_vec()));
        assert_eq!(echo.ws_open(), 1);
        s.write_all(&ws_frame(0x88, &1000u16.to_be_bytes(), Some([5, 5, 5, 5])))
            .await
            .unwrap();
        assert_eq!(
            read_ws_frame(&mut s).await.unwrap(),
            (0x88, 1000u16.to_be_bytes().to_vec())
        );
        let r = echo.last().unwrap();
        assert_eq!(
            (r.uri.as_str(), r.header("upgrade")),
            ("/ws?room=1", Some("websocket"))
        );
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn sha1_test_vectors() {
        let hex = |d: [u8; 20]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex(sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        assert_eq!(
            hex(sha1(&vec![b'a'; 1_000_000])),
            "34aa973cd4c4daa4f61eeb2bdbad27316534016f"
        );
    }

    #[test]
    fn works_from_a_sync_test_and_logs_every_request() {
        let echo = Echo::start();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let v: Value = rt.block_on(async {
            reqwest::Client::new()
                .delete(format!("{}/x", echo.url()))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        assert_eq!(v["method"], "DELETE");
        assert!(echo.wait_for_count(1, Duration::from_secs(1)));
        assert_eq!(json!(echo.requests()[0].method), json!("DELETE"));
    }
}
