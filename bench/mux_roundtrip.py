"""What one echo round trip costs a server: instructions (callgrind) or system calls (strace).

The wall-clock benchmark (run.py) needs a quiet machine; this needs none. It runs
an echo server on 127.0.0.1 (port 0, read back) in a child process under
``valgrind --tool=callgrind`` (or ``strace -f -c``), and from this process drives
``--conns`` connections through ``--rounds`` rounds: each round sends
``--size`` bytes on every connection, then reads every echo back (as the load
generator's echo mode, all connections in flight at once). It does that twice,
with ``--rounds`` and with 0 rounds (start, connect, close, stop: the same fixed
costs), and prints the difference divided by the round trips. The server's
own threads are all counted (the I/O thread and the serve loop).

Targets (``--target``): ``pyserve`` (MultiplexingTCPServer with the callback echo
handler of bench/servers/echo_socketserver.py), ``asyncio`` and ``uvloop``
(a Protocol that writes back what it receives, as bench/servers/echo_asyncio.py).
The server imports pyserve from this checkout (its parent directory goes first on
PYTHONPATH); ``--python`` picks the interpreter (one with uvloop for ``uvloop``).

Examples::

    python3 bench/mux_roundtrip.py                      # pyserve, instructions
    python3 bench/mux_roundtrip.py --tool strace        # pyserve, system calls
    python3 bench/mux_roundtrip.py --target uvloop --python /tmp/bench-fast/.venv/bin/python

``--keep FILE`` saves the loaded run's report as FILE (for ``callgrind_annotate``),
the unloaded run's as FILE.base.

Bounded: every socket has a timeout, and the whole run stops after ``--budget``
seconds. Under callgrind the server runs some 50 times slower than usual; the
defaults (100 connections, 300 rounds) take about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the server (child process) ---------------------------------------------------


def serve_pyserve() -> None:
    import pyserve  # noqa: PLC0415 - the child imports what it serves

    class CallbackEcho(pyserve.ConnectionHandler):  # type: ignore[type-arg]
        def data_received(self, data: bytes) -> None:
            self.write(data)

    with pyserve.MultiplexingTCPServer(("127.0.0.1", 0), CallbackEcho) as server:
        thread = threading.Thread(target=server.serve_forever, args=(3600.0,))
        thread.start()
        print(server.server_address[1], flush=True)
        sys.stdin.read()  # EOF: the driver is done
        server.shutdown()
        thread.join()


def serve_asyncio(use_uvloop: bool) -> None:
    import asyncio  # noqa: PLC0415

    class EchoProtocol(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        done = loop.create_future()
        threading.Thread(
            target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(done.set_result, None)),
            daemon=True,
        ).start()
        await done
        server.close()
        await server.wait_closed()

    if use_uvloop:
        import uvloop  # noqa: PLC0415 - only for this target

        uvloop.run(main())
    else:
        asyncio.run(main())


# -- the driver -------------------------------------------------------------------


def drive(args: argparse.Namespace, rounds: int, deadline: float) -> dict[str, float]:
    """Run one server under the tool for ``rounds`` rounds: its counts by name."""
    with tempfile.TemporaryDirectory(prefix="mux-roundtrip-") as tmp:
        out = os.path.join(tmp, "out")
        if args.tool == "callgrind":
            tool = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out]
        else:
            tool = ["strace", "-f", "-c", "-o", out]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        command = [*tool, args.python, os.path.abspath(__file__), "--serve", args.target]
        child = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env,
        )
        try:
            assert child.stdout is not None
            assert child.stdin is not None
            line = child.stdout.readline()
            if not line.strip():
                raise RuntimeError(f"the server did not start: {command}")
            port = int(line)
            exchange(port, args, rounds, deadline)
            child.stdin.close()
            child.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        with open(out) as report:
            text = report.read()
        if args.keep:
            with open(args.keep + ("" if rounds else ".base"), "w") as kept:
                kept.write(text)
    if args.tool == "callgrind":
        found = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.MULTILINE)
        if found is None:
            raise RuntimeError("no instruction total in the callgrind output")
        return {"instructions": float(found.group(1))}
    # strace -c: "% time  seconds  usecs/call  calls  [errors]  syscall" rows.
    counts = {}
    row_pattern = r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$"
    for row in re.finditer(row_pattern, text, re.MULTILINE):
        counts[row.group(2)] = float(row.group(1))
    if "total" not in counts:
        raise RuntimeError("no total in the strace summary")
    return counts


def exchange(port: int, args: argparse.Namespace, rounds: int, deadline: float) -> None:
    message = b"x" * (args.size - 1) + b"\n"
    clients = []
    try:
        for _ in range(args.conns):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=60))
        for _ in range(rounds):
            if time.monotonic() > deadline:
                raise TimeoutError(f"over the budget of {args.budget} s")
            for client in clients:
                client.sendall(message)
            for client in clients:
                got = 0
                while got < len(message):
                    chunk = client.recv(len(message) - got)
                    if not chunk:
                        raise ConnectionError("the server closed a connection")
                    got += len(chunk)
    finally:
        for client in clients:
            client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("pyserve", "asyncio", "uvloop"), default="pyserve")
    parser.add_argument("--tool", choices=("callgrind", "strace"), default="callgrind")
    parser.add_argument("--conns", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--keep", metavar="FILE", help="save the tool's reports")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds, at most")
    parser.add_argument("--serve", choices=("pyserve", "asyncio", "uvloop"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "pyserve":
        serve_pyserve()
        return
    if args.serve is not None:
        serve_asyncio(args.serve == "uvloop")
        return
    deadline = time.monotonic() + args.budget
    base = drive(args, 0, deadline)
    total = drive(args, args.rounds, deadline)
    trips = args.rounds * args.conns
    per_trip = {
        name: round((count - base.get(name, 0.0)) / trips, 3)
        for name, count in total.items()
        if abs(count - base.get(name, 0.0)) / trips >= 0.005
    }
    print(json.dumps({
        "target": args.target, "tool": args.tool, "conns": args.conns, "rounds": args.rounds,
        "size": args.size, "per_round_trip": per_trip,
    }))

if __name__ == "__main__":
    main()
