"""handlers.framing: sans-IO decoders, encoders, MessageHandler and client helpers."""

from __future__ import annotations

import logging
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.framing import (
    NEED_DATA,
    EchoMessageHandler,
    LengthPrefixed,
    MessageHandler,
    NativeOrderEchoHandler,
    NetstringDecoder,
    Netstrings,
    recv_message,
    send_message,
)
from pyserve import ProtocolError, ThreadingTCPServer
from pyserve.testing import serving

FRAMINGS = [LengthPrefixed(), LengthPrefixed("<H", max_size=1000), Netstrings(max_size=1000)]
framing_ids = [repr(f) for f in FRAMINGS]


def drain(decoder) -> list[bytes]:
    out = []
    while True:
        message = decoder.next_message()
        if message is NEED_DATA:
            return out
        out.append(message)


def decode_bytewise(framing, wire: bytes) -> list[bytes]:
    decoder = framing.decoder()
    out = []
    for i in range(len(wire)):
        decoder.feed(wire[i : i + 1])
        out.extend(drain(decoder))
    assert decoder.end_of_input() is None
    return out


# -- decoders, no sockets -------------------------------------------------------------


@pytest.mark.parametrize("framing", FRAMINGS, ids=framing_ids)
def test_many_messages_in_one_feed_come_out_one_by_one(framing) -> None:
    messages = [b"one", b"", b"three" * 10]
    decoder = framing.decoder()
    decoder.feed(b"".join(framing.encode(m) for m in messages))
    assert drain(decoder) == messages


@pytest.mark.parametrize("framing", FRAMINGS, ids=framing_ids)
def test_a_message_fed_one_byte_at_a_time_is_decoded_once(framing) -> None:
    assert decode_bytewise(framing, framing.encode(b"hello world")) == [b"hello world"]


@pytest.mark.parametrize("framing", FRAMINGS, ids=framing_ids)
def test_zero_length_message_round_trips(framing) -> None:
    assert decode_bytewise(framing, framing.encode(b"")) == [b""]


def test_length_prefix_wire_format_is_header_then_payload() -> None:
    assert LengthPrefixed("!I").encode(b"abc") == b"\x00\x00\x00\x03abc"
    assert LengthPrefixed("<H").encode(b"abc") == b"\x03\x00abc"


def test_netstring_wire_format() -> None:
    assert Netstrings().encode(b"hello world!") == b"12:hello world!,"
    assert Netstrings().encode(b"") == b"0:,"


def test_oversized_length_prefix_is_rejected_from_the_header_alone() -> None:
    decoder = LengthPrefixed(max_size=10).decoder()
    decoder.feed(struct.pack("!I", 11))
    with pytest.raises(ProtocolError, match="11 bytes exceeds the maximum of 10"):
        decoder.next_message()


def test_oversized_netstring_is_rejected_before_its_colon() -> None:
    decoder = Netstrings(max_size=99).decoder()
    decoder.feed(b"100")
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        decoder.next_message()


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"x:abc,", "not decimal"),
        (b"01:a,", "leading zero"),
        (b":,", "empty"),
        (b"3:abc;", "not terminated"),
        (b"-1:", "not decimal"),
    ],
)
def test_malformed_netstrings_are_protocol_errors(wire: bytes, reason: str) -> None:
    decoder = NetstringDecoder(max_size=1000)
    decoder.feed(wire)
    with pytest.raises(ProtocolError, match=reason):
        drain(decoder)


@pytest.mark.parametrize("framing", FRAMINGS, ids=framing_ids)
def test_truncated_message_at_end_of_input_is_a_protocol_error(framing) -> None:
    decoder = framing.decoder()
    decoder.feed(framing.encode(b"hello")[:-1])
    assert decoder.next_message() is NEED_DATA
    with pytest.raises(ProtocolError, match="middle"):
        decoder.end_of_input()


@pytest.mark.parametrize("framing", FRAMINGS, ids=framing_ids)
def test_safe_read_size_never_crosses_a_message_boundary(framing) -> None:
    wire = framing.encode(b"first message") + framing.encode(b"second")
    decoder = framing.decoder()
    position = 0
    while True:
        message = decoder.next_message()
        if message is not NEED_DATA:
            break
        size = decoder.safe_read_size()
        decoder.feed(wire[position : position + size])
        position += size
    assert message == b"first message"
    assert position == len(framing.encode(b"first message"))


@pytest.mark.parametrize(
    "bad", ["I", "!i", "!f", "!?", "!e", "!II", "nonsense", "!x", "!c"], ids=repr
)
def test_bad_header_format_raises_value_error_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match="header_format"):
        LengthPrefixed(bad)


def test_max_size_beyond_the_header_range_is_refused() -> None:
    with pytest.raises(ValueError, match="max_size 70000"):
        LengthPrefixed("!H", max_size=70000)


def test_default_max_size_fits_a_small_header() -> None:
    assert LengthPrefixed("!B").max_size == 255


