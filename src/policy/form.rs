//! Strict form parsing (`policy.md` section 1, "Forms"): `application/x-www-form-urlencoded` or
//! `multipart/form-data`, UTF-8 only, no `Content-Encoding`, no file parts, at most 1 MiB, no repeated
//! field that a decision (here or in Headplane) reads. The parsed fields are forwarded re-encoded as
//! `application/x-www-form-urlencoded` in their original order, so Headplane acts on exactly what headgate
//! decided on.

use super::admission::{MAX_FORM_BYTES, is_node_id};

/// Fields that may appear at most once: Headplane reads the first, headgate decides on them.
/// `new_role` is added to `policy.md`'s list because headgate decides on it (`reassign_user`).
pub const SINGLE_FIELDS: &[&str] = &[
    "action_id",
    "node_id",
    "user_id",
    "key_id",
    "headscale_user_id",
    "policy",
    "new_role",
];

/// Most fields a form may have (1 MiB of `a&a&…` would otherwise be half a million fields).
pub const MAX_FIELDS: usize = 1000;

/// The content type of the re-encoded body.
pub const FORWARD_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// A parsed form: its fields in their original order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    fields: Vec<(String, String)>,
}

impl Form {
    pub fn new(fields: Vec<(String, String)>) -> Form {
        Form { fields }
    }

    pub const fn empty() -> Form {
        Form { fields: Vec::new() }
    }

    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }

    /// The first value of `name` (what Headplane's `formData.get` reads).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn action_id(&self) -> Option<&str> {
        self.get("action_id")
    }

    /// The body forwarded to the upstream (`application/x-www-form-urlencoded`): exactly these fields, in
    /// this order.
    pub fn encoded(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(self.fields.iter())
            .finish()
    }
}

/// Why a form was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormError {
    /// A content type other than the two form types (or none, with a body).
    UnsupportedMediaType,
    /// A charset other than UTF-8.
    Charset,
    /// Any `Content-Encoding` (compressed or not, forms are never encoded).
    ContentEncoding,
    /// More than [`MAX_FORM_BYTES`].
    TooLarge,
    /// A multipart part with a file name.
    FilePart,
    /// A field of [`SINGLE_FIELDS`] more than once.
    Repeated(&'static str),
    /// A `node_id` that is not digits.
    NodeId,
    /// Bytes that are not UTF-8 after decoding.
    NotUtf8,
    /// Anything else that is not a well-formed form.
    Malformed(&'static str),
}

impl FormError {
    /// The status headgate answers with.
    pub fn status(&self) -> u16 {
        match self {
            FormError::UnsupportedMediaType | FormError::Charset | FormError::ContentEncoding => {
                415
            }
            FormError::TooLarge => 413,
            _ => 400,
        }
    }

    /// A short code for the log.
    pub fn reason(&self) -> &'static str {
        match self {
            FormError::UnsupportedMediaType => "form_media_type",
            FormError::Charset => "form_charset",
            FormError::ContentEncoding => "form_content_encoding",
            FormError::TooLarge => "form_too_large",
            FormError::FilePart => "form_file_part",
            FormError::Repeated(_) => "form_repeated_field",
            FormError::NodeId => "form_node_id_not_digits",
            FormError::NotUtf8 => "form_not_utf8",
            FormError::Malformed(r) => r,
        }
    }
}

impl std::fmt::Display for FormError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormError::Repeated(name) => write!(f, "form_repeated_field ({name})"),
            other => f.write_str(other.reason()),
        }
    }
}

