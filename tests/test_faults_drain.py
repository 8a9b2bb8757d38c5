"""Drain under fault: what ``server.drain(grace)`` promises, on every strategy.

pyserve's drain (pyserve.lifecycle.drain, DESIGN "Live requests are tracked") is
a barrier: once it starts, the listener is closed (the kernel completes no
handshake nobody will serve, so a load balancer retries elsewhere), nothing is
left between ``accept()`` and the registry, requests in flight finish within the
grace period, and the whole drain is bounded by its deadline. The stdlib has no
drain, so these cells run on pyserve only:

* a connection accepted but still in a slow ``verify_request()`` (a reverse-DNS
  check, say) is in flight: drain waits for it and reports it;
* a ``connect()`` made during the drain is refused, not accepted and dropped;
* a drain of a handler that never ends returns within its deadline (``grace``
  then ``force_timeout``) plus a small margin, here and through the CLI's
  ``--drain-timeout``.
"""

from __future__ import annotations

import signal
import socket
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from faults import (
    HOST,
    STRATEGIES,
    TIMEOUT,
    Leaks,
    Running,
    build_server,
    client_socket,
    ready_then_echo_handler,
    server_has_read,
    wait_until,
)
from test_cli import Command, host_port

import pyserve

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads

ALL = list(STRATEGIES)
#: How long past its grace a drain of a request that never ends may take: the
#: force step (SHUT_RD, SIGTERM) and the report, on a loaded machine.
DRAIN_MARGIN = 1.5
FORCE_TIMEOUT = 0.25  # the force step's bound, as the CLI sets it


class Drain:
    """``server.drain(grace)`` in a thread: its report and when it returned."""

    def __init__(self, server: Any, grace: float, force_timeout: Optional[float] = None) -> None:
        self.report: Optional[pyserve.DrainReport] = None
        self.error: Optional[BaseException] = None
        self.started = time.monotonic()
        self.elapsed: Optional[float] = None
        self.thread = threading.Thread(
            target=self._run, args=(server, grace, force_timeout), daemon=True
        )
        self.thread.start()
        wait_until(server.draining.is_set, what="the drain to begin")

    def _run(self, server: Any, grace: float, force_timeout: Optional[float]) -> None:
        try:
            self.report = server.drain(grace, force_timeout)
        except BaseException as exc:
            self.error = exc
        self.elapsed = time.monotonic() - self.started

    def returned(self, within: float) -> bool:
        self.thread.join(within)
        return not self.thread.is_alive()


def _ready_client(address: Any) -> socket.socket:
    client = client_socket()
    client.connect(address)
    assert client.recv(6) == b"ready\n"  # the handler runs
    return client


def _refused(address: Any) -> bool:
    try:
        with socket.create_connection(address, timeout=1.0):
            return False  # accepted by the kernel: the listener is still open
    except ConnectionRefusedError:
        return True
    except OSError:
        return False  # timed out: a full backlog, still not refused


def _refused_soon(address: Any, drain: Drain, within: float = 2.0) -> bool:
    """Whether connect() is refused within ``within`` seconds of the drain's start
    (a few attempts, so a listener closed a moment after ``draining`` counts)."""
    deadline = time.monotonic() + within
    while True:
        if _refused(address):
            return True
        if time.monotonic() > deadline or drain.returned(0):
            return False
        time.sleep(0.1)  # a bounded poll between attempts, not a readiness wait


@pytest.mark.parametrize("strategy_name", ALL)
def test_drain_waits_for_a_connection_still_in_verify_request(strategy_name: str) -> None:
    """Bug 3: a connection between accept() and the registry (here in a slow
    verify_request) was invisible: drain() reported nothing in flight and returned
    while that request went on to run."""
    entered, release = threading.Event(), threading.Event()

    def slow_verify(self: Any, request: Any, client_address: Any) -> bool:
        entered.set()
        release.wait(TIMEOUT)
        return True

    strategy = STRATEGIES[strategy_name]
    leaks = Leaks()
    server = build_server(pyserve, strategy, extra={"verify_request": slow_verify})
    running = Running(server)
    drain: Optional[Drain] = None
    try:
        with client_socket() as client:
            client.connect(server.server_address)
            client.sendall(b"slow\n")
            wait_until(entered.is_set, what="verify_request to be called")
            drain = Drain(server, grace=5.0)
            returned_early = drain.returned(within=0.5)
            release.set()
            assert client.recv(100) == b"slow\n", "the request in verify_request is served"
        assert not returned_early, f"drain() returned during verify_request: {drain.report}"
        assert drain.returned(within=TIMEOUT)
        assert drain.report is not None, drain.error
        assert drain.report.completed == 1, drain.report
        assert drain.report.stragglers == (), drain.report
    finally:
        release.set()
        if drain is not None:
            drain.returned(within=TIMEOUT)
        running.stop()
    leaks.check(server)


