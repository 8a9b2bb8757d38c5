"""Cost per command of the RESP store's parser and executor, in process (no sockets).

    python3 bench/resp_parse.py                 # parse and execute, ns per command
    python3 bench/resp_parse.py --connection    # whole batches through RespConnection

Feeds 16-command pipelined batches, as ``redis-benchmark -P 16`` sends them, to
``handlers.resp.protocol.CommandParser`` and runs them through a session, and
prints nanoseconds per command for parsing and for executing. It isolates the
Python work from the network and the threads, which ``bench/run.py``'s
``resp-P16`` scenario measures together.

``--connection`` drives the multiplexed handler (``RespConnection``) instead: each
batch goes to ``data_received()`` as one chunk, as the I/O loop hands it over,
and the replies are taken by a socket double that accepts every byte, so the
figure is what the handler costs per batch of the benchmark's seven tests
(PING_INLINE, PING_MBULK, SET, GET, LPUSH, LPOP, HSET); ``--pipeline 1`` times
unpipelined clients (``-P 1``). ``--batches N`` sets how
many rounds of the seven run; a small N under callgrind counts instructions per
batch steadily (``valgrind --tool=callgrind python3 bench/resp_parse.py
--connection --batches 200``, minus a run with ``--batches 0``).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from handlers.resp.commands import open_session
from handlers.resp.encoding import encode_command
from handlers.resp.protocol import CommandParser
from handlers.resp.server import RespConnection
from handlers.resp.session import ServerState

BATCH = 16
CASES = {
    "PING_INLINE": b"PING\r\n",
    "PING_MBULK": encode_command(b"PING"),
    "SET": encode_command(b"SET", b"key:__rand_int__", b"xxx"),
    "GET": encode_command(b"GET", b"key:__rand_int__"),
}
#: What redis-benchmark 7 sends for ``-t ping,set,get,lpush,lpop,hset`` (default -d 3).
BENCHMARK_TESTS = {
    **CASES,
    "LPUSH": encode_command(b"LPUSH", b"mylist", b"xxx"),
    "LPOP": encode_command(b"LPOP", b"mylist"),
    "HSET": encode_command(b"HSET", b"myhash", b"element:__rand_int__", b"xxx"),
}


def parse_and_execute(batches: int) -> None:
    session = open_session(ServerState(), None)
    for name, command in CASES.items():
        data = command * BATCH
        parser = CommandParser()
        started = time.perf_counter()
        for _ in range(batches):
            parser.feed(data)
            commands = parser.drain()
        parsed = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(batches):
            session.execute(commands)
        executed = time.perf_counter() - started
        per = 1e9 / (batches * BATCH)
        print(f"{name:12} parse {parsed * per:6.0f} ns/command   execute {executed * per:6.0f}")


class _Socket:
    """The part of a socket RespConnection uses; send() takes everything."""

    family = socket.AF_INET

    def __init__(self) -> None:
        self.sent = 0

    def setsockopt(self, *args: Any) -> None:
        pass

    def send(self, data: bytes) -> int:
        self.sent += len(data)
        return len(data)


class _Loop:
    """The I/O loop's side, for a handler whose output never waits."""

    def watch(self, handler: Any) -> None:
        pass

    def finish(self, handler: Any, exc: Any) -> None:
        raise RuntimeError(f"the connection ended: {exc!r}")


class _Server:
    def __init__(self) -> None:
        self.resp_state = ServerState()
        self.later: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.later.append(callback)


def connection(batches: int, pipeline: int = BATCH) -> None:
    server = _Server()
    sock = _Socket()
    handler = RespConnection(sock, ("127.0.0.1", 1), server)
    handler._loop = _Loop()  # what the I/O loop sets before connection_made()
    handler.connection_made()
    feed = handler.data_received
    chunks = [command * pipeline for command in BENCHMARK_TESTS.values()]
    started = time.perf_counter()
    for _ in range(batches):
        for chunk in chunks:
            feed(chunk)
    elapsed = time.perf_counter() - started
    if server.later:
        raise RuntimeError("a batch was answered in pieces: the figure would not be one batch")
    if batches:
        per_batch = elapsed * 1e6 / (batches * len(chunks))
        print(f"{len(chunks)} tests x {batches} batches of {pipeline}: {per_batch:.2f} us per"
              f" batch, {per_batch * 1000 / pipeline:.0f} ns per command, {sock.sent} bytes sent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connection", action="store_true",
                        help="drive RespConnection.data_received with whole batches")
    parser.add_argument("--batches", type=int, default=20_000)
    parser.add_argument("--pipeline", type=int, default=BATCH,
                        help="commands per batch with --connection (default 16)")
    args = parser.parse_args()
    if args.connection:
        connection(args.batches, args.pipeline)
    else:
        parse_and_execute(args.batches)


if __name__ == "__main__":
    main()
