"""Prefork: real supervisor processes, real workers, real signals.

Each test runs tests/prefork_scripts/supervise.py in a subprocess (so signals
never reach pytest) through the helpers of tests/prefork_support.py, and waits on
the supervisor's log lines, each with a deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefork_support import (
    DEADLINE,
    Supervisor,
    alive,
    ask_pid,
    launch,
    reuse_port_mode,
    supervisors,
    unix_client,
)

import pyserve
from pyserve import TCPServer, ThreadingTCPServer
from pyserve.prefork.backoff import RestartSchedule
from pyserve.prefork.sockets import Listeners
from pyserve.prefork.supervisor import Prefork

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="prefork needs os.fork")


def ask_pids_over_udp(port: int, clients: int) -> list[int]:
    """Send ``pid`` from ``clients`` sockets (distinct source ports); return the answers.

    Distinct source ports matter: with SO_REUSEPORT the kernel picks a worker's socket
    by hashing the datagram's addresses, so one client socket always meets one worker.
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(clients)]
    try:
        for client in sockets:
            client.settimeout(DEADLINE)
            client.sendto(b"pid", ("127.0.0.1", port))
        return [int(client.recv(100)) for client in sockets]
    finally:
        for client in sockets:
            client.close()


@pytest.fixture
def start() -> Iterator[list[Supervisor]]:
    with supervisors() as started:
        yield started


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


@pytest.mark.parametrize("kind", ["tcp", "pool"])
def test_sigterm_lets_the_request_in_flight_finish_then_exits_zero(
    start: list[Supervisor], kind: str
) -> None:
    supervisor = launch(start, "--workers", "1", "--kind", kind)
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


@pytest.mark.parametrize("kind", ["tcp", "pool"])
def test_sighup_rolls_every_worker_without_refusing_a_connection(
    start: list[Supervisor], kind: str
) -> None:
    supervisor = launch(start, "--workers", "2", "--kind", kind)
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


def test_udp_workers_each_answer_datagrams(start: list[Supervisor]) -> None:
    supervisor = launch(start, "--kind", "udp", "--workers", "3")
    per_worker_sockets = reuse_port_mode(supervisor, 3)
    workers = set(supervisor.ready_workers(3))
    answers = ask_pids_over_udp(supervisor.port, 30)
    assert len(answers) == 30
    assert set(answers) <= workers
    if per_worker_sockets:  # the kernel spreads 30 source ports over the 3 sockets
        assert len(set(answers)) >= 2


def test_udp_killed_worker_is_replaced_and_its_socket_keeps_its_datagrams(
    start: list[Supervisor],
) -> None:
    supervisor = launch(start, "--kind", "udp", "--workers", "2")
    per_worker_sockets = reuse_port_mode(supervisor, 2)
    victim, survivor = supervisor.ready_workers(2)
    os.kill(victim, signal.SIGKILL)
    supervisor.expect(rf"worker {victim} killed by SIGKILL; restarting slot")
    # Sent while the slot has no worker: datagrams for the victim's socket wait in
    # its queue (the supervisor holds it open) and the replacement answers them.
    answers = ask_pids_over_udp(supervisor.port, 30)
    replacement = int(supervisor.expect(r"worker (\d+) ready").group(1))
    assert replacement not in (victim, survivor)
    assert set(answers) <= {survivor, replacement}
    if per_worker_sockets:
        assert replacement in answers
    assert set(ask_pids_over_udp(supervisor.port, 10)) <= {survivor, replacement}
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0


@pytest.mark.parametrize("kind", ["unix", "unix-pool"])
def test_unix_stream_workers_share_one_inherited_socket(
    start: list[Supervisor], tmp_path: Path, kind: str
) -> None:
    path = str(tmp_path / "prefork.sock")
    supervisor = launch(start, "--kind", kind, "--path", path, "--workers", "2")
    assert supervisor.path == path
    assert not reuse_port_mode(supervisor, 2)
    workers = set(supervisor.ready_workers(2))
    # Each worker serves one connection at a time: while one holds a connection,
    # the next connection on the same path can only be accepted by the other.
    with unix_client(path) as first, first.makefile("rb") as first_reader:
        first.sendall(b"pid\nhold\n")
        busy = int(first_reader.readline())
        assert first_reader.readline() == b"holding\n"
        with unix_client(path) as second, second.makefile("rb") as second_reader:
            second.sendall(b"pid\n")
            other = int(second_reader.readline())
        first.sendall(b"go on\n")
        assert first_reader.readline() == b"released\n"
    assert {busy, other} == workers


def test_unix_socket_file_outlives_a_roll_and_is_removed_at_stop(
    start: list[Supervisor], tmp_path: Path
) -> None:
    path = str(tmp_path / "prefork.sock")
    supervisor = launch(start, "--kind", "unix", "--path", path, "--workers", "1")
    supervisor.ready_workers(1)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    supervisor.signal(signal.SIGHUP)  # the old worker drains and closes its server
    new_worker = int(supervisor.expect(r"roll complete: workers \[(\d+)\]").group(1))
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with unix_client(path) as client, client.makefile("rb") as reader:
        client.sendall(b"pid\n")
        assert int(reader.readline()) == new_worker
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    assert not os.path.exists(path)



def test_restart_backoff_starts_afresh_after_a_healthy_life() -> None:
    schedule = RestartSchedule(1, initial=0.1, maximum=1.0)
    assert schedule.take_due(0.0) == [0]  # every slot starts at once
    crash_loop = [schedule.record_exit(0, lived=0.01) for _ in range(6)]
    assert crash_loop == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert schedule.record_exit(0, lived=1.5) == 0.1  # it had outlived the maximum
    schedule.due_at(0, 5.0)
    assert schedule.moments() == [5.0]
    assert schedule.take_due(4.9) == []
    assert schedule.take_due(5.0) == [0]
    assert schedule.moments() == []


# -- Unix socket files: the same rules as the plain Unix servers ---------------------


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix-domain sockets here")
def test_prefork_listeners_replace_a_stale_unix_socket_file() -> None:
    path = os.path.join(tempfile.mkdtemp(dir="/tmp"), "s")
    UnixStreamServer = pyserve.UnixStreamServer  # noqa: N806 (a class; absent on Windows)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # leaves a stale socket file behind, as a crashed server does
    listeners = Listeners(UnixStreamServer, path, slots=2)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(path)  # the new listener owns the path
    finally:
        listeners.close()
    assert not os.path.exists(path)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix-domain sockets here")
def test_prefork_listeners_leave_a_successors_socket_file_alone() -> None:
    path = os.path.join(tempfile.mkdtemp(dir="/tmp"), "s")
    UnixStreamServer = pyserve.UnixStreamServer  # noqa: N806 (a class; absent on Windows)
    listeners = Listeners(UnixStreamServer, path, slots=1)
    os.unlink(path)
    successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        successor.bind(path)  # another server took the path meanwhile
        listeners.close()
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        successor.close()
        os.unlink(path)
