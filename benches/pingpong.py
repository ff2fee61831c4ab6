#!/usr/bin/env python3
"""64-byte ping-pong over one TCP connection, for benches/tunnel.sh.

Connects to 127.0.0.1:PORT (an echo server, directly or through a tunnel), sends SIZE bytes and
waits for all of them to come back, WARMUP times untimed and then COUNT times timed, and prints
one JSON line: p50, p99, mean and max round-trip time in microseconds. Bounded: the whole run
stops after --deadline seconds, and a round trip that takes longer than --timeout fails it.
"""

import argparse
import json
import socket
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2000)
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--deadline", type=float, default=60.0)
    args = p.parse_args()

    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = bytes(range(256)) * (args.size // 256 + 1)
    payload = payload[: args.size]
    buf = bytearray(args.size)
    view = memoryview(buf)
    clock = time.perf_counter_ns
    samples = []

    def round_trip():
        sock.sendall(payload)
        got = 0
        while got < args.size:
            n = sock.recv_into(view[got:])
            if n == 0:
                raise ConnectionError("the connection closed")
            got += n

    try:
        for _ in range(args.warmup):
            round_trip()
        if buf != payload:
            raise ValueError("the echo came back different")
        for i in range(args.count):
            t0 = clock()
            round_trip()
            samples.append(clock() - t0)
            if i % 1000 == 0 and time.monotonic() - started > args.deadline:
                raise TimeoutError(f"deadline after {i} round trips")
    except Exception as e:  # reported, never retried
        print(json.dumps({"port": args.port, "error": repr(e), "done": len(samples)}))
        return 1
    finally:
        sock.close()
    samples.sort()
    n = len(samples)
    print(json.dumps({
        "port": args.port,
        "count": n,
        "p50_us": samples[n // 2] / 1000,
        "p99_us": samples[min(n - 1, (n * 99) // 100)] / 1000,
        "mean_us": sum(samples) / n / 1000,
        "max_us": samples[-1] / 1000,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
