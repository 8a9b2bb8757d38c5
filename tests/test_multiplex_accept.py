"""MultiplexingMixIn: the I/O thread accepts while ``serve_forever()`` runs.

The fault matrix (tests/test_faults_*.py) runs the ``multiplex-io`` strategy,
where the I/O thread accepts from the first connection on, through every hook
fault, accept back-off, drain and races. What is particular to the hand-over of
the listener between the serve loop and the I/O thread is proved here: who
runs the hooks, a hold of the gate stops the I/O thread until it is released,
a drain serves what queued while the I/O thread was busy, shutdown() gives the
listener back to the loop at once, and a listener that fails ends
``serve_forever()`` loudly.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from typing import Any, Optional

import pytest
from conftest import TIMEOUT, recv_exactly, wait_until
from faults import start_io_thread

import pyserve
from pyserve.lifecycle.gate import GateState
from pyserve.multiplex.server import IO_ACCEPTS
from pyserve.testing import read_until_eof

LOCAL = ("127.0.0.1", 0)


class LineEcho(pyserve.ConnectionHandler[Any]):
    """Echo one line, then close."""

    def connection_made(self) -> None:
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.buffer.endswith(b"\n"):
            self.write(self.buffer)
            self.close()


class Serving:
    """``serve_forever()`` in a thread, what it raised, and a bounded stop."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._serve, name="test serve_forever")
        self.thread.start()
        wait_until(server._loop_running.is_set)

    def _serve(self) -> None:
        try:
            self.server.serve_forever(poll_interval=0.05)
        except BaseException as exc:  # what the test checks
            self.error = exc

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


def echo(address: Any, payload: bytes = b"ping\n") -> bytes:
    with socket.create_connection(address, timeout=TIMEOUT) as client:
        client.sendall(payload)
        return read_until_eof(client)


def io_accepting(server: Any) -> bool:
    io_loop = server._io
    return io_loop is not None and io_loop.listener_fd == server.fileno()


def test_the_io_thread_runs_the_accept_hooks_serially_and_the_loop_holds_the_listener() -> None:
    threads: list[tuple[str, str]] = []

    class Recorded(pyserve.MultiplexingTCPServer):
        def get_request(self) -> Any:
            threads.append(("get_request", threading.current_thread().name))
            return super().get_request()

        def verify_request(self, request: Any, client_address: Any) -> bool:
            threads.append(("verify_request", threading.current_thread().name))
            return True

    server = Recorded(LOCAL, LineEcho)
    serving = Serving(server)
    try:
        assert echo(server.server_address, b"first\n") == b"first\n"  # starts the I/O thread
        wait_until(lambda: io_accepting(server))
        assert server.accept_gate.holds() == {IO_ACCEPTS}
        for index in range(5):
            assert echo(server.server_address, b"%d\n" % index) == b"%d\n" % index
    finally:
        serving.stop()
        server.server_close()
    assert threads[:2] == [("get_request", "test serve_forever"),
                           ("verify_request", "test serve_forever")]
    assert set(threads[2:]) == {("get_request", "pyserve-io"), ("verify_request", "pyserve-io")}
    assert server.accept_gate.holds() == frozenset()


def test_accept_in_io_thread_false_keeps_every_accept_in_the_loop() -> None:
    names: list[str] = []

    class InLoop(pyserve.MultiplexingTCPServer):
        accept_in_io_thread = False

        def verify_request(self, request: Any, client_address: Any) -> bool:
            names.append(threading.current_thread().name)
            return True

    server = InLoop(LOCAL, LineEcho)
    serving = Serving(server)
    try:
        for _ in range(3):
            assert echo(server.server_address) == b"ping\n"
        assert server.accept_gate.holds() == frozenset()
    finally:
        serving.stop()
        server.server_close()
    assert names == ["test serve_forever"] * 3


def test_a_hold_stops_the_io_thread_accepting_until_it_is_released() -> None:
    server = pyserve.MultiplexingTCPServer(LOCAL, LineEcho)
    start_io_thread(server)
    serving = Serving(server)
    try:
        wait_until(lambda: io_accepting(server))
        server.accept_gate.hold("test-limit")
        wait_until(lambda: not io_accepting(server))
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
            client.sendall(b"held\n")  # completes in the kernel's backlog
            client.settimeout(0.3)
            with pytest.raises(socket.timeout):
                client.recv(64)  # nobody accepts while the gate is held
            assert server.stats.accepted == 0
            client.settimeout(TIMEOUT)
            server.accept_gate.release("test-limit")
            assert recv_exactly(client, 5) == b"held\n"
        assert io_accepting(server)
    finally:
        serving.stop()
        server.server_close()


def test_the_connection_limit_applies_when_the_io_thread_accepts() -> None:
    class Limited(pyserve.MultiplexingTCPServer):
        max_connections = 2

    server = Limited(LOCAL, LineEcho)
    start_io_thread(server)
    serving = Serving(server)
    try:
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as one, \
                socket.create_connection(server.server_address, timeout=TIMEOUT) as two:
            wait_until(lambda: len(server.registry) == 2)
            with socket.create_connection(server.server_address, timeout=TIMEOUT) as three:
                assert read_until_eof(three) == b""  # refused: closed at once
            for client in one, two:
                client.sendall(b"in\n")
                assert read_until_eof(client) == b"in\n"
        assert server.stats.rejected == 1
        assert echo(server.server_address) == b"ping\n"  # room again
    finally:
        serving.stop()
        server.server_close()


