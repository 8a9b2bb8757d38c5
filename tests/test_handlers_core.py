"""The request handlers keep the stdlib's contract, whatever their fast paths.

Each test runs a handler of ``pyserve`` and of the stdlib's ``socketserver`` (the
``impl`` fixture) over a socket pair (``pyserve.testing``'s harness), so pyserve's
own ``rfile``/``wfile`` (a C ``recv_into`` reader, a ``sendall`` writer) are held
to exactly what the stdlib's ``makefile()`` objects do.
"""

from __future__ import annotations

import array
import io
import socket
import threading
from typing import Any

import pytest
from conftest import TIMEOUT

from pyserve.testing import StreamHarness, run_datagram_handler, run_stream_handler

BIG = 4 * 1024 * 1024  # far more than a socket buffer: forces partial sends


def _stream_handler(impl: Any, handle: Any, **attributes: Any) -> Any:
    """A StreamRequestHandler subclass of ``impl`` with this ``handle``."""
    return type("Handler", (impl.StreamRequestHandler,), {"handle": handle, **attributes})


def test_readline_reads_one_line_at_a_time(impl):
    def handle(self):
        first = self.rfile.readline()
        second = self.rfile.readline()
        self.wfile.write(second + first)

    assert run_stream_handler(_stream_handler(impl, handle), b"one\ntwo\n") == b"two\none\n"


def test_read_n_waits_for_n_bytes_across_segments(impl):
    def handle(self):
        self.wfile.write(self.rfile.read(5) + b"|" + self.rfile.read(3))

    with StreamHarness(_stream_handler(impl, handle)) as client:
        for piece in (b"ab", b"cde", b"fgh"):
            client.sendall(piece)
        assert client.recv(64) == b"abcde|fgh"


def test_rfile_iterates_over_lines_until_eof(impl):
    def handle(self):
        lines = list(self.rfile)
        self.wfile.write(b"".join(reversed(lines)))

    assert run_stream_handler(_stream_handler(impl, handle), b"a\nb\nc") == b"cb\na\n"


def test_wfile_write_returns_the_byte_count_of_any_buffer(impl):
    counts = []
    ints = array.array("i", [1, 2, 3])

    def handle(self):
        for data in (b"bytes", bytearray(b"array"), memoryview(b"view"), memoryview(ints)):
            counts.append(self.wfile.write(data))

    out = run_stream_handler(_stream_handler(impl, handle))
    assert counts == [5, 5, 4, ints.itemsize * 3]
    assert out == b"bytesarrayview" + ints.tobytes()


@pytest.mark.parametrize("timeout", [None, TIMEOUT], ids=["blocking", "with-timeout"])
def test_wfile_write_sends_everything_even_when_the_socket_takes_part(impl, timeout):
    payload = bytes(range(256)) * (BIG // 256)
    written = []

    def handle(self):
        written.append(self.wfile.write(payload))

    out = run_stream_handler(_stream_handler(impl, handle, timeout=timeout))
    assert written == [BIG]
    assert out == payload


def test_timeout_attribute_applies_to_the_connection(impl):
    seen = []

    def handle(self):
        seen.append(self.connection.gettimeout())
        self.rfile.readline()  # the client stays silent

    handler = _stream_handler(impl, handle, timeout=0.2)
    with pytest.raises(socket.timeout), StreamHarness(handler) as client:
        assert client.recv(16) == b""  # the handler gave up and its side closed
    assert seen == [0.2]


def test_unbuffered_rfile_reads_no_further_than_asked(impl):
    def handle(self):
        line = self.rfile.readline()
        rest = b""
        while len(rest) < 4:  # still in the socket, not in an rfile buffer
            rest += self.connection.recv(4 - len(rest))
        self.wfile.write(line + b"|" + rest)

    handler = _stream_handler(impl, handle, rbufsize=0)
    with StreamHarness(handler) as client:
        client.sendall(b"line\nrest")
        assert client.recv(64) == b"line\n|rest"


def test_buffered_wfile_is_flushed_when_the_handler_finishes(impl):
    def handle(self):
        self.wfile.write(b"buffered")

    handler = _stream_handler(impl, handle, wbufsize=io.DEFAULT_BUFFER_SIZE)
    assert run_stream_handler(handler) == b"buffered"


class RecordingSocket(socket.socket):
    """Not a plain socket.socket (as an SSLSocket is not): records makefile() calls."""

    modes: list[str]

    def makefile(self, mode: str = "r", *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.modes.append(mode)
        return super().makefile(mode, *args, **kwargs)


def test_socket_subclass_gets_file_objects_from_its_own_makefile(impl):
    def handle(self):
        self.wfile.write(self.rfile.readline().upper())

    handler = _stream_handler(impl, handle)
    client, served = socket.socketpair()
    wrapped = RecordingSocket(served.family, served.type, fileno=served.detach())
    wrapped.modes = []
    client.settimeout(TIMEOUT)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            handler(wrapped, ("peer", 0), None)
        except BaseException as exc:
            errors.append(exc)
        finally:
            wrapped.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        client.sendall(b"shout\n")
        assert client.recv(64) == b"SHOUT\n"
    finally:
        client.close()
        thread.join(TIMEOUT)
    assert not errors
    assert "rb" in wrapped.modes


def test_setup_handle_finish_run_in_order_and_finish_runs_after_an_exception(impl):
    calls = []

    class Handler(impl.BaseRequestHandler):  # type: ignore[misc]
        def setup(self) -> None:
            calls.append("setup")

        def handle(self) -> None:
            calls.append("handle")
            raise ValueError("handler bug")

        def finish(self) -> None:
            calls.append("finish")

    with pytest.raises(ValueError, match="handler bug"):
        Handler(None, ("peer", 0), None)
    assert calls == ["setup", "handle", "finish"]


def test_stream_handler_closes_its_files_even_when_handle_raises(impl):
    files = []

    def handle(self):
        files.extend((self.rfile, self.wfile))
        raise ValueError("handler bug")

    with pytest.raises(ValueError, match="handler bug"):
        run_stream_handler(_stream_handler(impl, handle))
    assert [f.closed for f in files] == [True, True]


def test_datagram_handler_reads_the_packet_and_replies_with_what_it_wrote(impl):
    class Upper(impl.DatagramRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            self.wfile.write(self.rfile.read().upper())

    assert run_datagram_handler(Upper, b"ping") == [b"PING"]
