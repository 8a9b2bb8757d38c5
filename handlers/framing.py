"""Message framing over streams: length-prefixed frames and netstrings.

TCP delivers a stream of bytes, not messages: one ``recv()`` may return half a
message or three of them glued together (the "sticky packets" that socket
tutorials meet with ``recv(1024)``). A *framing* puts message boundaries back.
This module gives two, each in three pieces that cooperate:

* a **sans-IO decoder** (:class:`LengthPrefixDecoder`, :class:`NetstringDecoder`):
  ``feed(data)`` any bytes, then call ``next_message()`` until it returns
  :data:`NEED_DATA`; it returns one complete payload at a time, or raises
  ``pyserve.ProtocolError`` (bad header, frame over the size limit). It never
  holds more than one maximum-size message plus one read, whatever the peer sends;
* an **encoder** (``encode(payload)`` on the framing object);
* a **framing object** (:class:`LengthPrefixed`, :class:`Netstrings`) that names the
  wire format once and makes decoders and frames for it, so the server, the
  client helpers and your tests cannot disagree.

On top sit :class:`~handlers.messages.MessageHandler` (in :mod:`handlers.messages`,
still importable from here), a stream handler whose ``handle()`` is a thin loop
(read, feed, ``handle_message(payload)``, send the reply), and the client
helpers :func:`send_message` / :func:`recv_message`. ``recv_message`` reads no
byte beyond the message it returns (it asks the decoder for
``safe_read_size()``), so a socket can be handed on to other code afterwards.

A client, in full::

    import socket
    from handlers.framing import recv_message, send_message

    with socket.create_connection(("127.0.0.1", 7000), timeout=5) as sock:
        send_message(sock, b"hello")
        print(recv_message(sock))

Stable API (other handler modules build on these; changes need a deprecation):
``NEED_DATA``, ``NeedData``, ``Decoder`` (``feed``, ``next_message``,
``safe_read_size``, ``end_of_input``), ``Framing`` (``decoder``, ``encode``),
``LengthPrefixed(header_format="!I", max_size=None)``, ``Netstrings(max_size=...)``,
``LengthPrefixDecoder``, ``NetstringDecoder``, ``DEFAULT_MAX_SIZE``,
``MessageHandler`` (class attributes ``framing``, ``read_size``; hooks
``connection_made()``, ``handle_message(payload) -> Optional[bytes]``,
``protocol_error(exc)``; methods ``send_message(payload)``, ``close()``; attribute
``close_requested``), ``EchoMessageHandler``, ``send_message(sock, payload,
framing=DEFAULT_FRAMING)``, ``recv_message(sock, framing=DEFAULT_FRAMING)``.

Error handling: a peer's bad frame makes the handler log one WARNING line on the
``pyserve.handlers`` logger ("closing connection from ADDRESS: REASON") and end
the connection; the server and its other clients are untouched. A stream of bad
frames is summarised: one line per reason per minute per server and handler
class, with a count (``handlers._ratelimit``); reasons quote peer bytes only
through ``repr``. A programmer's
bad argument (an unsigned-integer header format that is not one, a payload larger
than the framing allows) raises :class:`ValueError` naming the value.
"""

from __future__ import annotations

import importlib
import socket
import struct
from typing import TYPE_CHECKING, Any, Optional, Protocol, Union

from pyserve import ProtocolError

__all__ = [
    "DEFAULT_FRAMING",
    "DEFAULT_MAX_SIZE",
    "NEED_DATA",
    "Decoder",
    "Framing",
    "LengthPrefixDecoder",
    "LengthPrefixed",
    "NeedData",
    "NetstringDecoder",
    "Netstrings",
    "recv_message",
    "send_message",
]

#: The largest message accepted by default: 1 MiB. A frame header is a promise the
#: peer makes about memory *we* must spend, so the limit is checked on the header,
#: before a byte of payload is buffered. Raise it for bulk transfers.
DEFAULT_MAX_SIZE = 1 << 20


class NeedData:
    """The type of :data:`NEED_DATA` (one instance; compare with ``is``)."""

    _instance: Optional[NeedData] = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by ``next_message()`` when no complete message is buffered yet.
NEED_DATA = NeedData()


