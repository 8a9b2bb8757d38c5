"""ThreadPoolMixIn with workers that accept: no hand-off, same contract.

On Linux, while ``serve_forever()`` runs, idle pool workers wait on the listener
themselves (epoll, EPOLLEXCLUSIVE) and run the whole request path. These tests
pin down what that must keep: the hook order in one thread, backpressure through
the kernel backlog, exact connection limits, accept back-off, a shutdown after
which nobody accepts, and a restored listener.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import sys
import threading

import pytest
from conftest import Echo, held_clients, held_handler, round_trip, wait_until

import pyserve
from pyserve.pool import accept as pool_accept
from pyserve.testing import serving

DEADLINE = 10.0

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(select, "epoll"),
    reason="workers accept only where epoll has EPOLLEXCLUSIVE (Linux)",
)


class WorkersAcceptPool(pyserve.ThreadPoolTCPServer):
    """The opt-in mode under test: idle workers wait on the listener."""

    workers_accept = True


class Traced(WorkersAcceptPool):
    """Records which thread ran each hook."""

    def __init__(self, *args, **kwargs) -> None:
        self.trace: list[tuple[str, str]] = []
        super().__init__(*args, **kwargs)

    def get_request(self):
        request = super().get_request()
        self.trace.append(("get_request", threading.current_thread().name))
        return request

    def verify_request(self, request, client_address) -> bool:
        self.trace.append(("verify_request", threading.current_thread().name))
        return True

    def process_request(self, request, client_address) -> None:
        self.trace.append(("process_request", threading.current_thread().name))
        super().process_request(request, client_address)

    def finish_request(self, request, client_address) -> None:
        self.trace.append(("finish_request", threading.current_thread().name))
        super().finish_request(request, client_address)


def test_a_worker_runs_the_whole_request_path_and_the_loop_leaves_the_listener() -> None:
    server = Traced(("127.0.0.1", 0), Echo, max_workers=4)
    with serving(server):
        assert "pool-workers-accept" in server._accept_holds  # the loop does not watch it
        assert round_trip(server.server_address, b"ping") == b"ping"
        wait_until(lambda: server.stats.finished == 1)
    hooks = [hook for hook, _ in server.trace]
    assert hooks == ["get_request", "verify_request", "process_request", "finish_request"]
    threads = {thread for _, thread in server.trace}
    assert len(threads) == 1
    assert threads.pop().startswith("pyserve-pool-")


def test_by_default_workers_accept_when_the_accept_hooks_are_pyserves_own() -> None:
    server = pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), Echo, max_workers=4)
    assert server.workers_accept is None
    with serving(server):
        assert "pool-workers-accept" in server._accept_holds  # workers wait on it
        assert round_trip(server.server_address, b"ping") == b"ping"
        wait_until(lambda: server.stats.finished == 1)


def _accept_hook_overrides() -> list[object]:
    def verify_request(self, request, client_address) -> bool:
        self.trace.append(("verify_request", threading.current_thread().name))
        return True

    def process_request(self, request, client_address) -> None:
        self.trace.append(("process_request", threading.current_thread().name))
        pyserve.ThreadPoolTCPServer.process_request(self, request, client_address)

    def get_request(self):
        request = pyserve.ThreadPoolTCPServer.get_request(self)
        self.trace.append(("get_request", threading.current_thread().name))
        return request

    def handle_request_noblock(self) -> None:
        self.trace.append(("_handle_request_noblock", threading.current_thread().name))
        pyserve.ThreadPoolTCPServer._handle_request_noblock(self)

    hooks = {
        "get_request": get_request,
        "verify_request": verify_request,
        "process_request": process_request,
        "_handle_request_noblock": handle_request_noblock,
    }
    params = [pytest.param(name, {name: hook}, False, id=name) for name, hook in hooks.items()]
    params.append(pytest.param("verify_request", {"verify_request": verify_request}, True,
                               id="verify_request-on-the-instance"))
    return params


@pytest.mark.parametrize(("hook", "override", "on_instance"), _accept_hook_overrides())
def test_by_default_an_overridden_accept_hook_runs_in_the_loop_thread_as_in_the_stdlib(
    hook: str, override: dict, on_instance: bool
) -> None:
    """Code written for the stdlib may assume its accept hooks run one at a time in
    one thread; the default pool keeps that for any hook it did not write itself."""
    server_class = pyserve.ThreadPoolTCPServer
    if not on_instance:
        server_class = type("Overridden", (server_class,), override)
    server = server_class(("127.0.0.1", 0), Echo, max_workers=4)
    server.trace = []
    if on_instance:
        for name, function in override.items():
            setattr(server, name, function.__get__(server))
    with serving(server):
        assert "pool-workers-accept" not in server._accept_holds  # the loop watches it
        assert round_trip(server.server_address, b"ping") == b"ping"
        wait_until(lambda: server.stats.finished == 1)
    threads = {thread for name, thread in server.trace if name == hook}
    assert threads, server.trace
    assert not any(thread.startswith("pyserve-pool-") for thread in threads), threads


def test_without_workers_accept_the_loop_accepts_and_hands_over() -> None:
    server = Traced(("127.0.0.1", 0), Echo, max_workers=4)
    server.workers_accept = False
    with serving(server):
        assert "pool-workers-accept" not in server._accept_holds
        assert round_trip(server.server_address, b"ping") == b"ping"
        wait_until(lambda: server.stats.finished == 1)
    accepted_in = dict(server.trace)
    assert not accepted_in["get_request"].startswith("pyserve-pool-")
    assert accepted_in["finish_request"].startswith("pyserve-pool-")


def test_busy_workers_leave_new_connections_in_the_backlog() -> None:
    release = threading.Event()

    held = held_handler(release, b"done")
    baseline = threading.active_count()
    server = WorkersAcceptPool(("127.0.0.1", 0), held, max_workers=1)
    with serving(server):
        with held_clients(server.server_address, 4, release) as clients:
            # in_flight() counts the connection from admission on; wait until its
            # worker has started it (admitted-but-queued is a brief state on PyPy).
            wait_until(lambda: server.stats.active == 1)
            # Its only worker is busy: nobody accepts; three wait in the kernel backlog.
            assert server.stats.accepted == 1
            assert server.stats.queued == 0
            assert threading.active_count() <= baseline + 2  # the loop and one worker
            release.set()
            assert [c.recv(10) for c in clients] == [b"done"] * 4
        wait_until(lambda: server.stats.finished == 4)
    assert server.stats.rejected == 0


def test_pool_grows_to_max_workers_on_demand() -> None:
    release = threading.Event()

    held = held_handler(release, b"done")
    server = WorkersAcceptPool(("127.0.0.1", 0), held, max_workers=5)
    with serving(server), held_clients(server.server_address, 8, release) as clients:
        wait_until(lambda: len(server.in_flight()) == 5)
        assert len(server._workers) == 5
        release.set()
        assert [c.recv(10) for c in clients] == [b"done"] * 8


def epoll_descriptors() -> int:
    return sum(
        os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventpoll]"
        for name in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{name}")
    )


def test_idle_workers_beyond_the_accept_slots_park_and_are_recruited_again() -> None:
    release = threading.Event()
    held = held_handler(release, b"done")
    server = WorkersAcceptPool(("127.0.0.1", 0), held, max_workers=6)
    slots = server._accept_slots
    assert slots < 6
    epolls_before = epoll_descriptors()
    with serving(server):
        for turn in (1, 2):
            release.clear()
            with held_clients(server.server_address, 6, release) as clients:
                # Turn 2 reaches six only if the parked workers are sent back.
                wait_until(lambda: len(server.in_flight()) == 6)
                assert len(server._workers) == 6
                release.set()
                assert [c.recv(10) for c in clients] == [b"done"] * 6
            wait_until(lambda done=6 * turn: server.stats.finished == done)
            # Idle: only `slots` workers wait on the listener; the others park.
            wait_until(lambda: (len(server._in_accept), len(server._idle)) == (slots, 6 - slots))
            assert epoll_descriptors() == epolls_before + slots
        assert round_trip(server.server_address) == b"done"
    assert epoll_descriptors() == epolls_before  # server_close() closed the slots


def serve_in_thread(server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    wait_until(server._loop_running.is_set)
    return thread


def test_after_shutdown_nobody_accepts_and_serving_again_resumes() -> None:
    server = WorkersAcceptPool(("127.0.0.1", 0), Echo, max_workers=3)
    fd = server.fileno()
    assert os.get_blocking(fd)
    try:
        thread = serve_in_thread(server)
        assert not os.get_blocking(fd)  # a lost race must not block a worker
        assert round_trip(server.server_address, b"ping") == b"ping"
        server.shutdown()
        thread.join(DEADLINE)
        assert os.get_blocking(fd)  # restored
        assert server._in_accept == {}
        accepted = server.stats.accepted
        with socket.create_connection(server.server_address, timeout=DEADLINE) as late:
            late.sendall(b"late")
            assert server.stats.accepted == accepted  # it waits in the backlog
            thread = serve_in_thread(server)
            assert late.recv(10) == b"late"
            server.shutdown()
            thread.join(DEADLINE)
    finally:
        server.server_close()


@pytest.mark.parametrize("attempt", range(3))
def test_limits_hold_exactly_when_workers_accept_at_once(attempt: int) -> None:
    release = threading.Event()

    held = held_handler(release)
    server = WorkersAcceptPool(("127.0.0.1", 0), held, max_workers=8)
    server.max_connections_per_client = 2
    with serving(server), held_clients(server.server_address, 8, release):
        wait_until(lambda: server.stats.accepted == 8)
        wait_until(lambda: server.stats.rejected == 6)
        assert len(server.in_flight()) == 2


def test_accept_backoff_from_a_worker_pauses_and_recovers(caplog) -> None:
    failures = [3]

    class Failing(WorkersAcceptPool):
        accept_backoff_initial = 0.001

        def get_request(self):
            if failures[0]:
                failures[0] -= 1
                raise OSError(errno.EMFILE, "Too many open files")
            return super().get_request()

    server = Failing(("127.0.0.1", 0), Echo, max_workers=2)
    with caplog.at_level(logging.INFO, logger="pyserve"), serving(server):
        assert round_trip(server.server_address, b"ping") == b"ping"
    assert failures == [0]
    messages = [r.getMessage() for r in caplog.records if r.name == "pyserve"]
    assert len([m for m in messages if "accept() failed" in m]) == 1
    assert len([m for m in messages if "works again" in m]) == 1
    assert "accept-backoff" not in server._accept_holds


def test_unix_stream_pool_workers_accept(tmp_path) -> None:
    path = str(tmp_path / "pool.sock")
    class UnixWorkersAccept(pyserve.ThreadPoolUnixStreamServer):
        workers_accept = True

    server = UnixWorkersAccept(path, Echo, max_workers=2)
    with serving(server):
        assert "pool-workers-accept" in server._accept_holds
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(DEADLINE)
            client.connect(path)
            client.sendall(b"unix")
            assert client.recv(10) == b"unix"


def test_drain_stops_workers_accepting() -> None:
    server = WorkersAcceptPool(("127.0.0.1", 0), Echo, max_workers=3)
    with serving(server):
        assert round_trip(server.server_address, b"ping") == b"ping"
        report = server.drain(1.0)
        assert report.stragglers == ()
        assert server._in_accept == {}
        assert not server._gate_open


def test_a_listener_that_fails_in_a_worker_ends_serve_forever_with_the_error() -> None:
    server = WorkersAcceptPool(("127.0.0.1", 0), Echo, max_workers=2)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server.serve_forever()
        except OSError as exc:
            failure.append(exc)

    try:
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        wait_until(server._loop_running.is_set)
        wait_until(lambda: bool(server._in_accept))
        server.socket.shutdown(socket.SHUT_RDWR)  # a listener that stops listening
        thread.join(DEADLINE)
        assert not thread.is_alive()
        assert len(failure) == 1
        assert failure[0].errno == errno.EINVAL
    finally:
        server.server_close()


class Once(pyserve.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(self.request.recv(100))


class Woken:
    """A slot's epoll, as it returns when both the gate and a connection woke it."""

    def __init__(self, events) -> None:
        self.events = events

    def poll(self):
        return self.events

    def close(self) -> None:
        pass


