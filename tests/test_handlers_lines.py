"""handlers.lines: the line decoder, LineHandler and the ready line services."""

from __future__ import annotations

import logging
import socket
import subprocess
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from peers import needs_binary

from handlers.framing import NEED_DATA, recv_message, send_message
from handlers.lines import LineDecoder, LineHandler, Lines, UpperCaseHandler, WelcomeHandler
from pyserve import ProtocolError, ThreadingTCPServer
from pyserve.testing import StreamHarness, run_stream_handler, serving


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def drain(decoder: LineDecoder) -> list[bytes]:
    out = []
    while True:
        line = decoder.next_message()
        if line is NEED_DATA:
            return out
        assert isinstance(line, bytes)
        out.append(line)


# -- the decoder, no sockets ---------------------------------------------------------


def test_lf_and_crlf_lines_both_decode_without_terminators() -> None:
    decoder = LineDecoder()
    decoder.feed(b"unix\nwindows\r\n\n")
    assert drain(decoder) == [b"unix", b"windows", b""]


def test_lines_fed_one_byte_at_a_time_decode_the_same() -> None:
    decoder = LineDecoder()
    out = []
    for byte in b"ab\r\ncd\n":
        decoder.feed(bytes([byte]))
        out.extend(drain(decoder))
    assert out == [b"ab", b"cd"]


def test_strip_cr_false_keeps_the_cr() -> None:
    decoder = LineDecoder(strip_cr=False)
    decoder.feed(b"a\r\n")
    assert drain(decoder) == [b"a\r"]


def test_over_long_line_is_refused_before_its_newline_arrives() -> None:
    decoder = LineDecoder(max_line_length=10)
    decoder.feed(b"x" * 11)
    with pytest.raises(ProtocolError, match="maximum of 10"):
        decoder.next_message()


def test_a_line_of_exactly_the_maximum_is_accepted_with_crlf() -> None:
    decoder = LineDecoder(max_line_length=3)
    for byte in b"abc\r\n":
        decoder.feed(bytes([byte]))
        assert drain(decoder) in ([], [b"abc"])
    decoder.feed(b"abc\r\n")
    assert drain(decoder) == [b"abc"]


def test_a_last_line_without_newline_is_delivered_at_end_of_input() -> None:
    decoder = LineDecoder()
    decoder.feed(b"one\ntwo")
    assert drain(decoder) == [b"one"]
    assert decoder.end_of_input() == b"two"
    assert decoder.end_of_input() is None


def test_lines_framing_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="newline"):
        Lines(newline=b"\r")
    with pytest.raises(ValueError, match="max_line_length 0"):
        Lines(max_line_length=0)
    with pytest.raises(ValueError, match="cannot contain a newline"):
        Lines().encode(b"a\nb")


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=10),
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=8),
)
def test_any_split_of_the_stream_yields_the_same_lines(lines, cuts) -> None:
    wire = b"".join(line + b"\n" for line in lines)
    expected = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    decoder = LineDecoder(max_line_length=41)
    out: list[bytes] = []
    previous = 0
    for cut in [*sorted({min(c, len(wire)) for c in cuts}), len(wire)]:
        decoder.feed(wire[previous:cut])
        previous = cut
        out.extend(drain(decoder))
    assert out == expected


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(max_size=300))
def test_arbitrary_bytes_give_short_lines_or_protocol_error(junk) -> None:
    decoder = LineDecoder(max_line_length=16)
    decoder.feed(junk)
    try:
        assert all(len(line) <= 16 for line in drain(decoder))
    except ProtocolError:
        pass


# -- the handlers, over a socket pair ------------------------------------------------


def test_uppercase_echoes_each_line_in_upper_case() -> None:
    assert run_stream_handler(UpperCaseHandler, b"hello\r\nWorld\n") == b"HELLO\nWORLD\n"


def test_welcome_greets_answers_and_closes_on_exit() -> None:
    reply = run_stream_handler(WelcomeHandler, b"Ada\nGrace\nexit\nnever answered\n")
    assert reply == b"Success!Welcom! Ada!\nWelcom! Grace!\n"


def test_welcome_texts_may_be_overridden() -> None:
    class Polite(WelcomeHandler):
        greeting = "Success!\n"
        reply_format = "Welcome! {}!"

    assert run_stream_handler(Polite, b"Ada\n") == b"Success!\nWelcome! Ada!\n"


