"""Shared pytest configuration for pyserve's tests.

pyserve's own pytest plugin (fixtures for live servers and leak checks) is not
imported here: installing pyserve registers it through the ``pytest11`` entry
point, exactly as it reaches users' test suites. ``pytester`` is enabled so that
tests/test_testing.py can run that plugin inside a pytest of its own.

What lives here serves the tests of issue 2's fixes (tests/test_fix_*.py):

* the ``impl`` fixture runs a test once on ``pyserve`` and once on the stdlib's
  ``socketserver``. A test marked ``@pytest.mark.stdlib_defect("what")`` proves a
  fix: its stdlib run is a strict expected failure, so the test shows both that
  the stdlib is broken and that pyserve is not. Unmarked tests must pass on both
  (the drop-in contract);
* ``run_scenario`` runs a script with either implementation in a subprocess with a
  deadline, for the cases where the stdlib *hangs* (or forks, or needs a lowered
  descriptor limit): a timeout is reported as a failure and the whole process
  group is killed, so no hung thread or child survives in the pytest process;
* ``running`` serves a server of either implementation in a thread for a ``with``
  block (pyserve's through :func:`pyserve.testing.serving`, with its leak checks);
* ``pyserve_log`` captures the ``pyserve`` logger's records.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional

import pytest

import pyserve
from pyserve.testing import serving

try:
    import tracemalloc
except ImportError:  # PyPy
    tracemalloc = None  # type: ignore[assignment]

pytest_plugins = ["pytester"]

TIMEOUT = 10.0  # seconds: the deadline of every wait in these tests
# A scenario's own waits have deadlines (TIMEOUT; 5 s where the stdlib hangs, see
# finishes() below), so this kill is only a safety net; it is generous because an
# interpreter's start-up alone can take seconds on a loaded machine.
SCENARIO_TIMEOUT = 60.0
IMPLEMENTATIONS = {"pyserve": pyserve, "socketserver": socketserver}


# -- helpers shared by the in-process tests (import them from conftest) ------------


def wait_until(condition: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` until it is true; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.005)


class Echo(pyserve.BaseRequestHandler):
    """Echo every byte until the client hangs up."""

    def handle(self) -> None:
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


def held_handler(release: threading.Event, reply: bytes = b"") -> type[pyserve.BaseRequestHandler]:
    """A handler class that waits for ``release`` (at most TIMEOUT), then sends ``reply``."""

    class Held(pyserve.BaseRequestHandler):
        def handle(self) -> None:
            release.wait(TIMEOUT)
            if reply:
                self.request.sendall(reply)

    return Held


@contextlib.contextmanager
def held_clients(
    address: Any, count: int, release: threading.Event
) -> Iterator[list[socket.socket]]:
    """``count`` clients connected to a server whose handler waits for ``release``
    (see :func:`held_handler`); on leaving, ``release`` is set and they close."""
    clients: list[socket.socket] = []
    try:
        for _ in range(count):
            clients.append(socket.create_connection(address, timeout=TIMEOUT))
        yield clients
    finally:
        release.set()
        for client in clients:
            client.close()


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from ``sock``; fail if the peer closes first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"connection closed after {len(data)} of {size} bytes: {data[:80]!r}"
        data += chunk
    return data


def slowest_ping(client: socket.socket, times: int) -> float:
    """The longest of ``times`` RESP ``PING`` round trips on ``client``, in seconds."""
    slowest = 0.0
    for _ in range(times):
        started = time.perf_counter()
        client.sendall(b"PING\r\n")
        assert recv_exactly(client, 7) == b"+PONG\r\n"
        slowest = max(slowest, time.perf_counter() - started)
    return slowest


def round_trip(address: Any, payload: bytes = b"ping\n") -> bytes:
    """Connect, send ``payload``, return the first reply (at most 100 bytes)."""
    with socket.create_connection(address, timeout=TIMEOUT) as client:
        client.sendall(payload)
        return client.recv(100)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "stdlib_defect(reason): the test proves a fix; its stdlib run must fail (strict xfail)",
    )


@pytest.fixture(params=sorted(IMPLEMENTATIONS, reverse=True))
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The server module under test: ``pyserve`` or the stdlib's ``socketserver``."""
    return IMPLEMENTATIONS[request.param]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("stdlib_defect")
        callspec = getattr(item, "callspec", None)
        if marker is None or callspec is None:
            continue
        if callspec.params.get("impl") == "socketserver":
            item.add_marker(
                pytest.mark.xfail(strict=True, reason=f"stdlib defect: {marker.args[0]}")
            )


# ------------------------------------------------------------------ subprocesses

# Every scenario script starts with this: the implementation under test imported as
# ``socketserver``, the usual modules, and a few helpers.
_PRELUDE = """
import errno, json, logging, os, socket, sys, threading, time, traceback, warnings
import {module} as socketserver
IMPL = {module!r}
TIMEOUT = 10.0
# Forking from a process that also runs threads is what these scenarios test.
warnings.simplefilter("ignore", DeprecationWarning)

def report(**values):
    print("RESULT " + json.dumps(values), flush=True)

def finishes(call, deadline=2.5):
    # call() in a daemon thread; its duration, or exit 3 if it is still running at
    # the deadline (the stdlib's hangs end here, reported, instead of at the kill).
    done = threading.Event()
    started = time.monotonic()
    def run():
        try:
            call()
        except BaseException:
            traceback.print_exc()
            os._exit(4)
        done.set()
    threading.Thread(target=run, daemon=True).start()
    if not done.wait(deadline):
        print("HUNG: %s still running after %.1f s" % (call, deadline), flush=True)
        os._exit(3)
    return time.monotonic() - started

def wait_until_polling(native_id, deadline=5.0):
    # Until the thread sleeps in poll()/select() (Linux /proc), so a stop request
    # cannot slip in before the wait starts. Elsewhere: return at once.
    path = "/proc/self/task/%d/wchan" % native_id
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with open(path) as f:
                wchan = f.read()
        except OSError:
            return
        if "poll" in wchan or "select" in wchan:
            return
        time.sleep(0.005)
"""


