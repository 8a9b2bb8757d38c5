"""The ``pyserve`` command: serve a handler from the command line.

With no arguments it serves a line echo on 127.0.0.1:9999 and prints where, so a
newcomer sees a server answer within a minute (``python -m pyserve``, then
``nc 127.0.0.1 9999``). The library never prints or exits; this module is where
errors become messages and exit codes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

from pyserve.request import StreamRequestHandler
from pyserve.servers import ThreadingTCPServer

__all__ = ["LineEcho", "main"]

#: Exit codes: 0 served and stopped cleanly; 2 bad usage (argparse's own); 3 the
#: address could not be bound.
EXIT_OK = 0
EXIT_BIND_FAILED = 3


class LineEcho(StreamRequestHandler[ThreadingTCPServer]):
    """Echo every line back until the client closes."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pyserve", description=__doc__.split("\n")[0])
    parser.add_argument("--bind", default="127.0.0.1:9999", help="HOST:PORT (default %(default)s)")
    args = parser.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    logging.basicConfig(level=logging.INFO, format="pyserve: %(message)s")
    try:
        server = ThreadingTCPServer((host.strip("[]"), int(port)), LineEcho)
    except OSError as exc:
        print(f"pyserve: cannot bind {args.bind}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BIND_FAILED
    server.daemon_threads = True
    with server:
        address = server.server_address
        print(f"pyserve: serving line echo on {address[0]}:{address[1]}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("pyserve: stopped", file=sys.stderr)
    return EXIT_OK