/// Parse a form post strictly. `content_type` and `content_encoding` are the request's headers (a request
/// with several of either is the caller's 400); `body` is at most `MAX_FORM_BYTES + 1` bytes read.
pub fn parse_form(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
) -> Result<Form, FormError> {
    if content_encoding.is_some() {
        return Err(FormError::ContentEncoding);
    }
    if body.len() > MAX_FORM_BYTES {
        return Err(FormError::TooLarge);
    }
    let fields = match content_type {
        None if body.is_empty() => Vec::new(),
        None => return Err(FormError::UnsupportedMediaType),
        Some(ct) => {
            let (media, params) = parse_media_type(ct)?;
            let mut charset = None;
            let mut boundary = None;
            for (k, v) in params {
                let slot = match k.as_str() {
                    "charset" => &mut charset,
                    "boundary" => &mut boundary,
                    _ => continue,
                };
                if slot.replace(v).is_some() {
                    return Err(FormError::Malformed("form_repeated_parameter"));
                }
            }
            if let Some(c) = &charset
                && !c.eq_ignore_ascii_case("utf-8")
            {
                return Err(FormError::Charset);
            }
            match media.as_str() {
                "application/x-www-form-urlencoded" => parse_urlencoded(body)?,
                "multipart/form-data" => {
                    let b = boundary.ok_or(FormError::Malformed("multipart_no_boundary"))?;
                    parse_multipart(&b, body)?
                }
                _ => return Err(FormError::UnsupportedMediaType),
            }
        }
    };
    if fields.len() > MAX_FIELDS {
        return Err(FormError::Malformed("form_too_many_fields"));
    }
    for name in SINGLE_FIELDS {
        if fields.iter().filter(|(k, _)| k == name).count() > 1 {
            return Err(FormError::Repeated(name));
        }
    }
    if let Some((_, id)) = fields.iter().find(|(k, _)| k == "node_id")
        && !is_node_id(id)
    {
        return Err(FormError::NodeId);
    }
    Ok(Form { fields })
}

/// `type/subtype; k=v; k="v"` → lower-cased media type and parameters (names lower-cased).
fn parse_media_type(ct: &str) -> Result<(String, Vec<(String, String)>), FormError> {
    let mut p = ParamParser::new(ct);
    let media = p.token().ok_or(FormError::UnsupportedMediaType)?;
    let params = p
        .params()
        .ok_or(FormError::Malformed("form_content_type"))?;
    Ok((media.to_ascii_lowercase(), params))
}

/// `name=value&…`, `+` is a space, `%XX` a byte; a malformed escape or bytes that are not UTF-8 are refused.
fn parse_urlencoded(body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let mut out = Vec::new();
    for pair in body.split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        out.push((decode_component(k)?, decode_component(v)?));
        if out.len() > MAX_FIELDS {
            return Err(FormError::Malformed("form_too_many_fields"));
        }
    }
    Ok(out)
}

fn decode_component(s: &[u8]) -> Result<String, FormError> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => bytes.push(b' '),
            0..=0x1f | 0x7f => return Err(FormError::Malformed("form_raw_control_byte")),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    s.get(i + 1).and_then(|b| hex(*b)),
                    s.get(i + 2).and_then(|b| hex(*b)),
                ) {
                    (Some(h), Some(l)) => bytes.push((h * 16 + l) as u8),
                    _ => return Err(FormError::Malformed("form_bad_percent_escape")),
                }
                i += 2;
            }
            b => bytes.push(b),
        }
        i += 1;
    }
    String::from_utf8(bytes).map_err(|_| FormError::NotUtf8)
}

/// RFC 7578 as browsers and fetch send it: the body starts with the first delimiter (no preamble), every
/// part has exactly one `Content-Disposition: form-data; name="…"` (no `filename`), optionally a
/// `Content-Type: text/plain[; charset=utf-8]` and no other header, and the close delimiter ends the body
/// (an optional CRLF after it, nothing else).
fn parse_multipart(boundary: &str, body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    const M: fn(&'static str) -> FormError = FormError::Malformed;
    if boundary.is_empty()
        || boundary.len() > 70
        || boundary.ends_with(' ')
        || !boundary
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b))
    {
        return Err(M("multipart_bad_boundary"));
    }
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let mut rest = body.strip_prefix(delim).ok_or(M("multipart_preamble"))?;
    let mut sep = Vec::with_capacity(delim.len() + 2);
    sep.extend_from_slice(b"\r\n");
    sep.extend_from_slice(delim);
    let mut out = Vec::new();
    loop {
        if let Some(after) = rest.strip_prefix(b"--") {
            if after.is_empty() || after == b"\r\n" {
                return Ok(out);
            }
            return Err(M("multipart_epilogue"));
        }
        rest = rest.strip_prefix(b"\r\n").ok_or(M("multipart_delimiter"))?;
        let end = find(rest, &sep).ok_or(M("multipart_unterminated"))?;
        let (part, after) = (&rest[..end], &rest[end + sep.len()..]);
        out.push(parse_part(part)?);
        if out.len() > MAX_FIELDS {
            return Err(M("form_too_many_fields"));
        }
        rest = after;
    }
}

