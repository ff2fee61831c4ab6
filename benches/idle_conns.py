#!/usr/bin/env python3
"""Holds N idle HTTP/1.1 keep-alive connections open against one proxy and reports the proxy's
memory cost per connection.

Each connection sends one `GET` with `Host: localhost`, reads the whole response (so the proxy
holds the connection in its keep-alive state, not half way through a handshake or a request),
then stays idle. The proxy's RSS (summed over its process tree, e.g. nginx master + worker) is
read before the first connection and again once all are idle; the difference divided by N is
printed as one JSON line on stdout.

Bounded: connections are opened at most `--parallel` at a time, every step has a deadline, and
the whole run stops after `--deadline` seconds whatever happens. Only 127.0.0.1 is dialled.
"""

import argparse
import asyncio
import json
import ssl
import sys
import time

from procfs import rss_kib


async def read_response(reader):
    """Reads one response with a Content-Length body; returns the status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def open_one(port, path, tls_ctx, timeout):
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1", port, ssl=tls_ctx, server_hostname="localhost" if tls_ctx else None
        ),
        timeout,
    )
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    status = await asyncio.wait_for(read_response(reader), timeout)
    if status != 200:
        raise RuntimeError(f"status {status}")
    return reader, writer


async def run(args):
    tls_ctx = None
    if args.tls:
        tls_ctx = ssl.create_default_context(cafile=args.cafile)
    before = rss_kib(args.pid)
    sem = asyncio.Semaphore(args.parallel)
    conns, errors = [], []

    async def guarded():
        async with sem:
            try:
                conns.append(await open_one(args.port, args.path, tls_ctx, args.step_timeout))
            except Exception as e:  # counted and reported, never retried
                errors.append(repr(e))

    started = time.monotonic()
    await asyncio.gather(*(guarded() for _ in range(args.count)))
    opened = time.monotonic() - started
    await asyncio.sleep(args.settle)
    # Every connection must still be open: a proxy that dropped idle connections would look
    # cheap. A closed one reads EOF at once; an open one times out.
    alive = 0
    for reader, _ in conns[:: max(1, len(conns) // 200)]:
        try:
            await asyncio.wait_for(reader.read(1), 0.001)
        except asyncio.TimeoutError:
            alive += 1
    sampled = len(conns[:: max(1, len(conns) // 200)])
    after = rss_kib(args.pid)
    for _, writer in conns:
        writer.close()
    return {
        "port": args.port,
        "tls": args.tls,
        "requested": args.count,
        "open": len(conns),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "alive_sampled": f"{alive}/{sampled}",
        "open_seconds": round(opened, 2),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_conn": round((after - before) * 1024 / max(1, len(conns))),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True, help="the proxy's (parent) process id")
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--path", default="/")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--cafile")
    p.add_argument("--parallel", type=int, default=200)
    p.add_argument("--step-timeout", type=float, default=10.0)
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--deadline", type=float, default=120.0)
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
