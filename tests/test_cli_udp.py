"""The ``pyserve`` command serves datagrams in the loop thread by default.

Issue "Safe by default": ``ThreadingUDPServer`` (what the command built for a UDP
bind) starts a thread per datagram; under a flood it drained about 3,100
datagrams a second and a well-behaved client lost two thirds of its datagrams.
The class keeps the stdlib's behaviour; the ready services do not use it.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from test_cli import Command

from handlers import registry
from pyserve.cli import build as cli_build

DEADLINE = 10.0


def test_a_datagram_handler_runs_in_the_loop_thread_by_default() -> None:
    assert cli_build.strategy_for(None, registry.get("echo", "udp")) == "sync"
    assert cli_build.strategy_for(None, registry.get("echo", "tcp")) == "thread"
    assert cli_build.strategy_for("thread", registry.get("echo", "udp")) == "thread"


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_datagram_flood_neither_spawns_threads_nor_starves_a_polite_client() -> None:
    command = Command("echo", "--bind", "udp://127.0.0.1:0")
    try:
        host, port = command.addresses()[0].removeprefix("udp://").rsplit(":", 1)
        address = (host, int(port))
        flooder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        polite = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        polite.settimeout(0.5)
        with flooder, polite:
            answered = 0
            most_threads = 0
            payload = b"x" * 64
            # 5,000 datagrams a second for two seconds (paced, bounded), and one
            # polite request every 20 ms in between.
            started = time.monotonic()
            sent = 0
            for step in range(100):
                due = started + step * 0.02
                while sent < (step + 1) * 100:
                    flooder.sendto(payload, address)
                    sent += 1
                polite.sendto(b"polite %d" % step, address)
                try:
                    while polite.recv(64) != b"polite %d" % step:
                        pass  # a late answer to an earlier step
                    answered += 1
                except socket.timeout:
                    pass
                most_threads = max(most_threads, _threads(command.process.pid))
                time.sleep(max(0.0, due + 0.02 - time.monotonic()))
        assert answered >= 90, f"only {answered} of 100 polite datagrams were answered"
        assert most_threads <= 4, f"{most_threads} threads: a thread per datagram?"
    finally:
        command.stop()
