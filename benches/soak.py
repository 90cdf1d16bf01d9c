#!/usr/bin/env python3
"""The load and the measurements of benches/soak (started by it, after the stack is up; not run by hand).

Mixed traffic against one headgate, at a fixed number of concurrent connections, for a warm-up and then the
soak proper:

  proxy       wrk, reverse-proxy requests with valid sessions (cookies rotated per request)
  verdict     wrk, forward-auth verdicts (/_headgate/auth/nginx with nginx's original-request headers)
  api_key     API-key sign-ins against the fake Headscale: login page, form post, a proxied request with the
              new session, logout
  oidc        OIDC sign-ins at the test IdP (login and consent forms), a proxied request, logout; paced under
              /admin/oidc/start's per-client limit (30 a minute)
  role        role changes through the admin socket: `headgate users set-role` (viewer <-> admin)

headgate's RSS (/proc/PID/status VmRSS) and open file descriptors (/proc/PID/fd) are sampled every second.
The baseline is taken idle after the warm-up, the end figure idle after the soak (after the same pause), and
the maximum over the whole soak. Writes the report (markdown) and exits non-zero if a criterion fails.
"""

import argparse
import html.parser
import http.client
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter

# ----- arguments ---------------------------------------------------------------------------------------------------

ap = argparse.ArgumentParser()
ap.add_argument("--base", required=True, help="headgate's base URL")
ap.add_argument("--fa-host", required=True, help="the forward-auth host (host:port) the verdicts name")
ap.add_argument("--pid", type=int, required=True)
ap.add_argument("--headgate", required=True, help="the headgate binary (for the CLI)")
ap.add_argument("--config", required=True)
ap.add_argument("--cookies", required=True, help="seeded session cookies, one a line")
ap.add_argument("--api-key", required=True, help="a Headscale API key the fake Headscale accepts")
ap.add_argument("--people", type=int, default=10, help="seeded people person0..N-1@example.com")
ap.add_argument("--warmup", type=int, default=10)
ap.add_argument("--duration", type=int, default=60)
ap.add_argument("--connections", type=int, default=200)
ap.add_argument("--log", required=True, help="headgate's log file")
ap.add_argument("--run", required=True, help="the run directory (raw output)")
ap.add_argument("--out", required=True, help="the report to write")
ap.add_argument("--meta", default="", help="key=value lines describing the machine")
ap.add_argument("--rss-tolerance", type=float, default=0.10)
ap.add_argument("--outbound-ports", default="", help="ports of the upstream, Headscale and the IdP (comma-separated)")
args = ap.parse_args()

BASE = args.base.rstrip("/")
HG = urllib.parse.urlsplit(BASE)
HG_NETLOC = HG.netloc

# Connections per kind: wrk's share is what is left after the sign-in and role-change workers.
API_KEY_WORKERS = 6
OIDC_WORKERS = 1
ROLE_WORKERS = 1
rest = args.connections - API_KEY_WORKERS - OIDC_WORKERS - ROLE_WORKERS
PROXY_CONNS = rest * 6 // 10
VERDICT_CONNS = rest - PROXY_CONNS
# /admin/oidc/start allows 30 starts per client address a minute: one sign-in every 2.5 s stays under it.
OIDC_PACE = 2.5

# ----- counting ------------------------------------------------------------------------------------------------------

lock = threading.Lock()
# kind -> Counter of headgate's status codes (or "error: …" for a failed connection)
statuses = {}
# kind -> completed operations (a whole sign-in counts once; its requests count in statuses)
operations = Counter()
failures = []  # (kind, message), the first few of each kind are kept


def count(kind, status):
    with lock:
        statuses.setdefault(kind, Counter())[status] += 1


def done(kind):
    with lock:
        operations[kind] += 1


def fail(kind, msg):
    with lock:
        operations[kind + " failed"] += 1
        if sum(1 for k, _ in failures if k == kind) < 5:
            failures.append((kind, msg))


