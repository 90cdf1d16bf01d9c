//! The identity-provider test harness itself: the real test IdP (oidc-provider) signs a person in through its
//! pages and issues tokens with the configured client authentication, PKCE, algorithms, JWKS and claims; the
//! rogue IdP produces each forged ID token it claims to.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use url::Url;

use crate::harness::browser::Browser;
use crate::harness::idp::{
    ALICE_EMAIL, ALICE_LOGIN, ALICE_NAME, ALICE_PASSWORD, ALICE_SUB, AuthMethod, ClientSpec,
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_REDIRECT_URI, TestIdp, UserSpec, jwt_parts,
    pkce_pair, random_token,
};
use crate::harness::rogue::{Forgery, LEGIT_KID, RogueIdp, UNKNOWN_KID, WEAK_RSA_KID};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn query(u: &Url, name: &str) -> Option<String> {
    u.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A token request: `auth` decides where the client credentials go.
async fn token_request(
    endpoint: &str,
    client_id: &str,
    secret: &str,
    auth: AuthMethod,
    fields: &[(&str, &str)],
) -> (u16, Value) {
    let mut form: Vec<(&str, &str)> = fields.to_vec();
    let mut req = http().post(endpoint);
    match auth {
        AuthMethod::ClientSecretBasic => {
            // RFC 6749 2.3.1: both parts form-urlencoded before base64.
            use base64::Engine;
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let cred = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(client_id),
                enc(secret)
            ));
            req = req.header("authorization", format!("Basic {cred}"));
        }
        AuthMethod::ClientSecretPost => {
            form.push(("client_id", client_id));
            form.push(("client_secret", secret));
        }
    }
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let resp = req
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("token endpoint answered no JSON ({e}): {text}")),
    )
}

async fn get_json(url: &str) -> Value {
    let r = http().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    r.json().await.unwrap()
}

/// Verify an ID token's signature, `iss`, `aud` and expiry against a JWKS, choosing the key by `kid` and the
/// algorithm from the header; returns the claims.
fn verify_with_jwks(token: &str, jwks: &Value, issuer: &str, audience: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let set: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let kid = header.kid.clone().expect("ID token without kid");
    let jwk = set
        .find(&kid)
        .unwrap_or_else(|| panic!("kid {kid} not in the JWKS {jwks}"));
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut v = Validation::new(header.alg);
    v.set_audience(&[audience]);
    v.set_issuer(&[issuer]);
    v.leeway = 60;
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .unwrap_or_else(|e| panic!("ID token does not verify: {e}"))
        .claims
}

/// Whether the signature of `token` verifies with `jwk` under `alg` (claims not checked).
fn signature_ok(token: &str, jwk: &Value, alg: Algorithm) -> bool {
    let (msg, sig) = token.rsplit_once('.').unwrap();
    let jwk: Jwk = serde_json::from_value(jwk.clone()).unwrap();
    jsonwebtoken::crypto::verify(
        sig,
        msg.as_bytes(),
        &DecodingKey::from_jwk(&jwk).unwrap(),
        alg,
    )
    .unwrap_or(false)
}

/// Sign in at the real IdP for `client_id` with PKCE; returns (code, nonce, verifier).
async fn sign_in(
    idp: &TestIdp,
    browser: &Browser,
    client_id: &str,
    login: &str,
    password: &str,
) -> (String, String, String) {
    let (verifier, challenge) = pkce_pair();
    let (state, nonce) = (random_token(32), random_token(32));
    let start = idp.authorization_url(client_id, &state, &nonce, Some(&challenge));
    let back = browser.idp_login(&start, login, password).await;
    let redirect_uri = idp.client(client_id)["redirect_uris"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        back.as_str().starts_with(&redirect_uri),
        "the IdP sent the browser to {back}, not to {redirect_uri}"
    );
    assert_eq!(
        query(&back, "state").as_deref(),
        Some(state.as_str()),
        "state not returned: {back}"
    );
    assert_eq!(
        query(&back, "iss").as_deref(),
        Some(idp.issuer()),
        "RFC 9207 iss parameter: {back}"
    );
    let code = query(&back, "code").unwrap_or_else(|| panic!("no code in {back}"));
    (code, nonce, verifier)
}