@pytest.mark.parametrize("strategy_name", ALL)
def test_drain_closes_the_listener_so_new_connections_are_refused(strategy_name: str) -> None:
    """Bug 4: during a drain the listener stayed open, so the kernel completed
    handshakes that nobody would serve (the connection was dropped when the
    server closed). Once drain() has begun, connect() must be refused; the request
    in flight still finishes."""
    strategy = STRATEGIES[strategy_name]
    leaks = Leaks()
    server = build_server(pyserve, strategy, handler=ready_then_echo_handler(pyserve, strategy))
    address = server.server_address
    running = Running(server)
    drain: Optional[Drain] = None
    try:
        with _ready_client(address) as client:
            # A request begun: a client that was answered and sent nothing since
            # is idle, and a drain closes it at once (tests/test_drain_idle.py).
            client.sendall(b"do")
            if strategy.multiplexed:  # the others' handlers read the raw socket: never idle
                wait_until(lambda: server_has_read(server, client), what="the server to read")
            drain = Drain(server, grace=5.0)
            refused = _refused_soon(address, drain)
            client.sendall(b"ne\n")
            assert client.recv(100) == b"done\n", "the request in flight finishes"
        assert refused, "a connect() during the drain was accepted: the listener is still open"
        assert drain.returned(within=TIMEOUT)
        assert drain.report is not None, drain.error
        assert drain.report.stragglers == (), drain.report
    finally:
        if drain is not None:
            drain.returned(within=TIMEOUT)
        running.stop()
    leaks.check(server)


def _endless_handler(strategy_name: str, release: threading.Event) -> type:
    """A request that ignores the drain: no read (so SHUT_RD changes nothing), a
    forked child that ignores SIGTERM, a connection that stays open after EOF."""
    if STRATEGIES[strategy_name].multiplexed:

        class Endless(pyserve.ConnectionHandler):  # type: ignore[type-arg]
            def connection_made(self) -> None:
                self.write(b"ready\n")

            def eof_received(self) -> None:
                pass  # stays open

        return Endless

    class Stuck(pyserve.BaseRequestHandler):  # type: ignore[type-arg]
        def handle(self) -> None:
            if STRATEGIES[strategy_name].forks:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.request.sendall(b"ready\n")
            release.wait(TIMEOUT)

    return Stuck


# The synchronous server runs the handler in the loop's own thread: its drain
# must wait for the loop (as shutdown() does), so it has no deadline to keep.
@pytest.mark.parametrize("strategy_name", [s for s in ALL if s != "sync"])
def test_drain_of_a_request_that_never_ends_returns_within_the_grace_period(
    strategy_name: str,
) -> None:
    """Bug 5: a drain is bounded by its documented deadline, ``grace`` then
    ``force_timeout`` (pyserve.lifecycle.drain.Lifecycle.drain), even for a
    handler that ignores it: drain(grace=1, force_timeout=0.25), as the CLI calls
    it, returns within 1.25 s plus a small margin, reporting the straggler."""
    release = threading.Event()
    leaks = Leaks()
    server = build_server(
        pyserve, STRATEGIES[strategy_name], handler=_endless_handler(strategy_name, release)
    )
    running = Running(server)
    drain: Optional[Drain] = None
    try:
        with _ready_client(server.server_address):
            drain = Drain(server, grace=1.0, force_timeout=FORCE_TIMEOUT)
            assert drain.returned(within=TIMEOUT)
        assert drain.report is not None, drain.error
        assert drain.elapsed is not None
        limit = 1.0 + FORCE_TIMEOUT + DRAIN_MARGIN
        assert drain.elapsed <= limit, f"the drain took {drain.elapsed:.2f} s"
        assert len(drain.report.stragglers) + drain.report.forced >= 1, drain.report
    finally:
        release.set()
        if drain is not None:
            drain.returned(within=TIMEOUT)
        running.stop()
    leaks.check(server)


STUCK_MODULE = """
import threading, pyserve

class Stuck(pyserve.BaseRequestHandler):
    def handle(self):
        self.request.sendall(b"ready\\n")
        threading.Event().wait(30)  # ignores the drain on purpose
"""


@pytest.mark.parametrize("concurrency", ["thread", "pool"])
def test_cli_drain_timeout_bounds_the_stop_of_a_stuck_request(
    concurrency: str, tmp_path: Path
) -> None:
    """Bug 5 through the CLI: --drain-timeout 1 and SIGTERM with a stuck client
    exits within about a second (it took 5 s: the grace, then the force step's
    own timeout, then the close margin)."""
    (tmp_path / "stuck.py").write_text(textwrap.dedent(STUCK_MODULE))
    command = Command(
        "stuck:Stuck", "--bind", f"{HOST}:0", "--concurrency", concurrency,
        "--drain-timeout", "1", cwd=tmp_path,
    )  # fmt: skip
    try:
        [address] = command.addresses()
        with socket.create_connection(host_port(address), timeout=TIMEOUT) as client:
            assert client.recv(6) == b"ready\n"
            started = time.monotonic()
            command.process.send_signal(signal.SIGTERM)
            command.process.wait(TIMEOUT)
            elapsed = time.monotonic() - started
        assert elapsed <= 1.0 + DRAIN_MARGIN, f"--drain-timeout 1 stopped after {elapsed:.2f} s"
    finally:
        if command.process.poll() is None:
            command.process.kill()
        command.finish()