# ----- a small HTTP client: no automatic redirects, every hop counted --------------------------------------------------


class Form(html.parser.HTMLParser):
    """The first form of a page: its action and its fields."""

    def __init__(self):
        super().__init__()
        self.action = None
        self.fields = {}
        self.closed = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self.closed:
            return
        if tag == "form" and self.action is None:
            self.action = a.get("action", "")
        elif tag == "input" and self.action is not None and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")

    def handle_endtag(self, tag):
        if tag == "form" and self.action is not None:
            self.closed = True


def first_form(page):
    f = Form()
    f.feed(page)
    return f


class Browser:
    """Cookies per host (enough for loopback services on distinct ports), one connection per request."""

    def __init__(self, kind):
        self.kind = kind
        self.jar = {}  # netloc -> {name: value}

    def request(self, method, url, data=None, headers=None):
        u = urllib.parse.urlsplit(url)
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        h = {"Accept": "text/html", "User-Agent": "benches/soak"}
        h.update(headers or {})
        cookies = self.jar.get(u.netloc, {})
        if cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        body = None
        if data is not None:
            body = urllib.parse.urlencode(data).encode()
            h["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        try:
            conn.request(method, path, body, h)
            r = conn.getresponse()
            text = r.read().decode("utf-8", "replace")
            status = r.status
            set_cookies = r.headers.get_all("Set-Cookie") or []
            location = r.headers.get("Location")
        except OSError as e:
            if u.netloc == HG_NETLOC:
                count(self.kind, f"error: {type(e).__name__}")
            raise
        finally:
            conn.close()
        if u.netloc == HG_NETLOC:
            count(self.kind, status)
        for sc in set_cookies:
            nv = sc.split(";", 1)[0]
            name, _, value = nv.partition("=")
            attrs = sc.lower()
            jar = self.jar.setdefault(u.netloc, {})
            if "max-age=0" in attrs or "expires=thu, 01 jan 1970" in attrs or value == "":
                jar.pop(name.strip(), None)
            else:
                jar[name.strip()] = value.strip()
        return status, location, text

    def follow(self, method, url, data=None, headers=None, hops=12):
        """Request, then follow redirects (as a browser: GET after 302/303). Returns the final URL, status, page."""
        for _ in range(hops):
            status, location, page = self.request(method, url, data, headers)
            if status in (301, 302, 303, 307, 308) and location:
                url = urllib.parse.urljoin(url, location)
                if status in (302, 303):
                    method, data = "GET", None
                headers = None
                continue
            return url, status, page
        raise RuntimeError(f"too many redirects, at {url}")


def logout(b):
    status, _, _ = b.request("POST", BASE + "/admin/logout", {}, {"Origin": BASE})
    if status not in (302, 303):
        raise RuntimeError(f"logout answered {status}")


# ----- the workers ---------------------------------------------------------------------------------------------------

stop_at = 0.0


def api_key_worker():
    while time.monotonic() < stop_at:
        b = Browser("api_key")
        try:
            status, _, page = b.request("GET", BASE + "/admin/login?rd=/app/hello")
            if status != 200:
                raise RuntimeError(f"login page answered {status}")
            form = first_form(page)
            if "api_key" not in form.fields and "csrf" not in form.fields:
                raise RuntimeError("no API-key form on the login page")
            data = dict(form.fields)
            data["api_key"] = args.api_key
            status, location, page = b.request(
                "POST", urllib.parse.urljoin(BASE + "/admin/login", form.action), data, {"Origin": BASE}
            )
            if status not in (302, 303):
                raise RuntimeError(f"API-key sign-in answered {status}: {page[:200]!r}")
            status, _, _ = b.request("GET", BASE + "/app/hello")
            if status != 200:
                raise RuntimeError(f"/app/hello with the new session answered {status}")
            logout(b)
            done("api_key")
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the soak
            fail("api_key", str(e))
            time.sleep(0.2)


def oidc_worker(n):
    i = n
    while time.monotonic() < stop_at:
        started = time.monotonic()
        person = i % args.people
        i += OIDC_WORKERS
        b = Browser("oidc")
        try:
            where, status, page = b.follow("GET", BASE + "/admin/oidc/start?rd=%2Fapp%2Fhello")
            for step in ("login", "consent"):
                form = first_form(page)
                if form.action is None:
                    break
                data = dict(form.fields)
                if step == "login":
                    data.update(login=f"p{person}", password=f"p{person}-password", submit="login")
                else:
                    data["decision"] = "allow"
                where, status, page = b.follow("POST", urllib.parse.urljoin(where, form.action), data)
            if status != 200 or not where.startswith(BASE + "/app/hello"):
                raise RuntimeError(f"the sign-in ended at {where} with {status}: {page[:200]!r}")
            logout(b)
            done("oidc")
        except Exception as e:  # noqa: BLE001
            fail("oidc", str(e))
        time.sleep(max(0.0, OIDC_PACE - (time.monotonic() - started)))


def role_worker():
    rng = random.Random(7)
    while time.monotonic() < stop_at:
        person = rng.randrange(args.people)
        role = rng.choice(["viewer", "admin", "auditor", "network_admin", "member"])
        p = subprocess.run(
            [args.headgate, "--config", args.config, "users", "set-role", f"person{person}@example.com", role],
            capture_output=True,
            text=True,
        )
        if p.returncode == 0:
            done("role")
        else:
            fail("role", f"set-role exited {p.returncode}: {(p.stderr or p.stdout).strip()[:200]}")
        time.sleep(0.2)


# ----- wrk -----------------------------------------------------------------------------------------------------------

LUA = r"""
-- Rotates the seeded session cookies, keeps the -H headers, counts status codes per thread.
local cookies = {}
for line in io.lines(os.getenv("SOAK_COOKIES")) do
  if #line > 0 then cookies[#cookies + 1] = line end
end
local threads = {}
function setup(thread) threads[#threads + 1] = thread end
local i = 0
function init(args) i = math.random(#cookies) end
counts = {}
function request()
  i = i % #cookies + 1
  local h = {}
  for k, v in pairs(wrk.headers) do h[k] = v end
  h["Cookie"] = cookies[i]
  return wrk.format(nil, nil, h)
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write(string.format("STATUS %d %d\n", k, v)) end
  local e = summary.errors
  io.write(string.format("ERRORS connect=%d read=%d write=%d timeout=%d status=%d\n",
    e.connect, e.read, e.write, e.timeout, e.status))
  io.write(string.format("REQUESTS %d\n", summary.requests))
end
"""


def start_wrk(kind, conns, seconds, url, headers):
    lua = os.path.join(args.run, "soak.lua")
    with open(lua, "w") as f:
        f.write(LUA)
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", lua]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    out = open(os.path.join(args.run, f"wrk-{kind}.txt"), "w")
    env = dict(os.environ, SOAK_COOKIES=args.cookies)
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env), out.name