#[tokio::test]
async fn real_idp_signs_a_person_in_and_issues_verifiable_tokens() {
    let mut idp = TestIdp::builder().start();
    let disco = get_json(&idp.discovery_url()).await;
    assert_eq!(disco["issuer"], idp.issuer());
    assert_eq!(
        disco["authorization_endpoint"],
        idp.authorization_endpoint()
    );
    assert_eq!(disco["token_endpoint"], idp.token_endpoint());
    assert_eq!(disco["userinfo_endpoint"], idp.userinfo_endpoint());
    assert_eq!(disco["jwks_uri"], idp.jwks_uri());
    assert_eq!(disco["end_session_endpoint"], idp.end_session_endpoint());
    assert_eq!(disco["revocation_endpoint"], idp.revocation_endpoint());
    assert_eq!(disco["backchannel_logout_supported"], true);

    let browser = Browser::new();
    let (code, nonce, verifier) = sign_in(
        &idp,
        &browser,
        DEFAULT_CLIENT_ID,
        ALICE_LOGIN,
        ALICE_PASSWORD,
    )
    .await;

    let (status, tokens) = token_request(
        &idp.token_endpoint(),
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        AuthMethod::ClientSecretBasic,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", DEFAULT_REDIRECT_URI),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "token exchange: {tokens}");
    let id_token = tokens["id_token"].as_str().expect("id_token");
    let access_token = tokens["access_token"].as_str().expect("access_token");
    let refresh_token = tokens["refresh_token"].as_str().expect("refresh_token");

    let jwks = get_json(&idp.jwks_uri()).await;
    for k in jwks["keys"].as_array().unwrap() {
        assert!(
            k.get("alg").is_some(),
            "by default the JWKS names each key's alg: {k}"
        );
        assert!(k.get("d").is_none(), "private key material published: {k}");
    }
    let claims = verify_with_jwks(id_token, &jwks, idp.issuer(), DEFAULT_CLIENT_ID);
    assert_eq!(claims["sub"], ALICE_SUB);
    assert_eq!(claims["nonce"], nonce.as_str());
    assert_eq!(claims["aud"], DEFAULT_CLIENT_ID);
    assert_eq!(
        claims["email"], ALICE_EMAIL,
        "claims_in_id_token defaults to true: {claims}"
    );
    assert_eq!(claims["name"], ALICE_NAME);
    assert_eq!(jwt_parts(id_token).0["alg"], "RS256");

    // userinfo with the access token.
    let ui: Value = http()
        .get(idp.userinfo_endpoint())
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ui["sub"], ALICE_SUB);
    assert_eq!(ui["email"], ALICE_EMAIL);
    assert_eq!(ui["email_verified"], true);

    // The refresh token works.
    let (status, refreshed) = token_request(
        &idp.token_endpoint(),
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        AuthMethod::ClientSecretBasic,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await;
    assert_eq!(status, 200, "refresh: {refreshed}");
    let claims2 = verify_with_jwks(
        refreshed["id_token"].as_str().unwrap(),
        &jwks,
        idp.issuer(),
        DEFAULT_CLIENT_ID,
    );
    assert_eq!(claims2["sub"], ALICE_SUB);

    // The code is single-use.
    let (status, again) = token_request(
        &idp.token_endpoint(),
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        AuthMethod::ClientSecretBasic,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", DEFAULT_REDIRECT_URI),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(
        (status, again["error"].as_str()),
        (400, Some("invalid_grant")),
        "{again}"
    );

    // Presenting the code again revokes what it gave (oidc-provider's replay protection).
    let r = http()
        .get(idp.userinfo_endpoint())
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "the access token of a replayed code is revoked"
    );

    // Everything it issued is in its log (read by another thread: wait for the lines, don't race them).
    for (kind, value) in [
        ("authorization_code", code.as_str()),
        ("id_token", id_token),
        ("access_token", access_token),
        ("refresh_token", refresh_token),
    ] {
        idp.wait_for_event(Duration::from_secs(5), |e| {
            e["event"] == "issued" && e["kind"] == kind && e["value"] == value
        });
    }
    // The refused code reuse is logged as grant.error.
    idp.wait_for_event(Duration::from_secs(5), |e| e["event"] == "grant.error");

    // A wrong password is refused on the login page; a fresh browser has no IdP session.
    let err = Browser::new()
        .try_idp_login(
            &idp.authorization_url(DEFAULT_CLIENT_ID, "s", "n", Some(&pkce_pair().1)),
            ALICE_LOGIN,
            "wrong",
        )
        .await
        .unwrap_err();
    assert!(err.contains("Invalid login or password"), "{err}");
    idp.wait_for_event(Duration::from_secs(5), |e| e["event"] == "login.failed");
}

