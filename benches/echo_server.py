#!/usr/bin/env python3
"""A TCP echo server for benches/tunnel.sh and soak.sh: every byte read is written straight back.

One thread per connection with blocking sockets: the least work per message that Python can do
(no event loop between recv and send), so that the ping-pong latency measures the paths in front
of it, not this server. Idle connections cost a parked thread each, which is fine for the
thousands the idle-stream measurement holds. Listens on 127.0.0.1 only; runs until killed.

With --websocket it is a WebSocket (RFC 6455) echo server instead, for soak.sh's upstream: it
answers any upgrade request with 101, then sends every data frame back unmasked with the same
opcode and FIN bit, answers a ping with a pong and a close with a close. Frames over 1 MiB or a
request that is not an upgrade close the connection.
"""

import argparse
import base64
import hashlib
import socket
import struct
import sys
import threading

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_FRAME = 1 << 20


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


def read_exact(f, n):
    data = f.read(n)
    if len(data) != n:
        raise EOFError
    return data


def serve_websocket(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = conn.makefile("rb")
    try:
        key = None
        for _ in range(100):  # request line and headers
            line = f.readline(8192)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "sec-websocket-key":
                key = value.strip().encode()
        if key is None:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            return
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                     b"connection: Upgrade\r\nsec-websocket-accept: " + accept + b"\r\n\r\n")
        while True:
            b0, b1 = read_exact(f, 2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", read_exact(f, 2))[0]
            elif n == 127:
                n = struct.unpack("!Q", read_exact(f, 8))[0]
            if n > MAX_FRAME:
                return
            mask = read_exact(f, 4) if b1 & 0x80 else b"\0\0\0\0"
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(read_exact(f, n)))
            opcode = b0 & 0x0F
            if opcode == 0x9:  # ping -> pong
                b0 = (b0 & 0xF0) | 0xA
            elif opcode == 0xA:
                continue
            if n < 126:
                head = struct.pack("!BB", b0, n)
            elif n < 65536:
                head = struct.pack("!BBH", b0, 126, n)
            else:
                head = struct.pack("!BBQ", b0, 127, n)
            conn.sendall(head + payload)
            if opcode == 0x8:  # close: echoed, then done
                return
    except (OSError, EOFError, ValueError):
        pass
    finally:
        f.close()
        conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--websocket", action="store_true", help="a WebSocket echo server")
    args = p.parse_args()
    handler = serve_websocket if args.websocket else serve
    threading.stack_size(256 * 1024)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(4096)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
