"""pyserve on free-threaded CPython (PEP 703): the GIL is really off, and the
objects shared between threads stay consistent without it.

The tox environment ``py313t`` sets ``PYSERVE_EXPECT_FREE_THREADING=1``; there the
first test insists that the interpreter runs without the GIL *after* the whole
test run's imports (an extension module without free-threading support turns the
GIL back on when it is imported, and the run would then prove nothing). The other
tests run everywhere: with the GIL they pass trivially often, without it they are
the ones that catch an unguarded read-modify-write.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

import pytest

import pyserve
from pyserve.testing import serving

TIMEOUT = 10.0
EXPECT_FREE_THREADING = os.environ.get("PYSERVE_EXPECT_FREE_THREADING") == "1"


@pytest.mark.skipif(not EXPECT_FREE_THREADING, reason="not the py313t environment")
def test_the_gil_is_off_in_the_free_threaded_environment() -> None:
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    assert is_gil_enabled is not None, f"{sys.version} is not a free-threaded build"
    assert not is_gil_enabled(), (
        "the GIL is enabled: an imported extension module re-enabled it "
        f"(modules loaded: {sorted(m for m in sys.modules if '.' not in m)})"
    )


class _Echo(pyserve.ConnectionHandler["pyserve.MultiplexingTCPServer"]):
    def data_received(self, data: bytes) -> None:
        self.write(data)


def test_call_soon_from_many_threads_runs_every_callback_once() -> None:
    threads, per_thread = 8, 500
    ran: list[int] = []  # appended in the I/O thread only
    done = threading.Event()
    total = threads * per_thread

    def record(number: int) -> None:
        ran.append(number)
        if len(ran) == total:
            done.set()

    with serving(pyserve.MultiplexingTCPServer(("127.0.0.1", 0), _Echo)) as server:
        start = threading.Barrier(threads)

        def submit(first: int) -> None:
            start.wait(TIMEOUT)
            for number in range(first, first + per_thread):
                server.call_soon(lambda number=number: record(number))

        workers = [
            threading.Thread(target=submit, args=(index * per_thread,))
            for index in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(TIMEOUT)
        assert done.wait(TIMEOUT), f"{len(ran)} of {total} callbacks ran"
    assert sorted(ran) == list(range(total))


def test_many_clients_at_once_are_each_counted_once() -> None:
    clients, exchanges = 16, 20
    with serving(pyserve.MultiplexingTCPServer(("127.0.0.1", 0), _Echo)) as server:
        host, port = server.server_address[:2]
        start = threading.Barrier(clients)
        failures: list[BaseException] = []

        def client(index: int) -> None:
            try:
                start.wait(TIMEOUT)
                with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
                    for exchange in range(exchanges):
                        message = f"{index}:{exchange};".encode()
                        sock.sendall(message)
                        received = b""
                        while len(received) < len(message):
                            chunk = sock.recv(len(message) - len(received))
                            assert chunk, "the server closed early"
                            received += chunk
                        assert received == message
            except BaseException as exc:  # reported by the main thread below
                failures.append(exc)

        workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(TIMEOUT * 2)
        assert not failures, failures
    stats = server.stats  # server_close() waited for every connection to end
    assert stats.accepted == clients
    assert stats.started == stats.finished == clients
    assert stats.active == 0
