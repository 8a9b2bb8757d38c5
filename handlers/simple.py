"""The simple Internet services: echo, discard, chargen, qotd, daytime and time.

Each service of RFCs 862-868 comes as a pair of handlers, one for TCP and one for
UDP, because the RFCs define both: serve ``EchoStreamHandler`` on a
``pyserve.TCPServer`` and ``EchoDatagramHandler`` on a
``pyserve.UDPServer``. They are small on purpose: each is the shortest correct
handler for its protocol, written against pyserve's public API.

=========  ====  ===========================================================
service    RFC   behaviour
=========  ====  ===========================================================
echo       862   sends back what it receives
discard    863   reads and ignores everything
chargen    864   sends lines of rotating printable characters
qotd       865   sends one short quotation, then closes
daytime    867   sends the date and time as text, then closes
time       868   sends seconds since 1900-01-01 as 4 big-endian bytes
=========  ====  ===========================================================

Chargen is the one that needs care, because it sends without being asked:

* over **UDP** each request datagram gets exactly one reply of 0 to 512
  characters (a random length, as the RFC says, or ``datagram_size`` if set).
  That still answers a spoofed 1-byte request with up to 512 bytes sent to the
  forged address (about 19 times the request on the wire), so the registry does
  not offer chargen -- nor qotd (about 4 times) -- over UDP: serving
  :class:`ChargenDatagramHandler` or :class:`QotdDatagramHandler` takes naming
  the class, on a network where source addresses cannot be forged;
* over **TCP** it is *paced*: ``lines_per_second`` lines, sent in batches every
  ``tick`` seconds, and between batches it waits on the socket itself, so a client
  that closes or resets is noticed within one tick (not when the next send
  fails), and a client that stops reading is dropped after ``timeout`` seconds.

Clocks: daytime and time call the handler's ``now()`` (``time.time()``), which a
subclass or a test may override. Times are UTC.

Try them from a shell (``rdate`` is an RFC 868 client)::

    python3 -c "import pyserve, handlers.simple as s; \\
        pyserve.ThreadingTCPServer(('127.0.0.1', 3700), s.TimeStreamHandler).serve_forever()" &
    rdate -p -o 3700 127.0.0.1
"""

from __future__ import annotations

import random
import selectors
import struct
import time
from typing import Any, Optional

from pyserve import DatagramRequestHandler, StreamRequestHandler

__all__ = [
    "ChargenDatagramHandler",
    "ChargenStreamHandler",
    "DaytimeDatagramHandler",
    "DaytimeStreamHandler",
    "DiscardDatagramHandler",
    "DiscardStreamHandler",
    "EchoDatagramHandler",
    "EchoStreamHandler",
    "QotdDatagramHandler",
    "QotdStreamHandler",
    "TimeDatagramHandler",
    "TimeStreamHandler",
    "chargen_lines",
    "daytime_text",
    "rfc868_time",
]

#: Bytes asked of the socket per read by echo and discard.
READ_SIZE = 65536

# -- the formats, as plain functions (tested without sockets) -------------------------

#: The 95 printable ASCII characters chargen rotates through (RFC 864's suggestion).
_PRINTABLE = bytes(range(32, 127))
_LINE_WIDTH = 72


def chargen_lines(first: int, count: int) -> bytes:
    """``count`` chargen lines starting with line number ``first`` (72 chars + CRLF).

    Line *n* holds 72 consecutive printable characters starting at character
    ``n % 95``, so the pattern shifts by one on each line.
    """
    doubled = _PRINTABLE * 2
    return b"".join(
        doubled[n % 95 : n % 95 + _LINE_WIDTH] + b"\r\n" for n in range(first, first + count)
    )


_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


def daytime_text(now: float) -> str:
    """RFC 867's suggested form, in UTC: ``Tuesday, February 22, 1982 17:37:43-UTC``.

    Names are spelled out here rather than with ``strftime`` so the locale of the
    server never changes what clients receive.
    """
    t = time.gmtime(now)
    return (
        f"{_WEEKDAYS[t.tm_wday]}, {_MONTHS[t.tm_mon - 1]} {t.tm_mday}, {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}-UTC"
    )


#: Seconds from 1900-01-01 (RFC 868's epoch) to 1970-01-01 (Unix's).
RFC868_OFFSET = 2_208_988_800


def rfc868_time(now: float) -> bytes:
    """Seconds since 1900 as a 32-bit big-endian number (wrapping in 2036, as it must)."""
    return struct.pack("!I", (int(now) + RFC868_OFFSET) % (1 << 32))


#: Default quotations: short, ASCII, well under RFC 865's 512 characters.
QUOTES = (
    "The best way to predict the future is to invent it. -- Alan Kay",
    "Simplicity is prerequisite for reliability. -- Edsger W. Dijkstra",
    "Be conservative in what you do, be liberal in what you accept from others. -- Jon Postel",
    "Premature optimization is the root of all evil. -- Donald Knuth",
    "Errors should never pass silently. -- Tim Peters",
)

# -- echo, discard ----------------------------------------------------------------------


