"""Explain mode: one line per hook, in the documented order, from the right
thread and process; and nothing at all when it is off."""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any, Optional

import pytest

import pyserve
from pyserve import StreamRequestHandler, TCPServer, ThreadingTCPServer
from pyserve.explain import install
from pyserve.testing import serving

DEADLINE = 10.0


class Echo(StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class Lines(io.TextIOBase):
    """A text stream that collects whole lines and lets a test wait for them.

    Its write end can also be a pipe (``fd``), so lines written by a forked child
    arrive here through a reader thread.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lines: list[str] = []
        self._changed = threading.Condition()

    def write(self, text: str) -> int:
        with self._changed:
            self._lines.extend(line for line in text.splitlines() if line)
            self._changed.notify_all()
        return len(text)

    def wait_for(self, count: int, hook: str) -> list[str]:
        """Wait until ``count`` lines name ``hook``; return every line so far."""
        deadline = time.monotonic() + DEADLINE
        with self._changed:
            while sum(parse(line)[2] == hook for line in self._lines) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"{count} {hook} line(s) not seen in: {self._lines}")
                self._changed.wait(remaining)
            return list(self._lines)


def parse(line: str) -> tuple[int, str, str, str]:
    """(pid, thread, hook, provider) of one explain line."""
    where, what = line.split(" | ", 1)
    pid, rest = where.split(None, 1)
    thread, _number = rest.rsplit(None, 1)
    hook, provider = what.split()[:2]
    return int(pid), thread.strip(), hook, provider.strip("[]")


def number(line: str) -> str:
    """The request number of one explain line: "#1", ... or "-"."""
    return line.split(" | ", 1)[0].rsplit(maxsplit=1)[-1]


LOOP = {"serve_forever", "handle_request", "_handle_request_noblock", "service_actions",
        "_child_exited"}


def request_lines(lines: list[str]) -> list[str]:
    """The lines of the request's own hooks, without the loop's steps."""
    return [line for line in lines if parse(line)[2] not in LOOP]


def one_echo(server: Any) -> None:
    with socket.create_connection(server.server_address, timeout=DEADLINE) as client:
        client.sendall(b"hello\n")
        assert client.recv(100) == b"hello\n"


def hooks_of(lines: list[str], *, pid: Optional[int] = None, thread: Optional[str] = None
             ) -> list[str]:
    return [
        parse(line)[2]
        for line in lines
        if (pid is None or parse(line)[0] == pid) and (thread is None or parse(line)[1] == thread)
    ]


def test_tcp_server_explains_one_request_in_the_documented_order() -> None:
    lines = Lines()

    class Server(TCPServer):
        explain = lines

    with serving(Server(("127.0.0.1", 0), Echo)) as server:
        one_echo(server)
        seen = request_lines(lines.wait_for(1, "close_request"))
    assert [parse(line)[2] for line in seen] == [
        "get_request", "verify_request", "process_request", "finish_request",
        "setup", "handle", "finish", "shutdown_request", "close_request",
    ]
    assert {parse(line)[:2] for line in seen} == {parse(seen[0])[:2]}  # one thread
    assert parse(seen[2])[3] == "BaseServer"  # process_request: synchronous


def test_explain_set_on_a_built_server_turns_explain_mode_on() -> None:
    """The module's docstring promises an instance attribute works: it was read
    only when the server was built, so setting it afterwards printed nothing."""
    lines = Lines()
    server = ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.explain = lines
    assert server.explain is lines
    with serving(server):
        one_echo(server)
        seen = request_lines(lines.wait_for(1, "close_request"))
    assert "handle" in [parse(line)[2] for line in seen]


def test_explain_set_on_one_server_leaves_the_others_quiet() -> None:
    lines = Lines()
    traced = TCPServer(("127.0.0.1", 0), Echo)
    quiet = TCPServer(("127.0.0.1", 0), Echo)
    traced.explain = lines
    assert not quiet.explain
    with serving(quiet):
        one_echo(quiet)
    with serving(traced):
        one_echo(traced)
        seen = lines.wait_for(1, "close_request")
    assert {parse(line)[0] for line in seen} == {os.getpid()}
    assert sum(parse(line)[2] == "close_request" for line in seen) == 1


def test_threading_server_explains_the_request_thread_separately() -> None:
    lines = Lines()

    class Server(ThreadingTCPServer):
        explain = lines

    with serving(Server(("127.0.0.1", 0), Echo)) as server:
        one_echo(server)
        seen = request_lines(lines.wait_for(1, "close_request"))
    loop_thread = parse(seen[0])[1]
    request_thread = parse(seen[-1])[1]
    assert loop_thread != request_thread
    assert hooks_of(seen, thread=loop_thread) == [
        "get_request", "verify_request", "process_request",
    ]
    assert hooks_of(seen, thread=request_thread) == [
        "process_request_thread", "finish_request", "setup", "handle", "finish",
        "shutdown_request", "close_request",
    ]
    assert "[ThreadingMixIn] starts a thread for it" in seen[2]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# serving() runs the loop in a thread, and the relay is another: forking from a
# threaded process is what ForkingTCPServer does; the child only runs the handler.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forking_server_explains_the_child_from_its_own_pid() -> None:
    lines = Lines()
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")  # the child inherits it and writes here too

    def relay() -> None:
        with os.fdopen(read_end) as pipe:
            for line in pipe:
                lines.write(line)

    relay_thread = threading.Thread(target=relay, daemon=True)
    relay_thread.start()

    class Server(pyserve.ForkingTCPServer):
        explain = stream

    try:
        with serving(Server(("127.0.0.1", 0), Echo)) as server:
            one_echo(server)
            seen = request_lines(lines.wait_for(2, "close_request"))  # child's, parent's
            if hasattr(os, "pidfd_open"):  # the loop reaps the child when its pidfd fires
                reaped = lines.wait_for(1, "_child_exited")
                assert next(line for line in reaped if "_child_exited" in line).endswith(
                    "[ForkingMixIn] pidfd readable: reap the child")
    finally:
        stream.close()  # EOF for the relay once the (reaped) child's copy is gone too
        relay_thread.join(DEADLINE)
    parent = os.getpid()
    children = {parse(line)[0] for line in seen} - {parent}
    assert len(children) == 1
    (child,) = children
    assert hooks_of(seen, pid=parent) == [
        "get_request", "verify_request", "process_request", "close_request",
    ]
    assert hooks_of(seen, pid=child) == [
        "finish_request", "setup", "handle", "finish", "shutdown_request", "close_request",
    ]
    assert "[ForkingMixIn] forks a child for it" in seen[2]


def test_each_line_names_the_class_that_provides_the_hook() -> None:
    lines = Lines()

    class Careful(ThreadingTCPServer):
        explain = lines

        def verify_request(self, request: Any, client_address: Any) -> bool:
            return True

    with serving(Careful(("127.0.0.1", 0), Echo)) as server:
        one_echo(server)
        seen = lines.wait_for(1, "close_request")
    providers = {parse(line)[2]: parse(line)[3] for line in seen}
    assert providers["verify_request"] == "Careful"
    assert providers["process_request"] == "ThreadingMixIn"
    assert providers["shutdown_request"] == "TCPServer"
    assert providers["setup"] == "StreamRequestHandler"
    assert providers["handle"] == "Echo"


def test_lines_are_indented_by_depth() -> None:
    lines = Lines()

    class Server(TCPServer):
        explain = lines

    with serving(Server(("127.0.0.1", 0), Echo)) as server:
        one_echo(server)
        seen = lines.wait_for(1, "service_actions")
    depth = {parse(line)[2]: len(line.split(" | ", 1)[1]) - len(line.split(" | ", 1)[1].lstrip())
             for line in seen}
    assert depth["serve_forever"] == 0
    assert depth["_handle_request_noblock"] == 2
    assert depth["process_request"] == 4
    assert depth["finish_request"] == 6
    assert depth["handle"] == 8
    assert depth["close_request"] == 8  # inside shutdown_request
    assert depth["service_actions"] == 2


def test_off_means_the_server_runs_its_classes_own_methods() -> None:
    server = ThreadingTCPServer(("127.0.0.1", 0), Echo)
    try:
        assert not any(hook in vars(server) for hook in ("get_request", "process_request"))
        assert server.RequestHandlerClass is Echo
    finally:
        server.server_close()


def test_explaining_one_server_changes_no_class() -> None:
    classes = (ThreadingTCPServer, TCPServer, Echo, StreamRequestHandler)
    before = [dict(vars(cls)) for cls in classes]
    server = ThreadingTCPServer(("127.0.0.1", 0), Echo)
    try:
        install(server, io.StringIO())
        assert [dict(vars(cls)) for cls in classes] == before
        assert issubclass(server.RequestHandlerClass, Echo)
        assert server.RequestHandlerClass is not Echo
        other = ThreadingTCPServer(("127.0.0.1", 0), Echo)
        other.server_close()
        assert "process_request" not in vars(other)
    finally:
        server.server_close()


class LinesHandler(logging.Handler):
    """Feeds the records of the "pyserve.explain" logger into a :class:`Lines`."""

    def __init__(self, lines: Lines) -> None:
        super().__init__(logging.INFO)
        self.lines = lines
        self.levels: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.levels.append(record.levelno)
        self.lines.write(record.getMessage() + "\n")


@pytest.fixture
def explain_log() -> Iterator[LinesHandler]:
    explain_logger = logging.getLogger("pyserve.explain")
    handler = LinesHandler(Lines())
    old_level = explain_logger.level
    explain_logger.setLevel(logging.INFO)
    explain_logger.addHandler(handler)
    yield handler
    explain_logger.removeHandler(handler)
    explain_logger.setLevel(old_level)


def test_environment_variable_turns_it_on_through_the_logger(
    monkeypatch: pytest.MonkeyPatch, explain_log: LinesHandler
) -> None:
    monkeypatch.setenv("PYSERVE_EXPLAIN", "1")
    with serving(TCPServer(("127.0.0.1", 0), Echo)) as server:
        one_echo(server)
        seen = request_lines(explain_log.lines.wait_for(1, "close_request"))
    assert hooks_of(seen)[:3] == ["get_request", "verify_request", "process_request"]
    assert set(explain_log.levels) == {logging.INFO}


def test_environment_variable_zero_leaves_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSERVE_EXPLAIN", "0")
    server = TCPServer(("127.0.0.1", 0), Echo)
    server.server_close()
    assert "get_request" not in vars(server)


def test_installing_twice_traces_each_hook_once() -> None:
    lines = Lines()
    server = TCPServer(("127.0.0.1", 0), Echo)
    install(server, lines)
    install(server, lines)
    with serving(server):
        one_echo(server)
        seen = lines.wait_for(1, "close_request")
    assert hooks_of(seen).count("get_request") == 1
    assert hooks_of(seen).count("handle") == 1


def test_the_loop_steps_are_traced_around_the_request() -> None:
    """internals' path starts at serve_forever(): every step of it is a line."""
    lines = Lines()

    class Server(TCPServer):
        explain = lines

    with serving(Server(("127.0.0.1", 0), Echo)) as server:
        one_echo(server)
        lines.wait_for(1, "service_actions")
    seen = lines.wait_for(2, "serve_forever")  # started, and returned after shutdown()
    hooks = hooks_of(seen)
    assert hooks[:3] == ["serve_forever", "_handle_request_noblock", "get_request"]
    assert hooks[-2:] == ["service_actions", "serve_forever"]
    assert "[ServeLoop] loop starts" in seen[0]
    assert "-> returned" in seen[-1]
    assert parse(seen[-2])[3] == "ServeLoop"  # service_actions lives in loop.py


def test_idle_loop_turns_print_no_service_actions_line() -> None:
    lines = Lines()
    turns = threading.Semaphore(0)

    class Server(TCPServer):
        explain = lines

        def service_actions(self) -> None:
            turns.release()

    server = Server(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, args=(0.005,))
    thread.start()
    try:
        for _ in range(20):  # twenty idle turns, each paced by poll_interval
            assert turns.acquire(timeout=DEADLINE)
    finally:
        server.shutdown()
        thread.join(DEADLINE)
        server.server_close()
    assert hooks_of(lines.wait_for(2, "serve_forever")) == ["serve_forever", "serve_forever"]


class Held(StreamRequestHandler):
    """Answers only once both requests are inside handle(): they overlap."""

    both_in = threading.Barrier(2, timeout=DEADLINE)

    def handle(self) -> None:
        line = self.rfile.readline()
        self.both_in.wait()
        self.wfile.write(line)


@pytest.mark.parametrize("workers_accept", [True, False])
def test_pool_lines_tell_two_concurrent_requests_apart(workers_accept: bool) -> None:
    lines = Lines()
    Held.both_in.reset()

    class Server(pyserve.ThreadPoolTCPServer):
        explain = lines

    Server.workers_accept = workers_accept
    with serving(Server(("127.0.0.1", 0), Held)) as server:
        clients = [socket.create_connection(server.server_address, timeout=DEADLINE)
                   for _ in range(2)]
        try:
            for client in clients:
                client.sendall(b"hi\n")
            for client in clients:
                assert client.recv(10) == b"hi\n"
        finally:
            for client in clients:
                client.close()
        seen = lines.wait_for(2, "close_request")
    by_request: dict[str, list[str]] = {}
    for line in request_lines(seen):
        by_request.setdefault(number(line), []).append(line)
    assert sorted(by_request) == ["#1", "#2"]
    for request in by_request.values():
        hooks = hooks_of(request)
        assert hooks[:3] == ["get_request", "verify_request", "process_request"]
        assert hooks[-5:] == ["setup", "handle", "finish", "shutdown_request", "close_request"]
        worker_threads = {parse(line)[1] for line in request if parse(line)[2] == "handle"}
        assert all(name.startswith("pyserve-pool-") for name in worker_threads)
    handlers = {parse(line)[1] for line in seen if parse(line)[2] == "handle"}
    assert len(handlers) == 2  # two workers, named in full


@pytest.mark.parametrize(("workers_accept", "says"), [
    (True, "runs it in this worker"),
    (False, "hands it to a worker or the queue"),
])
def test_pool_process_request_line_says_what_it_does(workers_accept: bool, says: str) -> None:
    lines = Lines()

    class Server(pyserve.ThreadPoolTCPServer):
        explain = lines

    Server.workers_accept = workers_accept
    with serving(Server(("127.0.0.1", 0), Echo)) as server:
        one_echo(server)
        seen = lines.wait_for(1, "close_request")
    (line,) = [line for line in seen if parse(line)[2] == "process_request"]
    assert line.endswith(f"[ThreadPoolMixIn] {says}")


_SCRIPT = """
    import logging, socket, sys
    import pyserve
    from pyserve.testing import serving

    class Echo(pyserve.StreamRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.readline())

    class Server(pyserve.TCPServer):
        explain = True

    if sys.argv[1] == "configured":
        logging.basicConfig(stream=sys.stderr, format="logged: %(message)s")
    with serving(Server(("127.0.0.1", 0), Echo)) as server:
        with socket.create_connection(server.server_address, timeout=10) as client:
            client.sendall(b"hi\\n")
            assert client.recv(10) == b"hi\\n"
"""


def run_explained(mode: str) -> list[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("PYSERVE_EXPLAIN", None)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SCRIPT), mode],
        capture_output=True, text=True, timeout=60, env=env, check=True,
    )
    return [line for line in done.stderr.splitlines() if " | " in line]


def test_explain_true_prints_to_stderr_when_logging_is_not_configured() -> None:
    seen = run_explained("plain")
    assert "handle" in hooks_of(seen)
    assert hooks_of(seen).count("get_request") == 1


def test_explain_true_goes_through_configured_logging_once() -> None:
    seen = run_explained("configured")
    assert seen
    assert all(line.startswith("logged: ") for line in seen)
    handled = [line for line in seen if "handle [Echo]" in line]
    assert len(handled) == 1  # through the root handler only, not also to stderr