def collect_wrk(kind, proc, path):
    proc.wait()
    text = open(path).read()
    found = False
    for m in re.finditer(r"^STATUS (\d+) (\d+)$", text, re.M):
        with lock:
            statuses.setdefault(kind, Counter())[int(m.group(1))] += int(m.group(2))
        found = True
    m = re.search(r"^ERRORS connect=(\d+) read=(\d+) write=(\d+) timeout=(\d+)", text, re.M)
    if m:
        for name, v in zip(("connect", "read", "write", "timeout"), m.groups()):
            if int(v):
                with lock:
                    statuses.setdefault(kind, Counter())[f"error: {name}"] += int(v)
    if not found:
        fail(kind, f"wrk printed no status counts: {text[-400:]!r}")
    m = re.search(r"^REQUESTS (\d+)$", text, re.M)
    if m:
        with lock:
            operations[kind] += int(m.group(1))


# ----- sampling ------------------------------------------------------------------------------------------------------


def rss_kib():
    with open(f"/proc/{args.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


OUTBOUND_PORTS = {int(p) for p in args.outbound_ports.split(",") if p}


def tcp_remote_ports():
    """socket inode -> remote port, for every TCP socket on the machine."""
    ports = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    ports[cols[9]] = int(cols[2].rsplit(":", 1)[1], 16)
        except OSError:
            pass
    return ports


def fds():
    """(all open fds, those that are headgate's outbound keep-alive connections to the upstream, Headscale or the
    IdP: pooled, idle ones close after the pool's idle timeout, 90 s)."""
    d = f"/proc/{args.pid}/fd"
    links = []
    for name in os.listdir(d):
        try:
            links.append(os.readlink(os.path.join(d, name)))
        except OSError:
            pass
    remote = tcp_remote_ports()
    pooled = 0
    for link in links:
        if link.startswith("socket:["):
            if remote.get(link[8:-1]) in OUTBOUND_PORTS:
                pooled += 1
    return len(links), pooled


samples = []  # (seconds since the soak began, phase, rss KiB, fds)
t_zero = time.monotonic()


def sampler(phase, until):
    while time.monotonic() < until:
        try:
            samples.append((round(time.monotonic() - t_zero, 1), phase, rss_kib(), fds()))
        except (OSError, RuntimeError):
            return
        time.sleep(1)


def alive():
    return os.path.exists(f"/proc/{args.pid}")


# ----- one phase of mixed traffic ----------------------------------------------------------------------------------


def phase(name, seconds):
    global stop_at
    stop_at = time.monotonic() + seconds
    verdict_headers = [
        "X-Original-URI: /app/hello",
        f"X-Original-URL: http://{args.fa_host}/app/hello",
        "X-Original-Method: GET",
        f"X-Forwarded-Host: {args.fa_host}",
        "X-Forwarded-Proto: http",
        "X-Forwarded-For: 127.0.0.1",
    ]
    wrks = [
        ("proxy",) + start_wrk(f"proxy-{name}", PROXY_CONNS, seconds, BASE + "/app/hello", []),
        ("verdict",)
        + start_wrk(f"verdict-{name}", VERDICT_CONNS, seconds, BASE + "/_headgate/auth/nginx", verdict_headers),
    ]
    threads = [threading.Thread(target=api_key_worker) for _ in range(API_KEY_WORKERS)]
    threads += [threading.Thread(target=oidc_worker, args=(n,)) for n in range(OIDC_WORKERS)]
    threads += [threading.Thread(target=role_worker) for _ in range(ROLE_WORKERS)]
    threads.append(threading.Thread(target=sampler, args=(name, stop_at)))
    for t in threads:
        t.start()
    for kind, proc, path in wrks:
        collect_wrk(kind, proc, path)
    for t in threads:
        t.join()


def idle_sample(label, pause=3):
    time.sleep(pause)
    s = (round(time.monotonic() - t_zero, 1), label, rss_kib(), fds())
    samples.append(s)
    return s


def snapshot():
    with lock:
        return {k: Counter(v) for k, v in statuses.items()}, Counter(operations)


print(
    f"soak: {args.connections} connections: proxy {PROXY_CONNS}, verdict {VERDICT_CONNS}, API-key sign-ins "
    f"{API_KEY_WORKERS}, OIDC sign-ins {OIDC_WORKERS}, role changes {ROLE_WORKERS}",
    file=sys.stderr,
)
start_idle = idle_sample("start", pause=0)
print(f"soak: warm-up {args.warmup}s", file=sys.stderr)
phase("warmup", args.warmup)
warm = idle_sample("after warm-up")
warm_statuses, warm_ops = snapshot()
with lock:
    statuses.clear()
    operations.clear()
print(
    f"soak: after warm-up RSS {warm[2] / 1024:.1f} MiB, {warm[3][0]} fds ({warm[3][1]} pooled outbound); "
    f"soaking {args.duration}s",
    file=sys.stderr,
)
t_soak = time.monotonic()
phase("soak", args.duration)
soak_seconds = time.monotonic() - t_soak
loaded = [s for s in samples if s[1] == "soak"]
ok_alive = alive()
end = idle_sample("end") if ok_alive else None
soak_statuses, soak_ops = snapshot()

# ----- the verdicts ----------------------------------------------------------------------------------------------------

with open(args.log, errors="replace") as f:
    log_text = f.read()
panics = len(re.findall(r"panicked", log_text))


def fivexx(st):
    return sum(n for kinds in st.values() for code, n in kinds.items() if isinstance(code, int) and code >= 500)


def conn_errors(st):
    return sum(n for kinds in st.values() for code, n in kinds.items() if isinstance(code, str))


five_soak = fivexx(soak_statuses)
five_warm = fivexx(warm_statuses)
rss_max = max([s[2] for s in loaded] + [warm[2]])
fd_max = max([s[3][0] for s in loaded] + [warm[3][0]])
pooled_max = max([s[3][1] for s in loaded] + [warm[3][1]])


def own(s):
    """Open fds other than pooled outbound keep-alive connections: listeners, clients, files, the store."""
    return s[3][0] - s[3][1]


crit = []
crit.append(("zero 5xx (warm-up and soak)", f"{five_warm + five_soak}", five_warm + five_soak == 0))
crit.append(("zero panics in the log", f"{panics}", panics == 0))
crit.append(("headgate still running", "yes" if ok_alive else "no", ok_alive))
if end:
    # No growth: the same idle pause after the warm-up and after the soak, so the same connections are gone.
    # Idle keep-alive connections to the upstream, Headscale and the IdP stay pooled for 90 s (at most 256 per
    # host) and their number follows the last burst's concurrency: they are counted apart, and must stay
    # within the pools' bound.
    crit.append(
        (
            "no file-descriptor growth: idle after the soak ≤ idle after warm-up (all but pooled outbound connections)",
            f"{own(warm)} → {own(end)}",
            own(end) <= own(warm),
        )
    )
    crit.append(
        (
            "pooled outbound keep-alive connections within the pools' bound (3 hosts × 256)",
            f"{warm[3][1]} → {end[3][1]} (max {pooled_max})",
            pooled_max <= 3 * 256,
        )
    )
    pct = (end[2] - warm[2]) * 100 / warm[2]
    crit.append(
        (
            f"RSS within {args.rss_tolerance * 100:.0f} % of its value after warm-up",
            f"{warm[2] / 1024:.1f} → {end[2] / 1024:.1f} MiB ({pct:+.1f} %)",
            abs(end[2] - warm[2]) <= args.rss_tolerance * warm[2],
        )
    )
failed_ops = sum(n for k, n in soak_ops.items() if k.endswith(" failed"))
crit.append(("every sign-in and role change completed", f"{failed_ops} failed", failed_ops == 0))
passed = all(ok for _, _, ok in crit)

# ----- the report ------------------------------------------------------------------------------------------------------

meta = dict(line.split("=", 1) for line in args.meta.splitlines() if "=" in line)
KIND_TEXT = {
    "proxy": "reverse proxy, signed in (wrk, cookies rotated)",
    "verdict": "forward-auth verdict `/_headgate/auth/nginx` (wrk)",
    "api_key": "API-key sign-in: login page, post, proxied request, logout",
    "oidc": "OIDC sign-in at the test IdP, proxied request, logout",
    "role": "role change `headgate users set-role` (admin socket)",
}
KIND_CONNS = {
    "proxy": PROXY_CONNS,
    "verdict": VERDICT_CONNS,
    "api_key": API_KEY_WORKERS,
    "oidc": OIDC_WORKERS,
    "role": ROLE_WORKERS,
}
lines = []
w = lines.append
w("# Soak run")
w("")
w(
    f"`benches/soak`, {meta.get('date', '?')}, on {meta.get('cores', '?')} cores ({meta.get('cpu', '?')}), "
    f"{meta.get('memory', '?')}, Linux {meta.get('kernel', '?')}; headgate {meta.get('headgate', '?')} ({meta.get('profile', 'release')} build), "
    f"wrk {meta.get('wrk', '?')} on the same cores. {args.connections} concurrent connections of mixed traffic: "
    f"{args.warmup} s warm-up, then {soak_seconds:.0f} s of soak. Store: redb, {meta.get('sessions', '?')} seeded sessions "
    f"of {args.people} people."
)
w("")
w("| criterion | measured | |")
w("|---|---:|---|")
for name, value, ok in crit:
    w(f"| {name} | {value} | {'**holds**' if ok else '**FAILS**'} |")
w("")
w(f"**{'PASS' if passed else 'FAIL'}**")
w("")
w("## Traffic during the soak")
w("")
w("| kind | connections | completed | per second | headgate's answers |")
w("|---|---:|---:|---:|---|")
for k in ("proxy", "verdict", "api_key", "oidc", "role"):
    st = soak_statuses.get(k, Counter())
    answers = ", ".join(f"{code}: {n:,}" for code, n in sorted(st.items(), key=lambda kv: str(kv[0]))) or "—"
    if k == "role":
        answers = "(admin socket, not HTTP)"
    nfail = soak_ops.get(k + " failed", 0)
    completed = f"{soak_ops.get(k, 0):,}" + (f" ({nfail} failed)" if nfail else "")
    w(f"| {KIND_TEXT[k]} | {KIND_CONNS[k]} | {completed} | {soak_ops.get(k, 0) / soak_seconds:,.1f} | {answers} |")
total_http = sum(sum(v.values()) for v in soak_statuses.values())
w("")
w(
    f"HTTP requests to headgate during the soak: {total_http:,}; 5xx: {five_soak}; connection errors: "
    f"{conn_errors(soak_statuses)}. During the warm-up: {sum(sum(v.values()) for v in warm_statuses.values()):,} "
    f"requests, 5xx: {five_warm}. Status codes by kind:"
)
w("")
all_codes = Counter()
for v in soak_statuses.values():
    all_codes.update(v)
w("| status | requests |")
w("|---|---:|")
for code, n in sorted(all_codes.items(), key=lambda kv: str(kv[0])):
    w(f"| {code} | {n:,} |")
w("")
w("The sign-in flows' non-2xx answers are their redirects (302/303: login post, IdP round trip, logout).")
if failures:
    w("")
    w("First failures:")
    w("")
    for k, msg in failures:
        w(f"- {k}: `{msg}`")
w("")
w("## headgate's process")
w("")
w("| | RSS MiB | open fds | of which pooled outbound connections | the others |")
w("|---|---:|---:|---:|---:|")
for label, smp in (("at start (idle)", start_idle), ("after warm-up (idle, 3 s after the load)", warm)):
    w(f"| {label} | {smp[2] / 1024:.1f} | {smp[3][0]} | {smp[3][1]} | {own(smp)} |")
w(f"| maximum during the soak | {rss_max / 1024:.1f} | {fd_max} | {pooled_max} | {max(own(x) for x in loaded)} |")
if end:
    w(f"| end (idle, 3 s after the load) | {end[2] / 1024:.1f} | {end[3][0]} | {end[3][1]} | {own(end)} |")
w("")
if loaded:
    w(
        "RSS (MiB) every 10 s of the soak: "
        + ", ".join(f"{s[2] / 1024:.1f}" for s in loaded[::10])
        + "; open fds: "
        + ", ".join(str(s[3][0]) for s in loaded[::10])
        + "."
    )
w("")
w(f"Panics in headgate's log: {panics}. Raw output (wrk, samples, headgate's log) in `benches/.run/soak/`.")

report = "\n".join(lines) + "\n"
with open(args.out, "w") as f:
    f.write(report)
with open(os.path.join(args.run, "samples.json"), "w") as f:
    json.dump(samples, f)
print(report)
sys.exit(0 if passed else 1)
