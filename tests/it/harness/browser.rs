//! A browser that plays a person: a cookie jar (by host and path, like a browser's), no automatic redirects,
//! HTML forms read by hand (no JavaScript), and walks through the test IdP's sign-in and sign-out pages.
//!
//! Cookie rules modelled (RFC 6265bis as browsers apply it): host-only vs `Domain` cookies, `Path` matching,
//! `Max-Age` (wins) and `Expires`, deletion by a past date or `Max-Age<=0`; `Secure` cookies are neither stored
//! from nor sent over plain `http` (unless [`Browser::trust_loopback_as_secure`]), `__Host-`/`__Secure-` prefix
//! rules; `SameSite=Strict` cookies are not sent on cross-site requests and `SameSite=Lax` ones only on
//! cross-site GETs (a request is cross-site when the page or redirect that led to it is on another host; ports do
//! not make sites, so everything on 127.0.0.1 is one site, as in a browser); a cookie without `SameSite` is sent
//! like `None`. Cookies ignore ports, as in browsers: the IdP's and headgate's cookies on 127.0.0.1 share one jar.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;
use url::Url;

/// One stored cookie.
#[derive(Clone, Debug)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    /// The host it was set by (host-only) or its `Domain` attribute, lowercase, no leading dot.
    pub domain: String,
    pub host_only: bool,
    pub path: String,
    /// `None`: a session cookie.
    pub expires: Option<SystemTime>,
    pub secure: bool,
    pub http_only: bool,
    /// `Strict`, `Lax`, `None` as written, or `None` when absent.
    pub same_site: Option<String>,
}

/// A response, read whole.
#[derive(Clone, Debug)]
pub struct Page {
    pub url: Url,
    pub method: Method,
    pub status: u16,
    /// The status line's reason phrase when the server sent one that is not the canonical phrase.
    pub reason: Option<String>,
    pub headers: HeaderMap,
    pub body: String,
    form: Option<Vec<(String, String)>>,
}

impl Page {
    /// A bare `200` page holding `body` (to exercise checks over pages).
    pub fn for_scan(body: String) -> Page {
        Page {
            url: Url::parse("http://scan.test/").unwrap(),
            method: Method::GET,
            status: 200,
            reason: None,
            headers: HeaderMap::new(),
            body,
            form: None,
        }
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Every value of header `name`.
    pub fn headers_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The raw `Set-Cookie` headers.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers_all("set-cookie")
    }

    pub fn is_redirect(&self) -> bool {
        matches!(self.status, 301 | 302 | 303 | 307 | 308) && self.headers.contains_key("location")
    }

    /// `Location`, resolved against the page URL.
    pub fn location(&self) -> Option<Url> {
        let l = self.header("location")?;
        Some(
            self.url
                .join(&l)
                .unwrap_or_else(|e| panic!("bad Location {l:?} from {}: {e}", self.url)),
        )
    }

    pub fn text(&self) -> &str {
        &self.body
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {} answered no JSON ({e}): {}",
                self.method, self.url, self.body
            )
        })
    }

    /// The forms on the page.
    pub fn forms(&self) -> Vec<Form> {
        parse_forms(&self.body, &self.url)
    }

    /// The page text without tags (for messages and asserts).
    pub fn visible_text(&self) -> String {
        visible_text(&self.body)
    }
}

/// An HTML form as a browser would submit it.
#[derive(Clone, Debug)]
pub struct Form {
    pub id: Option<String>,
    pub action: Url,
    /// `GET` or `POST`.
    pub method: Method,
    /// Successful controls with their current values (hidden, text, password..., checked boxes), in order.
    pub fields: Vec<(String, String)>,
    /// Submit buttons: (name, value, label); the first is the default (what pressing Enter submits).
    pub buttons: Vec<(Option<String>, Option<String>, String)>,
    /// Names of the `type=password` inputs.
    pub password_fields: Vec<String>,
    /// Names of the text-like inputs (text, email, no type).
    pub text_fields: Vec<String>,
}

