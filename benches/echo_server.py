#!/usr/bin/env python3
"""A TCP echo server for benches/tunnel.sh: every byte read is written straight back.

One thread per connection with blocking sockets: the least work per message that Python can do
(no event loop between recv and send), so that the ping-pong latency measures the paths in front
of it, not this server. Idle connections cost a parked thread each, which is fine for the
thousands the idle-stream measurement holds. Listens on 127.0.0.1 only; runs until killed.
"""

import argparse
import socket
import sys
import threading


def serve(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    threading.stack_size(256 * 1024)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(4096)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
