"""Cost per command of the RESP store's parser and executor, in process (no sockets).

    python3 bench/resp_parse.py

Feeds 16-command pipelined batches, as ``redis-benchmark -P 16`` sends them, to
``handlers.resp.protocol.CommandParser`` and runs them through a session, and
prints nanoseconds per command for parsing and for executing. It isolates the
Python work from the network and the threads, which ``bench/run.py``'s
``resp-P16`` scenario measures together.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from handlers.resp.commands import open_session
from handlers.resp.encoding import encode_command
from handlers.resp.protocol import CommandParser
from handlers.resp.session import ServerState

BATCH = 16
CASES = {
    "PING_INLINE": b"PING\r\n",
    "PING_MBULK": encode_command(b"PING"),
    "SET": encode_command(b"SET", b"key:__rand_int__", b"xxx"),
    "GET": encode_command(b"GET", b"key:__rand_int__"),
}


def main(batches: int = 20_000) -> None:
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


if __name__ == "__main__":
    main()
