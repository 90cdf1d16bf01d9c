#!/usr/bin/env python3
"""Sign in once, without a browser, through a relying party and the test IdP (tests/idp/provider.mjs).

Usage: oidc_signin.py <protected URL> <login> <password> <cookie name>

Opens the protected URL with a cookie jar, follows the redirects to the IdP, fills its sign-in form and its
consent form, follows the redirects back (the relying party exchanges the code and sets its session
cookie), checks that the protected page answered 200, and prints `<cookie name>=<value>` for the load
generator. Exits non-zero, saying where, when any step fails.
"""

import html.parser
import http.cookiejar
import sys
import urllib.error
import urllib.parse
import urllib.request


class Form(html.parser.HTMLParser):
    """The first form of a page: its action and its fields (hidden inputs and the submit button)."""

    def __init__(self):
        super().__init__()
        self.action = None
        self.fields = {}
        self.buttons = []
        self.done = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self.done:
            return
        if tag == "form" and self.action is None:
            self.action = a.get("action", "")
        elif tag == "input" and self.action is not None and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "button" and self.action is not None and a.get("name"):
            self.buttons.append((a["name"], a.get("value", "")))

    def handle_endtag(self, tag):
        if tag == "form" and self.action is not None:
            self.done = True


def fail(msg):
    print(f"oidc_signin: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 5:
        fail("usage: oidc_signin.py <protected URL> <login> <password> <cookie name>")
    url, login, password, cookie_name = sys.argv[1:]
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    # A browser's navigation: mod_auth_openidc answers anything else that is signed out with 401.
    opener.addheaders = [("Accept", "text/html,application/xhtml+xml"), ("User-Agent", "benches/oidc_signin.py")]

    def fetch(u, data=None):
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        try:
            with opener.open(u, body, timeout=20) as r:
                return r.geturl(), r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            fail(f"{u} answered {e.code}: {e.read()[:300]!r}")
        except urllib.error.URLError as e:
            fail(f"{u}: {e.reason}")

    where, _, page = fetch(url)
    for step in ("login", "consent"):
        form = Form()
        form.feed(page)
        if form.action is None:
            fail(f"expected the IdP's {step} form at {where}, got: {page[:300]!r}")
        data = dict(form.fields)
        if step == "login":
            data["login"] = login
            data["password"] = password
            data["submit"] = "login"
        else:
            data["decision"] = "allow"
        where, _, page = fetch(urllib.parse.urljoin(where, form.action), data)
        if "<form" not in page:
            break
    if not where.startswith(url.split("?")[0]):
        fail(f"the sign-in ended at {where}, not back at {url}: {page[:300]!r}")
    for c in jar:
        if c.name == cookie_name:
            print(f"{c.name}={c.value}")
            return
    fail(f"signed in, but no {cookie_name} cookie was set (cookies: {[c.name for c in jar]})")


if __name__ == "__main__":
    main()
