"""Prefork: real supervisor processes, real workers, real signals.

Each test runs tests/prefork_scripts/supervise.py in a subprocess (so signals
never reach pytest), learns the port from its ``PORT`` line and follows the
supervisor's log lines on its stdout: every wait is on a line, with a deadline.
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
from pathlib import Path

import pytest

from pyserve import TCPServer, ThreadingTCPServer
from pyserve.prefork import Prefork

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="prefork needs os.fork")

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
        self.port = int(self.expect(r"^PORT (\d+)").group(1))

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


def alive(pid: int) -> bool:
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


@pytest.fixture
def start() -> Iterator[list[Supervisor]]:
    started: list[Supervisor] = []
    yield started
    for supervisor in started:
        supervisor.kill_everything()


def launch(started: list[Supervisor], *args: str) -> Supervisor:
    supervisor = Supervisor(*args)
    started.append(supervisor)
    return supervisor


def test_killed_worker_is_replaced_and_the_port_keeps_serving(start: list[Supervisor]) -> None:
    supervisor = launch(start, "--workers", "2")
    victim, survivor = supervisor.ready_workers(2)
    os.kill(victim, signal.SIGKILL)
    answered_meanwhile = [ask_pid(supervisor.port) for _ in range(10)]
    supervisor.expect(rf"worker {victim} killed by SIGKILL; restarting slot")
    replacement = int(supervisor.expect(r"worker (\d+) ready").group(1))
    answered_after = {ask_pid(supervisor.port) for _ in range(20)}
    assert victim not in answered_after
    assert answered_after <= {survivor, replacement}
    assert len(answered_meanwhile) == 10
    assert replacement not in (victim, survivor)
    assert alive(replacement)


def test_sigterm_lets_the_request_in_flight_finish_then_exits_zero(
    start: list[Supervisor],
) -> None:
    supervisor = launch(start, "--workers", "1")
    (worker,) = supervisor.ready_workers(1)
    with socket.create_connection(("127.0.0.1", supervisor.port), timeout=DEADLINE) as client:
        reader = client.makefile("rb")
        client.sendall(b"hold\n")
        assert reader.readline() == b"holding\n"
        supervisor.signal(signal.SIGTERM)
        supervisor.expect(rf"worker {worker} draining")
        client.sendall(b"go on\n")
        assert reader.readline() == b"released\n"
        reader.close()
    assert supervisor.wait() == 0
    assert not alive(worker)


def test_run_restores_the_signal_handlers_it_installed(start: list[Supervisor]) -> None:
    supervisor = launch(start, "--workers", "1")
    supervisor.ready_workers(1)
    supervisor.signal(signal.SIGINT)
    supervisor.expect(r"^HANDLERS restored$")
    assert supervisor.wait() == 0


def test_a_second_signal_kills_the_workers_at_once(start: list[Supervisor]) -> None:
    supervisor = launch(start, "--workers", "1", "--drain-timeout", "300")
    (worker,) = supervisor.ready_workers(1)
    with socket.create_connection(("127.0.0.1", supervisor.port), timeout=DEADLINE) as client:
        client.sendall(b"hold\n")
        assert client.recv(100) == b"holding\n"
        supervisor.signal(signal.SIGTERM)
        supervisor.expect(rf"worker {worker} draining")
        supervisor.signal(signal.SIGTERM)
        supervisor.expect(r"SIGTERM again: killing 1 workers now")
        supervisor.expect(rf"worker {worker} exited \(killed by SIGKILL\)")
        assert supervisor.wait() == 1  # well before the 300 s drain timeout
        assert client.recv(100) == b""  # the held connection ended with its worker
    assert not alive(worker)


def test_sighup_rolls_every_worker_without_refusing_a_connection(
    start: list[Supervisor],
) -> None:
    supervisor = launch(start, "--workers", "2")
    old_workers = set(supervisor.ready_workers(2))
    answers: list[tuple[float, int]] = []
    failures: list[BaseException] = []
    completed_at: list[float] = []  # set once the supervisor reports the roll done
    enough_after_roll = threading.Event()

    def client_loop() -> None:
        for _ in range(20_000):  # bounded in count, and in time by the join below
            try:
                answers.append((time.monotonic(), ask_pid(supervisor.port)))
            except OSError as exc:
                failures.append(exc)
            if completed_at and sum(t > completed_at[0] for t, _ in answers) >= 20:
                enough_after_roll.set()
                return

    client = threading.Thread(target=client_loop)
    client.start()
    rolled_at = time.monotonic()
    supervisor.signal(signal.SIGHUP)
    pids = supervisor.expect(r"roll complete: workers \[(.*)\]").group(1)
    new_workers = {int(pid) for pid in pids.split(", ")}
    completed_at.append(time.monotonic())
    assert enough_after_roll.wait(DEADLINE)
    client.join(DEADLINE)
    assert failures == []
    assert new_workers.isdisjoint(old_workers)
    assert len(new_workers) == 2
    assert {pid for t, pid in answers if t > completed_at[0]} <= new_workers
    assert sum(t > completed_at[0] for t, _ in answers) >= 20
    assert any(rolled_at < t < completed_at[0] for t, _ in answers), "no request during the roll"
    for pid in old_workers:
        assert not alive(pid)


def test_a_worker_crashing_in_a_loop_is_restarted_with_doubling_capped_backoff(
    start: list[Supervisor],
) -> None:
    supervisor = launch(start, "--workers", "1", "--broken", "--backoff-max", "0.4")
    delays = [
        float(supervisor.expect(r"exited with status 1; restarting slot 0 in ([\d.]+)s").group(1))
        for _ in range(6)
    ]
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]


def test_port_zero_is_resolved_before_any_worker_starts() -> None:
    with Prefork(TCPServer, ("127.0.0.1", 0), None, workers=3) as supervisor:
        host, port = supervisor.server_address
        assert host == "127.0.0.1"
        assert port != 0
        # The port queues connections from now on, before any worker exists.
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE):
            pass


def test_run_outside_the_main_thread_is_refused() -> None:
    errors: list[BaseException] = []
    with Prefork(ThreadingTCPServer, ("127.0.0.1", 0), None, workers=1) as supervisor:

        def run() -> None:
            try:
                supervisor.run()
            except RuntimeError as exc:
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(DEADLINE)
    assert len(errors) == 1
    assert "main thread" in str(errors[0])


@pytest.mark.parametrize(
    ("option", "value"),
    [("workers", 0), ("drain_timeout", 0.0), ("restart_backoff_max", -1.0)],
)
def test_bad_arguments_raise_naming_the_value(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option):
        Prefork(TCPServer, ("127.0.0.1", 0), None, **{option: value})  # type: ignore[arg-type]


