"""pyserve.testing and the pytest plugin do what they promise their users.

* ``serving()`` yields a running server, fails loudly (``LeakError``) when the
  block leaked a thread or a socket, and re-raises a failure of ``serve_forever``;
* ``StreamHarness`` / ``run_stream_handler`` / ``run_datagram_handler`` drive a
  handler with no port bound;
* the plugin's ``serve`` and ``handler_harness`` fixtures work in a pytest run of
  their own (``pytester``).
"""

from __future__ import annotations

import socket
import threading

import pytest
from conftest import TIMEOUT

from pyserve import (
    BaseRequestHandler,
    DatagramRequestHandler,
    StreamRequestHandler,
    TCPServer,
    ThreadingTCPServer,
)
from pyserve.testing import (
    LeakError,
    StreamHarness,
    run_datagram_handler,
    run_stream_handler,
    serving,
)

HOST = "127.0.0.1"


class LineEcho(StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class Broken(StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        raise ValueError("handler bug")


# ---------------------------------------------------------------- serving()


def test_serving_yields_a_running_server():
    with serving(ThreadingTCPServer((HOST, 0), LineEcho)) as server:
        assert server._loop_running.is_set()
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
            client.sendall(b"hi\n")
            assert client.recv(16) == b"hi\n"
    assert server._loop_exited.is_set()


def test_serving_raises_leak_error_for_a_leaked_thread():
    release = threading.Event()
    leaked = threading.Thread(target=release.wait, args=(TIMEOUT,), daemon=True)
    try:
        with pytest.raises(LeakError, match="threads still alive"), serving(
            TCPServer((HOST, 0), LineEcho), join_timeout=0.5
        ):
            leaked.start()
    finally:
        release.set()
        leaked.join(TIMEOUT)


def test_serving_raises_leak_error_for_a_leaked_socket():
    leaked: list[socket.socket] = []
    try:
        with pytest.raises(LeakError, match="sockets still open"), serving(
            TCPServer((HOST, 0), LineEcho)
        ):
            leaked.append(socket.socket())  # opened inside the block, left open
    finally:
        for sock in leaked:
            sock.close()


def test_serving_reraises_a_serve_forever_failure():
    class Failing(TCPServer):
        def service_actions(self) -> None:
            raise RuntimeError("loop failure")

    failing = Failing((HOST, 0), LineEcho)
    with pytest.raises(RuntimeError, match="loop failure"), serving(failing, poll_interval=0.01):
        assert failing._loop_exited.wait(TIMEOUT)


def test_serving_does_not_hide_the_blocks_own_failure():
    with pytest.raises(KeyError), serving(TCPServer((HOST, 0), LineEcho)):
        raise KeyError("from the block")


# ---------------------------------------------------------------- harnesses


def test_stream_harness_is_the_handlers_client():
    with StreamHarness(LineEcho) as client:
        client.sendall(b"one\n")
        assert client.recv(16) == b"one\n"


def test_stream_harness_reraises_the_handlers_exception():
    with pytest.raises(ValueError, match="handler bug"), StreamHarness(Broken) as client:
        client.sendall(b"line\n")


def test_stream_harness_gives_the_handler_its_server_and_address():
    seen = {}

    class Inspect(BaseRequestHandler):
        def handle(self) -> None:
            seen["server"] = self.server
            seen["address"] = self.client_address

    marker = object()
    with StreamHarness(Inspect, server=marker, client_address=("10.0.0.1", 9)):
        pass
    assert seen == {"server": marker, "address": ("10.0.0.1", 9)}


def test_run_stream_handler_returns_everything_written():
    assert run_stream_handler(LineEcho, b"a\nb\n") == b"a\nb\n"


def test_run_stream_handler_copes_with_a_handler_that_reads_nothing():
    class Greeter(BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(b"hello")  # and gone, input unread

    # The handler may end before or after the input is sent: either way (repeated,
    # so both orders occur) its output comes back and nothing is raised.
    for _ in range(20):
        assert run_stream_handler(Greeter, b"ignored") == b"hello"


def test_run_datagram_handler_returns_the_replies():
    class Upper(DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.read().upper())

    assert run_datagram_handler(Upper, b"ping") == [b"PING"]


def test_run_datagram_handler_returns_no_reply_for_a_silent_handler():
    assert run_datagram_handler(DatagramRequestHandler, b"ping") == []


# ---------------------------------------------------------------- the plugin

PLUGIN_TESTS = """
import socket
import threading

from pyserve import StreamRequestHandler, ThreadingTCPServer


class LineEcho(StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)


def test_serve_runs_the_server(serve):
    server = serve(ThreadingTCPServer(("127.0.0.1", 0), LineEcho))
    with socket.create_connection(server.server_address, timeout=10) as client:
        client.sendall(b"hi\\n")
        assert client.recv(16) == b"hi\\n"


def test_handler_harness_drives_a_handler(handler_harness):
    with handler_harness(LineEcho) as client:
        client.sendall(b"hey\\n")
        assert client.recv(16) == b"hey\\n"


RELEASE = threading.Event()


def test_serve_reports_a_leaked_thread(serve):
    serve(ThreadingTCPServer(("127.0.0.1", 0), LineEcho), join_timeout=0.5)
    threading.Thread(target=RELEASE.wait, args=(10,), daemon=True).start()


def test_release_the_leaked_thread():
    RELEASE.set()
"""


def test_plugin_fixtures_work_in_a_pytest_run(pytester, pytestconfig):
    pytester.makepyfile(test_plugin_use=PLUGIN_TESTS)
    args = ["-p", "no:cacheprovider"]
    if pytestconfig.pluginmanager.get_plugin("pyserve") is None:
        # pyserve runs from a source tree here (PYTHONPATH), not installed: no
        # pytest11 entry point registered the plugin, so name it.
        args += ["-p", "pyserve.pytest_plugin"]
    result = pytester.runpytest_inprocess(*args)
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_serve_reports_a_leaked_thread*"])