def woken_slot(server, events) -> pool_accept._Slot:
    slot = pool_accept._Slot.__new__(pool_accept._Slot)
    slot.listener_fd, slot.poller = server.fileno(), Woken(events)
    return slot


def test_a_worker_woken_for_a_connection_takes_it_even_if_the_gate_just_closed() -> None:
    # EPOLLEXCLUSIVE woke only this worker: leaving the connection would strand it.
    server = WorkersAcceptPool(("127.0.0.1", 0), Once, max_workers=1)
    gate = socket.socketpair()
    try:
        server._gate, server._gate_open = gate, False  # closed: a drain just began
        server._listener_fd = server.fileno()
        worker = pool_accept._Worker()
        both = [(gate[0].fileno(), select.EPOLLIN), (server.fileno(), select.EPOLLIN)]
        worker.slot = woken_slot(server, both)
        with socket.create_connection(server.server_address, timeout=DEADLINE) as client:
            client.sendall(b"taken")
            server._in_accept[threading.get_ident()] = worker
            server._accept_turn(worker)  # runs the request here, in this thread
            assert client.recv(10) == b"taken"
        assert server.stats.finished == 1
        # Woken by the gate alone, a worker takes nothing.
        worker.slot = woken_slot(server, [(gate[0].fileno(), select.EPOLLIN)])
        server._accept_turn(worker)
        assert server.stats.accepted == 1
    finally:
        server._gate = None
        for end in gate:
            end.close()
        server.server_close()


