"""Fault matrix: accept() runs out of descriptors (EMFILE) a few times in a row.

``get_request()`` raises ``OSError(EMFILE)`` on its next three calls, leaving the
waiting connection in the kernel's backlog, as a process at its descriptor limit
does. The stdlib ignores any ``OSError`` from ``get_request()`` and tries again
on the next loop turn (spinning at full CPU while the limit lasts); pyserve
backs off, logging once per episode (see pyserve.loop). Either way the waiting
client is served once descriptors are back, on every strategy, and nothing
leaks.
"""

from __future__ import annotations

import errno
import logging
import threading
from typing import Any

import pytest
from conftest import LogCatcher
from faults import (
    IMPLEMENTATIONS,
    STRATEGIES,
    Leaks,
    Running,
    build_server,
    cells,
    round_trip,
)

FAILURES = 3

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads


def _emfile_get_request(self: Any) -> Any:
    with self.emfile_lock:
        fail = self.emfile_left > 0
        self.emfile_left -= fail
    if fail:
        raise OSError(errno.EMFILE, "Too many open files")
    return super(type(self), self).get_request()


@pytest.mark.parametrize(
    ("impl_name", "strategy_name"), [pytest.param(i, s, id=f"{i}-{s}") for i, s in cells()]
)
def test_accept_out_of_descriptors_recovers_and_serves_the_waiting_client(
    impl_name: str, strategy_name: str, pyserve_log: LogCatcher
) -> None:
    leaks = Leaks()
    server = build_server(
        IMPLEMENTATIONS[impl_name],
        STRATEGIES[strategy_name],
        extra={
            "get_request": _emfile_get_request,
            "accept_backoff_initial": 0.01,
            "accept_backoff_max": 0.05,
        },
    )
    server.emfile_lock = threading.Lock()
    server.emfile_left = FAILURES
    running = Running(server)
    try:
        assert round_trip(server.server_address, b"after EMFILE\n") == b"after EMFILE\n"
        assert server.emfile_left <= 0, "every injected failure was met"
        assert not running.ended
        assert running.error is None
    finally:
        running.stop()
    if impl_name == "pyserve":
        warnings = [r for r in pyserve_log.records if r.levelno >= logging.WARNING]
        assert [r.getMessage()[:15] for r in warnings] == ["accept() failed"]
        assert any("accept() works again" in r.getMessage() for r in pyserve_log.records)
    leaks.check(server)