def test_ends_at_read_makes_the_tail_of_a_read_a_message() -> None:
    decoder = LineDecoder(ends_at_read=True)
    decoder.feed(b"one\ntwo")
    assert decoder.next_message() == b"one"
    assert decoder.terminated
    assert decoder.next_message() == b"two"
    assert not decoder.terminated
    assert decoder.next_message() is NEED_DATA


def test_ends_at_read_waits_for_the_lf_of_a_trailing_cr() -> None:
    decoder = LineDecoder(ends_at_read=True)
    decoder.feed(b"abc\r")
    assert decoder.next_message() is NEED_DATA
    decoder.feed(b"\n")
    assert decoder.next_message() == b"abc"
    assert decoder.terminated


def test_ends_at_read_still_refuses_an_over_long_tail() -> None:
    decoder = LineDecoder(max_line_length=4, ends_at_read=True)
    decoder.feed(b"abcdef")
    with pytest.raises(ProtocolError, match="maximum of 4"):
        decoder.next_message()


def test_crlf_newline_is_used_on_replies() -> None:
    class Crlf(UpperCaseHandler):
        newline = "\r\n"

    assert run_stream_handler(Crlf, b"a\n") == b"A\r\n"


def test_none_from_handle_line_sends_nothing() -> None:
    class Quiet(LineHandler):
        def handle_line(self, line: str) -> Optional[str]:
            return None if line == "hush" else line

    assert run_stream_handler(Quiet, b"hush\nsay\n") == b"say\n"


def test_invalid_utf8_closes_the_connection_with_one_logged_reason(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pyserve")
    assert run_stream_handler(UpperCaseHandler, b"ok\n\xff\xfe\nlater\n") == b"OK\n"
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("pyserve")]
    assert len(messages) == 1
    assert "not valid utf-8" in messages[0]


def test_over_long_line_closes_the_connection_with_one_logged_reason(caplog) -> None:
    class Short(UpperCaseHandler):
        max_line_length = 100

    caplog.set_level(logging.WARNING, logger="pyserve")
    with StreamHarness(Short) as client:
        client.sendall(b"fine\n")
        assert client.recv(100) == b"FINE\n"
        try:
            client.sendall(b"x" * 100_000)
            # Closed with our bytes unread: an end of file or a reset, never a reply.
            assert client.recv(100) == b""
        except (ConnectionResetError, BrokenPipeError):
            pass
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("pyserve")]
    assert len(messages) == 1
    assert "maximum of 100 bytes" in messages[0]


# -- end to end, on a real server with real clients ----------------------------------


def test_welcome_over_tcp_with_the_line_client_helpers() -> None:
    framing = Lines()
    server = ThreadingTCPServer(("127.0.0.1", 0), WelcomeHandler)
    # One line, not a parenthesised with: Python 3.9 cannot parse those.
    with serving(server), socket.create_connection(server.server_address, timeout=10) as sock:
        assert recv_exactly(sock, 8) == b"Success!"  # the tutorial's greeting: no newline
        send_message(sock, b"Linus", framing)
        assert recv_message(sock, framing) == b"Welcom! Linus!"
        send_message(sock, b"exit", framing)
        with pytest.raises(EOFError):
            recv_message(sock, framing)


@needs_binary("nc", "netcat-openbsd")
def test_uppercase_with_netcat() -> None:
    with serving(ThreadingTCPServer(("127.0.0.1", 0), UpperCaseHandler)) as server:
        host, port = server.server_address
        done = subprocess.run(
            ["nc", "-N", "-w", "5", host, str(port)],
            input=b"netcat speaks\nline two\n",
            capture_output=True,
            timeout=20,
            check=True,
        )
    assert done.stdout == b"NETCAT SPEAKS\nLINE TWO\n"


@needs_binary("socat", "socat")
def test_welcome_with_socat_sending_crlf() -> None:
    with serving(ThreadingTCPServer(("127.0.0.1", 0), WelcomeHandler)) as server:
        host, port = server.server_address
        done = subprocess.run(
            ["socat", "-t", "5", "-T", "10", "-", f"TCP:{host}:{port},crlf"],
            input=b"Bob\nexit\n",
            capture_output=True,
            timeout=20,
            check=True,
        )
    assert done.stdout.replace(b"\r", b"") == b"Success!Welcom! Bob!\n"
