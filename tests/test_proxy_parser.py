"""The sans-IO PROXY protocol parser: no sockets, byte by byte, and fuzzed."""

from __future__ import annotations

import socket
import struct
from typing import Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyserve.errors import ProtocolError
from pyserve.net.proxy_header import (
    NEED_DATA,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_UNIQUE_ID,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    NeedData,
    ProxyHeader,
    ProxyParser,
)


def v2(command: int, family_transport: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family_transport, len(body)) + body


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


V2_TCP4 = v2(
    1,
    0x11,
    socket.inet_aton("192.0.2.7")
    + socket.inet_aton("198.51.100.1")
    + struct.pack("!HH", 56324, 443)
    + tlv(PP2_TYPE_ALPN, b"h2")
    + tlv(PP2_TYPE_AUTHORITY, b"example.com"),
)


def parse(data: bytes) -> tuple[ProxyHeader, bytes]:
    parser = ProxyParser()
    parser.feed(data)
    header = parser.next_event()
    assert isinstance(header, ProxyHeader)
    return header, parser.unused_data


def parse_byte_by_byte(data: bytes) -> tuple[Union[ProxyHeader, NeedData], bytes]:
    parser = ProxyParser()
    event: Union[ProxyHeader, NeedData] = parser.next_event()
    for index in range(len(data)):
        parser.feed(data[index : index + 1])
        event = parser.next_event()
    return event, parser.unused_data


# -- version 1 ---------------------------------------------------------------------


def test_v1_tcp4_gives_source_and_destination() -> None:
    header, rest = parse(b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET /")
    assert header == ProxyHeader(
        1, False, socket.AF_INET, socket.SOCK_STREAM, ("192.0.2.7", 56324), ("198.51.100.1", 443)
    )
    assert rest == b"GET /"


def test_v1_tcp6_normalises_addresses() -> None:
    header, _ = parse(b"PROXY TCP6 2001:DB8::0001 ::1 1 65535\r\n")
    assert header.family == socket.AF_INET6
    assert header.source == ("2001:db8::1", 1)
    assert header.destination == ("::1", 65535)


def test_v1_unknown_ignores_the_rest_of_the_line() -> None:
    header, rest = parse(b"PROXY UNKNOWN whatever follows\r\nhello")
    assert (header.family, header.source, header.destination) == (socket.AF_UNSPEC, None, None)
    assert rest == b"hello"


def test_v1_header_of_exactly_107_bytes_is_accepted() -> None:
    address = "ffff:" * 7 + "ffff"
    longest_tcp6 = f"PROXY TCP6 {address} {address} 65535 65535\r\n".encode()
    assert parse(longest_tcp6)[0].source == (address, 65535)
    line = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 16) + b"\r\n"
    assert len(line) == V1_MAX_LENGTH
    assert parse(line)[0].family == socket.AF_UNSPEC


def test_v1_without_crlf_within_107_bytes_is_an_error() -> None:
    parser = ProxyParser()
    parser.feed(b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 15))
    assert parser.next_event() is NEED_DATA  # 106 bytes: CRLF may still come
    parser.feed(b"x")
    with pytest.raises(ProtocolError, match="longer than 107"):
        parser.next_event()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "needs 4 fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "needs 4 fields"),
        (b"PROXY TCP4 ::1 ::1 1 2\r\n", "not IPv4"),
        (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "not IPv6"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "bad port"),
        (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "bad address"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown PROXY v1 protocol"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF without CR"),
        (b"PROXX TCP4", "bad PROXY v1 preamble"),
    ],
)
def test_v1_malformed_header_is_a_clear_error(line: bytes, message: str) -> None:
    parser = ProxyParser()
    parser.feed(line)
    with pytest.raises(ProtocolError, match=message):
        parser.next_event()


# -- version 2 ---------------------------------------------------------------------


def test_v2_tcp4_with_tlvs() -> None:
    header, rest = parse(V2_TCP4 + b"payload")
    assert header.version == 2
    assert not header.local
    assert (header.family, header.transport) == (socket.AF_INET, socket.SOCK_STREAM)
    assert header.source == ("192.0.2.7", 56324)
    assert header.destination == ("198.51.100.1", 443)
    assert header.tlvs == ((PP2_TYPE_ALPN, b"h2"), (PP2_TYPE_AUTHORITY, b"example.com"))
    assert header.tlv(PP2_TYPE_AUTHORITY) == b"example.com"
    assert header.tlv(PP2_TYPE_UNIQUE_ID) is None
    assert rest == b"payload"


def test_v2_tcp6() -> None:
    body = (
        socket.inet_pton(socket.AF_INET6, "2001:db8::7")
        + socket.inet_pton(socket.AF_INET6, "::1")
        + struct.pack("!HH", 1234, 80)
    )
    header, _ = parse(v2(1, 0x21, body))
    assert header.family == socket.AF_INET6
    assert (header.source, header.destination) == (("2001:db8::7", 1234), ("::1", 80))


def test_v2_unix_paths() -> None:
    body = b"/run/client.sock".ljust(108, b"\0") + b"\0abstract".ljust(108, b"\0")
    header, _ = parse(v2(1, 0x31, body))
    assert header.source == "/run/client.sock"
    assert header.destination == "\0abstract"