impl Form {
    /// Set (or add) a field.
    pub fn set(&mut self, name: &str, value: &str) -> &mut Form {
        match self.fields.iter_mut().find(|(n, _)| n == name) {
            Some(f) => f.1 = value.to_string(),
            None => self.fields.push((name.to_string(), value.to_string())),
        }
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The button whose name, value or label is `what`.
    pub fn button(&self, what: &str) -> Option<(Option<String>, Option<String>)> {
        self.buttons
            .iter()
            .find(|(n, v, l)| {
                n.as_deref() == Some(what) || v.as_deref() == Some(what) || l.trim() == what
            })
            .map(|(n, v, _)| (n.clone(), v.clone()))
    }
}

pub struct Browser {
    client: reqwest::Client,
    jar: Mutex<Vec<Cookie>>,
    rejected: Mutex<Vec<(String, String)>>,
    default_headers: Mutex<Vec<(String, String)>>,
    /// Every response this browser received, in order (see [`Browser::history`]).
    history: Mutex<Vec<Page>>,
    secure_on_loopback: bool,
    /// Most redirects [`Browser::follow`] takes before it panics.
    pub max_hops: usize,
}

impl Default for Browser {
    fn default() -> Self {
        Browser::new()
    }
}

impl Browser {
    pub fn new() -> Browser {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .user_agent("headgate-test-browser/1.0")
            .build()
            .unwrap();
        Browser {
            client,
            jar: Mutex::new(Vec::new()),
            rejected: Mutex::new(Vec::new()),
            default_headers: Mutex::new(Vec::new()),
            history: Mutex::new(Vec::new()),
            secure_on_loopback: false,
            max_hops: 10,
        }
    }

    /// Treat http://127.0.0.1 and http://localhost as secure contexts (Chrome does): `Secure` cookies are then
    /// kept and sent over plain http to loopback hosts.
    pub fn trust_loopback_as_secure(mut self) -> Browser {
        self.secure_on_loopback = true;
        self
    }

    /// Send this header on every request from now on (e.g. `X-Forwarded-Proto`).
    pub fn set_default_header(&self, name: &str, value: &str) {
        let mut h = self.default_headers.lock().unwrap();
        h.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        h.push((name.to_string(), value.to_string()));
    }

    // ---- requests ------------------------------------------------------------------------------------------------

    /// Type `url` in the address bar (no redirect followed).
    pub async fn get(&self, url: impl AsRef<str>) -> Page {
        self.request(Method::GET, url.as_ref(), None, &[], None)
            .await
    }

    /// `get` with extra request headers.
    pub async fn get_with(&self, url: impl AsRef<str>, headers: &[(&str, &str)]) -> Page {
        self.request(Method::GET, url.as_ref(), None, headers, None)
            .await
    }

    /// Post a form (`application/x-www-form-urlencoded`) as a same-origin page would (no redirect followed).
    pub async fn post_form(&self, url: impl AsRef<str>, fields: &[(&str, &str)]) -> Page {
        let f: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.request(Method::POST, url.as_ref(), Some(f), &[], None)
            .await
    }

    /// `get` then [`Browser::follow`].
    pub async fn navigate(&self, url: impl AsRef<str>) -> Page {
        let p = self.get(url).await;
        self.follow(p).await
    }

    /// Follow redirects by hand (at most [`Browser::max_hops`]); returns the first non-redirect answer.
    pub async fn follow(&self, page: Page) -> Page {
        self.follow_n(page, self.max_hops).await
    }

    /// Follow at most `hops` redirects; panics when still redirected after that.
    pub async fn follow_n(&self, mut page: Page, hops: usize) -> Page {
        for _ in 0..hops {
            if !page.is_redirect() {
                return page;
            }
            page = self.follow_once(&page).await;
        }
        assert!(
            !page.is_redirect(),
            "still redirected after {hops} hops: {} -> {:?}",
            page.url,
            page.header("location")
        );
        page
    }

    /// Request the `Location` of one redirect (method kept for 307/308, GET otherwise).
    pub async fn follow_once(&self, page: &Page) -> Page {
        let target = page
            .location()
            .unwrap_or_else(|| panic!("{} {} is not a redirect", page.status, page.url));
        let (method, form) = match page.status {
            307 | 308 => (page.method.clone(), page.form.clone()),
            _ => (Method::GET, None),
        };
        self.request(method, target.as_str(), form, &[], Some(&page.url))
            .await
    }

