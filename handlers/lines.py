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
* :class:`LineHandler` is a :class:`handlers.messages.MessageHandler` that decodes
  each line as text and calls ``handle_line(line)``; the returned string is sent
  back with the configured newline. ``close()`` ends the connection after the
  current line, ``send_line(text)`` sends at any time (a greeting from
  ``connection_made()``, say).

Newlines: a line ends at LF; a CR just before the LF is dropped too (unless
``strip_cr`` is false), because telnet-style clients send CRLF and Unix tools
send LF and a server should understand both. Replies end with ``newline``
(``"\\n"`` by default, ``"\\r\\n"`` for CRLF protocols). A last line without a
newline before the peer closes is still handled (as ``readline()`` would).

Messages without a newline: the socket tutorials' clients send ``b'Tom'`` and
wait for the answer, so a handler with ``message_ends_at_read`` also ends a
message where one read of the socket ends without a newline, and answers it
without a newline, byte for byte what the tutorials' servers send. (A line split
across two reads is then two messages; interactive clients send whole lines.)

Ready services, both in that mode: :class:`UpperCaseHandler` (tutorial 001:
echoes each message in upper case) and :class:`WelcomeHandler` (tutorial 000:
greets with ``Success!``, answers ``Welcom! NAME!`` -- the tutorial's spelling --
and closes on ``exit``). Try one from a shell::

    python3 -c "import pyserve, handlers.lines as l; \\
        pyserve.ThreadingTCPServer(('127.0.0.1', 7001), l.WelcomeHandler).serve_forever()" &
    printf 'Ada\\nexit\\n' | nc 127.0.0.1 7001   # Success!Welcom! Ada!

An over-long line or bytes that are not valid in ``encoding`` close the
connection with one WARNING line on the ``pyserve.handlers`` logger.
"""

from __future__ import annotations

from typing import Optional, Union

from handlers.framing import NEED_DATA, NeedData
from handlers.messages import MessageHandler
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
    """Splits a byte stream into lines of at most ``max_line_length`` bytes.

    With ``ends_at_read``, bytes left without a newline once everything fed so
    far has been split are a message too (the tutorials' clients send a bare
    ``b'Tom'`` and wait for the answer). ``terminated`` tells whether the last
    message returned ended with a newline.
    """

    def __init__(
        self,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        strip_cr: bool = True,
        ends_at_read: bool = False,
    ):
        self._max = max_line_length
        self._strip_cr = strip_cr
        self._ends_at_read = ends_at_read
        self._buffer = bytearray()
        #: Where the search for the next LF resumes: bytes before it hold none.
        self._scanned = 0
        #: Whether the message last returned ended with a newline.
        self.terminated = True

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_message(self) -> Union[bytes, NeedData]:
        buffer = self._buffer
        newline = buffer.find(b"\n", self._scanned)
        if newline < 0:
            # A tail ending in CR is a CRLF line whose LF is on its way: wait for it.
            if self._ends_at_read and buffer and not buffer.endswith(b"\r"):
                tail = self.end_of_input()
                self.terminated = False
                return tail if tail is not None else NEED_DATA
            self._scanned = len(buffer)
            # The CR of a CRLF may legitimately sit beyond the maximum.
            allowance = 1 if self._strip_cr and buffer.endswith(b"\r") else 0
            if len(buffer) > self._max + allowance:
                raise ProtocolError(f"line longer than the maximum of {self._max} bytes")
            return NEED_DATA
        line = bytes(buffer[:newline])
        del buffer[: newline + 1]
        self._scanned = 0
        self.terminated = True
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
        ends_at_read: bool = False,
    ) -> None:
        if not isinstance(max_line_length, int) or max_line_length < 1:
            raise ValueError(f"max_line_length {max_line_length!r} must be a positive int")
        if newline not in (b"\n", b"\r\n"):
            raise ValueError(f"newline {newline!r} must be b'\\n' or b'\\r\\n'")
        self.max_line_length = max_line_length
        self.newline = newline
        self.strip_cr = strip_cr
        self.ends_at_read = ends_at_read

    def decoder(self) -> LineDecoder:
        return LineDecoder(self.max_line_length, self.strip_cr, self.ends_at_read)

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
    #: False: a message ends at a newline only. True: also at the end of what one
    #: read returned, and the reply to such an unterminated message has no newline
    #: either -- the tutorials' clients send ``b'Tom'`` and wait for the answer.
    message_ends_at_read: bool = False

    def setup(self) -> None:
        super().setup()
        self.lines = Lines(
            self.max_line_length,
            self.newline.encode("ascii"),
            self.strip_cr,
            self.message_ends_at_read,
        )
        self.decoder: Optional[LineDecoder] = None

    def make_decoder(self) -> LineDecoder:
        self.decoder = self.lines.decoder()
        return self.decoder

    def encode(self, payload: bytes) -> bytes:
        if self.decoder is not None and not self.decoder.terminated:
            return self.lines.encode(payload)[: -len(self.lines.newline)]
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
    """Echoes every message in upper case (tutorial 001's server).

    A message is a line, or what one read returns when the client sends no
    newline (tutorial 001's client sends ``b'hello'`` and waits); the reply ends
    with a newline exactly when the message did. An empty line is answered with
    an empty line, as the tutorial's server answers ``b'\\n'`` with ``b'\\n'``.
    """

    message_ends_at_read = True

    def handle_line(self, line: str) -> Optional[str]:
        return line.upper()


class WelcomeHandler(LineHandler):
    """Tutorial 000's server: greets ``Success!``, answers ``Welcom! NAME!``, ends on ``exit``.

    The texts are the tutorial's bytes, its spelling included, so a learner's
    client prints what the tutorial shows: ``greeting`` is sent as it is (no
    newline: the tutorial's server sends ``b'Success!'``), and each message is
    answered with ``reply_format`` (newline-terminated if the message was). The
    message ``exit``, exactly, closes the connection without a reply.
    """

    message_ends_at_read = True
    #: Sent as is when the client connects.
    greeting: str = "Success!"
    #: ``{}`` is the client's message.
    reply_format: str = "Welcom! {}!"

    def connection_made(self) -> None:
        self.wfile.write(self.greeting.encode(self.encoding))

    def handle_line(self, line: str) -> Optional[str]:
        if line == "exit":
            self.close()
            return None
        return self.reply_format.format(line)