class EchoStreamHandler(StreamRequestHandler[Any]):
    """RFC 862 over TCP: sends back every byte until the client closes."""

    def handle(self) -> None:
        read = getattr(self.rfile, "read1", self.rfile.read)
        while True:
            data = read(READ_SIZE)
            if not data:
                return
            self.wfile.write(data)


class EchoDatagramHandler(DatagramRequestHandler[Any]):
    """RFC 862 over UDP: one datagram back for each (an empty one too)."""

    def handle(self) -> None:
        self.socket.sendto(self.packet, self.client_address)


class DiscardStreamHandler(StreamRequestHandler[Any]):
    """RFC 863 over TCP: reads until the client closes, answers nothing."""

    def handle(self) -> None:
        read = getattr(self.rfile, "read1", self.rfile.read)
        while read(READ_SIZE):
            pass


class DiscardDatagramHandler(DatagramRequestHandler[Any]):
    """RFC 863 over UDP: ignores the datagram."""

    def handle(self) -> None:
        """Nothing to do: the datagram is discarded."""


# -- chargen ---------------------------------------------------------------------------


class ChargenStreamHandler(StreamRequestHandler[Any]):
    """RFC 864 over TCP: a paced stream of lines until the client goes away.

    Class attributes that may be overridden: ``lines_per_second`` (the rate,
    about 74 bytes each), ``tick`` (seconds between batches; also the longest a
    departed client goes unnoticed) and ``timeout`` (seconds a send may stall
    before the client is dropped).
    """

    #: 1000 lines (~74 KB) a second: plenty for a test client, too little to let a
    #: few idle connections saturate a link.
    lines_per_second: float = 1000.0
    tick: float = 0.05
    timeout: Optional[float] = 30.0

    def handle(self) -> None:
        per_batch = max(1, round(self.lines_per_second * self.tick))
        line = 0
        next_send = time.monotonic()
        with selectors.DefaultSelector() as selector:
            selector.register(self.connection, selectors.EVENT_READ)
            while True:
                # Wait for the next batch *on the socket*: anything readable is
                # either data (discarded, as the RFC says) or the client's goodbye.
                while selector.select(max(0.0, next_send - time.monotonic())):
                    if not self.connection.recv(READ_SIZE):
                        return
                self.wfile.write(chargen_lines(line, per_batch))
                line += per_batch
                next_send += self.tick
                # A slow reader makes us late; never try to "catch up" with a burst.
                next_send = max(next_send, time.monotonic() - self.tick)


class ChargenDatagramHandler(DatagramRequestHandler[Any]):
    """RFC 864 over UDP: one datagram of 0-512 characters per request.

    ``datagram_size`` (None: random from 0 to 512, as the RFC says) fixes the size.
    """

    datagram_size: Optional[int] = None

    def handle(self) -> None:
        size = self.datagram_size
        if size is None:
            size = random.randint(0, 512)
        size = max(0, min(512, size))
        text = chargen_lines(random.randrange(95), size // 74 + 1)[:size]
        self.socket.sendto(text, self.client_address)


# -- qotd, daytime, time ----------------------------------------------------------------


class QotdStreamHandler(StreamRequestHandler[Any]):
    """RFC 865 over TCP: one quotation (from ``quotes``), then close."""

    quotes: tuple[str, ...] = QUOTES

    def handle(self) -> None:
        self.wfile.write(random.choice(self.quotes).encode("ascii") + b"\r\n")


class QotdDatagramHandler(DatagramRequestHandler[Any]):
    """RFC 865 over UDP: one quotation per datagram received."""

    quotes: tuple[str, ...] = QUOTES

    def handle(self) -> None:
        self.wfile.write(random.choice(self.quotes).encode("ascii") + b"\r\n")


class DaytimeStreamHandler(StreamRequestHandler[Any]):
    """RFC 867 over TCP: the date and time as one line, then close."""

    def now(self) -> float:
        """The current time (seconds since the Unix epoch). May be overridden."""
        return time.time()

    def handle(self) -> None:
        self.wfile.write(daytime_text(self.now()).encode("ascii") + b"\r\n")


class DaytimeDatagramHandler(DatagramRequestHandler[Any]):
    """RFC 867 over UDP: the date and time for each datagram received."""

    def now(self) -> float:
        """The current time (seconds since the Unix epoch). May be overridden."""
        return time.time()

    def handle(self) -> None:
        self.wfile.write(daytime_text(self.now()).encode("ascii") + b"\r\n")


class TimeStreamHandler(StreamRequestHandler[Any]):
    """RFC 868 over TCP: four bytes of time, then close."""

    def now(self) -> float:
        """The current time (seconds since the Unix epoch). May be overridden."""
        return time.time()

    def handle(self) -> None:
        self.wfile.write(rfc868_time(self.now()))


class TimeDatagramHandler(DatagramRequestHandler[Any]):
    """RFC 868 over UDP: four bytes of time for each datagram received."""

    def now(self) -> float:
        """The current time (seconds since the Unix epoch). May be overridden."""
        return time.time()

    def handle(self) -> None:
        self.wfile.write(rfc868_time(self.now()))
