"""Issue 2, fix 9: ``handle_error()`` logs through ``logging`` (logger "pyserve")
instead of printing to stderr, once per error and in the stdlib's words; a peer
that hung up costs one DEBUG line without a traceback.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading

import pytest
from conftest import TIMEOUT

HOST = "127.0.0.1"
STDLIB_WORDING = "Exception occurred during processing of request from"


def _round_trip_until_closed(server) -> None:
    with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
        client.sendall(b"go")
        while client.recv(64):
            pass  # the server closes the connection after handle_error()


@pytest.mark.stdlib_defect("handle_error() prints the traceback to stderr, nothing is logged")
def test_handler_exception_is_logged_once_in_the_stdlib_wording(impl, running, pyserve_log):
    class Broken(impl.BaseRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            self.request.recv(16)
            raise ValueError("handler bug")

    server = impl.TCPServer((HOST, 0), Broken)
    with running(server):
        _round_trip_until_closed(server)
    errors = [r for r in pyserve_log.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1
    record = errors[0]
    assert record.levelno == logging.ERROR
    assert STDLIB_WORDING in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)


@pytest.mark.parametrize(
    "error", [ConnectionResetError, BrokenPipeError, socket.timeout], ids=lambda e: e.__name__
)
@pytest.mark.stdlib_defect("a peer that hung up costs a full traceback on stderr")
def test_peer_gone_is_one_debug_line_without_traceback(impl, running, pyserve_log, error):
    class PeerGone(impl.BaseRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            self.request.recv(16)
            raise error("the peer went away")

    server = impl.TCPServer((HOST, 0), PeerGone)
    with running(server):
        _round_trip_until_closed(server)
    assert [(r.levelno, r.exc_info) for r in pyserve_log.records] == [(logging.DEBUG, None)]


@pytest.mark.stdlib_defect("a real connection reset costs a full traceback on stderr")
def test_real_connection_reset_is_one_debug_line(impl, running, pyserve_log):
    class ReadAfterHello(impl.BaseRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            self.request.sendall(b"hello")
            self.request.recv(16)  # the client resets instead of answering

    class Server(impl.TCPServer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__((HOST, 0), ReadAfterHello)
            self.request_ended = threading.Event()

        def shutdown_request(self, request: socket.socket) -> None:
            super().shutdown_request(request)  # after handle_error(), in both
            self.request_ended.set()

    server = Server()
    with running(server):
        client = socket.create_connection(server.server_address, timeout=TIMEOUT)
        assert client.recv(16) == b"hello"
        # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        assert server.request_ended.wait(TIMEOUT)
    records = pyserve_log.records
    assert [(r.levelno, r.exc_info) for r in records] == [(logging.DEBUG, None)]
    assert "ConnectionResetError" in records[0].getMessage()