def test_a_worker_between_two_requests_is_free_not_saturated(caplog) -> None:
    """The pool's one worker has finished a request but not yet returned to the
    listener (held there by an observer of ``finished``, which runs in it): it is
    neither idle nor accepting, yet holds no request. The pool is not saturated,
    and a client that connects meanwhile brings no "saturated" warning (it once
    did: busy was read as "neither idle nor accepting")."""
    server = pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), Echo, max_workers=1)
    between, go_on = threading.Event(), threading.Event()

    def hold_the_worker(event) -> None:
        if event.kind == "finished" and not between.is_set():
            between.set()
            go_on.wait(DEADLINE)

    server.add_observer(hold_the_worker)
    with caplog.at_level(logging.WARNING, logger="pyserve"), serving(server):
        try:
            assert round_trip(server.server_address, b"first") == b"first"
            assert between.wait(DEADLINE)
            assert not server.saturated()
            with socket.create_connection(server.server_address, timeout=DEADLINE) as second:
                # The loop sees it waiting in the backlog (the pool asked it to look).
                wait_until(lambda: server.stats.accepted == 1 and not server._backlog_watched)
                go_on.set()
                second.sendall(b"second")
                assert second.recv(16) == b"second"
        finally:
            go_on.set()
    assert not [r for r in caplog.records if "saturated" in r.getMessage()]