    /// Submit `form` of `page` with `button` (None: the default button, as pressing Enter).
    pub async fn submit(&self, page: &Page, form: &Form, button: Option<&str>) -> Page {
        let mut fields = form.fields.clone();
        let chosen = match button {
            Some(b) => Some(
                form.button(b)
                    .unwrap_or_else(|| panic!("no button {b:?} in form {form:?}")),
            ),
            None => form.buttons.first().map(|(n, v, _)| (n.clone(), v.clone())),
        };
        if let Some((Some(n), v)) = chosen {
            fields.push((n, v.unwrap_or_default()));
        }
        if form.method == Method::GET {
            let mut u = form.action.clone();
            u.query_pairs_mut().clear().extend_pairs(fields.iter());
            self.request(Method::GET, u.as_str(), None, &[], Some(&page.url))
                .await
        } else {
            self.request(
                Method::POST,
                form.action.as_str(),
                Some(fields),
                &[],
                Some(&page.url),
            )
            .await
        }
    }

    /// Any request. `form` is sent urlencoded; `initiator` is the page or redirect that led here (None: typed
    /// in the address bar) and decides SameSite and `Origin`.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        form: Option<Vec<(String, String)>>,
        headers: &[(&str, &str)],
        initiator: Option<&Url>,
    ) -> Page {
        match self
            .try_request(method.clone(), url, form, headers, initiator)
            .await
        {
            Ok(p) => p,
            Err(e) => panic!("{method} {url} failed: {e}"),
        }
    }

    /// [`Browser::request`] that returns connection errors instead of panicking.
    pub async fn try_request(
        &self,
        method: Method,
        url: &str,
        form: Option<Vec<(String, String)>>,
        headers: &[(&str, &str)],
        initiator: Option<&Url>,
    ) -> Result<Page, reqwest::Error> {
        let url = Url::parse(url).unwrap_or_else(|e| panic!("not a URL {url:?}: {e}"));
        let cross_site = initiator.is_some_and(|i| i.host_str() != url.host_str());
        let mut req = self.client.request(method.clone(), url.clone());
        for (n, v) in self.default_headers.lock().unwrap().iter() {
            req = req.header(n.as_str(), v.as_str());
        }
        let cookie = self.cookie_header(&url, &method, cross_site);
        if !cookie.is_empty() {
            req = req.header("cookie", cookie);
        }
        if method != Method::GET && method != Method::HEAD {
            let origin = initiator.unwrap_or(&url).origin().ascii_serialization();
            if !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("origin"))
            {
                req = req.header("origin", origin);
            }
        }
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        if let Some(f) = &form {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(f.iter())
                .finish();
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
        let resp_headers = resp.headers().clone();
        for sc in resp_headers.get_all("set-cookie") {
            self.store_cookie(&url, &String::from_utf8_lossy(sc.as_bytes()));
        }
        let body = resp.text().await?;
        let page = Page {
            url,
            method,
            status,
            reason,
            headers: resp_headers,
            body,
            form,
        };
        self.history.lock().unwrap().push(page.clone());
        Ok(page)
    }

    /// Every response this browser received so far (status, reason phrase, headers, body), in order.
    pub fn history(&self) -> Vec<Page> {
        self.history.lock().unwrap().clone()
    }

    // ---- the IdP's pages -----------------------------------------------------------------------------------------

    /// Sign in as `login`/`password` at the IdP: starting from `start_url` (an authorization URL, or anything that
    /// redirects to one, e.g. headgate's `/admin/oidc/start`), follow redirects, fill in the login form, accept
    /// the consent page, and return where the IdP finally sends the browser (the client's redirect_uri with
    /// `code` and `state`, or `error`) **without requesting it**. Panics with the page text when the IdP refuses.
    pub async fn idp_login(&self, start_url: &str, login: &str, password: &str) -> Url {
        match self.try_idp_login(start_url, login, password).await {
            Ok(u) => u,
            Err(e) => panic!("sign-in at the IdP as {login:?} failed: {e}"),
        }
    }

