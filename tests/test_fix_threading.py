"""Issue 2, fix 4: ThreadingMixIn does O(1) work per request, block_on_close kept.

The stdlib reaps its whole thread list (``Thread.is_alive()`` on every entry) on
each accept, so with many live handlers every new connection costs O(live). The
proof counts ``is_alive()`` calls made by the serving thread while it accepts 300
requests next to 100 blocked handlers: pyserve makes none, the stdlib ~30,000.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest
from conftest import TIMEOUT, _pythonpath

HOST = "127.0.0.1"
BLOCKED = 100
REQUESTS = 300


def _wait(condition: threading.Condition, predicate: Any) -> bool:
    with condition:
        return bool(condition.wait_for(predicate, TIMEOUT))


@pytest.mark.stdlib_defect("each accept walks the whole thread list (is_alive on every thread)")
def test_starting_a_request_thread_does_not_scan_live_threads(impl, running, monkeypatch):
    release = threading.Event()
    blocked = 0
    changed = threading.Condition()

    class Handler(impl.BaseRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            nonlocal blocked
            if self.request.recv(1) == b"b":
                with changed:
                    blocked += 1
                    changed.notify_all()
                release.wait(TIMEOUT)
            else:
                self.request.sendall(b"e")

    class Server(impl.ThreadingTCPServer):  # type: ignore[misc]
        # Not the point here (that is fix 6): the stdlib's backlog of 5 would make
        # the 100 connections below wait out SYN retransmits.
        request_queue_size = socket.SOMAXCONN

    server = Server((HOST, 0), Handler)
    loop_ident: list[int] = []

    def counting_service_actions() -> None:
        if not loop_ident:
            loop_ident.append(threading.get_ident())

    server.service_actions = counting_service_actions
    held: list[socket.socket] = []
    try:
        with running(server):
            for _ in range(BLOCKED):
                client = socket.create_connection(server.server_address, timeout=TIMEOUT)
                held.append(client)
                client.sendall(b"b")
            assert _wait(changed, lambda: blocked == BLOCKED)
            assert loop_ident, "the loop has turned at least once"

            calls = 0
            real_is_alive = threading.Thread.is_alive

            def counting_is_alive(thread: threading.Thread) -> bool:
                nonlocal calls
                if threading.get_ident() == loop_ident[0]:
                    calls += 1
                return real_is_alive(thread)

            monkeypatch.setattr(threading.Thread, "is_alive", counting_is_alive)
            for _ in range(REQUESTS):
                with socket.create_connection(server.server_address, timeout=TIMEOUT) as c:
                    c.sendall(b"e")
                    assert c.recv(1) == b"e"
            monkeypatch.undo()
            release.set()
            for client in held:
                client.close()
    finally:
        release.set()
        for client in held:
            client.close()
    assert calls == 0


def test_server_close_waits_for_running_non_daemon_handler(impl):
    close_called = threading.Event()
    finished = threading.Event()

    class Handler(impl.BaseRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            self.request.sendall(b"started")
            close_called.wait(TIMEOUT)  # still running when server_close() begins
            finished.set()

    class Server(impl.ThreadingTCPServer):  # type: ignore[misc]
        def server_close(self) -> None:
            close_called.set()
            super().server_close()

    server = Server((HOST, 0), Handler)
    assert server.block_on_close  # the defaults
    assert not server.daemon_threads
    with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
        server.handle_request()  # starts the handler thread
        assert client.recv(16) == b"started"
        server.server_close()
        assert finished.is_set()


def test_server_close_does_not_wait_for_daemon_handler_without_block_on_close(impl):
    release = threading.Event()
    stopped = threading.Event()

    class Handler(impl.BaseRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            self.request.sendall(b"started")
            release.wait(TIMEOUT)
            stopped.set()

    class Server(impl.ThreadingTCPServer):  # type: ignore[misc]
        daemon_threads = True
        block_on_close = False

    server = Server((HOST, 0), Handler)
    try:
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
            server.handle_request()
            assert client.recv(16) == b"started"
            server.server_close()  # returns although the handler is blocked
            assert not stopped.is_set()
    finally:
        release.set()
    assert stopped.wait(TIMEOUT)  # it was only ever waiting for us


_EXIT_SCRIPT = r"""
import socket, sys, threading
import {module} as socketserver

started = threading.Event()

class Slow(socketserver.BaseRequestHandler):
    def handle(self):
        started.set()
        self.request.recv(1)          # the client sends one byte after we start
        with open(sys.argv[1], "w") as done:
            done.write("finished")

class Server(socketserver.ThreadingTCPServer):
    daemon_threads = {daemon}

server = Server(("127.0.0.1", 0), Slow)
client = socket.create_connection(server.server_address, timeout=10)
server.handle_request()               # starts the request thread, returns at once
assert started.wait(10)
if not {daemon}:
    # Unblock the request a little after the main thread has ended.
    threading.Timer(0.3, client.sendall, args=(b"x",)).start()
# The main thread ends here, without server_close(): only the thread's daemon-ness
# decides whether the interpreter waits for the request (a daemon one would wait
# for its byte forever).
"""


@pytest.mark.parametrize(("daemon", "waits"), [(False, True), (True, False)])
def test_interpreter_exit_waits_for_request_threads_unless_daemon(
    impl: Any, tmp_path: Any, daemon: bool, waits: bool
) -> None:
    marker = tmp_path / "done"
    script = _EXIT_SCRIPT.format(module=impl.__name__, daemon=daemon)
    completed = subprocess.run(
        [sys.executable, "-c", script, str(marker)],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False,
        env=dict(os.environ, PYTHONPATH=_pythonpath()),
    )
    assert completed.returncode == 0, completed.stderr.decode()
    assert marker.exists() is waits