class Decoder(Protocol):
    """What every sans-IO decoder in ``handlers`` offers."""

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer."""

    def next_message(self) -> Union[bytes, NeedData]:
        """One complete message, or :data:`NEED_DATA`; raises ``ProtocolError``."""

    def safe_read_size(self) -> int:
        """The largest read that cannot take bytes beyond the current message."""

    def end_of_input(self) -> Optional[bytes]:
        """The peer closed: a last message, None, or ``ProtocolError`` if truncated."""


class Framing(Protocol):
    """A wire format: makes decoders and encodes payloads."""

    def decoder(self) -> Decoder:
        """A fresh decoder (one per connection)."""

    def encode(self, payload: bytes) -> bytes:
        """The bytes that carry ``payload`` on the wire."""


class _Buffer:
    """Received bytes with a read offset: consuming is O(1), compacting amortised."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.start = 0

    def __len__(self) -> int:
        return len(self.data) - self.start

    def append(self, chunk: bytes) -> None:
        # Compact before growing, once the consumed prefix dominates: each byte is
        # moved at most once per message instead of once per consumed message.
        if self.start and self.start >= len(self.data) - self.start:
            del self.data[: self.start]
            self.start = 0
        self.data += chunk

    def take(self, size: int) -> bytes:
        end = self.start + size
        taken = bytes(self.data[self.start : end])
        self.start = end
        if self.start == len(self.data):
            self.data.clear()
            self.start = 0
        return taken


class LengthPrefixDecoder:
    """Decodes frames of a fixed-size unsigned header (the length) then the payload."""

    def __init__(self, header: struct.Struct, max_size: int) -> None:
        self._header = header
        self._max_size = max_size
        self._buffer = _Buffer()
        #: The payload length announced by the header being decoded; None while the
        #: header itself is incomplete.
        self._expected: Optional[int] = None

    def feed(self, data: bytes) -> None:
        self._buffer.append(data)

    def next_message(self) -> Union[bytes, NeedData]:
        buffer = self._buffer
        if self._expected is None:
            if len(buffer) < self._header.size:
                return NEED_DATA
            (length,) = self._header.unpack(buffer.take(self._header.size))
            if length > self._max_size:
                raise ProtocolError(
                    f"frame of {length} bytes exceeds the maximum of {self._max_size}"
                )
            self._expected = length
        if len(buffer) < self._expected:
            return NEED_DATA
        payload = buffer.take(self._expected)
        self._expected = None
        return payload

    def safe_read_size(self) -> int:
        if self._expected is None:
            return max(1, self._header.size - len(self._buffer))
        return max(1, self._expected - len(self._buffer))

    def end_of_input(self) -> Optional[bytes]:
        if self._expected is not None or len(self._buffer):
            raise ProtocolError("connection closed in the middle of a frame")
        return None


#: struct codes of the unsigned integers a length header may use.
_UNSIGNED_CODES = frozenset({"B", "H", "I", "L", "Q"})


class LengthPrefixed:
    """Frames of ``struct`` header (an unsigned length) then that many bytes.

    ``header_format`` is a ``struct`` format of one unsigned integer with an
    explicit byte order (``"!I"``: 4 bytes, network order; ``"<H"``, ``">Q"``...;
    ``"=I"``: the machine's own order, what ``struct.pack('I', n)`` sends).
    ``max_size`` defaults to the smaller of :data:`DEFAULT_MAX_SIZE` and the
    largest length the header can express.
    """

    def __init__(self, header_format: str = "!I", max_size: Optional[int] = None) -> None:
        if not isinstance(header_format, str) or header_format[:1] not in ("!", "<", ">", "="):
            raise ValueError(
                f"header_format {header_format!r} must start with a byte order: "
                "'!', '<', '>' or '='"
            )
        # One unsigned integer code, nothing else: "!i" cannot carry the largest
        # length, "!f" and "!?" do not give it back, and interpreters disagree on
        # which exception packing them raises, so the format is checked by name.
        if header_format[1:] not in _UNSIGNED_CODES:
            raise ValueError(f"header_format {header_format!r} is not one unsigned integer")
        header = struct.Struct(header_format)
        largest = (1 << (8 * header.size)) - 1
        if max_size is None:
            max_size = min(DEFAULT_MAX_SIZE, largest)
        if not isinstance(max_size, int) or not 0 <= max_size <= largest:
            raise ValueError(
                f"max_size {max_size!r} must be an int from 0 to {largest} for {header_format!r}"
            )
        self.header_format = header_format
        self.max_size = max_size
        self._header = header

    def decoder(self) -> LengthPrefixDecoder:
        return LengthPrefixDecoder(self._header, self.max_size)

    def encode(self, payload: bytes) -> bytes:
        if len(payload) > self.max_size:
            raise ValueError(f"payload of {len(payload)} bytes exceeds max_size {self.max_size}")
        return self._header.pack(len(payload)) + bytes(payload)

    def __repr__(self) -> str:
        return f"LengthPrefixed({self.header_format!r}, max_size={self.max_size})"