def test_encoding_an_oversized_payload_raises_value_error() -> None:
    with pytest.raises(ValueError, match="exceeds max_size 4"):
        LengthPrefixed(max_size=4).encode(b"12345")


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=10),
    which=st.sampled_from(range(len(FRAMINGS))),
)
def test_any_split_of_the_stream_yields_the_same_messages(messages, cuts, which) -> None:
    framing = FRAMINGS[which]
    wire = b"".join(framing.encode(m) for m in messages)
    decoder = framing.decoder()
    out: list[bytes] = []
    previous = 0
    for cut in [*sorted({min(c, len(wire)) for c in cuts}), len(wire)]:
        decoder.feed(wire[previous:cut])
        previous = cut
        out.extend(drain(decoder))
    assert out == messages
    assert decoder.end_of_input() is None


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(max_size=200), which=st.sampled_from(range(len(FRAMINGS))))
def test_arbitrary_bytes_give_messages_need_data_or_protocol_error(junk, which) -> None:
    framing = FRAMINGS[which]
    decoder = framing.decoder()
    decoder.feed(junk)
    try:
        for message in drain(decoder):
            assert len(message) <= framing.max_size
    except ProtocolError:
        pass
    # Bounded memory: nothing beyond what was fed is ever held.
    assert len(decoder._buffer) <= len(junk)


# -- MessageHandler over a real server --------------------------------------------------


@pytest.fixture
def echo_server():
    with serving(ThreadingTCPServer(("127.0.0.1", 0), EchoMessageHandler)) as server:
        yield server


def connect(server) -> socket.socket:
    return socket.create_connection(server.server_address, timeout=10)


def test_many_messages_in_one_send_are_answered_one_by_one(echo_server) -> None:
    framing = LengthPrefixed()
    messages = [b"m%d" % i for i in range(50)]
    with connect(echo_server) as sock:
        sock.sendall(b"".join(framing.encode(m) for m in messages))
        assert [recv_message(sock) for _ in messages] == messages


def test_one_message_split_across_many_sends_is_answered_once(echo_server) -> None:
    wire = LengthPrefixed().encode(b"split" * 100)
    with connect(echo_server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        for i in range(0, len(wire), 7):
            sock.sendall(wire[i : i + 7])
        assert recv_message(sock) == b"split" * 100
        send_message(sock, b"next")
        assert recv_message(sock) == b"next"


def test_zero_length_message_is_echoed(echo_server) -> None:
    with connect(echo_server) as sock:
        send_message(sock, b"")
        assert recv_message(sock) == b""


def test_oversized_frame_closes_the_connection_with_one_logged_reason(caplog) -> None:
    class Small(EchoMessageHandler):
        framing = LengthPrefixed(max_size=16)

    caplog.set_level(logging.WARNING, logger="pyserve")
    with serving(ThreadingTCPServer(("127.0.0.1", 0), Small)) as server:
        with connect(server) as sock:
            sock.sendall(struct.pack("!I", 17) + b"x" * 17)
            assert sock.recv(100) == b""  # closed, nothing echoed
        with connect(server) as other:  # the server still serves others
            send_message(other, b"fine", Small.framing)
            assert recv_message(other, Small.framing) == b"fine"
    reasons = [r.getMessage() for r in caplog.records if r.name.startswith("pyserve")]
    assert len(reasons) == 1
    assert "17 bytes exceeds the maximum of 16" in reasons[0]


def test_netstring_framing_serves_over_a_real_connection() -> None:
    class NetEcho(EchoMessageHandler):
        framing = Netstrings(max_size=100)

    with serving(ThreadingTCPServer(("127.0.0.1", 0), NetEcho)) as server, connect(server) as sock:
        sock.sendall(b"5:hello,0:,")
        assert recv_message(sock, NetEcho.framing) == b"hello"
        assert recv_message(sock, NetEcho.framing) == b""


def test_close_from_handle_message_ends_the_connection_after_the_reply() -> None:
    class OneShot(MessageHandler):
        def handle_message(self, payload: bytes) -> bytes:
            self.close()
            return payload.upper()

    with serving(ThreadingTCPServer(("127.0.0.1", 0), OneShot)) as server, connect(server) as sock:
        send_message(sock, b"a")
        send_message(sock, b"b")
        assert recv_message(sock) == b"A"
        with pytest.raises(EOFError):
            recv_message(sock)


def test_recv_message_reports_a_truncated_message_as_protocol_error() -> None:
    left, right = socket.socketpair()
    with left, right:
        right.settimeout(5)
        left.sendall(struct.pack("!I", 10) + b"abc")
        left.shutdown(socket.SHUT_WR)
        with pytest.raises(ProtocolError, match="middle"):
            recv_message(right)


# -- byte order ----------------------------------------------------------------------


def test_byte_order_names_the_length_prefix_of_a_handler_class() -> None:
    class Little(EchoMessageHandler):
        byte_order = "little"

    assert Little.framing.encode(b"ab") == b"\x02\x00\x00\x00ab"
    assert NativeOrderEchoHandler.framing.encode(b"ab") == struct.pack("I", 2) + b"ab"
    assert EchoMessageHandler.framing.encode(b"ab") == b"\x00\x00\x00\x02ab"


def test_a_bad_byte_order_is_refused_when_the_class_is_defined() -> None:
    with pytest.raises(ValueError, match="byte_order 'middle'"):

        class Bad(EchoMessageHandler):
            byte_order = "middle"


def test_native_order_header_format_is_accepted() -> None:
    assert LengthPrefixed("=H").encode(b"x") == struct.pack("H", 1) + b"x"
