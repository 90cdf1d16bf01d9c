//! `spec/policy.md` section 1 (admission) through the real server, over HTTP/1.1 (raw bytes on a TCP
//! stream, since a client library would normalise some of these), cleartext HTTP/2 and HTTP/2 over TLS
//! (S9): every refusal is answered by headgate and the upstream never sees the request; the forms that are
//! admitted arrive re-encoded as `application/x-www-form-urlencoded` with exactly the fields decided on.
//! Cross-origin unsafe requests (S8) are refused the same way.

use crate::gated::{self, Gated, Principal};
use crate::wire::{self, Answer, H2Target, Proto};

/// One request as a case of the corpus.
#[derive(Clone)]
struct Case {
    what: &'static str,
    method: &'static str,
    target: Vec<u8>,
    /// Headers besides `Host`, `Cookie` and `Origin` (which every case gets).
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// The case writes its own framing headers (HTTP/1.1 only); otherwise `Content-Length` is added.
    own_framing: bool,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2); `None`: the site's.
    host: Option<String>,
    status: u16,
    /// Only HTTP/1.1 can carry it (HTTP/2 has no `Transfer-Encoding`, and one `:authority`).
    h1_only: bool,
    /// Send no `Origin` of the site's own (the case sets its own origin signals, or none).
    no_origin: bool,
}

fn case(what: &'static str, method: &'static str, target: &str, status: u16) -> Case {
    Case {
        what,
        method,
        target: target.as_bytes().to_vec(),
        headers: Vec::new(),
        body: Vec::new(),
        own_framing: false,
        host: None,
        status,
        h1_only: false,
        no_origin: false,
    }
}