def test_v2_local_command_is_marked_local() -> None:
    header, rest = parse(v2(0, 0x00, b"") + b"after")
    assert header.local
    assert header.source is None
    assert rest == b"after"


def test_v2_udp_transport_is_reported() -> None:
    body = socket.inet_aton("10.0.0.1") + socket.inet_aton("10.0.0.2") + struct.pack("!HH", 5, 6)
    assert parse(v2(1, 0x12, body))[0].transport == socket.SOCK_DGRAM


def test_v2_length_above_the_cap_is_refused_from_the_preamble() -> None:
    parser = ProxyParser(max_v2_length=64)
    parser.feed(V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 65))
    with pytest.raises(ProtocolError, match="above the cap of 64"):
        parser.next_event()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (V2_SIGNATURE[:5] + b"X", "bad PROXY v2 signature"),
        (V2_SIGNATURE + b"\x31\x11\x00\x00", "unsupported PROXY version 3"),
        (V2_SIGNATURE + b"\x22\x11\x00\x00", "unknown PROXY v2 command 2"),
        (v2(1, 0x41, b""), "unknown PROXY v2 family"),
        (v2(1, 0x13, b""), "unknown PROXY v2 family"),
        (v2(1, 0x11, b"\0" * 11), "address block is 11 bytes"),
        (v2(1, 0x11, b"\0" * 12 + b"\x05\x00"), "truncated TLV"),
        (v2(1, 0x11, b"\0" * 12 + b"\x05\x00\x09abc"), "overruns the header"),
        (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
    ],
)
def test_v2_malformed_header_is_a_clear_error(data: bytes, message: str) -> None:
    parser = ProxyParser()
    parser.feed(data)
    with pytest.raises(ProtocolError, match=message):
        parser.next_event()


def test_garbage_is_refused_at_its_first_byte() -> None:
    parser = ProxyParser()
    parser.feed(b"\x16")  # a TLS ClientHello sent to a PROXY-expecting port
    with pytest.raises(ProtocolError):
        parser.next_event()


def test_bad_max_v2_length_names_the_value() -> None:
    with pytest.raises(ValueError, match="70000"):
        ProxyParser(max_v2_length=70000)


# -- incremental feeding and fuzzing -------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n",
        b"PROXY UNKNOWN\r\n",
        V2_TCP4,
        v2(0, 0x00, b""),
    ],
)
def test_one_byte_at_a_time_gives_the_same_header(data: bytes) -> None:
    event, rest = parse_byte_by_byte(data + b"tail")
    assert event == parse(data)[0]
    assert rest == b"tail"


def test_need_data_until_the_last_byte() -> None:
    parser = ProxyParser()
    for byte in V2_TCP4[:-1]:
        parser.feed(bytes([byte]))
        assert parser.next_event() is NEED_DATA
    parser.feed(V2_TCP4[-1:])
    assert isinstance(parser.next_event(), ProxyHeader)


def _valid_headers() -> st.SearchStrategy[bytes]:
    v1 = st.builds(
        lambda a, b, p, q: f"PROXY TCP4 {a} {b} {p} {q}\r\n".encode(),
        st.ip_addresses(v=4),
        st.ip_addresses(v=4),
        st.integers(0, 65535),
        st.integers(0, 65535),
    )
    v2_tcp6 = st.builds(
        lambda a, b, p, q, tlvs: v2(
            1, 0x21, a.packed + b.packed + struct.pack("!HH", p, q) + b"".join(tlvs)
        ),
        st.ip_addresses(v=6),
        st.ip_addresses(v=6),
        st.integers(0, 65535),
        st.integers(0, 65535),
        st.lists(st.builds(tlv, st.integers(0, 255), st.binary(max_size=40)), max_size=4),
    )
    return st.one_of(v1, v2_tcp6)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), chunk=st.integers(1, 40))
def test_fuzz_never_crashes_and_memory_stays_bounded(data: bytes, chunk: int) -> None:
    parser = ProxyParser(max_v2_length=128)
    fed = 0
    for start in range(0, len(data), chunk):
        parser.feed(data[start : start + chunk])
        fed += len(data[start : start + chunk])
        try:
            event = parser.next_event()
        except ProtocolError as exc:
            message = str(exc)
            break
        if event is NEED_DATA:
            # Still waiting: never more than the longest allowed header.
            assert fed <= max(V1_MAX_LENGTH, 16 + 128)
        else:
            return
    else:
        return
    assert message  # a clear message, never an empty one


@settings(max_examples=200, deadline=None)
@given(header=_valid_headers(), tail=st.binary(max_size=20), mutation=st.integers(0, 400))
def test_fuzz_mutated_valid_headers_parse_or_fail_cleanly(
    header: bytes, tail: bytes, mutation: int
) -> None:
    assert isinstance(parse(header + tail)[0], ProxyHeader)
    assert parse(header + tail)[1] == tail
    data = bytearray(header + tail)
    data[mutation % len(data)] ^= 0xFF
    event: object
    try:
        event, _ = parse_byte_by_byte(bytes(data))
    except ProtocolError:
        return
    assert isinstance(event, (ProxyHeader, NeedData))