    /// [`Browser::idp_login`] that returns the reason instead of panicking (e.g. "the IdP refused the login").
    pub async fn try_idp_login(
        &self,
        start_url: &str,
        login: &str,
        password: &str,
    ) -> Result<Url, String> {
        let mut redirect_uri: Option<Url> = None;
        let mut idp_origin: Option<url::Origin> = None;
        let notice =
            |u: &Url, redirect_uri: &mut Option<Url>, idp_origin: &mut Option<url::Origin>| {
                let q: Vec<(String, String)> = u.query_pairs().into_owned().collect();
                let has = |k: &str| q.iter().any(|(n, _)| n == k);
                if has("client_id") && has("redirect_uri") && has("response_type") {
                    let r = q
                        .iter()
                        .find(|(n, _)| n == "redirect_uri")
                        .unwrap()
                        .1
                        .clone();
                    *redirect_uri = Url::parse(&r).ok();
                    *idp_origin = Some(u.origin());
                }
            };
        let start = Url::parse(start_url).map_err(|e| format!("not a URL {start_url:?}: {e}"))?;
        notice(&start, &mut redirect_uri, &mut idp_origin);
        let mut page = self.get(start_url).await;
        let mut submitted_login = false;
        for _ in 0..30 {
            if page.is_redirect() {
                let target = page.location().unwrap();
                if let Some(r) = &redirect_uri
                    && target.origin() == r.origin()
                    && target.path() == r.path()
                {
                    return Ok(target);
                }
                if let Some(o) = &idp_origin
                    && target.origin() != *o
                {
                    return Ok(target);
                }
                notice(&target, &mut redirect_uri, &mut idp_origin);
                page = self.follow_once(&page).await;
                continue;
            }
            if page.status != 200 {
                return Err(format!(
                    "{} {} answered {}: {}",
                    page.method,
                    page.url,
                    page.status,
                    excerpt(&page)
                ));
            }
            let forms = page.forms();
            if let Some(form) = forms.iter().find(|f| !f.password_fields.is_empty()) {
                if submitted_login {
                    return Err(format!("the IdP refused the login: {}", excerpt(&page)));
                }
                idp_origin.get_or_insert_with(|| page.url.origin());
                let mut form = form.clone();
                let login_field = ["login", "username", "email"]
                    .iter()
                    .find(|n| form.text_fields.iter().any(|t| t == *n))
                    .map(|s| s.to_string())
                    .or_else(|| form.text_fields.first().cloned())
                    .ok_or_else(|| format!("the login form at {} has no text field", page.url))?;
                form.set(&login_field, login);
                let pw = form.password_fields[0].clone();
                form.set(&pw, password);
                submitted_login = true;
                page = self.submit(&page, &form, None).await;
                continue;
            }
            if let Some(form) = forms.first() {
                // The consent page (first button: Allow) or any other intermediate form.
                idp_origin.get_or_insert_with(|| page.url.origin());
                let button = form.button("allow").map(|_| "allow");
                page = self.submit(&page, &form.clone(), button).await;
                continue;
            }
            return Err(format!(
                "{} {} shows no form to go on with: {}",
                page.method,
                page.url,
                excerpt(&page)
            ));
        }
        Err(format!(
            "too many steps at the IdP; last page {} {}",
            page.status, page.url
        ))
    }

    /// Sign out at the IdP: from `start_url` (an end-session URL, or anything that redirects to one), follow
    /// redirects, confirm the sign-out form (`logout=yes`), and return where the IdP finally sends the browser
    /// (the post-logout redirect URI, **not requested**), or the URL of its own "signed out" page.
    pub async fn idp_logout(&self, start_url: &str) -> Url {
        let mut page = self.get(start_url).await;
        let mut idp_origin: Option<url::Origin> = None;
        for _ in 0..20 {
            if page.is_redirect() {
                let target = page.location().unwrap();
                if let Some(o) = &idp_origin
                    && target.origin() != *o
                {
                    return target;
                }
                page = self.follow_once(&page).await;
                continue;
            }
            assert_eq!(
                page.status,
                200,
                "{} {} answered {}: {}",
                page.method,
                page.url,
                page.status,
                excerpt(&page)
            );
            let forms = page.forms();
            let Some(form) = forms.iter().find(|f| f.button("logout").is_some()) else {
                assert!(
                    idp_origin.is_some(),
                    "no sign-out form at {}: {}",
                    page.url,
                    excerpt(&page)
                );
                return page.url;
            };
            idp_origin = Some(page.url.origin());
            page = self.submit(&page, &form.clone(), Some("logout")).await;
        }
        panic!(
            "too many steps while signing out at the IdP; last page {} {}",
            page.status, page.url
        );
    }

    // ---- the jar -------------------------------------------------------------------------------------------------

