"""Run a Prefork supervisor for tests/test_prefork.py, in its own process.

Prints ``PORT <n>`` (``--kind tcp|udp``) or ``PATH <path>`` (``--kind unix``) once
the listening sockets exist (connections queue from then on), relays the
supervisor's log lines to stdout (the test waits on them), and exits with
``run()``'s status. Signal handlers in force after ``run()`` are
compared with those before and reported as ``HANDLERS restored|changed``.

Stream protocol (TCP: a threading server, or a pool with ``--kind pool``, whose
workers accept themselves with ``--kind pool-accept``; Unix: a
one-request-at-a-time server, or a one-worker pool with ``--kind unix-pool``),
one line per command: ``pid`` -> this worker's pid; ``hold`` -> ``holding``, then
waits for any bytes (on the raw socket: never idle for a drain) and answers
``released``; ``slow`` -> waits 50 ms, answers
``done <pid>``; ``forever`` -> ``stuck``, then never ends (it ignores EOF: a
handler only a deadline can stop). UDP (one-at-a-time server): the datagram
``pid`` is answered with this worker's pid.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import Any

from pyserve import (
    DatagramRequestHandler,
    StreamRequestHandler,
    ThreadingTCPServer,
    ThreadPoolTCPServer,
    ThreadPoolUnixStreamServer,
    UDPServer,
    UnixStreamServer,
)
from pyserve.prefork.supervisor import Prefork


class Handler(StreamRequestHandler[Any]):
    def handle(self) -> None:
        for line in self.rfile:
            command = line.strip()
            if command == b"pid":
                self.wfile.write(b"%d\n" % os.getpid())
            elif command == b"hold":
                self.wfile.write(b"holding\n")
                # The raw socket, not rfile: a handler waiting in rfile after
                # answering is idle, and a drain would end it at once; this one
                # must be waited for until the drain's deadline forces it.
                self.request.recv(100)
                self.wfile.write(b"released\n")
            elif command == b"slow":
                time.sleep(0.05)
                self.wfile.write(b"done %d\n" % os.getpid())
            elif command == b"forever":
                self.wfile.write(b"stuck\n")
                for _ in range(3600):  # bounded: the supervisor kills us long before
                    time.sleep(1)


class PidDatagramHandler(DatagramRequestHandler[Any]):
    def handle(self) -> None:
        if self.rfile.read().strip() == b"pid":
            self.wfile.write(b"%d" % os.getpid())


class OneWorkerUnixPool(ThreadPoolUnixStreamServer):
    max_workers = 1
    queue_size = 0  # so in hand-off mode too, a busy worker leaves the rest to the other


class WorkersAcceptPool(ThreadPoolTCPServer):
    workers_accept = True  # idle workers wait on the (shared) listener themselves


def broken_factory(listener: Any) -> Any:
    raise RuntimeError("this factory always fails")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    parser.add_argument("--broken", action="store_true")
    parser.add_argument("--backoff-max", type=float, default=10.0)
    parser.add_argument(
        "--kind",
        choices=("tcp", "udp", "unix", "pool", "pool-accept", "unix-pool"),
        default="tcp",
    )
    parser.add_argument("--path", help="the Unix socket path (--kind unix)")
    parser.add_argument("--shared", action="store_true", help="one socket (no SO_REUSEPORT)")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="LOG %(message)s")
    watched = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
    before = [signal.getsignal(s) for s in watched]
    server_class: Any
    handler: Any
    if args.kind == "udp":
        server_class, address, handler = UDPServer, ("127.0.0.1", 0), PidDatagramHandler
    elif args.kind == "unix":
        server_class, address, handler = UnixStreamServer, args.path, Handler
    elif args.kind == "unix-pool":  # one request at a time, like "unix", on a pool
        server_class, address, handler = OneWorkerUnixPool, args.path, Handler
    elif args.kind == "pool-accept":
        server_class, address, handler = WorkersAcceptPool, ("127.0.0.1", 0), Handler
    elif args.kind == "pool":
        server_class, address, handler = ThreadPoolTCPServer, ("127.0.0.1", 0), Handler
    else:
        server_class, address, handler = ThreadingTCPServer, ("127.0.0.1", 0), Handler
    supervisor = Prefork(
        server_class,
        address,
        handler,
        workers=args.workers,
        drain_timeout=args.drain_timeout,
        make_server=broken_factory if args.broken else None,
        reuse_port=False if args.shared else None,
        restart_backoff_initial=0.05,
        restart_backoff_max=args.backoff_max,
    )
    if args.kind.startswith("unix"):
        print(f"PATH {supervisor.server_address}", flush=True)
    else:
        print(f"PORT {supervisor.server_address[1]}", flush=True)
    status = supervisor.run()
    after = [signal.getsignal(s) for s in watched]
    print("HANDLERS", "restored" if before == after else "changed", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
