"""Fault matrix, prefork column: a hook raising inside a worker process.

A Prefork supervisor (in a subprocess of its own, so signals never reach pytest)
runs one worker with a threading server or a (workers-accept) thread pool whose
hooks raise for one client, identified by its port as in tests/faults.py (the
worker reads the port from a file the test writes before connecting).

* ``verify_request()`` raising ends the worker's ``serve_forever()`` (as in the
  stdlib's threading server): the worker exits and the supervisor restarts it.
  The listening socket belongs to the supervisor, so the next client waits in
  its backlog and is served by the new worker: never a live worker that stopped
  accepting.
* ``handle()`` raising ends that request only; the same worker serves on.

Either way SIGTERM then stops the supervisor with exit 0 and no process is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import (
    HOST,
    TIMEOUT,
    client_socket,
    connection_ended,
    process_group_gone,
    round_trip,
    wait_until,
)
from test_cli import ROOT, _readline

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="prefork needs os.fork")

SCRIPT = """
import logging, sys
from pyserve import StreamRequestHandler, ThreadingTCPServer, ThreadPoolTCPServer
from pyserve.prefork.supervisor import Prefork

FAULT_FILE, HOOK, KIND = sys.argv[1:4]

def is_fault(client_address):
    try:
        with open(FAULT_FILE) as f:
            return client_address[1] == int(f.read())
    except (OSError, ValueError):
        return False

class Handler(StreamRequestHandler):
    def handle(self):
        if HOOK == "handle" and is_fault(self.client_address):
            raise RuntimeError("injected fault in handle()")
        self.wfile.write(self.rfile.readline())

Base = ThreadPoolTCPServer if KIND == "pool" else ThreadingTCPServer

class Faulty(Base):
    def verify_request(self, request, client_address):
        if HOOK == "verify_request" and is_fault(client_address):
            raise RuntimeError("injected fault in verify_request()")
        return super().verify_request(request, client_address)

logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="LOG %(message)s")
supervisor = Prefork(Faulty, ("127.0.0.1", 0), Handler, workers=1, drain_timeout=5,
                     restart_backoff_initial=0.05, restart_backoff_max=0.5)
print("PORT %d" % supervisor.server_address[1], flush=True)
sys.exit(supervisor.run())
"""


class Supervisor:
    """The script's process (in a session of its own) and its output, by line."""

    def __init__(self, tmp_path: Path, hook: str, kind: str) -> None:
        self.fault_file = tmp_path / "fault_port"
        script = tmp_path / "faulty_prefork.py"
        script.write_text(SCRIPT)
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(self.fault_file), hook, kind],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            start_new_session=True,
        )
        self.output = ""
        self.port = int(self.expect(r"^PORT (\d+)$").group(1))

    def expect(self, pattern: str) -> re.Match[str]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + TIMEOUT
        while True:
            line = _readline(self.process.stdout, deadline)
            assert line, f"the supervisor exited:\n{self.output}"
            self.output += line
            found = re.search(pattern, line)
            if found:
                return found

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.mark.parametrize("kind", ["thread", "pool"])
@pytest.mark.parametrize("hook", ["verify_request", "handle"])
def test_hook_exception_in_a_prefork_worker_never_leaves_the_port_unserved(
    hook: str, kind: str, tmp_path: Path
) -> None:
    supervisor = Supervisor(tmp_path, hook, kind)
    try:
        first = int(supervisor.expect(r"worker (\d+) ready").group(1))
        address = (HOST, supervisor.port)
        with client_socket() as client:
            client.bind((HOST, 0))
            supervisor.fault_file.write_text(str(client.getsockname()[1]))
            client.connect(address)
            client.sendall(b"fault\n")
            wait_until(lambda: connection_ended(client), what="the faulty request to end")
        if hook == "verify_request":  # the worker's loop ended loudly: a new worker
            supervisor.expect(rf"worker {first} exited")
        assert round_trip(address, b"next\n") == b"next\n"
        supervisor.process.send_signal(signal.SIGTERM)
        assert supervisor.process.wait(TIMEOUT) == 0, supervisor.output
        process_group_gone(supervisor.process.pid)  # no worker left behind
    finally:
        supervisor.kill()
