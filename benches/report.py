#!/usr/bin/env python3
"""Turns the records of benches/proxy.sh into tables: medians, min-max, and ratios against nginx
and HAProxy taken round by round (the rounds are interleaved, so a ratio compares runs made
seconds apart). Prints the tables; with --write FILE, replaces the generated part of FILE (between
the `generated` markers) and keeps whatever was written by hand around it.

Records (tab-separated, one per run):
  sat  case peer round rps requests proxy_cpu_us_per_req errors upstream_cpu_us_per_req log_lines
       [proxy_kernel_cpu_us_per_req]
  lat  case peer round rate achieved_rps p50_us p99_us errors
  mem  variant peer bytes_per_conn open errors alive_sampled rss_before_kib rss_after_kib
"""

import argparse
import statistics
import sys
from collections import defaultdict

from results_md import write_section

PEERS = ["direct", "nginx", "haproxy", "sekisho", "sekisho-log", "sekisho-auth"]
PROXIES = PEERS[1:]
CASES = ["http-12B", "http-16KiB", "tls-12B"]
LABEL = {
    "direct": "direct",
    "nginx": "nginx",
    "haproxy": "HAProxy",
    "sekisho": "sekisho",
    "sekisho-log": "sekisho + access log",
    "sekisho-auth": "sekisho + auth (valid session cookie)",
}
CPU_TARGET = 0.8
AUTH_CPU_TARGET = 1.0  # CPU-µs per request that auth may add over `sekisho` (auth off)
AUTH_CASES = ("http-12B", "tls-12B")
MEM_TARGET = 16 * 1024


def num(v):
    return None if v in ("NA", "") else float(v)


def load(path):
    sat, lat, mem = defaultdict(dict), defaultdict(dict), {}
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if f[0] == "sat":
            sat[(f[1], f[2])][int(f[3])] = {
                "rps": float(f[4]), "requests": int(f[5]), "cpu": num(f[6]),
                "errors": int(f[7]), "ucpu": num(f[8]), "log_lines": num(f[9]),
                "kcpu": num(f[10]) if len(f) > 10 else None,
            }
        elif f[0] == "lat":
            lat[(f[1], f[2])][int(f[3])] = {
                "rate": float(f[4]), "achieved": float(f[5]), "p50": float(f[6]),
                "p99": float(f[7]), "errors": int(f[8]),
            }
        elif f[0] == "mem":
            mem[(f[1], f[2])] = {
                "per_conn": int(f[3]), "open": int(f[4]), "errors": int(f[5]),
                "alive": f[6], "before": int(f[7]), "after": int(f[8]),
            }
    return sat, lat, mem


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values, fmt):
    """`median (min–max)`, or just the value when there is one."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    m = statistics.median(values)
    if len(values) == 1:
        return fmt.format(m)
    return f"{fmt.format(m)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def paired_ratio(runs, peer, ref, key):
    """Median over rounds of peer/ref, each round's runs compared with each other."""
    a, b = runs.get(peer, {}), runs.get(ref, {})
    ratios = [a[r][key] / b[r][key] for r in a if r in b and a[r][key] and b[r][key]]
    return med(ratios)


def fmt_ratio(r):
    return "–" if r is None else f"{r:.2f}"