@dataclass
class ScenarioResult:
    """What a scenario subprocess did: exit status, output, and its report()."""

    returncode: Optional[int]
    output: str
    timed_out: bool
    elapsed: float

    @property
    def values(self) -> dict[str, Any]:
        for line in reversed(self.output.splitlines()):
            if line.startswith("RESULT "):
                found: dict[str, Any] = json.loads(line[len("RESULT ") :])
                return found
        raise AssertionError(f"the scenario reported nothing:\n{self.output}")

    def check(self) -> dict[str, Any]:
        """Fail unless the scenario finished in time and exited 0; its report()."""
        if self.timed_out:
            pytest.fail(
                f"the scenario hung: killed after {self.elapsed:.1f} s\n{self.output}",
                pytrace=False,
            )
        if self.returncode != 0:
            pytest.fail(
                f"the scenario exited with {self.returncode}:\n{self.output}", pytrace=False
            )
        return self.values


def _pythonpath() -> str:
    root = str(Path(pyserve.__file__).resolve().parent.parent)
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)


def _run_scenario(
    module: ModuleType, body: str, *, setup: str = "", timeout: float = SCENARIO_TIMEOUT
) -> ScenarioResult:
    code = "\n".join(
        (_PRELUDE.format(module=module.__name__), textwrap.dedent(setup), textwrap.dedent(body))
    )
    env = dict(os.environ, PYTHONPATH=_pythonpath(), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    # Output goes to a file, not a pipe: a hung child the scenario forked would
    # hold a pipe open after the scenario itself has exited.
    with tempfile.TemporaryFile() as output_file:
        # A session of its own, so the scenario and any child it forked are killed
        # together by process group (its id is the pid of the process we started).
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.DEVNULL,
            stdout=output_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        # The scenario, if hung, and children it left behind (a hung one, in the
        # stdlib's cases) go with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        output_file.seek(0)
        output = output_file.read()
    return ScenarioResult(
        returncode=proc.returncode,
        output=output.decode(errors="replace"),
        timed_out=timed_out,
        elapsed=time.monotonic() - started,
    )


@pytest.fixture
def run_scenario() -> Callable[..., ScenarioResult]:
    """``run_scenario(impl, body, setup="", timeout=60)``: run a script in a subprocess."""
    return _run_scenario


# ------------------------------------------------------------------ live servers


@contextlib.contextmanager
def _running(server: Any, poll_interval: float = 0.05) -> Iterator[Any]:
    if isinstance(server, pyserve.BaseServer):
        with serving(server, poll_interval=poll_interval) as served:
            yield served
        return
    # A stdlib server: its listener queues connections from construction on, so
    # readiness needs no signal; shutdown() waits at most poll_interval.
    failure: list[BaseException] = []

    def loop() -> None:
        try:
            server.serve_forever(poll_interval=poll_interval)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=loop, name="stdlib serve_forever", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()
    assert not thread.is_alive(), "serve_forever() did not return after shutdown()"
    if failure:
        raise failure[0]


@pytest.fixture
def running() -> Callable[..., contextlib.AbstractContextManager[Any]]:
    """``with running(server, poll_interval=0.05) as server:`` for either implementation."""
    return _running


# ------------------------------------------------------------------ logging


class LogCatcher(logging.Handler):
    """Collects the records it is given (from any thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)  # list.append is atomic


@pytest.fixture
def pyserve_log() -> Iterator[LogCatcher]:
    """Every record of the ``pyserve`` logger (DEBUG and up) during the test."""
    logger = logging.getLogger("pyserve")
    catcher = LogCatcher()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(catcher)
    try:
        yield catcher
    finally:
        logger.removeHandler(catcher)
        logger.setLevel(old_level)


# ------------------------------------------------------------------ memory


def _resident_size() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def memory_growth() -> Iterator[Callable[[], int]]:
    """Yield a function: the most memory allocated since entry (tracemalloc's peak).

    PyPy has no tracemalloc: there it is the growth of the resident size, which
    keeps what the code under test still holds when asked.
    """
    if tracemalloc is None:
        base = _resident_size()
        yield lambda: _resident_size() - base
        return
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------ the CLI


@pytest.fixture
def start() -> Iterator[Any]:
    """``start(*args)``: a running ``python -m pyserve`` (test_cli.Command), killed
    at teardown if it is still running."""
    from test_cli import Command  # noqa: PLC0415 - the CLI tests' own driver

    started: list[Command] = []

    def begin(*args: str, **kwargs: Any) -> Command:
        command = Command(*args, **kwargs)
        started.append(command)
        return command

    yield begin
    for command in started:
        if command.process.poll() is None:
            command.process.kill()
        command.finish()
