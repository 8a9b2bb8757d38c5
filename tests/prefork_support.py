"""Helpers for the prefork tests: a supervisor in a subprocess, and clients for it.

A test runs tests/prefork_scripts/supervise.py in a subprocess (so signals never
reach pytest), learns the port (or Unix path) from its ``PORT`` (``PATH``) line and
follows the supervisor's log lines on its stdout: every wait is on a line, with a
deadline. :func:`supervisors` (used as a fixture by the test modules) kills, by pid,
whatever a test started and left alive.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "prefork_scripts" / "supervise.py"
ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 15.0  # generous: the machine is shared; these steps take milliseconds


class Supervisor:
    """A supervise.py process, its output lines, and the worker pids it reported."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.worker_pids: set[int] = set()
        threading.Thread(target=self._read, daemon=True).start()
        where = self.expect(r"^(PORT|PATH) (.+)$")
        self.port = int(where.group(2)) if where.group(1) == "PORT" else 0
        self.path = where.group(2) if where.group(1) == "PATH" else ""

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str, timeout: float = DEADLINE) -> re.Match[str]:
        """Wait for the next line matching ``pattern``; fail at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                output = "\n".join(self.seen)
                pytest.fail(f"no line matching {pattern!r}; output so far:\n{output}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(line)
            started = re.search(r"worker (\d+) starting", line)
            if started:
                self.worker_pids.add(int(started.group(1)))
            found = re.search(pattern, line)
            if found:
                return found

    def ready_workers(self, count: int) -> list[int]:
        return [int(self.expect(r"worker (\d+) ready").group(1)) for _ in range(count)]

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = DEADLINE) -> int:
        return self.process.wait(timeout)

    def kill_everything(self) -> None:
        """Teardown: kill what this test started and is still alive, by pid."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(DEADLINE)
        for pid in self.worker_pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextmanager
def supervisors() -> Iterator[list[Supervisor]]:
    """A list to :func:`launch` supervisors into; on exit, kill what is left of them."""
    started: list[Supervisor] = []
    try:
        yield started
    finally:
        for supervisor in started:
            supervisor.kill_everything()


def launch(started: list[Supervisor], *args: str) -> Supervisor:
    supervisor = Supervisor(*args)
    started.append(supervisor)
    return supervisor


def alive(pid: int) -> bool:
    """True while ``pid`` exists (a zombie counts: its parent has not reaped it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def ask_pid(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as client:
        client.sendall(b"pid\n")
        with client.makefile("rb") as reader:
            return int(reader.readline())


def unix_client(path: str) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(DEADLINE)
    try:
        client.connect(path)
    except BaseException:
        client.close()
        raise
    return client


def reuse_port_mode(supervisor: Supervisor, workers: int) -> bool:
    """Read the supervisor's first log line: one socket per worker, or one shared."""
    mode = supervisor.expect(rf"supervising {workers} workers on .* \((.+)\)$").group(1)
    return mode == "SO_REUSEPORT"
