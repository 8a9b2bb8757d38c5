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
from pathlib import Path
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

import pyserve

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


REAL_EMFILE_SCENARIO = """
import resource
from faults import ConnectionEcho, Running, echo_handler, start_io_thread

CLIENTS = 40
strategy = {strategy!r}
server_class, handler = {{
    "thread": (socketserver.ThreadingTCPServer, echo_handler(socketserver)),
    "pool-accept": (socketserver.ThreadPoolTCPServer, echo_handler(socketserver)),
    "pool-handoff": (socketserver.ThreadPoolTCPServer, echo_handler(socketserver)),
    "multiplex": (socketserver.MultiplexingTCPServer, ConnectionEcho),
    "multiplex-io": (socketserver.MultiplexingTCPServer, ConnectionEcho),
}}[strategy]
server = server_class(("127.0.0.1", 0), handler)
server.workers_accept = strategy == "pool-accept"
if strategy == "multiplex-io":
    start_io_thread(server)  # the I/O thread accepts from the first client on
server.accept_backoff_max = 0.05
warnings_seen = []

class Count(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            warnings_seen.append(record.getMessage())

logging.getLogger("pyserve").addHandler(Count())
running = Running(server)

# The clients live in a child forked before the limit is lowered: only the
# server's process runs short of descriptors.
answers_r, answers_w = os.pipe()
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:
    served = 0
    try:
        os.read(go_r, 1)  # once the server's limit is lowered
        clients = [socket.create_connection(server.server_address, timeout=TIMEOUT)
                   for _ in range(CLIENTS)]
        os.read(go_r, 1)  # once the server has run out (or given up waiting for it)
        for client in clients:
            client.sendall(b"x\\n")
        for client in clients:
            served += client.recv(10) == b"x\\n"
    finally:
        os.write(answers_w, b"%d" % served)
        os._exit(0)
os.close(answers_w)
os.close(go_r)
open_now = len(os.listdir("/proc/self/fd"))
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 8, hard))
os.write(go_w, b"!")
# The held connections exhaust the descriptors: wait for the server to say so.
deadline = time.monotonic() + 5.0
while not warnings_seen and time.monotonic() < deadline:
    time.sleep(0.01)
os.write(go_w, b"!")
served = int(os.read(answers_r, 16) or b"0")
os.waitpid(pid, 0)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
alive_after = not running.ended
running.stop()
report(served=served, warnings=warnings_seen, alive_after=alive_after)
"""


@pytest.mark.parametrize(
    "strategy_name", ["thread", "pool-accept", "pool-handoff", "multiplex", "multiplex-io"]
)
def test_real_descriptor_exhaustion_backs_off_and_serves_every_client(
    strategy_name: str, run_scenario: Any
) -> None:
    """A real EMFILE: the server process's descriptor limit is lowered below what
    40 waiting clients need. pyserve backs off, serves the clients it holds, and
    accepts the rest as descriptors come back: every client gets its answer, and
    the failure is logged (which proves the limit was really met)."""
    result = run_scenario(
        pyserve,
        REAL_EMFILE_SCENARIO.format(strategy=strategy_name),
        setup=f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})",
    )
    values = result.check()
    assert values["served"] == 40, values
    assert values["alive_after"], values
    assert any("accept() failed" in text for text in values["warnings"]), values