#[tokio::test]
async fn client_auth_method_is_enforced_both_ways() {
    let basic = ClientSpec::new("basic-client", "http://127.0.0.1:9/basic/callback");
    let post = ClientSpec {
        token_endpoint_auth_method: AuthMethod::ClientSecretPost,
        ..ClientSpec::new("post-client", "http://127.0.0.1:9/post/callback")
    };
    let idp = TestIdp::builder()
        .client(basic.clone())
        .client(post.clone())
        .start();
    let browser = Browser::new();

    for (client, right, wrong) in [
        (
            &basic,
            AuthMethod::ClientSecretBasic,
            AuthMethod::ClientSecretPost,
        ),
        (
            &post,
            AuthMethod::ClientSecretPost,
            AuthMethod::ClientSecretBasic,
        ),
    ] {
        let (code, _, verifier) = sign_in(
            &idp,
            &browser,
            &client.client_id,
            ALICE_LOGIN,
            ALICE_PASSWORD,
        )
        .await;
        let fields = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", client.redirect_uris[0].as_str()),
            ("code_verifier", verifier.as_str()),
        ];
        let (status, body) = token_request(
            &idp.token_endpoint(),
            &client.client_id,
            &client.client_secret,
            wrong,
            &fields,
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{} with {wrong:?}: {body}",
            client.client_id
        );
        let (status, body) = token_request(
            &idp.token_endpoint(),
            &client.client_id,
            "not-the-secret",
            right,
            &fields,
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "wrong secret: {body}"
        );
        let (status, body) = token_request(
            &idp.token_endpoint(),
            &client.client_id,
            &client.client_secret,
            right,
            &fields,
        )
        .await;
        assert_eq!(status, 200, "{} with {right:?}: {body}", client.client_id);
        assert!(body["id_token"].is_string());
    }
}

#[tokio::test]
async fn pkce_required_or_not() {
    let mut idp = TestIdp::builder()
        .client(ClientSpec::new("strict", "http://127.0.0.1:9/strict"))
        .client(ClientSpec {
            pkce_required: Some(false),
            ..ClientSpec::new("lax", "http://127.0.0.1:9/lax")
        })
        .pkce_required(true)
        .start();
    let browser = Browser::new();

    // Required: an authorization request without a challenge comes back with an error...
    let back = browser
        .idp_login(
            &idp.authorization_url("strict", "st", "nn", None),
            ALICE_LOGIN,
            ALICE_PASSWORD,
        )
        .await;
    assert_eq!(
        query(&back, "error").as_deref(),
        Some("invalid_request"),
        "{back}"
    );
    assert!(
        query(&back, "error_description")
            .unwrap_or_default()
            .contains("PKCE"),
        "{back}"
    );
    assert_eq!(query(&back, "state").as_deref(), Some("st"));

    // ...and a token request without the verifier is refused.
    let (code, _, verifier) = sign_in(&idp, &browser, "strict", ALICE_LOGIN, ALICE_PASSWORD).await;
    let base = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", "http://127.0.0.1:9/strict"),
    ];
    let (status, body) = token_request(
        &idp.token_endpoint(),
        "strict",
        DEFAULT_CLIENT_SECRET,
        AuthMethod::ClientSecretBasic,
        &base,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    idp.wait_for_event(Duration::from_secs(5), |e| {
        e["event"] == "grant.error"
            && (e.to_string().contains("code_verifier") || e.to_string().contains("PKCE"))
    });
    let _ = verifier;

    // Not required for `lax`: no challenge, no verifier, tokens all the same.
    let (state, nonce) = (random_token(16), random_token(16));
    let back = browser
        .idp_login(
            &idp.authorization_url("lax", &state, &nonce, None),
            ALICE_LOGIN,
            ALICE_PASSWORD,
        )
        .await;
    let code = query(&back, "code").unwrap_or_else(|| panic!("no code: {back}"));
    let (status, body) = token_request(
        &idp.token_endpoint(),
        "lax",
        DEFAULT_CLIENT_SECRET,
        AuthMethod::ClientSecretBasic,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:9/lax"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        jwt_parts(body["id_token"].as_str().unwrap()).1["nonce"],
        nonce.as_str()
    );
}

