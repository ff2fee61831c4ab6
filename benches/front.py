#!/usr/bin/env python3
"""The Service in front of the proxy replicas, as benches/tunnel.sh's agent fleet sees it: a TCP
forwarder that sends each new connection to the first replica that accepts it (in the order
given), then copies both ways until either side closes, and closes both.

asyncio, one task per direction: the fleet's connections are idle once set up, and what is
measured through it is how soon they are back on another replica, not its throughput. Listens
on 127.0.0.1 only; runs until killed.
"""

import argparse
import asyncio


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def handle(client_reader, client_writer, replicas):
    for host, port in replicas:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
            break
        except (OSError, asyncio.TimeoutError):
            continue
    else:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, up_writer), pipe(up_reader, client_writer))


async def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    parser.add_argument("--to", action="append", required=True, metavar="HOST:PORT",
                        help="a replica, in the order to try them (repeat)")
    args = parser.parse_args()
    replicas = [(h, int(p)) for h, _, p in (t.rpartition(":") for t in args.to)]
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, replicas), "127.0.0.1", args.port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
