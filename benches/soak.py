#!/usr/bin/env python3
"""The load, the sampler and the report of benches/soak.sh.

Against a running sekisho-proxy (with an nginx upstream at `/`, a WebSocket echo upstream at
`/ws`, devidp as its OpenID provider and a `sekisho tunnel --listen` CLI in front of an echo
target), for --duration seconds:

- HTTP: `oha` at a fixed rate (--rate, or half of the peak measured first over --peak-seconds
  without a rate) with a valid session cookie, in runs of --chunk seconds (oha keeps every
  result in memory until it exits; a request cut off by the end of a run is not an error).
- Logins, one every --login-every seconds: a browser's full flow with a fresh cookie jar: the
  protected page, 302 to the auth host, 302/303 to devidp, its login form posted, the callback,
  the handoff on the app host, and the page answering 200 with the upstream's body.
- WebSockets, --ws-per-second: an upgrade to `/ws` with the latest login's cookie (the dev
  cookie before the first), --ws-messages text messages echoed (--ws-gap apart), a close.
- Tunnel streams, --tunnels-per-second: a connection to the CLI's port, 4 round trips of 1 KiB,
  a half-close answered by the end of the stream.
- Every --interval seconds: VmRSS, open descriptors and CPU time of each --pid, the counts so
  far, whether a compiler was running. A --pid that exits ends the run as an error.

Then prints the report: per-kind totals and errors (the first error text of each kind), RSS and
descriptors at start, after --warmup and at the end, and their least-squares slopes over the
samples after the warm-up; with --write FILE, replaces the soak section of FILE. Exit status: 0
every goal met (a run under 30 min: no errors), 1 one missed, 3 the run could not start (the peak measurement failed).
With --check it does one login, one WebSocket session and one tunnel stream and exits (1 on a
failure). Only 127.0.0.1 is dialled; every step has a timeout and every loop a bound.
"""

import argparse
import base64
import hashlib
import html
import http.client
import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

from results_md import write_section

from procfs import tree_pids

TIMEOUT = 10.0
KINDS = ["http", "login", "websocket", "tunnel"]
RSS_FLAT_KIB_PER_H = 1024
FDS_FLAT_PER_H = 10
SHORTEST_JUDGED = 1800  # seconds: shorter runs' slopes are shown, not judged
COMPILERS = {"rustc", "cc1", "cc1plus", "cc", "ld", "ld.bfd", "ld.gold", "lld", "collect2",
             "compile", "link", "asm", "cgo"}


class Failure(Exception):
    pass