def test_drain_serves_what_queued_while_the_io_thread_was_busy() -> None:
    """The I/O thread is stuck in verify_request() (a slow check) while three
    clients complete their handshake; drain's barrier does not wait for a hook
    that is past the accept path, takes the queued connections on and serves
    them once the I/O thread is free; then the listener is closed."""
    busy, release = threading.Event(), threading.Event()

    class Stuck(pyserve.MultiplexingTCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            if not busy.is_set():
                busy.set()
                release.wait(TIMEOUT)
            return True

    server = Stuck(LOCAL, LineEcho)
    start_io_thread(server)
    serving = Serving(server)
    clients: list[socket.socket] = []
    try:
        wait_until(lambda: io_accepting(server))
        first = socket.create_connection(server.server_address, timeout=TIMEOUT)
        clients.append(first)
        assert busy.wait(TIMEOUT)
        for _ in range(3):
            clients.append(socket.create_connection(server.server_address, timeout=TIMEOUT))
        for client in clients:
            client.sendall(b"queued\n")
        threading.Timer(0.2, release.set).start()
        report = server.drain(TIMEOUT)
        assert [read_until_eof(client) for client in clients] == [b"queued\n"] * 4
        assert report.forced == 0
        assert report.completed == 4
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(server.server_address, timeout=TIMEOUT).close()
        assert server.accept_gate.state is GateState.CLOSED
    finally:
        release.set()
        for client in clients:
            client.close()
        serving.stop()
        server.server_close()


def test_shutdown_is_prompt_and_gives_the_listener_back_to_the_loop() -> None:
    server = pyserve.MultiplexingTCPServer(LOCAL, LineEcho)
    start_io_thread(server)
    serving = Serving(server)
    try:
        wait_until(lambda: io_accepting(server))
        assert echo(server.server_address) == b"ping\n"
        started = time.monotonic()
        server.shutdown()
        assert time.monotonic() - started < 1.0  # milliseconds; generous for CI
        serving.thread.join(TIMEOUT)
        assert serving.error is None
        wait_until(lambda: not io_accepting(server))
        assert server.accept_gate.holds() == frozenset()
        # Nobody accepts between two serve_forever() calls; the next one does.
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
            client.sendall(b"waited\n")
            client.settimeout(0.3)
            with pytest.raises(socket.timeout):
                client.recv(64)
            client.settimeout(TIMEOUT)
            serving = Serving(server)
            assert read_until_eof(client) == b"waited\n"
        wait_until(lambda: io_accepting(server))
    finally:
        serving.stop()
        server.server_close()
    assert not [t for t in threading.enumerate() if t.name == "pyserve-io"]


def test_a_listener_that_fails_in_the_io_thread_ends_serve_forever_loudly() -> None:
    class Broken(pyserve.MultiplexingTCPServer):
        broken = False

        def get_request(self) -> Any:
            if self.broken:
                raise OSError(errno.EBADF, "Bad file descriptor")
            return super().get_request()

    server = Broken(LOCAL, LineEcho)
    start_io_thread(server)
    serving = Serving(server)
    try:
        wait_until(lambda: io_accepting(server))
        assert echo(server.server_address) == b"ping\n"
        server.broken = True
        with socket.create_connection(server.server_address, timeout=TIMEOUT):
            serving.thread.join(TIMEOUT)
        assert not serving.thread.is_alive(), "alive after its listener failed"
        assert isinstance(serving.error, OSError)
        assert serving.error.errno == errno.EBADF
        assert not io_accepting(server)
        assert server.accept_gate.holds() == frozenset()  # no hold outlives the loop
    finally:
        serving.stop()
        server.server_close()


@pytest.mark.parametrize("blocking", [True, False])
def test_an_adopted_listener_is_accepted_in_the_io_thread_only_if_non_blocking(
    blocking: bool,
) -> None:
    """Another process may share an adopted listener (prefork's are non-blocking
    for that reason): when it is blocking, an accept() after that process took
    the connection would block the thread that serves every connection, so the
    serve loop keeps accepting."""
    listener = socket.socket()
    listener.bind(LOCAL)
    listener.listen(16)
    os.set_blocking(listener.fileno(), blocking)  # the Python timeout stays None
    names: list[str] = []

    class Adopted(pyserve.MultiplexingTCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            names.append(threading.current_thread().name)
            return True

    server = Adopted.from_socket(listener, LineEcho)
    start_io_thread(server)
    serving = Serving(server)
    try:
        for _ in range(3):
            assert echo(server.server_address) == b"ping\n"
    finally:
        serving.stop()
        server.server_close()
    expected = "test serve_forever" if blocking else "pyserve-io"
    assert names == [expected] * 3
