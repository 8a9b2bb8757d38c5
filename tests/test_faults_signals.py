"""Signals mid-request, through the ``pyserve`` command (a subprocess, so signals
never reach pytest): every concurrency strategy and prefork.

* SIGTERM while a request is in flight: the request finishes (the client gets its
  answer after the signal) and the process exits 0, within the drain deadline;
* SIGHUP to a prefork supervisor while a request is in flight on a worker: the
  workers roll one by one, the request on the old worker finishes, new clients
  are served during and after the roll, and SIGTERM then stops everything with
  exit 0. (Without --processes, SIGHUP has no documented meaning in the CLI.)

The handler says ``ready`` and then echoes one line, so the client decides when
the request ends: "mid-request" is a fact, not a timing guess.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from faults import HOST, TIMEOUT, peer_process_has_read, process_group_gone, wait_until
from test_cli import Command, _wait_for_stderr, host_port

from pyserve.cli import command as cli

HANDLERS = """
import pyserve

class ReadyThenEcho(pyserve.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"ready\\n")
        self.wfile.write(self.rfile.readline())

class ReadyThenEchoConnection(pyserve.ConnectionHandler):
    def connection_made(self):
        self.write(b"ready\\n")
        self.buffer = b""

    def data_received(self, data):
        self.buffer += data
        if self.buffer.endswith(b"\\n"):
            self.write(self.buffer)
            self.close()
"""

MODES = {
    "sync": ("ReadyThenEcho", ["--concurrency", "sync"]),
    "thread": ("ReadyThenEcho", ["--concurrency", "thread"]),
    "pool": ("ReadyThenEcho", ["--concurrency", "pool"]),
    "fork": ("ReadyThenEcho", ["--concurrency", "fork"]),
    "multiplex": ("ReadyThenEchoConnection", ["--concurrency", "multiplex"]),
    "prefork": ("ReadyThenEcho", ["--processes", "2"]),
}


@pytest.fixture
def pyserve_command(tmp_path: Path) -> Any:
    (tmp_path / "faulthandlers.py").write_text(HANDLERS)
    started: list[Command] = []

    def start(mode: str) -> tuple[Command, tuple[str, int]]:
        handler, options = MODES[mode]
        command = Command(
            f"faulthandlers:{handler}", "--bind", f"{HOST}:0", "--drain-timeout", "5",
            *options, cwd=tmp_path, start_new_session=True,
        )  # fmt: skip
        started.append(command)
        [address] = command.addresses()
        return command, host_port(address)

    yield start
    for command in started:
        # Its own process group: a prefork supervisor's workers go with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(command.process.pid, signal.SIGKILL)
        command.finish()


def _connect(address: tuple[str, int]) -> socket.socket:
    client = socket.create_connection(address, timeout=TIMEOUT)
    assert client.recv(6) == b"ready\n"
    return client


def _mid_request(address: tuple[str, int]) -> socket.socket:
    """A client whose request is in progress: the server has read half its line.

    (Only "ready" sent and nothing received would be an *idle* connection, which a
    drain closes at once.)"""
    client = _connect(address)
    client.sendall(b"do")
    wait_until(lambda: peer_process_has_read(client), what="the server read the half line")
    return client


def _ask(address: tuple[str, int], line: bytes) -> bytes:
    """A whole request from a new client: its echo of ``line``."""
    with _connect(address) as client:
        client.sendall(line)
        data = b""
        while not data.endswith(b"\n"):
            chunk = client.recv(100)
            if not chunk:
                break
            data += chunk
        return data


def _finish(client: socket.socket) -> bytes:
    client.sendall(b"ne\n")  # the rest of "done"
    data = b""
    while not data.endswith(b"\n"):
        chunk = client.recv(100)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("mode", list(MODES))
def test_sigterm_mid_request_lets_it_finish_and_exits_0(mode: str, pyserve_command: Any) -> None:
    command, address = pyserve_command(mode)
    with _mid_request(address) as client:
        command.process.send_signal(signal.SIGTERM)
        _wait_for_stderr(command, "draining")
        assert _finish(client) == b"done\n", "the request in flight was cut"
    status, _out, err = command.finish()
    assert status == cli.EXIT_OK, err
    process_group_gone(command.process.pid)  # no worker or child left behind


def test_sighup_rolls_prefork_workers_without_cutting_a_request(pyserve_command: Any) -> None:
    command, address = pyserve_command("prefork")
    with _mid_request(address) as client:
        command.process.send_signal(signal.SIGHUP)
        _wait_for_stderr(command, "SIGHUP: rolling")
        assert _ask(address, b"during the roll\n") == b"during the roll\n"
        assert _finish(client) == b"done\n", "the roll cut the request in flight"
    _wait_for_stderr(command, "roll complete")
    assert _ask(address, b"after the roll\n") == b"after the roll\n"
    command.process.send_signal(signal.SIGTERM)
    status, _out, err = command.finish()
    assert status == cli.EXIT_OK, err
    process_group_gone(command.process.pid)
