"""Fault matrix: the client resets its connection in the middle of a request.

The handler has answered ``ready`` and waits for the rest of the request when the
client closes with ``SO_LINGER`` 0, so the server's next read fails with
``ECONNRESET``. The stdlib reports it through ``handle_error()`` (a traceback on
stderr) and serves on. pyserve serves on too and logs a peer's reset as one DEBUG
line, never an ERROR with a traceback (a client must not be able to fill the
log: see pyserve.base.BaseServer.handle_error). On every strategy the next client
is served and nothing leaks.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import pytest
from conftest import LogCatcher
from faults import (
    IMPLEMENTATIONS,
    SERVES,
    STRATEGIES,
    Leaks,
    Running,
    build_server,
    cells,
    reset_mid_request,
    outcome_after,
    wait_until,
)

import pyserve

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads


def _blocking_handler(impl: Any) -> type:
    class ReadyThenEcho(impl.BaseRequestHandler):  # type: ignore[misc,name-defined]
        def handle(self) -> None:
            self.request.sendall(b"ready\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = self.request.recv(4096)
                if not chunk:
                    return
                data += chunk
            self.request.sendall(data)

    return ReadyThenEcho


class ReadyThenEchoConnection(pyserve.ConnectionHandler):  # type: ignore[type-arg]
    def connection_made(self) -> None:
        self.write(b"ready\n")
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.buffer.endswith(b"\n"):
            self.write(self.buffer)
            self.close()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.server.lost.append(repr(exc))


@pytest.mark.parametrize(
    ("impl_name", "strategy_name"), [pytest.param(i, s, id=f"{i}-{s}") for i, s in cells()]
)
def test_client_reset_mid_request_ends_that_request_only(
    impl_name: str, strategy_name: str, pyserve_log: LogCatcher
) -> None:
    impl, strategy = IMPLEMENTATIONS[impl_name], STRATEGIES[strategy_name]
    handler = ReadyThenEchoConnection if strategy.multiplexed else _blocking_handler(impl)
    leaks = Leaks()
    server = build_server(impl, strategy, handler=handler)
    server.lost = []
    running = Running(server)
    try:
        reset_mid_request(server.server_address)
        if impl_name == "pyserve" and not strategy.forks:
            wait_until(lambda: not server.in_flight(), what="the reset request to end")
        assert outcome_after(running) == SERVES
    finally:
        running.stop()
    if impl_name == "pyserve":
        errors = [r.getMessage() for r in pyserve_log.records if r.levelno >= logging.ERROR]
        assert errors == [], errors
    leaks.check(server)
