"""Echo on asyncio (or uvloop): a Protocol, or streams (reader.read / writer.write).

``--work N``: CPU-bound requests, as in echo_socketserver.py (in the event loop's
one thread, as a naive asyncio server would run them).
"""

from __future__ import annotations

import asyncio

from _common import parse_args, work

TURNS = 0  # --work


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if TURNS:
            work(TURNS)
        self.transport.write(data)


async def handle_stream(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if TURNS:
                work(TURNS)
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(args):
    loop = asyncio.get_running_loop()
    backlog = {} if args.backlog is None else {"backlog": args.backlog}
    if args.streams:
        server = await asyncio.start_server(handle_stream, "127.0.0.1", args.port, **backlog)
    else:
        server = await loop.create_server(EchoProtocol, "127.0.0.1", args.port, **backlog)
    async with server:
        await server.serve_forever()


def main() -> None:
    def extra(parser):
        parser.add_argument("--streams", action="store_true")
        parser.add_argument("--uvloop", action="store_true")
        parser.add_argument("--work", type=int, default=0, metavar="N")

    args = parse_args(__doc__, extra)
    global TURNS  # noqa: PLW0603 - set once, before the loop starts
    TURNS = args.work
    if args.uvloop:
        import uvloop  # noqa: PLC0415 - optional, only for --uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