def tables(sat, lat, mem, machine):
    out = []
    verdicts = []
    for case in CASES:
        runs = {peer: sat.get((case, peer), {}) for peer in PEERS}
        if not any(runs.values()):
            continue
        out.append(f"### {case}" + (" (TLS to the proxy; `direct` is plain HTTP)" if case.startswith("tls") else ""))
        out.append("")
        out.append("| peer | req/s | ×nginx | ×HAProxy | proxy CPU-µs/req | of which kernel | ×nginx "
                   "| ×HAProxy | p50 µs | p99 µs | p99 added over direct µs | errors |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        lruns = {peer: lat.get((case, peer), {}) for peer in PEERS}
        direct_p99 = lruns.get("direct", {})
        for peer in PEERS:
            s, l = runs[peer], lruns[peer]
            if not s and not l:
                continue
            added = [l[r]["p99"] - direct_p99[r]["p99"] for r in l if r in direct_p99]
            errors = sum(x["errors"] for x in s.values()) + sum(x["errors"] for x in l.values())
            row = [
                LABEL[peer],
                spread([x["rps"] for x in s.values()], "{:,.0f}"),
                fmt_ratio(paired_ratio(runs, peer, "nginx", "rps")),
                fmt_ratio(paired_ratio(runs, peer, "haproxy", "rps")),
                spread([x["cpu"] for x in s.values()], "{:.2f}"),
                spread([x["kcpu"] for x in s.values()], "{:.2f}"),
                fmt_ratio(paired_ratio(runs, peer, "nginx", "cpu")) if peer != "direct" else "–",
                fmt_ratio(paired_ratio(runs, peer, "haproxy", "cpu")) if peer != "direct" else "–",
                spread([x["p50"] for x in l.values()], "{:.0f}"),
                spread([x["p99"] for x in l.values()], "{:.0f}"),
                spread(added, "{:.0f}") if peer != "direct" else "–",
                str(errors),
            ]
            out.append("| " + " | ".join(row) + " |")
        rates = sorted({x["rate"] for l in lruns.values() for x in l.values()})
        achieved = [x["achieved"] for l in lruns.values() for x in l.values()]
        if rates:
            out.append("")
            out.append(
                f"Fixed rate for p50/p99: {rates[0]:,.0f} req/s (half of nginx's median peak), "
                f"achieved {min(achieved):,.0f}–{max(achieved):,.0f} req/s."
            )
        logs = runs.get("sekisho-log", {})
        lines = [x["log_lines"] / x["requests"] for x in logs.values() if x["log_lines"] is not None]
        if lines:
            out.append(f"Access-log lines written per request (sekisho + access log): "
                       f"{min(lines):.3f}–{max(lines):.3f}.")
        ucpu = {p: med([x["ucpu"] for x in runs[p].values()]) for p in PEERS if runs[p]}
        out.append("Upstream CPU-µs/req (median): "
                   + ", ".join(f"{LABEL[p]} {v:.2f}" for p, v in ucpu.items() if v is not None) + ".")
        out.append("")

        cpu = paired_ratio(runs, "sekisho", "nginx", "cpu")
        if cpu is not None:
            verdicts.append((f"CPU-µs/req ≤ {CPU_TARGET}× nginx ({case})",
                             f"{cpu:.2f}× nginx", cpu <= CPU_TARGET))
        sk = [lruns["sekisho"][r]["p99"] - direct_p99[r]["p99"] for r in lruns.get("sekisho", {}) if r in direct_p99]
        ng = [lruns["nginx"][r]["p99"] - direct_p99[r]["p99"] for r in lruns.get("nginx", {}) if r in direct_p99]
        if sk and ng:
            verdicts.append((f"p99 added over direct ≤ nginx's ({case})",
                             f"{med(sk):.0f} µs vs nginx {med(ng):.0f} µs", med(sk) <= med(ng)))

        # Auth on, valid session cookie, against auth off. A run with errors (the cookie refused,
        # say) measured error pages, so it cannot meet a target.
        auth = runs.get("sekisho-auth", {})
        auth_errors = sum(x["errors"] for x in auth.values())
        auth_errors += sum(x["errors"] for x in lruns.get("sekisho-auth", {}).values())
        note = f" ({auth_errors} errors)" if auth_errors else ""
        a_cpu = med([x["cpu"] for x in auth.values()])
        s_cpu = med([x["cpu"] for x in runs.get("sekisho", {}).values()])
        if case in AUTH_CASES and a_cpu is not None and s_cpu is not None:
            added = a_cpu - s_cpu
            verdicts.append((f"auth adds ≤ {AUTH_CPU_TARGET:g} CPU-µs/req ({case})",
                             f"{added:+.2f} µs ({a_cpu:.2f} vs {s_cpu:.2f}){note}",
                             added <= AUTH_CPU_TARGET and not auth_errors))
        cpu = paired_ratio(runs, "sekisho-auth", "nginx", "cpu")
        if case == "http-12B" and cpu is not None:
            verdicts.append((f"CPU-µs/req ≤ {CPU_TARGET}× nginx with auth on ({case})",
                             f"{cpu:.2f}× nginx{note}", cpu <= CPU_TARGET and not auth_errors))

    if mem:
        out.append("### Memory per idle keep-alive client connection")
        out.append("")
        out.append("| variant | peer | bytes/connection | ×nginx | ×HAProxy | connections open | "
                   "still open (sampled) | RSS before → after (MiB) |")
        out.append("|---|---|---|---|---|---|---|---|")
        for variant in ("http", "tls"):
            for peer in PROXIES:
                m = mem.get((variant, peer))
                if not m:
                    continue
                ng, hp = mem.get((variant, "nginx")), mem.get((variant, "haproxy"))
                out.append("| " + " | ".join([
                    variant, LABEL[peer], f"{m['per_conn']:,}",
                    fmt_ratio(m["per_conn"] / ng["per_conn"]) if ng and ng["per_conn"] > 0 else "–",
                    fmt_ratio(m["per_conn"] / hp["per_conn"]) if hp and hp["per_conn"] > 0 else "–",
                    f"{m['open']:,}" + (f" ({m['errors']} failed)" if m["errors"] else ""),
                    m["alive"], f"{m['before'] / 1024:.1f} → {m['after'] / 1024:.1f}",
                ]) + " |")
            m = mem.get((variant, "sekisho"))
            if m:
                verdicts.append((f"memory per idle connection ≤ 16 KiB ({variant})",
                                 f"{m['per_conn'] / 1024:.1f} KiB", m["per_conn"] <= MEM_TARGET))
        out.append("")

    head = ["### Targets (sekisho with the access log off; auth rows: auth on, valid session cookie)", "",
            "| target | sekisho | met |", "|---|---|---|"]
    head += [f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in verdicts]
    return head + [""] + out


def machine_block(machine):
    keys = [
        ("date", "Date"), ("command", "Command"), ("nproc", "nproc"), ("cpu", "CPU"),
        ("kernel", "Kernel"), ("memory", "Memory (free -h)"), ("sekisho", "sekisho-proxy"),
        ("rustc", "rustc"), ("nginx", "nginx"), ("haproxy", "HAProxy"), ("wrk", "wrk"),
        ("oha", "oha"), ("openssl", "OpenSSL"), ("python", "Python (idle client)"),
    ]
    lines = [f"- {label}: `{machine[k]}`" for k, label in keys if k in machine]
    lines.append(
        f"- Runs: {machine.get('rounds')} interleaved rounds (peer order rotated each round), "
        f"{machine.get('duration')} s per run, {machine.get('conns')} connections, nice {machine.get('nice', 0)}, "
        f"{machine.get('idle_conns')} plain / {machine.get('idle_tls_conns')} TLS idle connections per proxy; whole run "
        f"{int(machine.get('elapsed', 0)) // 60} min {int(machine.get('elapsed', 0)) % 60} s."
    )
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results")
    p.add_argument("machine")
    p.add_argument("--write", metavar="FILE")
    args = p.parse_args()
    machine = dict(line.rstrip("\n").split("=", 1) for line in open(args.machine) if "=" in line)
    sat, lat, mem = load(args.results)
    body = tables(sat, lat, mem, machine)
    print("\n".join(body))
    if not args.write:
        return 0
    write_section(args.write, "benches/proxy.sh", ["", "## Latest run", ""] + machine_block(machine)
                  + [""] + body, title="Reverse-proxy benchmark results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