class NetstringDecoder:
    """Decodes netstrings: ``LENGTH ":" PAYLOAD ","`` with a decimal LENGTH."""

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        # More digits than the limit has can only announce an over-size payload.
        self._max_digits = len(str(max_size))
        self._buffer = _Buffer()
        self._expected: Optional[int] = None

    def feed(self, data: bytes) -> None:
        self._buffer.append(data)

    def _parse_length(self) -> Optional[int]:
        buffer = self._buffer
        view = buffer.data
        start = buffer.start
        # Scan only as far as a valid length could reach: bounded work per call.
        window = bytes(view[start : start + self._max_digits + 1])
        colon = window.find(b":")
        digits = window if colon < 0 else window[:colon]
        if not digits.isdigit() and digits:
            raise ProtocolError(f"netstring length is not decimal digits: {digits[:20]!r}")
        if len(digits) > 1 and digits[:1] == b"0":
            raise ProtocolError("netstring length has a leading zero")
        if colon < 0:
            if len(digits) > self._max_digits:
                raise ProtocolError(f"netstring length exceeds the maximum of {self._max_size}")
            return None
        if not digits:
            raise ProtocolError("netstring length is empty")
        length = int(digits)
        if length > self._max_size:
            raise ProtocolError(
                f"netstring of {length} bytes exceeds the maximum of {self._max_size}"
            )
        buffer.take(colon + 1)
        return length

    def next_message(self) -> Union[bytes, NeedData]:
        if self._expected is None:
            self._expected = self._parse_length()
            if self._expected is None:
                return NEED_DATA
        if len(self._buffer) < self._expected + 1:
            return NEED_DATA
        payload = self._buffer.take(self._expected)
        if self._buffer.take(1) != b",":
            raise ProtocolError("netstring is not terminated by ','")
        self._expected = None
        return payload

    def safe_read_size(self) -> int:
        if self._expected is None:
            return 1  # the length's digits: one at a time, its end is unknown
        return max(1, self._expected + 1 - len(self._buffer))

    def end_of_input(self) -> Optional[bytes]:
        if self._expected is not None or len(self._buffer):
            raise ProtocolError("connection closed in the middle of a netstring")
        return None


class Netstrings:
    """D. J. Bernstein's netstrings: ``b"5:hello,"``; ``max_size`` bounds the payload."""

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if not isinstance(max_size, int) or max_size < 0:
            raise ValueError(f"max_size {max_size!r} must be a non-negative int")
        self.max_size = max_size

    def decoder(self) -> NetstringDecoder:
        return NetstringDecoder(self.max_size)

    def encode(self, payload: bytes) -> bytes:
        if len(payload) > self.max_size:
            raise ValueError(f"payload of {len(payload)} bytes exceeds max_size {self.max_size}")
        return b"%d:%s," % (len(payload), bytes(payload))

    def __repr__(self) -> str:
        return f"Netstrings(max_size={self.max_size})"


#: The framing used when none is named: a 4-byte network-order length, 1 MiB max.
DEFAULT_FRAMING: Framing = LengthPrefixed()

# -- client helpers ------------------------------------------------------------------


def send_message(sock: socket.socket, payload: bytes, framing: Framing = DEFAULT_FRAMING) -> None:
    """Send one message on a connected stream socket."""
    sock.sendall(framing.encode(payload))


def recv_message(sock: socket.socket, framing: Framing = DEFAULT_FRAMING) -> bytes:
    """Receive exactly one message, reading no byte beyond it.

    Raises :class:`EOFError` if the peer closed before the message began,
    ``pyserve.ProtocolError`` if it closed inside one or broke the framing,
    and the socket's own errors (``socket.timeout``) as they come.
    """
    decoder = framing.decoder()
    started = False
    while True:
        message = decoder.next_message()
        if not isinstance(message, NeedData):
            return message
        chunk = sock.recv(decoder.safe_read_size())
        if not chunk:
            if not started:
                raise EOFError("the peer closed the connection")
            decoder.end_of_input()
            raise ProtocolError("connection closed in the middle of a message")
        started = True
        decoder.feed(chunk)


# The handler side lives in handlers.messages; these names stay importable from here
# (they were defined here first), loaded on first use so neither module imports
# the other at import time.
_MOVED = frozenset(
    {"BYTE_ORDERS", "EchoMessageHandler", "MessageHandler", "NativeOrderEchoHandler"}
)

if TYPE_CHECKING:
    pass


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module("handlers.messages"), name)
    raise AttributeError(f"module 'handlers.framing' has no attribute {name!r}")