class Tally:
    """Successes and errors per kind, and the first error text of each (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ok = dict.fromkeys(KINDS, 0)
        self.err = dict.fromkeys(KINDS, 0)
        self.first = {}

    def add(self, kind, ok=0, err=0, text=None):
        with self.lock:
            self.ok[kind] = self.ok.get(kind, 0) + ok
            self.err[kind] = self.err.get(kind, 0) + err
            if err and text and kind not in self.first:
                self.first[kind] = text
                log(f"first {kind} error: {text}")

    def snapshot(self):
        with self.lock:
            return dict(self.ok), dict(self.err)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------------------------
def tls_socket(ctx, host, port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(sock, server_hostname=host)


def fetch(ctx, url, jar, method="GET", form=None):
    """One request as a browser navigating would send it, cookies from and into JAR (per host,
    paths ignored). Returns (status, headers, body). Only loopback is dialled."""
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port or 443, context=ctx, timeout=TIMEOUT)
        conn.sock = tls_socket(ctx, u.hostname, u.port or 443)
    elif u.hostname == "127.0.0.1":
        conn = http.client.HTTPConnection("127.0.0.1", u.port or 80, timeout=TIMEOUT)
    else:
        raise Failure(f"refusing to dial {url}")
    headers = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate", "User-Agent": "sekisho-soak"}
    cookies = jar.setdefault(u.hostname, {})
    if cookies:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, (u.path or "/") + (f"?{u.query}" if u.query else ""), body, headers)
        r = conn.getresponse()
        data = r.read()
    finally:
        conn.close()
    for line in r.headers.get_all("Set-Cookie") or []:
        pair, _, attrs = line.partition(";")
        name, _, value = pair.strip().partition("=")
        if value == "" or re.search(r"max-age=0\b", attrs, re.I):
            cookies.pop(name, None)
        else:
            cookies[name] = value
    return r.status, r.headers, data


def login(args, ctx):
    """A browser's login through devidp with a fresh jar; returns the app host's session cookie."""
    jar = {}
    start = f"https://{args.app_host}:{args.proxy_port}/"
    url, method, form, posted = start, "GET", None, 0
    for _ in range(20):
        status, headers, body = fetch(ctx, url, jar, method, form)
        if status in (301, 302, 303, 307, 308):
            url, method, form = urllib.parse.urljoin(url, headers["Location"]), "GET", None
            continue
        m = re.search(rb'<form id="login-form" method="post" action="([^"]+)"', body)
        if status == 200 and m and not posted:
            url = urllib.parse.urljoin(url, html.unescape(m.group(1).decode()))
            method, form, posted = "POST", {"username": args.user, "password": args.password}, 1
            continue
        if status == 200 and url == start and posted:
            if body != args.body.encode():
                raise Failure(f"the page after login answered {body[:80]!r}")
            cookie = jar.get(args.app_host, {}).get("__Host-sekisho")
            if not cookie:
                raise Failure("no __Host-sekisho cookie after login")
            return cookie
        raise Failure(f"{method} {url}: {status} {body[:160]!r}")
    raise Failure(f"no end after 20 steps, at {url}")


def read_frame(f):
    head = f.read(2)
    if len(head) != 2:
        raise Failure("the WebSocket closed")
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", f.read(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", f.read(8))[0]
    if head[1] & 0x80:
        raise Failure("a masked frame from the server")
    payload = f.read(n)
    if len(payload) != n:
        raise Failure("a short WebSocket frame")
    return head[0] & 0x0F, payload


def send_frame(sock, opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    head = struct.pack("!BB", 0x80 | opcode, 0x80 | n) if n < 126 else \
        struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    sock.sendall(head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))


def websocket(args, ctx, cookie):
    host = f"{args.app_host}:{args.proxy_port}"
    key = base64.b64encode(os.urandom(16)).decode()
    sock = tls_socket(ctx, args.app_host, args.proxy_port)
    f = sock.makefile("rb")
    try:
        sock.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      f"Sec-WebSocket-Version: 13\r\nOrigin: https://{host}\r\n"
                      f"Cookie: __Host-sekisho={cookie}\r\n\r\n").encode())
        status = f.readline(8192).decode("latin-1").strip()
        headers = {}
        for _ in range(100):
            line = f.readline(8192).decode("latin-1")
            if line in ("\r\n", "\n", ""):
                break
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if not status.startswith("HTTP/1.1 101"):
            raise Failure(f"upgrade answered {status!r}")
        want = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != want:
            raise Failure("a wrong Sec-WebSocket-Accept")
        for i in range(args.ws_messages):
            msg = f"soak {i} {os.urandom(8).hex()}".encode()
            send_frame(sock, 0x1, msg)
            opcode, payload = read_frame(f)
            if (opcode, payload) != (0x1, msg):
                raise Failure(f"echo {i} came back as opcode {opcode} {payload[:40]!r}")
            if args.ws_gap:
                time.sleep(args.ws_gap)
        send_frame(sock, 0x8, struct.pack("!H", 1000))
        opcode, _ = read_frame(f)
        if opcode != 0x8:
            raise Failure(f"opcode {opcode} in answer to the close")
    finally:
        f.close()
        sock.close()


def tunnel(args):
    sock = socket.create_connection(("127.0.0.1", args.tunnel_port), timeout=TIMEOUT)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(4):
            msg = os.urandom(1024)
            sock.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = sock.recv(len(msg) - len(got))
                if not chunk:
                    raise Failure(f"the stream closed in round trip {i}")
                got += chunk
            if got != msg:
                raise Failure(f"round trip {i} came back different")
        sock.shutdown(socket.SHUT_WR)
        if sock.recv(1) != b"":
            raise Failure("bytes after the half-close")
    finally:
        sock.close()


def oha(args, seconds, rate=None):
    """One oha run; returns (summary dict, ok, errors, first error text)."""
    cmd = [args.oha, "--no-tui", "--output-format", "json", "-z", f"{seconds}s",
           "-c", str(args.connections), "--cacert", args.cafile,
           "-H", f"Cookie: __Host-sekisho={args.cookie}",
           f"https://{args.app_host}:{args.proxy_port}/"]
    if rate:
        cmd[1:1] = ["-q", str(rate), "--latency-correction"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        d = json.loads(p.stdout)
    except (subprocess.TimeoutExpired, OSError, ValueError) as e:
        return {}, 0, 1, f"oha: {e!r}"
    codes = {k: int(v) for k, v in d.get("statusCodeDistribution", {}).items()}
    # Requests cut off when -z ends are not failures.
    failed = {k: v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k}
    errors = sum(failed.values()) + sum(v for k, v in codes.items() if k != "200")
    text = None
    if failed:
        text = next(iter(failed))
    elif errors:
        text = f"status codes {codes}"
    return d, codes.get("200", 0), errors, text


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def paced(kind, per_second, op, tally, stop):
    """Runs OP PER_SECOND times a second until STOP; a slot missed while OP ran is skipped."""
    interval = 1.0 / per_second
    nxt = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now < nxt:
            stop.wait(nxt - now)
            continue
        try:
            op()
            tally.add(kind, ok=1)
        except Exception as e:  # every failure is counted, none is retried
            tally.add(kind, err=1, text=f"{type(e).__name__}: {e}")
        nxt = max(nxt + interval, time.monotonic() - interval)


def proc_sample(pid):
    """(RSS KiB, open fds, CPU seconds) of PID and its children, or None once it has exited."""
    rss = fds = ticks = 0
    for i, p in enumerate(tree_pids(pid)):
        try:
            with open(f"/proc/{p}/status") as f:
                rss += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            fds += len(os.listdir(f"/proc/{p}/fd"))
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, StopIteration):
            if i == 0:
                return None
    return rss, fds, ticks / os.sysconf("SC_CLK_TCK")


def compiler_running():
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/comm") as f:
                    if f.read().strip() in COMPILERS:
                        return True
            except OSError:
                pass
    return False


def sampler(args, pids, tally, samples, stop, done, started, out):
    """Every INTERVAL s until DONE: one sample per process (and the counts); sets STOP (ends the
    run) when one has exited."""
    n = 0
    while not done.is_set():
        t = time.monotonic() - started
        ok, err = tally.snapshot()
        row = {"t": round(t, 1), "ok": ok, "err": err, "build": compiler_running(), "procs": {}}
        for name, pid in pids.items():
            s = proc_sample(pid)
            if s is None:
                tally.add("process", err=1, text=f"{name} (pid {pid}) exited")
                stop.set()
                done.set()
                break
            row["procs"][name] = s
        samples.append(row)
        out.write(json.dumps(row) + "\n")
        out.flush()
        n += 1
        # Half an interval off the oha runs' boundaries, where their connections are replaced.
        done.wait(max(0.0, started + (n - 0.5) * args.interval - time.monotonic()))


def metrics(url):
    """Gauges of the proxy that should fall back at the end: open streams, connections."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError as e:
        return {"error": repr(e)}
    found = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if not line.startswith("#") and re.search(r"_(open|connected|active)$", name):
            found[name] = found.get(name, 0) + float(line.rsplit(" ", 1)[1])
    return found


