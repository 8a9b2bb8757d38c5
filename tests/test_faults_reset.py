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
    outcome_after,
    ready_then_echo_handler,
    reset_mid_request,
    wait_until,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads


@pytest.mark.parametrize(
    ("impl_name", "strategy_name"), [pytest.param(i, s, id=f"{i}-{s}") for i, s in cells()]
)
def test_client_reset_mid_request_ends_that_request_only(
    impl_name: str, strategy_name: str, pyserve_log: LogCatcher
) -> None:
    impl, strategy = IMPLEMENTATIONS[impl_name], STRATEGIES[strategy_name]
    handler = ready_then_echo_handler(impl, strategy)
    leaks = Leaks()
    server = build_server(impl, strategy, handler=handler)
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
