"""A sans-IO parser for the PROXY protocol, versions 1 (text) and 2 (binary).

A load balancer such as HAProxy or nginx that forwards a TCP connection can
prepend one *PROXY header* saying who the real client is; the server reads it
before anything else. This module only parses: it never touches a socket, so it
is tested and fuzzed byte by byte, and :mod:`pyserve.net.proxy` drives it over a
connection.

The contract (the same for every parser in pyserve)
---------------------------------------------------
Feed bytes with ``feed(data)``, then call ``next_event()``. It returns

* :data:`NEED_DATA` when the header is not complete yet: feed more;
* a :class:`ProxyHeader` once the header is complete; bytes fed past its end are
  kept, untouched, in ``unused_data`` (they are the application's first bytes);
* or it raises :class:`~pyserve.errors.ProtocolError` saying what is wrong. Errors
  are reported as early as the bytes allow: a first byte that starts neither
  version is an error at once, not after 107 bytes.

Memory is bounded: a version 1 header is at most 107 bytes including its CRLF
(the specification's limit), and a version 2 header whose announced length is
above ``max_v2_length`` is refused as soon as its 16-byte preamble arrives. So
while ``next_event()`` answers :data:`NEED_DATA`, the parser holds at most
``16 + max_v2_length`` bytes.

Example::

    parser = ProxyParser()
    parser.feed(b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\\r\\nGET / HTTP/1.0\\r\\n")
    header = parser.next_event()
    assert header.source == ("192.0.2.7", 56324)
    assert parser.unused_data == b"GET / HTTP/1.0\\r\\n"

Version 1 is a line: ``PROXY TCP4|TCP6 src dst sport dport\\r\\n`` or
``PROXY UNKNOWN ...\\r\\n``. Version 2 is a 12-byte signature, a version/command
byte (PROXY or LOCAL), a family/transport byte, a 16-bit length, the addresses,
then type-length-value records (TLVs) that proxies use for extras (ALPN, the TLS
server name, a unique connection id...). All TLVs are exposed as they came.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import Optional, Union

from pyserve.errors import ProtocolError

__all__ = [
    "NEED_DATA",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "V2_SIGNATURE",
    "NeedData",
    "ProxyHeader",
    "ProxyParser",
]

#: The 12 bytes every version 2 header starts with (chosen so no text protocol
#: can start with them).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
#: The longest version 1 header, CRLF included ("PROXY TCP6" with two full IPv6
#: addresses and ports): the specification's own limit.
V1_MAX_LENGTH = 107
#: Default cap on a version 2 header's announced length (addresses + TLVs). 216
#: bytes of Unix addresses plus a few hundred of TLVs covers what HAProxy, nginx
#: and cloud load balancers send; the protocol itself allows up to 65535.
DEFAULT_MAX_V2_LENGTH = 4096

# TLV types registered by the specification (section 2.2).
PP2_TYPE_ALPN = 0x01  #: the negotiated application protocol (bytes, e.g. b"h2")
PP2_TYPE_AUTHORITY = 0x02  #: the host name the client asked for (TLS SNI), UTF-8
PP2_TYPE_CRC32C = 0x03  #: a checksum of the header (not verified here)
PP2_TYPE_NOOP = 0x04  #: padding, to be ignored
PP2_TYPE_UNIQUE_ID = 0x05  #: an opaque connection id (up to 128 bytes)
PP2_TYPE_SSL = 0x20  #: TLS details of the client's connection (nested TLVs)
PP2_TYPE_NETNS = 0x30  #: the network namespace name

#: A source or destination: ``(host, port)`` for IP, a path for Unix sockets.
ProxyAddress = Union[tuple[str, int], str]


class NeedData:
    """The type of :data:`NEED_DATA`: the header is incomplete, feed more bytes."""

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`ProxyParser.next_event` while the header is incomplete.
NEED_DATA = NeedData()


@dataclass(frozen=True)
class ProxyHeader:
    """One parsed PROXY header.

    - ``version``: 1 or 2
    - ``local``: True for the version 2 LOCAL command (the proxy speaks for itself,
      e.g. a health check): the addresses are not a client's and must be ignored
    - ``family``: ``socket.AF_INET``, ``AF_INET6``, ``AF_UNIX``, or ``AF_UNSPEC``
      for UNKNOWN (v1) and unspecified (v2) connections
    - ``transport``: ``socket.SOCK_STREAM``, ``SOCK_DGRAM``, or 0 if unspecified
    - ``source`` / ``destination``: ``(host, port)`` or a Unix path; None when the
      family is unspecified
    - ``tlvs``: the version 2 TLVs as ``(type, value)`` pairs, in order

    ``tlv(PP2_TYPE_AUTHORITY)`` gives the first value of one type, or None.
    """

    version: int
    local: bool
    family: int
    transport: int
    source: Optional[ProxyAddress]
    destination: Optional[ProxyAddress]
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def tlv(self, kind: int) -> Optional[bytes]:
        """The value of the first TLV of type ``kind``, or None if there is none."""
        for found, value in self.tlvs:
            if found == kind:
                return value
        return None


class ProxyParser:
    """Parse one PROXY header (v1 or v2) from bytes fed in any pieces.

    ``max_v2_length`` caps the length a version 2 header may announce (the default,
    4096, fits every real proxy; larger TLVs are refused as a protocol error).
    """

    def __init__(self, *, max_v2_length: int = DEFAULT_MAX_V2_LENGTH) -> None:
        if not 0 <= max_v2_length <= 0xFFFF:
            raise ValueError(f"max_v2_length must be in 0..65535, not {max_v2_length!r}")
        self.max_v2_length = max_v2_length
        self._buffer = bytearray()
        self._header: Optional[ProxyHeader] = None
        self._consumed = 0  # bytes of _buffer that made up the header, once parsed

    def feed(self, data: bytes) -> None:
        """Add bytes received from the connection."""
        self._buffer += data

    @property
    def unused_data(self) -> bytes:
        """Bytes fed after the end of the header (empty before it is complete)."""
        if self._header is None:
            return b""
        return bytes(self._buffer[self._consumed :])

    def next_event(self) -> Union[ProxyHeader, NeedData]:
        """The header, :data:`NEED_DATA`, or raise ``ProtocolError`` (see the module)."""
        if self._header is not None:
            return self._header
        buffer = self._buffer
        if not buffer:
            return NEED_DATA
        if buffer[0] == _V1_PREFIX[0]:
            parsed = self._parse_v1(buffer)
        elif buffer[0] == V2_SIGNATURE[0]:
            parsed = self._parse_v2(buffer)
        else:
            raise ProtocolError(f"not a PROXY protocol header (starts with {bytes(buffer[:8])!r})")
        if parsed is None:
            return NEED_DATA
        self._header, self._consumed = parsed
        return self._header

    # -- version 1 -----------------------------------------------------------------

    @staticmethod
    def _parse_v1(buffer: bytearray) -> Optional[tuple[ProxyHeader, int]]:
        prefix = bytes(buffer[: len(_V1_PREFIX)])
        if not _V1_PREFIX.startswith(prefix):
            raise ProtocolError(f"bad PROXY v1 preamble {prefix!r}")
        end = buffer.find(b"\r\n", 0, V1_MAX_LENGTH)
        if end < 0:
            if len(buffer) >= V1_MAX_LENGTH:
                raise ProtocolError(f"PROXY v1 header longer than {V1_MAX_LENGTH} bytes")
            if b"\n" in buffer:
                raise ProtocolError("PROXY v1 header ends in LF without CR")
            return None
        return _v1_header(bytes(buffer[len(_V1_PREFIX) : end])), end + 2

    # -- version 2 -----------------------------------------------------------------

    def _parse_v2(self, buffer: bytearray) -> Optional[tuple[ProxyHeader, int]]:
        seen = bytes(buffer[: len(V2_SIGNATURE)])
        if not V2_SIGNATURE.startswith(seen):
            raise ProtocolError(f"bad PROXY v2 signature {seen!r}")
        if len(buffer) < 16:
            return None
        version_command, family_transport, length = struct.unpack_from("!BBH", buffer, 12)
        if version_command >> 4 != 2:
            raise ProtocolError(f"unsupported PROXY version {version_command >> 4}")
        command = version_command & 0x0F
        if command not in (0, 1):
            raise ProtocolError(f"unknown PROXY v2 command {command}")
        if length > self.max_v2_length:
            raise ProtocolError(
                f"PROXY v2 header announces {length} bytes, above the cap of "
                f"{self.max_v2_length}"
            )
        if len(buffer) < 16 + length:
            return None
        body = bytes(buffer[16 : 16 + length])
        return _v2_header(command == 0, family_transport, body), 16 + length


_V1_FAMILIES = {b"TCP4": socket.AF_INET, b"TCP6": socket.AF_INET6}


def _v1_header(line: bytes) -> ProxyHeader:
    """Parse what follows ``PROXY `` up to (not including) the CRLF."""
    fields = line.split(b" ")
    if fields[0] == b"UNKNOWN":
        # The rest of the line is to be ignored (the specification says so).
        return ProxyHeader(1, False, socket.AF_UNSPEC, 0, None, None)
    family = _V1_FAMILIES.get(fields[0])
    if family is None:
        raise ProtocolError(f"unknown PROXY v1 protocol {fields[0][:16]!r}")
    if len(fields) != 5:
        raise ProtocolError(f"PROXY v1 {fields[0].decode()} needs 4 fields, got {len(fields) - 1}")
    source = (_v1_host(fields[1], family), _v1_port(fields[3]))
    destination = (_v1_host(fields[2], family), _v1_port(fields[4]))
    return ProxyHeader(1, False, family, socket.SOCK_STREAM, source, destination)


def _v1_host(text: bytes, family: int) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(f"bad address {text[:48]!r} in PROXY v1 header") from None
    wanted = 4 if family == socket.AF_INET else 6
    if address.version != wanted:
        raise ProtocolError(f"address {text[:48]!r} is not IPv{wanted}")
    return str(address)


def _v1_port(text: bytes) -> int:
    # Decimal digits only (int() would also take "+1", " 1" or "1_000").
    if not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise ProtocolError(f"bad port {text[:16]!r} in PROXY v1 header")
    return int(text)


# family nibble -> (address family, bytes of the address block)
_V2_FAMILIES = {
    0x0: (socket.AF_UNSPEC, 0),
    0x1: (socket.AF_INET, 12),
    0x2: (socket.AF_INET6, 36),
    0x3: (getattr(socket, "AF_UNIX", 1), 216),
}
_V2_TRANSPORTS = {0x0: 0, 0x1: socket.SOCK_STREAM, 0x2: socket.SOCK_DGRAM}


def _v2_header(local: bool, family_transport: int, body: bytes) -> ProxyHeader:
    entry = _V2_FAMILIES.get(family_transport >> 4)
    transport = _V2_TRANSPORTS.get(family_transport & 0x0F)
    if entry is None or transport is None:
        raise ProtocolError(f"unknown PROXY v2 family/transport byte 0x{family_transport:02x}")
    family, block = entry
    if family == socket.AF_UNSPEC:
        # Unspecified: the receiver must skip the address block, whatever it holds.
        return ProxyHeader(2, local, family, transport, None, None)
    if len(body) < block:
        raise ProtocolError(
            f"PROXY v2 address block is {len(body)} bytes, the family needs {block}"
        )
    source: ProxyAddress
    destination: ProxyAddress
    if family == socket.AF_INET:
        source = (socket.inet_ntop(socket.AF_INET, body[0:4]), _port(body, 8))
        destination = (socket.inet_ntop(socket.AF_INET, body[4:8]), _port(body, 10))
    elif family == socket.AF_INET6:
        source = (socket.inet_ntop(socket.AF_INET6, body[0:16]), _port(body, 32))
        destination = (socket.inet_ntop(socket.AF_INET6, body[16:32]), _port(body, 34))
    else:
        source, destination = _unix_path(body[0:108]), _unix_path(body[108:216])
    tlvs = _tlvs(body[block:])
    return ProxyHeader(2, local, family, transport, source, destination, tlvs)


def _port(body: bytes, offset: int) -> int:
    port: int = struct.unpack_from("!H", body, offset)[0]
    return port


def _unix_path(raw: bytes) -> str:
    # A filesystem path ends at its first NUL; an abstract name (leading NUL)
    # is padded with NULs, which are dropped.
    if raw[:1] == b"\0":
        return "\0" + os.fsdecode(raw[1:].rstrip(b"\0"))
    return os.fsdecode(raw.split(b"\0", 1)[0])


def _tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    found: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProtocolError("truncated TLV in PROXY v2 header")
        kind, length = struct.unpack_from("!BH", data, offset)
        offset += 3
        if length > len(data) - offset:
            raise ProtocolError(f"TLV 0x{kind:02x} of {length} bytes overruns the header")
        found.append((kind, data[offset : offset + length]))
        offset += length
    return tuple(found)