    /// The value of cookie `name` that would be sent to `url` (ignoring SameSite).
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        let url = Url::parse(url).unwrap();
        self.matching(&url, &Method::GET, false)
            .into_iter()
            .find(|c| c.name == name)
            .map(|c| c.value)
    }

    /// Every live cookie in the jar.
    pub fn cookies(&self) -> Vec<Cookie> {
        let now = SystemTime::now();
        self.jar
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.expires.is_none_or(|e| e > now))
            .cloned()
            .collect()
    }

    /// Cookies refused when they were set, with the reason (e.g. `Secure` over plain http).
    pub fn rejected_cookies(&self) -> Vec<(String, String)> {
        self.rejected.lock().unwrap().clone()
    }

    /// Store a cookie as if `url` had answered with this `Set-Cookie` value.
    pub fn set_cookie(&self, url: &str, set_cookie: &str) {
        self.store_cookie(&Url::parse(url).unwrap(), set_cookie);
    }

    /// Put a cookie in the jar as is (e.g. a tampered value).
    pub fn insert_cookie(&self, cookie: Cookie) {
        let mut jar = self.jar.lock().unwrap();
        jar.retain(|c| {
            !(c.name == cookie.name && c.domain == cookie.domain && c.path == cookie.path)
        });
        jar.push(cookie);
    }

    pub fn remove_cookie(&self, name: &str) {
        self.jar.lock().unwrap().retain(|c| c.name != name);
    }

    /// Close the browser: session cookies go, persistent ones stay.
    pub fn restart(&self) {
        self.jar.lock().unwrap().retain(|c| c.expires.is_some());
    }

    pub fn clear_cookies(&self) {
        self.jar.lock().unwrap().clear();
    }

    fn is_secure(&self, url: &Url) -> bool {
        url.scheme() == "https" || (self.secure_on_loopback && is_loopback(url))
    }

    fn matching(&self, url: &Url, method: &Method, cross_site: bool) -> Vec<Cookie> {
        let host = url.host_str().unwrap_or("").to_ascii_lowercase();
        let now = SystemTime::now();
        let secure = self.is_secure(url);
        let mut jar = self.jar.lock().unwrap();
        jar.retain(|c| c.expires.is_none_or(|e| e > now));
        let mut v: Vec<Cookie> = jar
            .iter()
            .filter(|c| {
                if c.host_only {
                    host == c.domain
                } else {
                    domain_match(&host, &c.domain)
                }
            })
            .filter(|c| path_match(url.path(), &c.path))
            .filter(|c| !c.secure || secure)
            .filter(|c| {
                match c
                    .same_site
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .as_deref()
                {
                    Some("strict") => !cross_site,
                    Some("lax") => !cross_site || *method == Method::GET || *method == Method::HEAD,
                    _ => true,
                }
            })
            .cloned()
            .collect();
        v.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        v
    }

    fn cookie_header(&self, url: &Url, method: &Method, cross_site: bool) -> String {
        self.matching(url, method, cross_site)
            .iter()
            .map(|c| format!("{}={}", c.name, c.value))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn store_cookie(&self, url: &Url, raw: &str) {
        let reject = |why: &str| {
            self.rejected
                .lock()
                .unwrap()
                .push((raw.to_string(), why.to_string()))
        };
        let mut parts = raw.split(';');
        let nv = parts.next().unwrap_or("");
        let Some((name, value)) = nv.split_once('=') else {
            return reject("no name=value");
        };
        let (name, value) = (name.trim().to_string(), value.trim().to_string());
        if name.is_empty() {
            return reject("empty name");
        }
        let host = url.host_str().unwrap_or("").to_ascii_lowercase();
        let mut c = Cookie {
            name,
            value,
            domain: host.clone(),
            host_only: true,
            path: default_path(url),
            expires: None,
            secure: false,
            http_only: false,
            same_site: None,
        };
        let mut max_age: Option<i64> = None;
        let mut expires: Option<SystemTime> = None;
        let mut domain_attr = false;
        for attr in parts {
            let (k, v) = match attr.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim()),
                None => (attr.trim().to_ascii_lowercase(), ""),
            };
            match k.as_str() {
                "max-age" => {
                    if let Ok(n) = v.parse::<i64>() {
                        max_age = Some(n);
                    }
                }
                "expires" => expires = parse_http_date(v),
                "domain" if !v.is_empty() => {
                    let d = v.trim_start_matches('.').to_ascii_lowercase();
                    if !domain_match(&host, &d) {
                        return reject("Domain does not match the host");
                    }
                    c.domain = d;
                    c.host_only = false;
                    domain_attr = true;
                }
                "path" if v.starts_with('/') => c.path = v.to_string(),
                "secure" => c.secure = true,
                "httponly" => c.http_only = true,
                "samesite" => c.same_site = Some(v.to_string()),
                _ => {}
            }
        }
        if c.secure && !self.is_secure(url) {
            return reject("Secure cookie set over plain http");
        }
        if c.name.starts_with("__Secure-") && !c.secure {
            return reject("__Secure- cookie without Secure");
        }
        if c.name.starts_with("__Host-") && (!c.secure || domain_attr || c.path != "/") {
            return reject("__Host- cookie needs Secure, Path=/ and no Domain");
        }
        let now = SystemTime::now();
        c.expires = match (max_age, expires) {
            (Some(n), _) if n <= 0 => Some(SystemTime::UNIX_EPOCH),
            (Some(n), _) => Some(now + Duration::from_secs(n as u64)),
            (None, e) => e,
        };
        let mut jar = self.jar.lock().unwrap();
        jar.retain(|o| !(o.name == c.name && o.domain == c.domain && o.path == c.path));
        if c.expires.is_none_or(|e| e > now) {
            jar.push(c);
        }
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn domain_match(host: &str, domain: &str) -> bool {
    host == domain
        || (host.ends_with(domain)
            && host.as_bytes().get(host.len() - domain.len() - 1) == Some(&b'.')
            && host.parse::<std::net::IpAddr>().is_err())
}

