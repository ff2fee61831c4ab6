#!/usr/bin/env python3
"""Holds N idle TCP connections through a tunnel to an echo server and reports what they cost
the tunnel's processes in memory, for benches/tunnel.sh.

Each connection goes to 127.0.0.1:PORT (`sekisho tunnel --listen`, or a rathole service port),
sends one byte and waits for its echo (so the stream is open end to end, not queued in a
listener's backlog), then stays idle. The RSS of every `--pid` (summed over its process tree) is
read before the first connection and again once all are idle; optionally a Prometheus gauge is
read too (`--gauge URL NAME`, e.g. the proxy's open-stream count). Then every connection is
checked to still echo, and all are closed. One JSON line on stdout.

Bounded: at most `--parallel` connections open at a time, every step has a timeout, and the
whole run stops after `--deadline` seconds. Only 127.0.0.1 is dialled.
"""

import argparse
import asyncio
import json
import sys
import time
import urllib.request

from procfs import rss_kib


def gauge(url, name):
    """The sum of a metric's samples (all label sets) in a Prometheus text page."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def echo_once(reader, writer, timeout):
    writer.write(b"x")
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(1), timeout)
    if got != b"x":
        raise RuntimeError("wrong echo")


async def run(args):
    pids = {}
    for spec in args.pid:
        label, _, pid = spec.rpartition(":")
        pids[label or pid] = int(pid)
    before = {k: rss_kib(p) for k, p in pids.items()}
    gauge_before = gauge(*args.gauge) if args.gauge else None
    sem = asyncio.Semaphore(args.parallel)
    conns, errors = [], []

    async def open_one():
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", args.port), args.step_timeout)
                await echo_once(reader, writer, args.step_timeout)
                conns.append((reader, writer))
            except Exception as e:  # counted and reported, never retried
                errors.append(repr(e))

    started = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(args.count)))
    opened = time.monotonic() - started
    await asyncio.sleep(args.settle)
    after = {k: rss_kib(p) for k, p in pids.items()}
    gauge_after = gauge(*args.gauge) if args.gauge else None

    alive = 0

    async def check(reader, writer):
        nonlocal alive
        try:
            await echo_once(reader, writer, args.step_timeout)
            alive += 1
        except Exception:
            pass

    for i in range(0, len(conns), args.parallel):
        await asyncio.gather(*(check(r, w) for r, w in conns[i:i + args.parallel]))
    for _, writer in conns:
        writer.close()
    n = max(1, len(conns))
    return {
        "port": args.port,
        "requested": args.count,
        "open": len(conns),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "alive": alive,
        "open_seconds": round(opened, 2),
        "gauge_before": gauge_before,
        "gauge_after": gauge_after,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_conn": {k: round((after[k] - before[k]) * 1024 / n) for k in pids},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", action="append", default=[], metavar="LABEL:PID",
                   help="a process whose RSS to report (repeatable)")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--gauge", nargs=2, metavar=("URL", "NAME"))
    p.add_argument("--parallel", type=int, default=50)
    p.add_argument("--step-timeout", type=float, default=20.0)
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--deadline", type=float, default=180.0)
    args = p.parse_args()
    try:
        result = asyncio.run(asyncio.wait_for(run(args), args.deadline))
    except asyncio.TimeoutError:
        print(json.dumps({"port": args.port, "error": "deadline"}))
        return 1
    print(json.dumps(result))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