#[tokio::test]
async fn es256_and_rs256_clients_and_a_jwks_without_alg() {
    let rs = ClientSpec::new("rs-client", "http://127.0.0.1:9/rs");
    let es = ClientSpec {
        id_token_signed_response_alg: "ES256".into(),
        ..ClientSpec::new("es-client", "http://127.0.0.1:9/es")
    };
    let idp = TestIdp::builder()
        .client(rs.clone())
        .client(es.clone())
        .jwks_strip_alg(true)
        .start();

    let jwks = get_json(&idp.jwks_uri()).await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{jwks}");
    assert!(
        keys.iter().all(|k| k.get("alg").is_none()),
        "jwks_strip_alg left an alg: {jwks}"
    );
    assert!(
        keys.iter().any(|k| k["kty"] == "RSA")
            && keys.iter().any(|k| k["kty"] == "EC" && k["crv"] == "P-256")
    );
    for k in keys.iter().filter(|k| k["kty"] == "RSA") {
        use base64::Engine;
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(k["n"].as_str().unwrap())
            .unwrap();
        assert_eq!(n.len() * 8, 2048, "RSA key size");
    }

    let browser = Browser::new();
    for (client, alg, kty) in [(&rs, "RS256", "RSA"), (&es, "ES256", "EC")] {
        let (code, nonce, verifier) = sign_in(
            &idp,
            &browser,
            &client.client_id,
            ALICE_LOGIN,
            ALICE_PASSWORD,
        )
        .await;
        let (status, body) = token_request(
            &idp.token_endpoint(),
            &client.client_id,
            &client.client_secret,
            AuthMethod::ClientSecretBasic,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &client.redirect_uris[0]),
                ("code_verifier", &verifier),
            ],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let id_token = body["id_token"].as_str().unwrap();
        let (header, _) = jwt_parts(id_token);
        assert_eq!(
            header["alg"], alg,
            "{} ID token header {header}",
            client.client_id
        );
        let key = keys
            .iter()
            .find(|k| k["kid"] == header["kid"])
            .expect("the token's kid is in the JWKS");
        assert_eq!(key["kty"], kty);
        let claims = verify_with_jwks(id_token, &jwks, idp.issuer(), &client.client_id);
        assert_eq!(claims["nonce"], nonce.as_str());
    }
}

#[tokio::test]
async fn claims_only_in_userinfo_when_claims_in_id_token_is_false() {
    let bob = UserSpec::new("bob", "bob-sub")
        .password("hunter2")
        .claim("email", "bob@example.com")
        .claim("email_verified", false)
        .claim("name", "Bob Builder")
        .claim("picture", "https://example.com/bob.png")
        .claim("groups", json!(["admins", "ops"]))
        .claim("headplane_role", "admin");
    let idp = TestIdp::builder()
        .user(bob)
        .claims_in_id_token(false)
        .issuer_path("/realms/test")
        .start();
    assert!(idp.issuer().ends_with("/realms/test"), "{}", idp.issuer());
    let disco = get_json(&idp.discovery_url()).await;
    assert_eq!(disco["issuer"], idp.issuer());
    assert_eq!(disco["token_endpoint"], idp.token_endpoint());

    let browser = Browser::new();
    let (code, nonce, verifier) =
        sign_in(&idp, &browser, DEFAULT_CLIENT_ID, "bob", "hunter2").await;
    let (status, body) = token_request(
        &idp.token_endpoint(),
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        AuthMethod::ClientSecretBasic,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", DEFAULT_REDIRECT_URI),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let jwks = get_json(&idp.jwks_uri()).await;
    let claims = verify_with_jwks(
        body["id_token"].as_str().unwrap(),
        &jwks,
        idp.issuer(),
        DEFAULT_CLIENT_ID,
    );
    assert_eq!(claims["sub"], "bob-sub");
    assert_eq!(claims["nonce"], nonce.as_str());
    for absent in [
        "email",
        "email_verified",
        "name",
        "picture",
        "groups",
        "headplane_role",
    ] {
        assert!(
            claims.get(absent).is_none(),
            "{absent} in the ID token: {claims}"
        );
    }
    let ui: Value = http()
        .get(idp.userinfo_endpoint())
        .bearer_auth(body["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ui["sub"], "bob-sub");
    assert_eq!(ui["email"], "bob@example.com");
    assert_eq!(ui["email_verified"], false);
    assert_eq!(ui["name"], "Bob Builder");
    assert_eq!(ui["picture"], "https://example.com/bob.png");
    assert_eq!(ui["groups"], json!(["admins", "ops"]));
    assert_eq!(
        ui["headplane_role"], "admin",
        "extra claims go with the profile scope: {ui}"
    );
}

/// Accept one HTTP request on a loopback port and hand back its body (a back-channel logout receiver).
async fn one_request_server() -> (String, tokio::sync::oneshot::Receiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/backchannel", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(h) = text.find("\r\n\r\n") {
                let len = text[..h]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= h + 4 + len {
                    s.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await
                    .unwrap();
                    let _ = tx.send(String::from_utf8_lossy(&buf[h + 4..h + 4 + len]).into_owned());
                    break;
                }
            }
        }
    });
    (url, rx)
}