fn path_match(req: &str, cookie: &str) -> bool {
    req == cookie
        || (req.starts_with(cookie)
            && (cookie.ends_with('/') || req.as_bytes().get(cookie.len()) == Some(&b'/')))
}

fn default_path(url: &Url) -> String {
    let p = url.path();
    match p.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => p[..i].to_string(),
    }
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (also with dashes in the date, as some servers write).
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let s = s.trim().replace('-', " ");
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let dt = time::PrimitiveDateTime::parse(&s, &fmt).ok()?;
    Some(SystemTime::from(dt.assume_utc()))
}

fn excerpt(page: &Page) -> String {
    let t = page.visible_text();
    let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
    if t.len() > 600 {
        format!(
            "{}…",
            &t[..t.char_indices().nth(600).map(|(i, _)| i).unwrap_or(t.len())]
        )
    } else {
        t
    }
}

// ---- HTML, read by hand --------------------------------------------------------------------------------------

struct Tag {
    name: String,
    attrs: Vec<(String, String)>,
    start: usize,
    end: usize,
}

impl Tag {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn has(&self, name: &str) -> bool {
        self.attrs.iter().any(|(n, _)| n == name)
    }
}

/// Every start or end tag (`/form` for end tags), in order, with decoded attributes.
fn tags(html: &str) -> Vec<Tag> {
    let b = html.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        if html[i..].starts_with("<!--") {
            i = html[i..].find("-->").map(|j| i + j + 3).unwrap_or(b.len());
            continue;
        }
        let start = i;
        i += 1;
        let name_start = i;
        if i < b.len() && (b[i] == b'/' || b[i] == b'!') {
            i += 1;
        }
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'-') {
            i += 1;
        }
        let name = html[name_start..i].to_ascii_lowercase();
        let mut attrs = Vec::new();
        loop {
            while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
                i += 1;
            }
            if i >= b.len() || b[i] == b'>' {
                i += 1;
                break;
            }
            let an = i;
            while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'>' {
                i += 1;
            }
            let aname = html[an..i].to_ascii_lowercase();
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            let mut value = String::new();
            if i < b.len() && b[i] == b'=' {
                i += 1;
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                    let q = b[i];
                    let vs = i + 1;
                    i = vs;
                    while i < b.len() && b[i] != q {
                        i += 1;
                    }
                    value = decode_entities(&html[vs..i.min(b.len())]);
                    i += 1;
                } else {
                    let vs = i;
                    while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' {
                        i += 1;
                    }
                    value = decode_entities(&html[vs..i]);
                }
            }
            if !aname.is_empty() {
                attrs.push((aname, value));
            }
        }
        let end = i.min(b.len());
        if !name.is_empty() {
            out.push(Tag {
                name,
                attrs,
                start,
                end,
            });
        }
        // Skip script and style contents.
        if out
            .last()
            .is_some_and(|t| t.name == "script" || t.name == "style")
        {
            let close = format!("</{}", out.last().unwrap().name);
            i = html[i.min(b.len())..]
                .to_ascii_lowercase()
                .find(&close)
                .map(|j| i + j)
                .unwrap_or(b.len());
        }
    }
    out
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::new();
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        rest = &rest[p..];
        let Some(semi) = rest.find(';').filter(|&j| j <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let ent = &rest[1..semi];
        let ch = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ if ent.starts_with("#x") || ent.starts_with("#X") => {
                u32::from_str_radix(&ent[2..], 16)
                    .ok()
                    .and_then(char::from_u32)
            }
            _ if ent.starts_with('#') => ent[1..].parse::<u32>().ok().and_then(char::from_u32),
            _ => None,
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn visible_text(html: &str) -> String {
    let mut out = String::new();
    let mut last = 0;
    for t in tags(html) {
        if t.start >= last {
            out.push_str(&decode_entities(&html[last..t.start]));
            out.push(' ');
        }
        last = last.max(t.end);
        if t.name == "script" || t.name == "style" {
            let close = format!("</{}", t.name);
            last = html[t.end..]
                .to_ascii_lowercase()
                .find(&close)
                .map(|j| t.end + j)
                .unwrap_or(html.len());
        }
    }
    if last < html.len() {
        out.push_str(&decode_entities(&html[last..]));
    }
    out
}

fn parse_forms(html: &str, base: &Url) -> Vec<Form> {
    let tags = tags(html);
    let mut forms: Vec<(Form, usize, usize)> = Vec::new(); // form, start tag index, end tag index
    let mut open: Option<(Form, usize)> = None;
    for (idx, t) in tags.iter().enumerate() {
        if t.name == "form" && open.is_none() {
            let action = t
                .attr("action")
                .filter(|a| !a.is_empty())
                .map(|a| base.join(a).unwrap())
                .unwrap_or_else(|| base.clone());
            let method = if t
                .attr("method")
                .is_some_and(|m| m.eq_ignore_ascii_case("post"))
            {
                Method::POST
            } else {
                Method::GET
            };
            open = Some((
                Form {
                    id: t.attr("id").map(str::to_string),
                    action,
                    method,
                    fields: Vec::new(),
                    buttons: Vec::new(),
                    password_fields: Vec::new(),
                    text_fields: Vec::new(),
                },
                idx,
            ));
        } else if t.name == "/form"
            && let Some((f, s)) = open.take()
        {
            forms.push((f, s, idx));
        }
    }
    if let Some((f, s)) = open.take() {
        forms.push((f, s, tags.len()));
    }
    for (idx, t) in tags.iter().enumerate() {
        if t.name != "input" && t.name != "button" {
            continue;
        }
        // Owner: the form named by `form=`, else the enclosing one.
        let owner = match t.attr("form") {
            Some(id) => forms
                .iter()
                .position(|(f, _, _)| f.id.as_deref() == Some(id)),
            None => forms.iter().position(|(_, s, e)| idx > *s && idx < *e),
        };
        let Some(owner) = owner else { continue };
        let form = &mut forms[owner].0;
        if t.has("disabled") {
            continue;
        }
        let name = t.attr("name").filter(|n| !n.is_empty()).map(str::to_string);
        let value = t.attr("value").map(str::to_string);
        if t.name == "button" {
            let ty = t.attr("type").unwrap_or("submit").to_ascii_lowercase();
            if ty == "submit" {
                // The label: text up to </button>.
                let label_end = tags[idx + 1..]
                    .iter()
                    .find(|x| x.name == "/button")
                    .map(|x| x.start)
                    .unwrap_or(t.end);
                let label = visible_text(&html[t.end..label_end.max(t.end)])
                    .trim()
                    .to_string();
                form.buttons.push((name, value, label));
            }
            continue;
        }
        let ty = t.attr("type").unwrap_or("text").to_ascii_lowercase();
        match ty.as_str() {
            "submit" => form
                .buttons
                .push((name, value.clone(), value.unwrap_or_default())),
            "image" | "reset" | "button" | "file" => {}
            "checkbox" | "radio" => {
                if let Some(n) = name
                    && t.has("checked")
                {
                    form.fields.push((n, value.unwrap_or_else(|| "on".into())));
                }
            }
            _ => {
                if let Some(n) = name {
                    if ty == "password" {
                        form.password_fields.push(n.clone());
                    } else if ty != "hidden" {
                        form.text_fields.push(n.clone());
                    }
                    form.fields.push((n, value.unwrap_or_default()));
                }
            }
        }
    }
    forms.into_iter().map(|(f, _, _)| f).collect()
}