def run(args, ctx):
    tally = Tally()
    if args.rate:
        rate, peak, peak_build = args.rate, None, False
    else:
        log(f"peak: oha -c {args.connections} for 2 s (warm-up), then {args.peak_seconds} s")
        oha(args, 2)
        peak_build = compiler_running()
        d, ok, errors, text = oha(args, args.peak_seconds)
        peak_build = peak_build or compiler_running()
        if errors or not ok:
            log(f"error: the peak measurement had {errors} errors ({text}) and {ok} successes")
            raise SystemExit(3)
        peak = d["summary"]["requestsPerSec"]
        rate = max(1, int(peak / 2))
        log(f"peak {peak:.0f} req/s: the soak runs HTTP at {rate} req/s")

    pids = dict(p.split(":", 1) for p in args.pid)
    pids = {k: int(v) for k, v in pids.items()}
    latest = {"cookie": args.cookie}

    def do_login():
        latest["cookie"] = login(args, ctx)

    stop, done = threading.Event(), threading.Event()
    samples = []
    started = time.monotonic()
    out = open(args.samples, "w") if args.samples else open(os.devnull, "w")
    threads = [threading.Thread(target=sampler, args=(args, pids, tally, samples, stop, done, started, out))]
    threads += [
        threading.Thread(target=paced, args=("login", 1.0 / args.login_every, do_login, tally, stop)),
        threading.Thread(target=paced, args=("websocket", args.ws_per_second,
                                             lambda: websocket(args, ctx, latest["cookie"]), tally, stop)),
        threading.Thread(target=paced, args=("tunnel", args.tunnels_per_second, lambda: tunnel(args),
                                             tally, stop)),
    ]
    for t in threads:
        t.daemon = True
        t.start()
    log(f"soak: {args.duration} s; HTTP {rate}/s, a login every {args.login_every} s, "
        f"{args.ws_per_second} WebSocket sessions/s, {args.tunnels_per_second} tunnel streams/s")
    p50s, p99s, achieved = [], [], []
    end = started + args.duration
    while not stop.is_set():
        left = end - time.monotonic()
        if left < 1:
            break
        d, ok, errors, text = oha(args, int(min(args.chunk, left)), rate)
        tally.add("http", ok=ok, err=errors, text=text)
        if d:
            p50s.append(d["latencyPercentiles"]["p50"] * 1e3)
            p99s.append(d["latencyPercentiles"]["p99"] * 1e3)
            achieved.append(d["summary"]["requestsPerSec"])
        oks, errs = tally.snapshot()
        procs = samples[-1]["procs"] if samples else {}
        log(f"  {time.monotonic() - started:5.0f} s: "
            + ", ".join(f"{k} {oks[k]} ok {errs[k]} err" for k in KINDS) + "; "
            + ", ".join(f"{n} {s[0]} KiB {s[1]} fds" for n, s in procs.items()))
    stop.set()
    elapsed = time.monotonic() - started
    for t in threads[1:]:
        t.join(TIMEOUT * 3)
    done.set()
    threads[0].join(TIMEOUT)
    samples[:] = [s for s in samples if s["t"] < elapsed]  # none from after the load
    # The end: once the load has stopped and the last streams have closed.
    time.sleep(2)
    final = {name: proc_sample(pid) for name, pid in pids.items()}
    out.close()
    return {
        "rate": rate, "peak": peak, "peak_build": peak_build, "tally": tally, "samples": samples, "final": final,
        "elapsed": elapsed, "p50s": p50s, "p99s": p99s, "achieved": achieved,
        "metrics": metrics(args.metrics) if args.metrics else {},
    }


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
def slope_per_hour(points):
    """Least-squares slope of (seconds, value) points, per hour; None with fewer than 3."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx * 3600


def fmt_slope(v, unit):
    return "n/a" if v is None else f"{v:+,.0f} {unit}/h"


def process_rows(args, r, secs):
    """Per process: its table row and its two verdicts (RSS and descriptors flat)."""
    samples = r["samples"]
    after = [s for s in samples if s["t"] >= args.warmup] or samples[-1:]
    rows, verdicts = [], []
    for name in samples[0]["procs"] if samples else []:
        seen = [(s["t"], *s["procs"][name]) for s in samples if name in s["procs"]]
        warm = [(s["t"], *s["procs"][name]) for s in after if name in s["procs"]]
        rs = slope_per_hour([(t, rss) for t, rss, _, _ in warm])
        fs = slope_per_hour([(t, fds) for t, _, fds, _ in warm])
        fin = r["final"].get(name) or seen[-1][1:]
        cpu = (fin[2] - seen[0][3]) / secs
        rows.append(f"| {name} | {seen[0][1]:,} | {warm[0][1]:,} | {fin[0]:,} | "
                    f"{max(v[1] for v in seen):,} | {fmt_slope(rs, 'KiB')} | {seen[0][2]} / {warm[0][2]} / "
                    f"{fin[1]} / {max(v[2] for v in seen)} | {fmt_slope(fs, 'fds')} | {cpu:.2f} |")
        verdicts.append((f"{name}: RSS flat (slope within ±{RSS_FLAT_KIB_PER_H:,} KiB/h)",
                         fmt_slope(rs, "KiB"), rs is not None and abs(rs) < RSS_FLAT_KIB_PER_H))
        verdicts.append((f"{name}: descriptors flat (slope within ±{FDS_FLAT_PER_H}/h)",
                         fmt_slope(fs, "fds"), fs is not None and abs(fs) < FDS_FLAT_PER_H))
    return rows, verdicts, len(after)


def report(args, r, machine):
    samples, tally = r["samples"], r["tally"]
    ok, err = tally.snapshot()
    secs = r["elapsed"]
    m = machine
    keys = [("date", "Date"), ("command", "Command"), ("nproc", "nproc"), ("cpu", "CPU"),
            ("kernel", "Kernel"), ("memory", "Memory (free -h)"), ("sekisho", "sekisho"),
            ("rustc", "rustc"), ("oha", "oha"), ("nginx", "nginx (upstream)"),
            ("node", "Node.js (devidp)"), ("python", "Python (driver, echo servers)"),
            ("session", "Session lifetime of the logins")]
    lines = [f"- {label}: `{m[k]}`" for k, label in keys if k in m]
    peak = (f", half of the {r['peak']:,.0f} req/s peak measured first (oha -c {args.connections}, "
            f"{args.peak_seconds} s, no rate{'; a compiler was running' if r['peak_build'] else ''})") if r["peak"] else " (given with --rate)"
    lines.append(f"- Load: HTTP/1.1 over TLS with a session cookie at {r['rate']:,} req/s{peak}, "
                 f"oha -q in runs of {args.chunk} s; a browser login through devidp every "
                 f"{args.login_every:g} s; {args.ws_per_second:g} WebSocket sessions/s "
                 f"({args.ws_messages} messages each); {args.tunnels_per_second:g} tunnel streams/s "
                 f"(4 × 1 KiB round trips, then a half-close).")
    rows, verdicts, n_after = process_rows(args, r, secs)
    builds = sum(1 for s in samples if s["build"])
    lines.append(f"- Run: {secs / 60:.1f} min, a sample every {args.interval:g} s ({len(samples)} samples, "
                 f"others' compilers running at {builds} of them), slopes over the {n_after} samples "
                 f"after a {args.warmup} s warm-up. {m.get('pinning', '')}")
    if secs < SHORTEST_JUDGED:
        verdicts = [(g, v, None) for g, v, _ in verdicts]
    total_err = sum(err.values())
    verdicts.append(("0 errors", f"{total_err:,}", total_err == 0))
    lines += ["", "### Goals", "", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g} | {v} | {'not judged' if met is None else 'yes' if met else '**no**'} |"
              for g, v, met in verdicts]
    if secs < SHORTEST_JUDGED:
        lines.append(f"\nA run of {secs / 60:.0f} min is a smoke test: too short for its slopes to "
                     "judge a leak (the goals are for `benches/soak.sh`, one hour); only its errors are.")
    lines += ["", "### Operations", "", "| kind | per second | ok | errors | first error |",
              "|---|---|---|---|---|"]
    for k in KINDS + sorted(set(err) - set(KINDS)):
        first = tally.first.get(k, "").replace("|", "\\|")[:160]
        lines.append(f"| {k} | {ok[k] / secs:,.1f} | {ok[k]:,} | {err[k]:,} | {first or '—'} |")
    if r["achieved"]:
        med = sorted(r["p99s"])[len(r["p99s"]) // 2]
        lines.append(f"\nHTTP, per oha run: achieved {min(r['achieved']):,.0f}–{max(r['achieved']):,.0f} req/s "
                     f"({min(r['achieved']) / r['rate']:.0%}–{max(r['achieved']) / r['rate']:.0%} of the rate; "
                     "below it, the load fell behind and latencies count the wait); "
                     f"p50 {min(r['p50s']):.2f}–{max(r['p50s']):.2f} ms; p99 median {med:.2f} ms, "
                     f"max {max(r['p99s']):.2f} ms (coordinated omission corrected).")
    lines += ["", "### Memory and descriptors", "",
              "| process | RSS KiB start | after warm-up | end (load stopped) | max | RSS slope "
              "| fds start / after warm-up / end / max | fd slope | CPU (cores) |",
              "|---|---|---|---|---|---|---|---|---|"] + rows
    if len(samples) > 2:
        picks = sorted({round(i * (len(samples) - 1) / 10) for i in range(11)})
        at = ", ".join(f"{samples[i]['t'] / 60:.1f}" for i in picks)
        lines.append(f"\nRSS in MiB at every tenth of the run ({at} min):")
        for name in samples[0]["procs"]:
            lines.append(f"- {name}: " + " ".join(
                f"{samples[i]['procs'][name][0] / 1024:.1f}" for i in picks if name in samples[i]["procs"]))
    if r["metrics"]:
        lines.append("\nThe proxy's gauges once the load had stopped: " + ", ".join(
            f"`{k}` {v:g}" if isinstance(v, float) else f"`{k}` {v}" for k, v in sorted(r["metrics"].items())))
    return lines, all(met is not False for _, _, met in verdicts)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proxy-port", type=int, required=True)
    p.add_argument("--app-host", default="localhost")
    p.add_argument("--cafile", required=True)
    p.add_argument("--cookie", required=True, help="a session cookie value for the app host")
    p.add_argument("--body", default="hello world\n", help="what the upstream answers at /")
    p.add_argument("--user", default="bob@uniqe.example")
    p.add_argument("--password", default="password")
    p.add_argument("--tunnel-port", type=int, required=True)
    p.add_argument("--oha", default="oha")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--peak-seconds", type=int, default=10)
    p.add_argument("--rate", type=int, help="HTTP requests/s (default: half of the peak)")
    p.add_argument("--duration", type=int, default=3600)
    p.add_argument("--warmup", type=int, default=900)
    p.add_argument("--chunk", type=int, default=60)
    p.add_argument("--interval", type=float, default=10)
    p.add_argument("--login-every", type=float, default=5)
    p.add_argument("--ws-per-second", type=float, default=2)
    p.add_argument("--ws-messages", type=int, default=10)
    p.add_argument("--ws-gap", type=float, default=0.02)
    p.add_argument("--tunnels-per-second", type=float, default=5)
    p.add_argument("--pid", action="append", default=[], metavar="NAME:PID")
    p.add_argument("--metrics", help="the proxy's /metrics URL, read at the end")
    p.add_argument("--samples", help="write the samples here (JSON lines)")
    p.add_argument("--machine", help="key=value lines for the report's header")
    p.add_argument("--write", metavar="FILE", help="replace the soak section of FILE")
    p.add_argument("--check", action="store_true", help="one of each, then exit")
    args = p.parse_args()
    # SIGTERM (soak.sh's exit trap) as Ctrl-C: subprocess.run then kills the oha it waits for.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ctx = ssl.create_default_context(cafile=args.cafile)

    if args.check:
        try:
            cookie = login(args, ctx)
            websocket(args, ctx, cookie)
            tunnel(args)
        except Exception as e:
            print(f"check failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        return 0

    machine = {}
    if args.machine:
        for line in open(args.machine):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                machine[k] = v
    try:
        r = run(args, ctx)
    except KeyboardInterrupt:
        log("stopped before the end: no report")
        return 130
    lines, met = report(args, r, machine)
    print("\n".join(lines))
    if args.write:
        write_section(args.write, "benches/soak.sh",
                      ["", "## Soak (benches/soak.sh): latest run", ""] + lines)
        log(f"wrote {args.write}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
