#!/usr/bin/env python3
"""benches/run's report: reads the raw wrk output and the run's facts, writes latest.md and latest.svg.

Usage: report.py <run dir (benches/.run)> <results dir (benches/results)>

Each figure is the median over the rounds (requests/s, p50, p99); errors are summed over the rounds
(socket errors and non-2xx/3xx answers).
"""

import pathlib
import re
import statistics
import sys

SYSTEMS = [
    ("limit", "limit: minimal hyper server, direct"),
    ("nginx", "nginx proxy_pass (keepalive)"),
    ("headgate", "headgate reverse proxy, signed in"),
    ("verdict", "headgate forward-auth verdict, direct"),
    ("verdict_pg", "headgate forward-auth verdict, PostgreSQL store"),
    ("nginx_auth", "nginx auth_request → headgate → upstream"),
    ("apache", "Apache + mod_auth_openidc, signed in"),
]
COLORS = {
    "limit": "#555555",
    "nginx": "#2b8a3e",
    "headgate": "#1c64d8",
    "verdict": "#7048e8",
    "verdict_pg": "#0c8599",
    "nginx_auth": "#e8590c",
    "apache": "#c92a2a",
}

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def parse_wrk(path):
    t = path.read_text(errors="replace")
    out = {"rps": None, "p50": None, "p99": None, "errors": 0, "requests": 0}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", t):
        out["rps"] = float(m.group(1))
    if m := re.search(r"^\s+50%\s+(\S+)", t, re.M):
        out["p50"] = ms(m.group(1))
    if m := re.search(r"^\s+99%\s+(\S+)", t, re.M):
        out["p99"] = ms(m.group(1))
    if m := re.search(r"(\d+) requests in", t):
        out["requests"] = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t):
        out["errors"] += sum(int(x) for x in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", t):
        out["errors"] += int(m.group(1))
    if out["rps"] is None:
        out["errors"] += 1  # wrk did not run to the end
    return out


def collect(raw, set_name, system, conns):
    """{conns: {rps, p50, p99, errors, rounds}} for one system, medians over the rounds."""
    res = {}
    for c in conns:
        runs = [parse_wrk(p) for p in sorted((raw / set_name / system / f"c{c}").glob("r*.txt"))]
        if not runs:
            continue

        def med(k):
            vals = [r[k] for r in runs if r[k] is not None]
            return statistics.median(vals) if vals else None

        res[c] = {
            "rps": med("rps"),
            "p50": med("p50"),
            "p99": med("p99"),
            "errors": sum(r["errors"] for r in runs),
            "rounds": len(runs),
            "all_rps": [r["rps"] for r in runs if r["rps"] is not None],
        }
    return res


def fmt_rps(v):
    return "–" if v is None else f"{v:,.0f}"


def fmt_ms(v):
    if v is None:
        return "–"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(v):
    return "–" if v is None else f"{v:.2f}×"


def mib(kib):
    return None if kib is None else int(kib) / 1024


def verdict(ok):
    if ok is None:
        return "not measured"
    return "**holds**" if ok else "**misses**"


def svg_chart(data, conns, path):
    """Requests/s by concurrency, one line per system (plain SVG, no dependencies)."""
    w, h = 760, 440
    left, right, top, bottom = 80, 250, 40, 60
    pw, ph = w - left - right, h - top - bottom
    top_rps = max((v["rps"] or 0) for d in data.values() for v in d.values()) or 1
    step = 10 ** (len(str(int(top_rps))) - 1)
    y_max = ((int(top_rps) // step) + 1) * step
    xs = {c: left + (pw * i / max(1, len(conns) - 1)) for i, c in enumerate(conns)}

    def y(v):
        return top + ph - ph * v / y_max

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="15" font-weight="bold">Requests/s by concurrency '
        "(wrk, median of the rounds)</text>",
    ]
    for i in range(6):
        v = y_max * i / 5
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{v:,.0f}</text>')
    for c, x in xs.items():
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#f0f0f0"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 18}" text-anchor="middle">{c}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{h - 18}" text-anchor="middle">connections</text>')
    out.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>')
    ly = top + 10
    for key, label in SYSTEMS:
        d = data.get(key)
        if not d:
            continue
        pts = [(xs[c], y(d[c]["rps"])) for c in conns if c in d and d[c]["rps"] is not None]
        color = COLORS[key]
        if pts:
            out.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="2.5" points="'
                + " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
                + '"/>'
            )
            for px, py in pts:
                out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{color}"/>')
        lx = left + pw + 16
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" stroke="{color}" stroke-width="3"/>')
        words = label.replace("&", "&amp;").replace("<", "&lt;")
        # Two lines when long.
        parts = [words] if len(words) <= 28 else [words[: words.rfind(" ", 0, 28)], words[words.rfind(" ", 0, 28) + 1 :]]
        for j, part in enumerate(parts):
            out.append(f'<text x="{lx + 28}" y="{ly + 4 + 14 * j}">{part}</text>')
        ly += 22 + 14 * (len(parts) - 1) + 8
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def main():
    run, results = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    raw = run / "raw"
    meta = {}
    for line in (run / "meta.txt").read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            meta[k] = v
    conns = [int(c) for c in meta.get("conns", "1 16 64").split()]
    data = {key: collect(raw, "main", key, conns) for key, _ in SYSTEMS}
    data = {k: v for k, v in data.items() if v}
    md = []
    md.append("# headgate benchmark: latest run\n")
    md.append(
        f"Run {meta.get('date', '?')} by `benches/run` on {meta.get('cores', '?')} cores "
        f"({meta.get('cpu', '?')}), {meta.get('memory', '?')}, Linux {meta.get('kernel', '?')}; load generator "
        f"wrk {meta.get('wrk', '?')} (`-t2`, `-t1` at 1 connection) on the same cores. headgate "
        f"{meta.get('headgate', '?')}, nginx {meta.get('nginx', '?')}, Apache {meta.get('apache', '?')} with "
        f"mod_auth_openidc {meta.get('mod_auth_openidc', '?')}"
        + (f", PostgreSQL {meta['postgresql']}" if "postgresql" in meta else "")
        + f". {meta.get('rounds', '?')} rounds of "
        f"{meta.get('duration', '?')} s per figure, alternating the systems; each figure is the median of the "
        "rounds, errors are summed. Every system logs each request (access logs on). Compare ratios from one "
        "run, not absolute numbers across machines.\n"
    )
    if data:
        md.append("## Requests/s and latency\n")
        md.append("| system | connections | requests/s | p50 ms | p99 ms | errors |")
        md.append("|---|---:|---:|---:|---:|---:|")
        for key, label in SYSTEMS:
            for c in conns:
                v = data.get(key, {}).get(c)
                if not v:
                    continue
                md.append(
                    f"| {label} | {c} | {fmt_rps(v['rps'])} | {fmt_ms(v['p50'])} | {fmt_ms(v['p99'])} "
                    f"| {v['errors']} |"
                )
        md.append("")

        def rps(k, c):
            return data.get(k, {}).get(c, {}).get("rps")

        md.append("## Ratios (requests/s, same run)\n")
        md.append("| ratio | " + " | ".join(f"{c} conn." for c in conns) + " |")
        md.append("|---|" + "---:|" * len(conns))
        rows = [
            ("headgate proxy / limit", "headgate", "limit"),
            ("headgate verdict / limit", "verdict", "limit"),
            ("verdict PostgreSQL / redb", "verdict_pg", "verdict"),
            ("headgate proxy / nginx proxy_pass", "headgate", "nginx"),
            ("headgate proxy / Apache + mod_auth_openidc", "headgate", "apache"),
            ("nginx auth_request → headgate / nginx proxy_pass", "nginx_auth", "nginx"),
            ("nginx auth_request → headgate / Apache + mod_auth_openidc", "nginx_auth", "apache"),
        ]
        for label, a, b in rows:
            if a not in data or b not in data:
                continue  # a run of some systems only (--only)
            md.append(f"| {label} | " + " | ".join(fmt_ratio(ratio(rps(a, c), rps(b, c))) for c in conns) + " |")
        md.append("")
        peak = mib(meta.get("headgate_peak_rss_kib"))
        if peak is not None:
            md.append(
                f"headgate's peak RSS over the whole run (proxy, verdicts, nginx auth_request): **{peak:.1f} MiB**; "
                f"ready {meta.get('headgate_ready_ms', '?')} ms after start.\n"
            )
        if "verdict_pg" in data:
            pg_peak = mib(meta.get("headgate_pg_peak_rss_kib"))
            md.append(
                "The PostgreSQL store: one headgate replica (`[store] backend = \"postgres\"`, `pool_size = 8`) on "
                "the same machine, a local PostgreSQL (default settings) over TCP on 127.0.0.1, holding the same "
                "sessions (copied with `headgate store migrate`); the redb headgate is idle while it is measured. "
                "Reads go through headgate's per-replica cache (an entry is used at most 1 s after it was read, "
                "changes announced by `LISTEN/NOTIFY`), so a verdict mostly costs no round trip to PostgreSQL."
                + (f" Its peak RSS: **{pg_peak:.1f} MiB**" if pg_peak is not None else "")
                + (f"; ready {meta['headgate_pg_ready_ms']} ms after start." if "headgate_pg_ready_ms" in meta else ".")
                + "\n"
            )

    c = max(conns)
    targets = []
    if data:
        v = data.get("verdict", {}).get(c, {})
        r1 = ratio(v.get("rps"), data.get("limit", {}).get(c, {}).get("rps"))
        targets.append(
            (f"forward-auth verdict ≥ 0.80 × the limit at {c} connections", fmt_ratio(r1), verdict(None if r1 is None else r1 >= 0.8))
        )
        p99 = v.get("p99")
        targets.append(
            (f"forward-auth verdict p99 ≤ 2 ms at {c} connections", f"{fmt_ms(p99)} ms", verdict(None if p99 is None else p99 <= 2.0))
        )
        r2 = ratio(data.get("headgate", {}).get(c, {}).get("rps"), data.get("nginx", {}).get(c, {}).get("rps"))
        targets.append(
            (f"headgate proxy ≥ 0.90 × nginx proxy_pass at {c} connections", fmt_ratio(r2), verdict(None if r2 is None else r2 >= 0.9))
        )
        r3 = ratio(data.get("headgate", {}).get(c, {}).get("rps"), data.get("apache", {}).get(c, {}).get("rps"))
        targets.append(
            (f"headgate proxy ≥ 5 × Apache + mod_auth_openidc at {c} connections", fmt_ratio(r3), verdict(None if r3 is None else r3 >= 5))
        )

    scale = {}
    for k in ("proxy", "verdict"):
        for s in ("s100", "s100k"):
            d = collect(raw, "scale", f"{k}_{s}", [64])
            if d:
                scale[(k, s)] = d[64]
    if scale:
        n = int(meta.get("scale_sessions", "100000"))
        md.append(f"## Scale: 100 and {n:,} sessions in the store\n")
        md.append(
            "Both stores seeded through the store API, each served by its own headgate; the same load (64 "
            "connections, wrk rotating over 100 sessions' cookies of that store) alternating between them.\n"
        )
        md.append("| | 100 sessions | " + f"{n:,} sessions | ratio |")
        md.append("|---|---:|---:|---:|")
        for k, label in (("proxy", "reverse proxy"), ("verdict", "forward-auth verdict")):
            a, b = scale.get((k, "s100"), {}), scale.get((k, "s100k"), {})
            md.append(f"| {label} requests/s | {fmt_rps(a.get('rps'))} | {fmt_rps(b.get('rps'))} | {fmt_ratio(ratio(b.get('rps'), a.get('rps')))} |")
            md.append(f"| {label} p99 ms | {fmt_ms(a.get('p99'))} | {fmt_ms(b.get('p99'))} | {fmt_ratio(ratio(b.get('p99'), a.get('p99')))} |")
            md.append(f"| {label} errors | {a.get('errors', '–')} | {b.get('errors', '–')} | |")
        sb = {s: meta.get(f"{s}_store_bytes") for s in ("s100", "s100k")}
        md.append(
            "| store file | "
            + " | ".join("–" if sb[s] is None else f"{int(sb[s]) / 1048576:.1f} MiB" for s in ("s100", "s100k"))
            + " | |"
        )
        md.append(
            "| startup to ready (median of 3) | "
            + " | ".join(f"{meta.get(f'{s}_ready_ms', '–')} ms" for s in ("s100", "s100k"))
            + " | |"
        )
        rss = {s: mib(meta.get(f"{s}_peak_rss_kib")) for s in ("s100", "s100k")}
        md.append(
            "| headgate peak RSS under load | "
            + " | ".join("–" if rss[s] is None else f"{rss[s]:.1f} MiB" for s in ("s100", "s100k"))
            + " | |"
        )
        md.append("")
        worst_rps = min(
            (ratio(scale.get((k, "s100k"), {}).get("rps"), scale.get((k, "s100"), {}).get("rps")) or 0)
            for k in ("proxy", "verdict")
        )
        worst_p99 = max(
            (ratio(scale.get((k, "s100k"), {}).get("p99"), scale.get((k, "s100"), {}).get("p99")) or 99)
            for k in ("proxy", "verdict")
        )
        targets.append(
            (f"{n:,} sessions: requests/s ≥ 0.90 × 100 sessions", fmt_ratio(worst_rps), verdict(worst_rps >= 0.9))
        )
        targets.append(
            (f"{n:,} sessions: p99 ≤ 1.10 × 100 sessions", fmt_ratio(worst_p99), verdict(worst_p99 <= 1.1))
        )
        ready = meta.get("s100k_ready_ms")
        targets.append(
            (f"startup to ready with {n:,} sessions ≤ 200 ms", f"{ready} ms", verdict(None if ready is None else int(ready) <= 200))
        )
        r = rss.get("s100k")
        targets.append(
            (f"RSS under load with {n:,} sessions ≤ 64 MiB", "–" if r is None else f"{r:.1f} MiB", verdict(None if r is None else r <= 64))
        )

    if targets:
        md.append("## Targets (issue 8)\n")
        md.append("| target | measured | |")
        md.append("|---|---:|---|")
        for t, m, ok in targets:
            md.append(f"| {t} | {m} | {ok} |")
        md.append("")

    md.append(
        "Reproduce: `benches/run` (about 10 minutes after the release build; `--quick` for one short round, "
        "`--no-scale` or `--scale` for one part). Raw wrk output and every log: `benches/.run/`.\n"
    )
    results.mkdir(parents=True, exist_ok=True)
    (results / "latest.md").write_text("\n".join(md))
    if data:
        svg_chart(data, conns, results / "latest.svg")


if __name__ == "__main__":
    main()
