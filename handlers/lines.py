"""Line protocols: a text line in, a text line (or nothing) out.

The pieces, from the bottom up:

* :class:`LineDecoder` is a sans-IO decoder in the sense of
  :mod:`handlers.framing`: ``feed(data)``, then ``next_message()`` returns one line
  (bytes, without its terminator) or :data:`~handlers.framing.NEED_DATA`, or raises
  ``pyserve.ProtocolError``. A line longer than its maximum is refused *as
  soon as* the buffered bytes prove it too long, without waiting for its end, so
  a peer that never sends a newline costs at most one maximum line of memory.
* :class:`Lines` is the framing object (decoder factory plus encoder), usable with
  :func:`handlers.framing.send_message` / :func:`~handlers.framing.recv_message`.
* :class:`LineHandler` is a :class:`handlers.framing.MessageHandler` that decodes
  each line as text and calls ``handle_line(line)``; the returned string is sent
  back with the configured newline. ``close()`` ends the connection after the
  current line, ``send_line(text)`` sends at any time (a greeting from
  ``connection_made()``, say).

Newlines: a line ends at LF; a CR just before the LF is dropped too (unless
``strip_cr`` is false), because telnet-style clients send CRLF and Unix tools
send LF and a server should understand both. Replies end with ``newline``
(``"\\n"`` by default, ``"\\r\\n"`` for CRLF protocols). A last line without a
newline before the peer closes is still handled (as ``readline()`` would).

Ready services: :class:`UpperCaseHandler` (echoes each line in upper case) and
:class:`WelcomeHandler` (greets with ``Success!``, answers ``Welcome! NAME!`` to
each line and closes on ``exit``). Try one from a shell::

    python3 -c "import pyserve, handlers.lines as l; \\
        pyserve.ThreadingTCPServer(('127.0.0.1', 7001), l.WelcomeHandler).serve_forever()" &
    printf 'Ada\\nexit\\n' | nc 127.0.0.1 7001   # Success! / Welcome! Ada!

An over-long line or bytes that are not valid in ``encoding`` close the
connection with one WARNING line on the ``pyserve.handlers`` logger.
"""

from __future__ import annotations

from typing import Optional, Union

from handlers.framing import NEED_DATA, MessageHandler, NeedData
from pyserve import ProtocolError

__all__ = [
    "LineDecoder",
    "LineHandler",
    "Lines",
    "UpperCaseHandler",
    "WelcomeHandler",
]

#: The longest line accepted by default, in bytes without the newline. Long enough
#: for any interactive protocol, short enough that a thousand idle connections
#: holding half a line each cost little.
DEFAULT_MAX_LINE_LENGTH = 8192


class LineDecoder:
    """Splits a byte stream into lines of at most ``max_line_length`` bytes."""

    def __init__(self, max_line_length: int = DEFAULT_MAX_LINE_LENGTH, strip_cr: bool = True):
        self._max = max_line_length
        self._strip_cr = strip_cr
        self._buffer = bytearray()
        #: Where the search for the next LF resumes: bytes before it hold none.
        self._scanned = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_message(self) -> Union[bytes, NeedData]:
        buffer = self._buffer
        newline = buffer.find(b"\n", self._scanned)
        if newline < 0:
            self._scanned = len(buffer)
            # The CR of a CRLF may legitimately sit beyond the maximum.
            allowance = 1 if self._strip_cr and buffer.endswith(b"\r") else 0
            if len(buffer) > self._max + allowance:
                raise ProtocolError(f"line longer than the maximum of {self._max} bytes")
            return NEED_DATA
        line = bytes(buffer[:newline])
        del buffer[: newline + 1]
        self._scanned = 0
        if self._strip_cr and line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self._max:
            raise ProtocolError(f"line longer than the maximum of {self._max} bytes")
        return line

    def safe_read_size(self) -> int:
        return 1  # the end of a line is unknown until its LF arrives

    def end_of_input(self) -> Optional[bytes]:
        if not self._buffer:
            return None
        line = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        if self._strip_cr and line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self._max:
            raise ProtocolError(f"line longer than the maximum of {self._max} bytes")
        return line


class Lines:
    """The line framing: a decoder factory and an encoder (appends ``newline``)."""

    def __init__(
        self,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        newline: bytes = b"\n",
        strip_cr: bool = True,
    ) -> None:
        if not isinstance(max_line_length, int) or max_line_length < 1:
            raise ValueError(f"max_line_length {max_line_length!r} must be a positive int")
        if newline not in (b"\n", b"\r\n"):
            raise ValueError(f"newline {newline!r} must be b'\\n' or b'\\r\\n'")
        self.max_line_length = max_line_length
        self.newline = newline
        self.strip_cr = strip_cr

    def decoder(self) -> LineDecoder:
        return LineDecoder(self.max_line_length, self.strip_cr)

    def encode(self, payload: bytes) -> bytes:
        if b"\n" in payload:
            raise ValueError(f"a line cannot contain a newline: {payload[:40]!r}")
        return bytes(payload) + self.newline


class LineHandler(MessageHandler):
    """A stream handler for text line protocols: override ``handle_line(line)``.

    Class attributes that may be overridden:

    - ``encoding`` (``"utf-8"``): how lines are decoded and replies encoded;
      undecodable input is a protocol error
    - ``max_line_length`` (8192): bytes per line, newline excluded
    - ``newline`` (``"\\n"``): the end of every line sent; ``"\\r\\n"`` for CRLF
    - ``strip_cr`` (True): drop a CR before the LF of received lines

    Hooks: ``connection_made()`` (greet with ``send_line``), ``handle_line(line)``
    returning the reply or None; ``close()`` ends the connection after this line.
    """

    encoding: str = "utf-8"
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    newline: str = "\n"
    strip_cr: bool = True

    def setup(self) -> None:
        super().setup()
        self.lines = Lines(self.max_line_length, self.newline.encode("ascii"), self.strip_cr)

    def make_decoder(self) -> LineDecoder:
        return self.lines.decoder()

    def encode(self, payload: bytes) -> bytes:
        return self.lines.encode(payload)

    def handle_message(self, payload: bytes) -> Optional[bytes]:
        try:
            line = payload.decode(self.encoding)
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"line is not valid {self.encoding}: {exc.reason}") from None
        reply = self.handle_line(line)
        return None if reply is None else reply.encode(self.encoding)

    def handle_line(self, line: str) -> Optional[str]:
        """Answer one line (without its newline): the reply, or None. Override this."""
        raise NotImplementedError

    def send_line(self, text: str) -> None:
        """Send one line now (the newline is added)."""
        self.send_message(text.encode(self.encoding))


class UpperCaseHandler(LineHandler):
    """Echoes every line in upper case (the classic first socket server)."""

    def handle_line(self, line: str) -> Optional[str]:
        return line.upper()


class WelcomeHandler(LineHandler):
    """Greets with ``Success!``, answers ``Welcome! NAME!``, closes on ``exit``."""

    def connection_made(self) -> None:
        self.send_line("Success!")

    def handle_line(self, line: str) -> Optional[str]:
        if line.strip() == "exit":
            self.close()
            return None
        return f"Welcome! {line}!"
