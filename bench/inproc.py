"""In-process measurements: ``shutdown()`` latency and drain time under load.

Run by run.py as ``python inproc.py MODULE [options]`` in a fresh interpreter
(pinned to the server CPU) and prints one JSON line.

* **shutdown**: build a ThreadingTCPServer on 127.0.0.1:0, serve it from a thread,
  prove the loop runs with one echo round trip, then time ``server.shutdown()``.
  Repeated ``--count`` times or until ``--budget`` seconds are spent, whichever
  comes first (the stdlib polls every 0.5 s, so it gets fewer samples). Reports
  the median, p99 and maximum in milliseconds.
* **drain**: only where the server has a ``drain`` method (pyserve's graceful
  drain). ``--drain-clients`` connections from the C load generator run echo
  loops; after a warm-up, ``server.drain(grace)`` is timed. A server without it
  reports ``"drain": null`` (shown as n/a).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Optional


def echo_handler(module: Any) -> type:
    class RawEcho(module.BaseRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            while True:
                data = self.request.recv(65536)
                if not data:
                    break
                self.request.sendall(data)

    return RawEcho


def start(module: Any, server_class: str) -> tuple[Any, threading.Thread]:
    server = getattr(module, server_class)(("127.0.0.1", 0), echo_handler(module))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # The loop is running once a round trip has been served by it.
    with socket.create_connection(server.server_address[:2], timeout=10) as client:
        client.sendall(b"ping\n")
        if client.recv(16) != b"ping\n":
            raise RuntimeError("the echo server answered wrongly")
    return server, thread


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure_shutdown(module: Any, server_class: str, count: int, budget: float) -> dict[str, Any]:
    samples: list[float] = []
    deadline = time.monotonic() + budget
    while len(samples) < count and time.monotonic() < deadline:
        server, thread = start(module, server_class)
        began = time.perf_counter()
        server.shutdown()
        samples.append((time.perf_counter() - began) * 1000.0)
        thread.join(10)
        server.server_close()
    return {
        "samples": len(samples),
        "median_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 0.99), 3),
        "max_ms": round(max(samples), 3),
    }


def measure_drain(
    module: Any, server_class: str, loadgen: list[str], clients: int, grace: float
) -> Optional[dict[str, Any]]:
    server, thread = start(module, server_class)
    drain = getattr(server, "drain", None)
    if drain is None:
        server.shutdown()
        thread.join(10)
        server.server_close()
        return None
    port = server.server_address[1]
    load = subprocess.Popen(
        [*loadgen, "echo", "-p", str(port), "-c", str(clients), "-d", str(grace + 5), "-w", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(1.0)  # let every client reach its echo loop (the loop is bounded: -d)
        began = time.perf_counter()
        outcome = drain(grace)
        elapsed = time.perf_counter() - began
        server.shutdown()
        thread.join(10)
    finally:
        server.server_close()
        try:
            out, _ = load.communicate(timeout=grace + 30)
        except subprocess.TimeoutExpired:
            load.kill()
            out, _ = load.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    client = json.loads(lines[-1]) if lines else {}
    return {
        "clients": clients,
        "grace_s": grace,
        "drain_s": round(elapsed, 3),
        "returned": repr(outcome)[:200],
        "round_trips": client.get("rt_total"),
        "client_errors": client.get("errors"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("module", help="socketserver or pyserve")
    parser.add_argument("--server-class", default="ThreadingTCPServer")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--budget", type=float, default=10.0, help="seconds for shutdown runs")
    parser.add_argument("--loadgen", required=True, help="loadgen command (a shell-quoted string)")
    parser.add_argument("--drain-clients", type=int, default=50)
    parser.add_argument("--grace", type=float, default=1.0)
    args = parser.parse_args()
    module = importlib.import_module(args.module)
    result = {
        "module": args.module,
        "server_class": args.server_class,
        "shutdown": measure_shutdown(module, args.server_class, args.count, args.budget),
        "drain": measure_drain(
            module, args.server_class, shlex.split(args.loadgen), args.drain_clients, args.grace
        ),
    }
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