impl Case {
    fn form(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Case {
        self.headers
            .push(("content-type", content_type.to_string()));
        self.body = body.into();
        self
    }
    fn header(mut self, n: &'static str, v: &str) -> Case {
        self.headers.push((n, v.to_string()));
        self
    }
    fn host(mut self, h: &str) -> Case {
        self.host = Some(h.to_string());
        self
    }
    fn h1_only(mut self) -> Case {
        self.h1_only = true;
        self
    }
    fn own_framing(mut self) -> Case {
        self.own_framing = true;
        self
    }
    fn no_origin(mut self) -> Case {
        self.no_origin = true;
        self
    }
}

const URLENC: &str = "application/x-www-form-urlencoded";

pub fn multipart(boundary: &str, parts: &[&str]) -> Vec<u8> {
    let mut b = String::new();
    for p in parts {
        b.push_str(&format!("--{boundary}\r\n{p}\r\n"));
    }
    b.push_str(&format!("--{boundary}--\r\n"));
    b.into_bytes()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A real gzip member holding `data` in one stored (uncompressed) deflate block.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let len = data.len() as u16;
    out.push(1);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

/// policy.md section 1, one case per rule (and the spellings issue 5 names).
fn refusals() -> Vec<Case> {
    let file_part = multipart(
        "XyZ",
        &[
            "Content-Disposition: form-data; name=\"action_id\"\r\n\r\ncreate_user",
            "Content-Disposition: form-data; name=\"username\"; filename=\"evil.txt\"\r\nContent-Type: text/plain\r\n\r\nbob",
        ],
    );
    let typed_part = multipart(
        "XyZ",
        &[
            "Content-Disposition: form-data; name=\"action_id\"\r\n\r\ncreate_user",
            "Content-Disposition: form-data; name=\"username\"\r\nContent-Type: application/octet-stream\r\n\r\nbob",
        ],
    );
    let dup_multipart = multipart(
        "XyZ",
        &[
            "Content-Disposition: form-data; name=\"action_id\"\r\n\r\ncreate_user",
            "Content-Disposition: form-data; name=\"action_id\"\r\n\r\ndelete_user",
        ],
    );
    let mut big = b"action_id=create_user&username=".to_vec();
    big.resize(1024 * 1024 + 1, b'x');
    let chunked_form = b"1e\r\naction_id=create_user&username\r\n0\r\n\r\n".to_vec();
    vec![
        // Canonical path only.
        case("upper case", "GET", "/admin/USERS", 400),
        case("upper case data", "GET", "/admin/Users.data", 400),
        case("trailing slash", "GET", "/admin/users/", 400),
        case("backslashes", "GET", "/admin/assets\\..\\users", 400),
        case("%2e%2e", "GET", "/admin/%2e%2e/users", 400),
        case(
            "%2e%2e under assets",
            "GET",
            "/admin/assets/%2e%2e/users",
            400,
        ),
        case("%2f", "GET", "/admin%2fusers", 400),
        case("dot segment", "GET", "/admin/./users", 400),
        case("dot-dot segment", "GET", "/admin/assets/../users", 400),
        case("empty segment", "GET", "/admin//users", 400),
        case("semicolon", "GET", "/admin/users;x=1", 400),
        case("node id not digits", "GET", "/admin/machines/01", 400),
        case("ssh target not a label", "GET", "/admin/ssh/A_b", 400),
        // Methods.
        case("PUT", "PUT", "/admin/users", 405).form(URLENC, "action_id=create_user&username=x"),
        case("PATCH", "PATCH", "/admin/users", 405),
        case("DELETE", "DELETE", "/admin/machines/1", 405),
        case("OPTIONS", "OPTIONS", "/admin/users", 405),
        case("TRACE", "TRACE", "/admin/users", 405),
        case("PROPFIND", "PROPFIND", "/admin/users", 405),
        // Query on a POST.
        case("?index=x on a POST", "POST", "/admin/users?index=x", 400)
            .form(URLENC, "action_id=create_user&username=x"),
        case(
            "action_id in the query",
            "POST",
            "/admin/users?action_id=delete_user",
            400,
        )
        .form(URLENC, "action_id=create_user&username=x"),
        case("index twice", "POST", "/admin/users?index&index", 400)
            .form(URLENC, "action_id=create_user&username=x"),
        // Forms.
        case("duplicate action_id", "POST", "/admin/users", 400).form(
            URLENC,
            "action_id=create_user&username=x&action_id=delete_user",
        ),
        case(
            "duplicate action_id (multipart)",
            "POST",
            "/admin/users",
            400,
        )
        .form("multipart/form-data; boundary=XyZ", dup_multipart),
        case("duplicate node_id", "POST", "/admin/machines", 400)
            .form(URLENC, "action_id=rename&node_id=1&name=x&node_id=2"),
        case("duplicate user_id", "POST", "/admin/users", 400)
            .form(URLENC, "action_id=delete_user&user_id=1&user_id=2"),
        case("duplicate policy", "POST", "/admin/acls", 400)
            .form(URLENC, "policy=%7B%7D&policy=%7B%22x%22%3A1%7D"),
        case("node_id not digits", "POST", "/admin/machines", 400)
            .form(URLENC, "action_id=rename&node_id=1%20&name=x"),
        case("multipart with a file part", "POST", "/admin/users", 400)
            .form("multipart/form-data; boundary=XyZ", file_part),
        case("multipart with a typed part", "POST", "/admin/users", 400)
            .form("multipart/form-data; boundary=XyZ", typed_part),
        case("UTF-16 form (labelled)", "POST", "/admin/users", 415).form(
            "application/x-www-form-urlencoded; charset=utf-16",
            utf16le("action_id=create_user&username=x"),
        ),
        case("UTF-16 form (unlabelled)", "POST", "/admin/users", 400)
            .form(URLENC, utf16le("action_id=create_user&username=x")),
        case("gzip body", "POST", "/admin/users", 415)
            .form(URLENC, gzip(b"action_id=create_user&username=x"))
            .header("content-encoding", "gzip"),
        case("identity Content-Encoding", "POST", "/admin/users", 415)
            .form(URLENC, "action_id=create_user&username=x")
            .header("content-encoding", "identity"),
        case("JSON body", "POST", "/admin/users", 415)
            .form("application/json", "{\"action_id\":\"create_user\"}"),
        case("text/plain body", "POST", "/admin/users", 415)
            .form("text/plain", "action_id=create_user&username=x"),
        case("form over 1 MiB", "POST", "/admin/users", 413).form(URLENC, big.clone()),
        case("form over 1 MiB, chunked", "POST", "/admin/users", 413)
            .form(URLENC, {
                let mut b = format!("{:x}\r\n", big.len()).into_bytes();
                b.extend_from_slice(&big);
                b.extend_from_slice(b"\r\n0\r\n\r\n");
                b
            })
            .header("transfer-encoding", "chunked")
            .own_framing()
            .h1_only(),
        // Framing.
        case(
            "Content-Length and Transfer-Encoding",
            "POST",
            "/admin/users",
            400,
        )
        .form(URLENC, chunked_form.clone())
        .header("content-length", "30")
        .header("transfer-encoding", "chunked")
        .own_framing()
        .h1_only(),
        case(
            "Transfer-Encoding and Content-Length",
            "POST",
            "/admin/users",
            400,
        )
        .form(URLENC, chunked_form)
        .header("transfer-encoding", "chunked")
        .header("content-length", "5")
        .own_framing()
        .h1_only(),
        case("two Content-Lengths", "POST", "/admin/users", 400)
            .form(URLENC, "action_id=create_user&username=x")
            .header("content-length", "32")
            .header("content-length", "31")
            .own_framing()
            .h1_only(),
        case(
            "Transfer-Encoding other than chunked",
            "POST",
            "/admin/users",
            400,
        )
        .form(URLENC, "action_id=create_user&username=x")
        .header("transfer-encoding", "gzip, chunked")
        .own_framing()
        .h1_only(),
        case("a body on a GET", "GET", "/admin/users", 400)
            .header("content-length", "5")
            .form(URLENC, "a=b&c")
            .own_framing()
            .h1_only(),
        case("h2c upgrade", "GET", "/admin/users", 400)
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
            .h1_only(),
        // S8: unsafe requests from another origin, or saying nothing about where they come from.
        case("cross-site Origin", "POST", "/admin/users", 403)
            .form(URLENC, "action_id=create_user&username=x")
            .header("origin", "https://evil.example")
            .no_origin(),
        case("Origin null", "POST", "/admin/users", 403)
            .form(URLENC, "action_id=create_user&username=x")
            .header("origin", "null")
            .no_origin(),
        case("cross-site Referer", "POST", "/admin/users", 403)
            .form(URLENC, "action_id=create_user&username=x")
            .header("referer", "https://evil.example/admin/users")
            .no_origin(),
        case("cross-site Sec-Fetch-Site", "POST", "/admin/users", 403)
            .form(URLENC, "action_id=create_user&username=x")
            .header("sec-fetch-site", "cross-site")
            .no_origin(),
        case("no origin at all", "POST", "/admin/users", 403)
            .form(URLENC, "action_id=create_user&username=x")
            .no_origin(),
        // Hosts.
        case("unknown Host", "GET", "/admin/users", 421).host("evil.example"),
        case("unknown Host, our port", "GET", "/admin/users", 421).host("localhost:{port}"),
        case("Host without our port", "GET", "/admin/users", 421).host("127.0.0.1"),
        case("Host with a trailing dot", "GET", "/admin/users", 400).host("127.0.0.1.:{port}"),
        case("Host with userinfo", "GET", "/admin/users", 400).host("owner@127.0.0.1:{port}"),
        case("two Hosts", "GET", "/admin/users", 400)
            .header("host", "evil.example")
            .h1_only(),
    ]
}

/// Requests that are admitted: they reach the upstream, forms re-encoded. (case, expected upstream body)
fn admitted() -> Vec<(Case, &'static str)> {
    let mp = multipart(
        "B0undary",
        &[
            "Content-Disposition: form-data; name=\"action_id\"\r\n\r\ncreate_user",
            "content-disposition: form-data; name=username\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\nbob & co=1\r\nline 2",
            "Content-Disposition: form-data; name=\"tags\"\r\n\r\na",
            "Content-Disposition: form-data; name=\"tags\"\r\n\r\nb",
        ],
    );
    vec![
        (case("GET", "GET", "/admin/users?x=%2F..%2F&index", 200), ""),
        (
            case("urlencoded", "POST", "/admin/users", 200)
                .form(URLENC, "action_id=%63reate_user&username=bob+%26+co%3D1&x"),
            "action_id=create_user&username=bob+%26+co%3D1&x=",
        ),
        (
            case(
                "urlencoded, UTF-8 label, ?index",
                "POST",
                "/admin/users?index",
                200,
            )
            .form(
                "application/x-www-form-urlencoded; charset=UTF-8",
                "username=%C3%BCber&action_id=create_user",
            ),
            "username=%C3%BCber&action_id=create_user",
        ),
        (
            case(
                "multipart",
                "POST",
                "/admin/users.data?_routes=routes%2Fusers",
                200,
            )
            .form("multipart/form-data; boundary=B0undary", mp),
            "action_id=create_user&username=bob+%26+co%3D1%0D%0Aline+2&tags=a&tags=b",
        ),
        (
            case(
                "same-origin Referer, no Origin",
                "POST",
                "/admin/users",
                200,
            )
            .form(URLENC, "action_id=create_user&username=r")
            .header("referer", "http://127.0.0.1:{port}/admin/users")
            .no_origin(),
            "action_id=create_user&username=r",
        ),
        (
            case(
                "Sec-Fetch-Site: same-origin only",
                "POST",
                "/admin/users",
                200,
            )
            .form(URLENC, "action_id=create_user&username=s")
            .header("sec-fetch-site", "same-origin")
            .no_origin(),
            "action_id=create_user&username=s",
        ),
        (
            case("chunked", "POST", "/admin/users", 200)
                .form(
                    URLENC,
                    b"10\r\naction_id=create\r\nc\r\n_user&user=x\r\n0\r\n\r\n".to_vec(),
                )
                .header("transfer-encoding", "chunked")
                .own_framing()
                .h1_only(),
            "action_id=create_user&user=x",
        ),
    ]
}

/// Send `c` as `who` over `proto`: `Ok(answer)`, or `Err` when the client cannot express it over HTTP/2
/// or the server reset the stream (neither is an answer from the upstream).
async fn send(
    e: &Gated,
    h2: &H2Target,
    proto: Proto,
    who: &Principal,
    c: &Case,
) -> Result<Answer, String> {
    let host = c
        .host
        .clone()
        .unwrap_or_else(|| e.host())
        .replace("{port}", &e.site.port.to_string());
    let origin = e.site.base();
    match proto {
        Proto::H1 => {
            let mut head: Vec<(&str, String)> =
                vec![("Host", host), ("Cookie", who.cookie.clone())];
            if c.method != "GET" && !c.no_origin {
                head.push(("Origin", origin));
            }
            head.extend(
                c.headers
                    .iter()
                    .map(|(n, v)| (*n, v.replace("{port}", &e.site.port.to_string()))),
            );
            if !c.own_framing && !c.body.is_empty() {
                head.push(("Content-Length", c.body.len().to_string()));
            }
            let refs: Vec<(&str, &str)> = head.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let bytes = wire::h1_bytes(c.method, &c.target, &refs, &c.body);
            wire::h1_raw(e.addr(), &bytes)
                .await
                .ok_or_else(|| "closed without an answer".to_string())
        }
        Proto::H2c | Proto::H2Tls => {
            let target = String::from_utf8(c.target.clone()).map_err(|e| e.to_string())?;
            let mut head: Vec<(&str, String)> = vec![("cookie", who.cookie.clone())];
            if c.method != "GET" && !c.no_origin {
                head.push(("origin", origin));
            }
            head.extend(
                c.headers
                    .iter()
                    .map(|(n, v)| (*n, v.replace("{port}", &e.site.port.to_string()))),
            );
            let refs: Vec<(&str, &str)> = head.iter().map(|(n, v)| (*n, v.as_str())).collect();
            h2.send(c.method, &host, &target, &refs, &c.body).await
        }
    }
}

async fn run(
    e: &Gated,
    h2: &H2Target,
    proto: Proto,
    who: &Principal,
) -> (Vec<String>, Vec<String>) {
    let mut failures = Vec::new();
    let mut inexpressible = Vec::new();
    for c in refusals() {
        if c.h1_only && proto != Proto::H1 {
            continue;
        }
        let before = e.forwarded_count();
        let got = send(e, h2, proto, who, &c).await;
        let after = e.forwarded_count();
        if after != before {
            failures.push(format!("{proto:?} {}: reached the upstream", c.what));
        }
        match got {
            Ok(a) if a.status == c.status => {}
            Ok(a) => failures.push(format!(
                "{proto:?} {}: {} instead of {}: {}",
                c.what,
                a.status,
                c.status,
                a.body.chars().take(200).collect::<String>()
            )),
            Err(why) if proto != Proto::H1 => inexpressible.push(format!("{}: {why}", c.what)),
            Err(why) => failures.push(format!("{proto:?} {}: {why}", c.what)),
        }
    }
    for (c, body) in admitted() {
        if c.h1_only && proto != Proto::H1 {
            continue;
        }
        let before = e.forwarded_count();
        let got = send(e, h2, proto, who, &c).await;
        let fwd = e.forwarded();
        match got {
            Ok(a) if a.status == 200 && fwd.len() == before + 1 => {
                let seen = fwd.last().unwrap();
                let target = String::from_utf8_lossy(&c.target);
                if seen.uri != target || seen.method != c.method {
                    failures.push(format!(
                        "{proto:?} {}: upstream saw {} {}",
                        c.what, seen.method, seen.uri
                    ));
                }
                if c.method == "POST" {
                    let ct = seen.header_all("content-type");
                    let cl = seen.header("content-length");
                    if seen.body_str() != body
                        || ct != vec![URLENC]
                        || cl != Some(body.len().to_string().as_str())
                        || seen.has_header("content-encoding")
                        || seen.has_header("transfer-encoding")
                    {
                        failures.push(format!(
                            "{proto:?} {}: upstream got {:?} with {:?}",
                            c.what,
                            seen.body_str(),
                            seen.headers
                        ));
                    }
                }
            }
            other => failures.push(format!(
                "{proto:?} {} (admitted): {:?}, {} upstream requests",
                c.what,
                other.map(|a| (a.status, a.body.chars().take(200).collect::<String>())),
                fwd.len() - before
            )),
        }
    }
    (failures, inexpressible)
}

#[tokio::test]
async fn admission_refusals_never_reach_the_upstream_over_h1_h2c_and_h2() {
    let mut e = gated::start("api_key");
    let owner = e.person("owner", "p-owner", None, "owner", false).await;
    let h2c = H2Target::cleartext(e.addr());
    let (mut failures, mut inexpressible) = run(&e, &h2c, Proto::H1, &owner).await;
    let (f, i) = run(&e, &h2c, Proto::H2c, &owner).await;
    failures.extend(f);
    inexpressible.extend(i);

    // HTTP/2 only: `:authority` that differs from `Host`.
    for (authority, host, status) in [
        (e.host(), "evil.example".to_string(), 400),
        ("evil.example".to_string(), e.host(), 400),
        ("evil.example".to_string(), "evil.example".to_string(), 421),
    ] {
        let before = e.forwarded_count();
        let a = h2c
            .send(
                "GET",
                &authority,
                "/admin/users",
                &[("cookie", &owner.cookie), ("host", &host)],
                b"",
            )
            .await;
        assert_eq!(e.forwarded_count(), before, "{authority} / {host}");
        assert_eq!(a.map(|a| a.status), Ok(status), "{authority} / {host}");
    }

    // The same over TLS (h2 by ALPN): headgate restarted with a certificate, sessions kept.
    let (hg, der) = wire::restart_with_tls(e.hg.take().unwrap());
    e.hg = Some(hg);
    let tls = H2Target::tls(e.addr(), der);
    let (f, i) = run(&e, &tls, Proto::H2Tls, &owner).await;
    failures.extend(f);
    inexpressible.extend(i);

    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Whatever an HTTP/2 client library can put on the wire was tested; only these could not be sent.
    for i in &inexpressible {
        println!("not expressible over HTTP/2: {i}");
        assert!(i.starts_with("backslashes"), "{i}");
    }
}