#[tokio::test]
async fn rp_initiated_logout_and_backchannel_logout() {
    let (bc_url, bc_body) = one_request_server().await;
    let client = ClientSpec {
        post_logout_redirect_uris: vec!["http://127.0.0.1:9/signed-out".into()],
        backchannel_logout_uri: Some(bc_url),
        backchannel_logout_session_required: Some(true),
        ..ClientSpec::default()
    };
    let mut idp = TestIdp::builder().client(client).start();
    let browser = Browser::new();
    let (code, _, verifier) = sign_in(
        &idp,
        &browser,
        DEFAULT_CLIENT_ID,
        ALICE_LOGIN,
        ALICE_PASSWORD,
    )
    .await;
    let (status, body) = token_request(
        &idp.token_endpoint(),
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        AuthMethod::ClientSecretBasic,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", DEFAULT_REDIRECT_URI),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id_token = body["id_token"].as_str().unwrap();
    let sid = jwt_parts(id_token).1["sid"]
        .as_str()
        .expect("sid in the ID token when the session is required")
        .to_string();

    // A second sign-in in the same browser needs no password: the IdP session is there.
    let again = browser
        .try_idp_login(
            &idp.authorization_url(DEFAULT_CLIENT_ID, "s2", "n2", Some(&pkce_pair().1)),
            "nobody",
            "nothing",
        )
        .await
        .expect("silent sign-in");
    assert!(query(&again, "code").is_some(), "{again}");

    let mut end = Url::parse(&idp.end_session_endpoint()).unwrap();
    end.query_pairs_mut()
        .append_pair("id_token_hint", id_token)
        .append_pair("post_logout_redirect_uri", "http://127.0.0.1:9/signed-out")
        .append_pair("state", "bye");
    let target = browser.idp_logout(end.as_str()).await;
    assert_eq!(target.as_str(), "http://127.0.0.1:9/signed-out?state=bye");

    let form = tokio::time::timeout(Duration::from_secs(10), bc_body)
        .await
        .expect("back-channel logout sent")
        .unwrap();
    let logout_token = url::form_urlencoded::parse(form.as_bytes())
        .find(|(k, _)| k == "logout_token")
        .map(|(_, v)| v.into_owned())
        .expect("logout_token field");
    let jwks = get_json(&idp.jwks_uri()).await;
    let lt = {
        let header = jsonwebtoken::decode_header(&logout_token).unwrap();
        let mut v = Validation::new(header.alg);
        v.set_audience(&[DEFAULT_CLIENT_ID]);
        v.set_issuer(&[idp.issuer()]);
        v.set_required_spec_claims(&["iss", "aud"]);
        let set: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
        let key = DecodingKey::from_jwk(set.find(header.kid.as_deref().unwrap()).unwrap()).unwrap();
        jsonwebtoken::decode::<Value>(&logout_token, &key, &v)
            .unwrap()
            .claims
    };
    assert_eq!(lt["sub"], ALICE_SUB);
    assert_eq!(lt["sid"], sid.as_str());
    assert!(
        lt["events"]
            .get("http://schemas.openid.net/event/backchannel-logout")
            .is_some(),
        "{lt}"
    );
    assert!(lt.get("nonce").is_none());
    idp.wait_for_event(Duration::from_secs(5), |e| {
        e["event"] == "backchannel.success"
    });
    assert!(
        idp.issued_tokens()
            .iter()
            .any(|(k, v)| k == "logout_token" && *v == logout_token)
    );

    // Signed out at the IdP: the next sign-in asks for the password again.
    let err = browser
        .try_idp_login(
            &idp.authorization_url(DEFAULT_CLIENT_ID, "s3", "n3", Some(&pkce_pair().1)),
            ALICE_LOGIN,
            "wrong",
        )
        .await
        .unwrap_err();
    assert!(err.contains("Invalid login or password"), "{err}");
}

#[test]
fn sigterm_stops_the_idp_cleanly() {
    let mut idp = TestIdp::builder().start();
    idp.process().signal(15);
    assert_eq!(
        idp.process_mut().wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        idp.output()
    );
    assert!(idp.events_named("shutdown").len() == 1, "{}", idp.output());
}

// ---- the rogue IdP ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rogue_idp_produces_each_forgery() {
    let rogue = RogueIdp::start();
    let disco = get_json(&rogue.discovery_url()).await;
    assert_eq!(disco["issuer"], rogue.issuer());
    assert_eq!(disco["token_endpoint"], rogue.token_endpoint());
    let jwks = get_json(&rogue.jwks_uri()).await;
    assert_eq!(jwks, rogue.jwks());
    let legit = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == LEGIT_KID)
        .unwrap()
        .clone();
    let weak = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == WEAK_RSA_KID)
        .unwrap()
        .clone();
    let redirect_uri = "http://127.0.0.1:9/admin/oidc/callback";

    for forgery in Forgery::ALL {
        rogue.set_forgery(forgery);
        let (verifier, challenge) = pkce_pair();
        let (state, nonce) = (random_token(16), random_token(16));
        let mut auth = Url::parse(&rogue.authorization_endpoint()).unwrap();
        auth.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", "headgate")
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", "openid email")
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let r = http().get(auth.as_str()).send().await.unwrap();
        assert_eq!(r.status(), 302);
        let back = Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
        assert!(back.as_str().starts_with(redirect_uri), "{back}");
        assert_eq!(query(&back, "state").as_deref(), Some(state.as_str()));
        let code = query(&back, "code").unwrap();

        let recorded = rogue.last_auth_request().unwrap();
        assert_eq!(recorded.state(), Some(state.as_str()));
        assert_eq!(recorded.nonce(), Some(nonce.as_str()));
        assert_eq!(recorded.redirect_uri(), Some(redirect_uri));
        assert_eq!(recorded.code_challenge(), Some(challenge.as_str()));
        assert_eq!(recorded.code_challenge_method(), Some("S256"));
        assert_eq!(recorded.code, code);

        let auth_method = if (forgery as usize).is_multiple_of(2) {
            AuthMethod::ClientSecretBasic
        } else {
            AuthMethod::ClientSecretPost
        };
        let (status, body) = token_request(
            &rogue.token_endpoint(),
            "headgate",
            "s3cr:t/+",
            auth_method,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", &verifier),
            ],
        )
        .await;
        assert_eq!(status, 200);
        let tr = rogue.last_token_request().unwrap();
        assert_eq!(tr.code_verifier(), Some(verifier.as_str()));
        assert_eq!(tr.field("code"), Some(code.as_str()));
        match auth_method {
            AuthMethod::ClientSecretBasic => {
                assert_eq!(
                    tr.basic_credentials(),
                    Some(("headgate".into(), "s3cr:t/+".into()))
                );
                assert_eq!(tr.post_credentials(), None);
            }
            AuthMethod::ClientSecretPost => {
                assert_eq!(
                    tr.post_credentials(),
                    Some(("headgate".into(), "s3cr:t/+".into()))
                );
                assert!(tr.authorization.is_none());
            }
        }

        let token = body["id_token"].as_str().unwrap();
        let (header, claims) = jwt_parts(token);
        let t = now();
        let valid_sig = |t: &str| signature_ok(t, &legit, Algorithm::ES256);
        let ctx = format!("{forgery:?}: header {header} claims {claims}");
        // Everything a forgery does not change stays as in a valid token.
        let iss_ok = claims["iss"] == rogue.issuer();
        let aud_ok = claims["aud"] == "headgate";
        let nonce_ok = claims["nonce"] == nonce.as_str();
        let time_ok =
            claims["exp"].as_i64().unwrap() > t + 60 && claims["iat"].as_i64().unwrap() <= t + 5;
        let sub_ok = claims["sub"] == "rogue-sub";
        match forgery {
            Forgery::Valid => {
                assert!(
                    valid_sig(token) && header["alg"] == "ES256" && header["kid"] == LEGIT_KID,
                    "{ctx}"
                );
                assert!(iss_ok && aud_ok && nonce_ok && time_ok && sub_ok, "{ctx}");
                let verified = verify_with_jwks(token, &jwks, rogue.issuer(), "headgate");
                assert_eq!(verified["email"], "mallory@example.com");
            }
            Forgery::OtherKey => {
                assert!(
                    header["alg"] == "ES256" && header["kid"] == LEGIT_KID,
                    "{ctx}"
                );
                assert!(!valid_sig(token), "{ctx}");
                assert!(iss_ok && aud_ok && nonce_ok && time_ok && sub_ok, "{ctx}");
            }
            Forgery::AlgNone => {
                assert_eq!(header["alg"], "none", "{ctx}");
                assert!(token.ends_with('.'), "no signature: {token}");
                assert!(iss_ok && aud_ok && nonce_ok && time_ok && sub_ok, "{ctx}");
            }
            Forgery::Hs256WithPublicKeyPem | Forgery::Hs256WithPublicKeyJwk => {
                assert_eq!(header["alg"], "HS256", "{ctx}");
                let secret = if forgery == Forgery::Hs256WithPublicKeyPem {
                    rogue.public_key_pem()
                } else {
                    serde_json::to_string(&rogue.public_jwk()).unwrap()
                };
                if forgery == Forgery::Hs256WithPublicKeyPem {
                    assert!(secret.starts_with("-----BEGIN PUBLIC KEY-----"), "{secret}");
                }
                let (msg, sig) = token.rsplit_once('.').unwrap();
                let key = DecodingKey::from_secret(secret.as_bytes()).unwrap();
                assert!(
                    jsonwebtoken::crypto::verify(sig, msg.as_bytes(), &key, Algorithm::HS256)
                        .unwrap(),
                    "{ctx}"
                );
                assert!(iss_ok && aud_ok && nonce_ok && time_ok && sub_ok, "{ctx}");
            }
            Forgery::WrongIssuer => {
                assert!(valid_sig(token), "{ctx}");
                let iss = claims["iss"].as_str().unwrap();
                assert!(
                    iss != rogue.issuer() && iss.starts_with(rogue.issuer()),
                    "{ctx}"
                );
                assert!(aud_ok && nonce_ok && time_ok && sub_ok, "{ctx}");
            }
            Forgery::WrongAudience => {
                assert!(
                    valid_sig(token) && !aud_ok && claims["aud"].is_string(),
                    "{ctx}"
                );
                assert!(iss_ok && nonce_ok && time_ok && sub_ok, "{ctx}");
            }
            Forgery::WrongNonce => {
                assert!(
                    valid_sig(token) && claims["nonce"].is_string() && !nonce_ok,
                    "{ctx}"
                );
                assert!(iss_ok && aud_ok && time_ok && sub_ok, "{ctx}");
            }
            Forgery::MissingNonce => {
                assert!(valid_sig(token) && claims.get("nonce").is_none(), "{ctx}");
                assert!(iss_ok && aud_ok && time_ok && sub_ok, "{ctx}");
            }
            Forgery::Expired => {
                assert!(
                    valid_sig(token) && claims["exp"].as_i64().unwrap() < t - 600,
                    "{ctx}"
                );
                assert!(iss_ok && aud_ok && nonce_ok && sub_ok, "{ctx}");
            }
            Forgery::IssuedInFuture => {
                assert!(
                    valid_sig(token) && claims["iat"].as_i64().unwrap() > t + 600,
                    "{ctx}"
                );
                assert!(
                    claims["nbf"].as_i64().unwrap() > t + 600
                        && claims["exp"].as_i64().unwrap() > t,
                    "{ctx}"
                );
                assert!(iss_ok && aud_ok && nonce_ok && sub_ok, "{ctx}");
            }
            Forgery::MissingSub => {
                assert!(valid_sig(token) && claims.get("sub").is_none(), "{ctx}");
                assert!(iss_ok && aud_ok && nonce_ok && time_ok, "{ctx}");
            }
            Forgery::UnknownKid => {
                assert_eq!(header["kid"], UNKNOWN_KID, "{ctx}");
                assert!(
                    jwks["keys"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|k| k["kid"] != UNKNOWN_KID)
                );
                assert!(!valid_sig(token), "{ctx}");
                assert!(iss_ok && aud_ok && nonce_ok && time_ok && sub_ok, "{ctx}");
            }
            Forgery::WeakRsaKey => {
                assert!(
                    header["alg"] == "RS256" && header["kid"] == WEAK_RSA_KID,
                    "{ctx}"
                );
                use base64::Engine;
                let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(weak["n"].as_str().unwrap())
                    .unwrap();
                assert_eq!(n.len() * 8, 1024);
                assert!(
                    signature_ok(token, &weak, Algorithm::RS256),
                    "signed by the published weak key: {ctx}"
                );
                assert!(iss_ok && aud_ok && nonce_ok && time_ok && sub_ok, "{ctx}");
            }
        }

        // Userinfo records the bearer.
        let at = body["access_token"].as_str().unwrap();
        let ui: Value = http()
            .get(rogue.userinfo_endpoint())
            .bearer_auth(at)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ui["sub"], "rogue-sub");
        assert_eq!(
            rogue
                .userinfo_requests()
                .last()
                .unwrap()
                .authorization
                .as_deref(),
            Some(format!("Bearer {at}").as_str())
        );
    }
    assert_eq!(rogue.token_requests().len(), Forgery::ALL.len());

    // The browser's IdP walk works against it too: it stops at the redirect back, not requested.
    let start = format!(
        "{}?response_type=code&client_id=headgate&redirect_uri={}&state=st&nonce=nn",
        rogue.authorization_endpoint(),
        url::form_urlencoded::byte_serialize(redirect_uri.as_bytes()).collect::<String>()
    );
    let back = Browser::new().idp_login(&start, "anyone", "anything").await;
    assert_eq!(back.path(), "/admin/oidc/callback");
    assert_eq!(query(&back, "state").as_deref(), Some("st"));
    assert_eq!(
        query(&back, "code"),
        Some(rogue.last_auth_request().unwrap().code)
    );

    // A token chosen wholesale, and an error answer.
    rogue.set_id_token(Some("a.b.c".into()));
    let (_, body) = token_request(
        &rogue.token_endpoint(),
        "headgate",
        "x",
        AuthMethod::ClientSecretBasic,
        &[("grant_type", "authorization_code"), ("code", "nope")],
    )
    .await;
    assert_eq!(body["id_token"], "a.b.c");
    rogue.set_token_response(Some((401, json!({ "error": "invalid_client" }))));
    let (status, body) = token_request(
        &rogue.token_endpoint(),
        "headgate",
        "x",
        AuthMethod::ClientSecretBasic,
        &[("grant_type", "authorization_code"), ("code", "nope")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
}

#[tokio::test]
async fn browser_cookie_jar_follows_browser_rules() {
    let b = Browser::new();
    let u = "http://127.0.0.1:1/admin/oidc/callback";
    b.set_cookie(
        u,
        "flow=abc; Path=/admin/oidc/callback; HttpOnly; SameSite=Lax; Max-Age=1800",
    );
    b.set_cookie(u, "sess=1; Path=/admin");
    b.set_cookie(u, "def=1"); // default path: /admin/oidc
    b.set_cookie(u, "sec=1; Secure; Path=/");
    b.set_cookie(u, "__Host-x=1; Path=/");
    assert_eq!(
        b.cookie("http://127.0.0.1:2/admin/oidc/callback", "flow")
            .as_deref(),
        Some("abc"),
        "ports do not separate cookies"
    );
    assert_eq!(
        b.cookie("http://127.0.0.1:1/admin/oidc/callbackx", "flow"),
        None
    );
    assert_eq!(
        b.cookie("http://127.0.0.1:1/admin/machines", "sess")
            .as_deref(),
        Some("1")
    );
    assert_eq!(b.cookie("http://127.0.0.1:1/adminx", "sess"), None);
    assert_eq!(
        b.cookie("http://127.0.0.1:1/admin/oidc/start", "def")
            .as_deref(),
        Some("1")
    );
    assert_eq!(
        b.cookie("http://localhost:1/admin/machines", "sess"),
        None,
        "host-only"
    );
    assert_eq!(b.cookie(u, "sec"), None, "Secure over http is refused");
    assert_eq!(b.rejected_cookies().len(), 2, "{:?}", b.rejected_cookies());
    b.set_cookie(
        u,
        "sess=; Path=/admin; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
    );
    assert_eq!(
        b.cookie("http://127.0.0.1:1/admin/machines", "sess"),
        None,
        "deleted by a past Expires"
    );
    b.set_cookie(u, "flow=; Path=/admin/oidc/callback; Max-Age=0");
    assert_eq!(b.cookie(u, "flow"), None, "deleted by Max-Age=0");
    let trusting = Browser::new().trust_loopback_as_secure();
    trusting.set_cookie(u, "sec=1; Secure; Path=/");
    assert_eq!(trusting.cookie(u, "sec").as_deref(), Some("1"));
}
