"""The accept gate: one owner of "is the listener watched?", and drain's barrier."""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable

import pytest
from conftest import Echo, round_trip

import pyserve
from pyserve.lifecycle.gate import AcceptGate, GateState
from pyserve.testing import serving

DEADLINE = 10.0


class OneLine(pyserve.StreamRequestHandler):
    """Answer one line, then end the request."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def test_holds_are_per_reason_and_the_last_release_reopens() -> None:
    gate = AcceptGate()
    assert gate.state is GateState.OPEN
    gate.hold("backoff")
    gate.hold("backoff")  # the same reason twice is one hold
    gate.hold("pool-full")
    assert gate.state is GateState.HELD
    gate.release("backoff")
    assert gate.holds() == {"pool-full"}
    gate.release("nobody-held-this")
    gate.release("pool-full")
    assert gate.state is GateState.OPEN


def test_close_is_final_for_holds_and_refuses_the_accept_path() -> None:
    gate = AcceptGate()
    assert gate.close("draining") is True
    assert gate.close("server_close") is False  # the first close wins
    gate.hold("x")
    gate.release("x")
    assert gate.state is GateState.CLOSED
    assert not gate.is_open
    assert gate.enter() is False


def test_every_change_is_announced_after_the_lock_is_released() -> None:
    gate = AcceptGate()
    seen: list[GateState] = []
    gate.subscribe(lambda: seen.append(gate.state))  # reads the gate: no deadlock
    gate.hold("a")
    gate.hold("a")  # no change, no announcement
    gate.release("a")
    gate.close("drain")
    assert seen == [GateState.HELD, GateState.OPEN, GateState.CLOSED]


def test_wait_quiet_waits_for_a_thread_in_the_accept_path() -> None:
    gate = AcceptGate()
    inside, leave = threading.Event(), threading.Event()

    def accepter() -> None:
        assert gate.enter()
        inside.set()
        leave.wait(DEADLINE)
        gate.leave()

    thread = threading.Thread(target=accepter)
    thread.start()
    assert inside.wait(DEADLINE)
    gate.close("draining")
    assert gate.wait_quiet(0.05) is False  # still inside
    leave.set()
    assert gate.wait_quiet(DEADLINE) is True
    thread.join(DEADLINE)


def test_wait_quiet_does_not_wait_for_the_calling_thread() -> None:
    gate = AcceptGate()
    assert gate.enter()  # e.g. a signal handler that drains, inside the accept path
    gate.close("draining")
    assert gate.wait_quiet(DEADLINE) is True
    gate.leave()


def test_concurrent_holds_and_releases_never_leave_the_listener_held() -> None:
    """Suspected race (issue 13, item 7): a worker's back-off hold interleaving
    with the loop's. Many threads hold and release their own reasons at once;
    afterwards the loop watches the listener again and serves a client."""
    server = pyserve.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    with serving(server):
        barrier = threading.Barrier(8)

        def churn(reason: str) -> None:
            barrier.wait(DEADLINE)
            for _ in range(500):
                server._hold_accept(reason)
                server._release_accept(reason)

        threads = [threading.Thread(target=churn, args=(f"r{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
        assert server.accept_gate.state is GateState.OPEN
        assert round_trip(server.server_address, b"still serving\n") == b"still serving\n"


def test_shutdown_from_a_signal_handler_on_the_serving_thread_never_deadlocks(
    run_scenario: Callable[..., Any],
) -> None:
    """Item 7: the signal lands while the serving thread holds the wake-up lock
    (here, deliberately: service_actions takes it and sleeps), and the handler
    calls shutdown(), which takes the same lock. Run in a subprocess: a deadlock
    is a timeout there, not a hung test run."""
    result = run_scenario(
        pyserve,
        """
        import signal
        stops = 0
        for attempt in range(5):
            server = socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler)

            def holding_the_wake_lock(server=server):
                with server._wake_lock:
                    time.sleep(0.02)  # the signal arrives in here

            server.service_actions = holding_the_wake_lock
            signal.signal(signal.SIGUSR1, lambda *_, server=server: server.shutdown())
            timer = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGUSR1))
            timer.start()
            server.serve_forever(poll_interval=0.001)
            timer.join()
            server.server_close()
            stops += 1
        report(stops=stops)
        """,
        timeout=30,
    )
    assert result.check() == {"stops": 5}


def test_drain_closes_the_listener_so_new_connections_are_refused() -> None:
    server = pyserve.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    with serving(server):
        address = server.server_address
        assert round_trip(address, b"before\n") == b"before\n"
        server.drain(1.0)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=DEADLINE).close()
    assert server.accept_gate.state is GateState.CLOSED


def test_drain_counts_a_request_still_inside_a_slow_verify_request() -> None:
    """Item 3: between accept() and the strategy (a reverse-DNS check in
    verify_request, say) a request is already in the registry, so drain waits."""
    verifying, finish = threading.Event(), threading.Event()

    class SlowVerify(pyserve.ThreadingTCPServer):
        def verify_request(self, request: object, client_address: object) -> bool:
            verifying.set()
            finish.wait(DEADLINE)
            return True

    server = SlowVerify(("127.0.0.1", 0), OneLine)
    with serving(server), socket.create_connection(server.server_address) as client:
        client.settimeout(DEADLINE)
        client.sendall(b"late\n")
        assert verifying.wait(DEADLINE)
        assert len(server.registry) == 1
        threading.Timer(0.2, finish.set).start()
        report = server.drain(DEADLINE)
        assert client.recv(64) == b"late\n"
        assert report.completed == 1
        assert report.forced == 0
        assert not server.in_flight()


def test_drain_serves_connections_the_kernel_had_already_queued() -> None:
    """Queued connections completed their handshake: they are served, not reset."""
    busy, release = threading.Event(), threading.Event()

    class Gatekeeper(pyserve.ThreadPoolTCPServer):
        def verify_request(self, request: object, client_address: object) -> bool:
            if not busy.is_set():
                busy.set()
                release.wait(DEADLINE)  # the loop is stuck: others wait in the backlog
            return True

    server = Gatekeeper(("127.0.0.1", 0), OneLine, max_workers=4)
    with serving(server):
        clients = [socket.create_connection(server.server_address) for _ in range(3)]
        try:
            for client in clients:
                client.settimeout(DEADLINE)
                client.sendall(b"queued\n")
            assert busy.wait(DEADLINE)
            threading.Timer(0.2, release.set).start()
            report = server.drain(DEADLINE)
            assert [client.recv(64) for client in clients] == [b"queued\n"] * 3
            assert report.forced == 0
        finally:
            for client in clients:
                client.close()