fn parse_part(part: &[u8]) -> Result<(String, String), FormError> {
    const M: fn(&'static str) -> FormError = FormError::Malformed;
    let (head, value) = if let Some(v) = part.strip_prefix(b"\r\n") {
        (&b""[..], v)
    } else {
        let i = find(part, b"\r\n\r\n").ok_or(M("multipart_part_headers"))?;
        (&part[..i], &part[i + 4..])
    };
    let head = std::str::from_utf8(head).map_err(|_| FormError::NotUtf8)?;
    let mut name = None;
    let mut seen_type = false;
    let lines = if head.is_empty() {
        None
    } else {
        Some(head.split("\r\n"))
    };
    for line in lines.into_iter().flatten() {
        let (k, v) = line.split_once(':').ok_or(M("multipart_part_headers"))?;
        if k.is_empty() || k.trim() != k || line.starts_with([' ', '\t']) {
            return Err(M("multipart_part_headers"));
        }
        match k.to_ascii_lowercase().as_str() {
            "content-disposition" => {
                if name.is_some() {
                    return Err(M("multipart_part_headers"));
                }
                let mut p = ParamParser::new(v);
                let kind = p.token().ok_or(M("multipart_disposition"))?;
                if !kind.eq_ignore_ascii_case("form-data") {
                    return Err(M("multipart_disposition"));
                }
                let params = p.params().ok_or(M("multipart_disposition"))?;
                let mut n = None;
                for (pk, pv) in params {
                    match pk.as_str() {
                        "filename" | "filename*" => return Err(FormError::FilePart),
                        "name" if n.is_none() => n = Some(pv),
                        "name" => return Err(M("multipart_disposition")),
                        _ => return Err(M("multipart_disposition")),
                    }
                }
                name = Some(n.ok_or(M("multipart_disposition"))?);
            }
            "content-type" => {
                if seen_type {
                    return Err(M("multipart_part_headers"));
                }
                seen_type = true;
                let (media, params) = parse_media_type(v)?;
                if media != "text/plain" {
                    // Browsers and fetch give file parts a type; text fields have none.
                    return Err(FormError::FilePart);
                }
                for (pk, pv) in params {
                    if pk != "charset" {
                        return Err(M("multipart_part_headers"));
                    }
                    if !pv.eq_ignore_ascii_case("utf-8") {
                        return Err(FormError::Charset);
                    }
                }
            }
            _ => return Err(M("multipart_part_headers")),
        }
    }
    let name = name.ok_or(M("multipart_disposition"))?;
    let value = String::from_utf8(value.to_vec()).map_err(|_| FormError::NotUtf8)?;
    Ok((name, value))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A small parser for `token *( ";" name "=" ( token / quoted-string ) )`. Quoted strings may not hold a
/// backslash (browsers percent-escape `"` instead, and an escape would let two parsers disagree).
struct ParamParser<'a> {
    s: &'a str,
}

impl<'a> ParamParser<'a> {
    fn new(s: &'a str) -> Self {
        ParamParser {
            s: s.trim_matches([' ', '\t']),
        }
    }

    fn skip_ws(&mut self) {
        self.s = self.s.trim_start_matches([' ', '\t']);
    }

    fn is_tchar(c: char) -> bool {
        c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~/".contains(c)
    }

    fn token(&mut self) -> Option<&'a str> {
        self.skip_ws();
        let end = self
            .s
            .find(|c: char| !Self::is_tchar(c))
            .unwrap_or(self.s.len());
        if end == 0 {
            return None;
        }
        let (t, rest) = self.s.split_at(end);
        self.s = rest;
        Some(t)
    }

    fn params(&mut self) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        loop {
            self.skip_ws();
            if self.s.is_empty() {
                return Some(out);
            }
            self.s = self.s.strip_prefix(';')?;
            self.skip_ws();
            if self.s.is_empty() {
                // A trailing `;` is tolerated (some clients send it).
                return Some(out);
            }
            let name = self.token()?.to_ascii_lowercase();
            self.skip_ws();
            self.s = self.s.strip_prefix('=')?;
            self.skip_ws();
            let value = if let Some(q) = self.s.strip_prefix('"') {
                let end = q.find(['"', '\\'])?;
                if q.as_bytes()[end] == b'\\' {
                    return None;
                }
                let v = &q[..end];
                if v.contains(['\r', '\n']) {
                    return None;
                }
                self.s = &q[end + 1..];
                v.to_string()
            } else {
                self.token()?.to_string()
            };
            out.push((name, value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URLENC: Option<&str> = Some("application/x-www-form-urlencoded");

    fn fields(f: &Form) -> Vec<(&str, &str)> {
        f.fields()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn multipart(parts: &[&str]) -> Vec<u8> {
        let mut b = String::new();
        for p in parts {
            b.push_str("--XyZ\r\n");
            b.push_str(p);
            b.push_str("\r\n");
        }
        b.push_str("--XyZ--\r\n");
        b.into_bytes()
    }
    const MP: Option<&str> = Some("multipart/form-data; boundary=XyZ");

    #[test]
    fn urlencoded_forms_parse_and_reencode_in_order() {
        let f = parse_form(
            URLENC,
            None,
            b"action_id=rename&node_id=7&name=my+laptop%21&x",
        )
        .unwrap();
        assert_eq!(
            fields(&f),
            vec![
                ("action_id", "rename"),
                ("node_id", "7"),
                ("name", "my laptop!"),
                ("x", "")
            ]
        );
        assert_eq!(
            f.encoded(),
            "action_id=rename&node_id=7&name=my+laptop%21&x="
        );
        assert_eq!(f.action_id(), Some("rename"));
        // UTF-8 (raw or escaped) is fine; the charset parameter may say so.
        let f = parse_form(
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
            None,
            "name=%C3%BC&b=ü".as_bytes(),
        )
        .unwrap();
        assert_eq!(fields(&f), vec![("name", "ü"), ("b", "ü")]);
        assert_eq!(f.encoded(), "name=%C3%BC&b=%C3%BC");
        // Newlines in a policy textarea survive.
        let f = parse_form(URLENC, None, b"policy=%7B%0A%7D").unwrap();
        assert_eq!(f.get("policy"), Some("{\n}"));
        // Empty body, no content type: an empty form.
        assert_eq!(parse_form(None, None, b"").unwrap(), Form::default());
        assert_eq!(parse_form(URLENC, None, b"").unwrap(), Form::default());
    }

    #[test]
    fn reencoding_is_exactly_the_decided_fields() {
        // Whatever the spelling, the forwarded body is the fields in their order, urlencoded once.
        let a = parse_form(URLENC, None, b"action_id=%72ename&node_id=7&name=a%26b%3Dc").unwrap();
        let b = parse_form(
            MP,
            None,
            &multipart(&[
                "Content-Disposition: form-data; name=\"action_id\"\r\n\r\nrename",
                "Content-Disposition: form-data; name=\"node_id\"\r\n\r\n7",
                "content-disposition: form-data; name=name\r\n\r\na&b=c",
            ]),
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.encoded(), "action_id=rename&node_id=7&name=a%26b%3Dc");
        let again = parse_form(URLENC, None, a.encoded().as_bytes()).unwrap();
        assert_eq!(again, a);
    }

    #[test]
    fn multipart_forms_parse() {
        let body = multipart(&[
            "Content-Disposition: form-data; name=\"action_id\"\r\n\r\nadd_ns",
            "Content-Disposition: form-data; name=\"ns\"\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\n1.1.1.1\r\nline2",
            "Content-Disposition: form-data; name=\"empty\"\r\n\r\n",
        ]);
        let f = parse_form(Some("Multipart/Form-Data; boundary=\"XyZ\""), None, &body).unwrap();
        assert_eq!(
            fields(&f),
            vec![
                ("action_id", "add_ns"),
                ("ns", "1.1.1.1\r\nline2"),
                ("empty", "")
            ]
        );
        // No trailing CRLF after the close delimiter is fine; an empty form too.
        let mut b = body.clone();
        b.truncate(b.len() - 2);
        assert!(parse_form(MP, None, &b).is_ok());
        assert_eq!(parse_form(MP, None, b"--XyZ--").unwrap(), Form::default());
    }

    #[test]
    fn refusals() {
        let e =
            |ct: Option<&str>, ce: Option<&str>, body: &[u8]| parse_form(ct, ce, body).unwrap_err();
        // Repeated decision fields.
        for name in SINGLE_FIELDS {
            let body = format!("{name}=1&x=2&{name}=1");
            assert_eq!(
                e(URLENC, None, body.as_bytes()),
                FormError::Repeated(name),
                "{name}"
            );
        }
        let dup = multipart(&[
            "Content-Disposition: form-data; name=\"action_id\"\r\n\r\nrename",
            "Content-Disposition: form-data; name=\"action_id\"\r\n\r\ndelete",
        ]);
        assert_eq!(e(MP, None, &dup), FormError::Repeated("action_id"));
        // Other fields may repeat.
        assert!(parse_form(URLENC, None, b"tags=a&tags=b").is_ok());
        // node_id digits only.
        for bad in ["x", "07", "1 ", "-1", ""] {
            let body = format!("node_id={bad}");
            assert_eq!(
                e(URLENC, None, body.as_bytes()),
                FormError::NodeId,
                "{bad:?}"
            );
        }
        // File parts, with or without a name or a type.
        for file in [
            "Content-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhi",
            "Content-Disposition: form-data; name=\"f\"; filename=\"\"\r\n\r\n",
            "Content-Disposition: form-data; name=\"f\"; filename*=UTF-8''a.txt\r\n\r\nhi",
            "Content-Disposition: form-data; name=\"f\"\r\nContent-Type: application/octet-stream\r\n\r\nhi",
        ] {
            assert_eq!(
                e(MP, None, &multipart(&[file])),
                FormError::FilePart,
                "{file}"
            );
        }
        // Charsets other than UTF-8.
        assert_eq!(
            e(
                Some("application/x-www-form-urlencoded; charset=utf-16"),
                None,
                b"\xff\xfea\0"
            ),
            FormError::Charset
        );
        assert_eq!(
            e(
                Some("multipart/form-data; boundary=XyZ; charset=iso-8859-1"),
                None,
                b"--XyZ--"
            ),
            FormError::Charset
        );
        let latin1_part = multipart(&[
            "Content-Disposition: form-data; name=\"a\"\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nx",
        ]);
        assert_eq!(e(MP, None, &latin1_part), FormError::Charset);
        // UTF-16 bytes without a charset label: not UTF-8, or raw control bytes.
        assert_eq!(e(URLENC, None, b"a=%FF%FE"), FormError::NotUtf8);
        assert_eq!(
            e(URLENC, None, b"a\0=\0b\0"),
            FormError::Malformed("form_raw_control_byte")
        );
        assert_eq!(e(URLENC, None, b"a=\xff"), FormError::NotUtf8);
        // Content-Encoding, whatever it says.
        for ce in ["gzip", "deflate", "br", "identity"] {
            assert_eq!(e(URLENC, Some(ce), b"a=1"), FormError::ContentEncoding);
        }
        // Size: 1 MiB is fine, one byte more is 413.
        let mut big = b"a=".to_vec();
        big.resize(MAX_FORM_BYTES, b'x');
        assert!(parse_form(URLENC, None, &big).is_ok());
        big.push(b'x');
        assert_eq!(e(URLENC, None, &big), FormError::TooLarge);
        assert_eq!(FormError::TooLarge.status(), 413);
        // Media types.
        for ct in [
            "application/json",
            "text/plain",
            "multipart/mixed; boundary=x",
            "",
        ] {
            assert_eq!(
                e(Some(ct), None, b"a=1"),
                FormError::UnsupportedMediaType,
                "{ct}"
            );
        }
        assert_eq!(e(None, None, b"a=1"), FormError::UnsupportedMediaType);
        assert_eq!(FormError::UnsupportedMediaType.status(), 415);
        // Malformed.
        assert!(matches!(e(URLENC, None, b"a=%zz"), FormError::Malformed(_)));
        assert!(matches!(e(URLENC, None, b"a=%4"), FormError::Malformed(_)));
        assert!(matches!(
            e(Some("multipart/form-data"), None, b"--x--"),
            FormError::Malformed(_)
        ));
        let malformed: &[&[u8]] = &[
            b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XyZ--",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XyZ--\r\nepilogue",
            b"--XyZ \r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XyZ--",
            b"--XyZ\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\n1\r\n--XyZ--",
            b"--XyZ\r\nContent-Disposition: form-data\r\n\r\n1\r\n--XyZ--",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\\\"b\"\r\n\r\n1\r\n--XyZ--",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Transfer-Encoding: base64\r\n\r\nMQ==\r\n--XyZ--",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n folded\r\n\r\n1\r\n--XyZ--",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\n1\r\n--XyZ--",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"; name=\"b\"\r\n\r\n1\r\n--XyZ--",
        ];
        for body in malformed {
            let err = e(MP, None, body);
            assert!(
                matches!(err, FormError::Malformed(_)),
                "{:?}: {err:?}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(err.status(), 400);
        }
    }
}
