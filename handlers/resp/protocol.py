"""RESP2, the Redis wire protocol: a sans-IO parser of client commands.

Theory of operation
-------------------
A Redis client sends each command as an *array of bulk strings*::

    *3\\r\\n$3\\r\\nSET\\r\\n$3\\r\\nkey\\r\\n$5\\r\\nvalue\\r\\n

or, typed by a human into telnet, as an *inline command*: one line of words
separated by spaces, with ``"double"`` and ``'single'`` quotes for words that
contain spaces. :class:`CommandParser` turns bytes into commands without doing any
I/O: ``feed(data)`` appends what the socket delivered, and ``next_command()``
returns one command (a list of ``bytes``), the :data:`NEED_DATA` sentinel when the
buffer holds no complete command yet, or raises ``pyserve.ProtocolError`` for
input no Redis server would accept (a bad length, a length over the limits, a
missing CRLF, an unbalanced quote). After an error the parser is unusable: the
connection must close, as Redis closes it.

``drain()`` returns *every* complete command in the buffer at once. It is what a
server calls after each ``recv()``: a pipelining client (``redis-benchmark -P 16``)
sends many commands per packet, and answering them all in one ``send()`` is what
makes pipelining fast.

Limits (class attributes or constructor arguments) bound what one peer can make the
server hold: ``max_bulk_length`` (Redis's ``proto-max-bulk-len``), ``max_array_length``
and ``max_inline_length`` (Redis's fixed 64 KiB for inline commands and for the
header lines of the multi-bulk form).

The other direction, encoding replies (and requests, for clients and tests), is
in :mod:`handlers.resp.encoding`.

Speed
-----
The parser keeps one ``bytes`` buffer and an offset into it, finds each CRLF with
``bytes.find`` and cuts arguments with slices: everything per byte runs in C. The
buffer is compacted only when a call ends, so a pipeline of a thousand commands is
not copied a thousand times. A batch of commands that all have one name and one
width is returned as a :class:`Run`, which the session answers without checking
each command again. A pipeline that repeats its first command with one word
changing (``GET`` after ``GET`` with other keys of one length, ``LPOP queue``
again and again) is cut with one split at the bytes between two such words (see
:mod:`handlers.resp.pipelines`), before the buffer is cut at every CRLF.
"""

from __future__ import annotations

from typing import Optional, Union

from handlers.resp.inline import split_inline
from handlers.resp.pipelines import ARRAY_HEADERS, BULK_HEADERS, RunCutter, cut_uniform
from pyserve import ProtocolError

__all__ = ["ARGUMENT_OVERHEAD", "NEED_DATA", "Command", "CommandParser", "NeedData", "Run"]


class NeedData:
    """The type of :data:`NEED_DATA`: no complete command is buffered yet."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`CommandParser.next_command` until a whole command has arrived.
NEED_DATA = NeedData()

#: One command: its name and arguments, exactly as sent.
Command = list[bytes]


class Run(list[Command]):
    """Commands :meth:`CommandParser.drain` found to be a *run*: every one has the
    same name, spelled the same way, and the same number of words (what a
    pipelining client sends). A plain list otherwise; the session skips checking
    this again (see :mod:`handlers.resp.runs`)."""

    __slots__ = ()

#: What one argument costs beside its bytes: a bytes object's header and a list slot.
ARGUMENT_OVERHEAD = 48
# The fast path splits at most this many lines per pass, so a huge command (a
# million tiny arguments) is never cut into millions of pieces at once.
_SPLIT_LINES = 4096

# "$0" ... "$1023" and "*1" ... "*64": headers checked by lookup (see _parse_simple).
_BULK_HEADERS = BULK_HEADERS
_ARRAY_HEADERS = ARRAY_HEADERS


class CommandParser:
    """Sans-IO parser of client commands (RESP2 arrays and inline commands).

    ``feed(data)``, then ``next_command()`` (one command or :data:`NEED_DATA`) or
    ``drain()`` (every complete command). Both raise ``pyserve.ProtocolError``
    on input that breaks the protocol or the limits; the parser is then spent.
    """

    #: Longest bulk string accepted (Redis's proto-max-bulk-len defaults to 512 MiB;
    #: a server meant for untrusted peers should not buffer that much per client).
    max_bulk_length: int = 8 * 1024 * 1024
    #: Most arguments in one command (Redis accepts 1024*1024 elements).
    max_array_length: int = 1024 * 1024
    #: Longest inline command or header line: Redis's fixed 64 KiB.
    max_inline_length: int = 64 * 1024
    #: Most bytes one command may hold (Redis's client-query-buffer-limit: 1 GiB),
    #: each argument counted with :data:`ARGUMENT_OVERHEAD`: a million one-byte
    #: arguments count as the 49 MB they take in Python, not 1 MB.
    max_command_size: int = 32 * 1024 * 1024

    def __init__(
        self,
        *,
        max_bulk_length: Optional[int] = None,
        max_array_length: Optional[int] = None,
        max_inline_length: Optional[int] = None,
        max_command_size: Optional[int] = None,
    ) -> None:
        for name, value in (
            ("max_bulk_length", max_bulk_length),
            ("max_array_length", max_array_length),
            ("max_inline_length", max_inline_length),
            ("max_command_size", max_command_size),
        ):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{name} must be a positive integer, not {value!r}")
                setattr(self, name, value)
        self._buffer = b""
        self._pos = 0
        # A multi-bulk command in progress: the arguments so far and how many remain,
        # so a large command arriving in pieces is not re-parsed from its start.
        self._args: Command = []
        self._remaining = 0
        self._partial_size = 0  # bytes in self._args
        # A large bulk string arrives in many pieces: they wait in a list until the
        # whole bulk is there, so the buffer is not copied once per piece.
        self._wanted = 0
        self._pieces: list[bytes] = []
        self._pieces_size = 0
        self._failed: Optional[ProtocolError] = None
        # The last drain's commands so far are one run (see Run).
        self._run = False
        self._cutter = RunCutter()  # remembers the last batch's template

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer."""
        if not data:
            return
        if len(self._buffer) - self._pos + self._pieces_size + len(data) < self._wanted:
            self._pieces.append(data)
            self._pieces_size += len(data)
            return
        if self._pieces:
            data = b"".join(self._pieces) + data
            self._pieces = []
            self._pieces_size = 0
        if self._pos:
            self._buffer = self._buffer[self._pos :] + data
            self._pos = 0
        else:
            self._buffer += data

    @property
    def buffered(self) -> int:
        """How many received bytes are not yet part of a returned command."""
        return len(self._buffer) - self._pos + self._pieces_size + self._partial_size

    @property
    def error(self) -> Optional[ProtocolError]:
        """The protocol error met so far (the parser is then spent), or None."""
        return self._failed

    def next_command(self) -> Union[Command, NeedData]:
        """One complete command, or :data:`NEED_DATA`."""
        try:
            command = self._parse()
        finally:
            self._compact()
        return NEED_DATA if command is None else command

    def drain(self) -> list[Command]:
        """Every complete command buffered, in order (possibly none)."""
        commands: list[Command] = []
        append = commands.append
        parse = self._parse
        try:
            while True:
                if not self._remaining and self._failed is None:
                    self._run = False
                    self._parse_fast(commands)
                    if self._pos == len(self._buffer):  # all consumed: the usual case
                        return Run(commands) if self._run else commands
                command = parse()
                if command is None:
                    return commands
                append(command)
        except ProtocolError:
            if commands:  # answer these first; the next call raises the error again
                return commands
            raise
        finally:
            self._compact()

    def _compact(self) -> None:
        if self._pos:
            self._buffer = self._buffer[self._pos :]
            self._pos = 0

    def _fail(self, reason: str) -> ProtocolError:
        self._failed = ProtocolError(reason)
        return self._failed

    def _parse(self) -> Optional[Command]:
        if self._failed is not None:
            raise self._failed
        if self._remaining:
            return self._parse_bulks(self._args, self._remaining)
        buffer = self._buffer
        size = len(buffer)
        # A loop, not recursion: empty commands ("*0", blank lines) are skipped, and a
        # peer may send thousands of them in one packet.
        while self._pos < size:
            pos = self._pos
            if buffer[pos] != 42:  # not "*": an inline command
                command = self._parse_inline()
                if command is None or command:
                    return command
                continue
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                if size - pos > self.max_inline_length:
                    raise self._fail("too big multibulk count string")
                return None
            try:
                count = int(buffer[pos + 1 : end])
            except ValueError:
                raise self._fail("invalid multibulk length") from None
            if count > self.max_array_length:
                raise self._fail(
                    f"invalid multibulk length {count} (limit {self.max_array_length})"
                )
            self._pos = end + 2
            if count > 0:  # "*0" and "*-1" are empty commands: Redis ignores them
                return self._parse_bulks([], count)
        return None

    def _parse_fast(self, commands: list[Command]) -> None:
        """The fast paths, from the first unparsed byte: a pipeline cut from its
        first command's template (first in a call only), else :meth:`_parse_simple`."""
        buffer = self._buffer
        if self._pos:
            buffer = buffer[self._pos :]
        if not commands:
            taken = self._cutter.cut(buffer, commands)
            if taken:
                self._run = True
                self._pos += taken
                return
        self._parse_simple(buffer, commands)

    def _parse_simple(self, buffer: bytes, commands: list[Command]) -> None:
        """Parse the common case fast: arguments free of CR LF, each under 1 KiB.

        The buffer is cut at every CRLF in one C call; a command ``*n`` is then the
        next ``2n`` pieces, alternately ``$len`` headers and arguments. A header is
        checked by comparing it with the one its argument's length implies, so an
        argument that contains CRLF (its pieces disagree with the header), a long
        one, or anything unusual stops this fast path where it is, and the exact
        parser takes over from there. CRLF-terminated inline commands without quotes
        are split here too.
        """
        pieces = buffer.split(b"\r\n", _SPLIT_LINES)
        complete = len(pieces) - 1  # the last piece is not terminated yet
        header_for = _BULK_HEADERS.__getitem__
        counts = _ARRAY_HEADERS
        # One command alone (an unpipelined client) is no run: straight to the loop.
        single = counts.get(pieces[0], 0) * 2 + 1 == complete
        index = 0
        if not single:
            index, run = cut_uniform(
                pieces, complete, commands, self.max_array_length, self.max_inline_length
            )
            self._run = run
        append = commands.append
        try:
            while index < complete:
                head = pieces[index]
                count = counts.get(head)
                if count is not None:
                    end = index + 1 + 2 * count
                    if end > complete or count > self.max_array_length:
                        break
                    args = pieces[index + 2 : end : 2]
                    if list(map(header_for, map(len, args))) != pieces[index + 1 : end : 2]:
                        break
                    append(args)
                elif head[:1] == b"*" or b"\n" in head or b'"' in head or b"'" in head:
                    break  # a long array, an LF-only line, quotes: for the exact parser
                elif len(head) > self.max_inline_length:
                    break
                else:
                    args = head.split()
                    end = index + 1
                    if args:
                        append(args)
                index = end
        except IndexError:
            pass  # an argument of 1 KiB or more: the exact parser will take it
        if index == complete:  # everything up to the last CRLF: no need to add up
            self._pos += len(buffer) - len(pieces[-1])
        elif index:
            self._pos += sum(map(len, pieces[:index])) + 2 * index

    def _parse_bulks(self, args: Command, remaining: int) -> Optional[Command]:
        buffer = self._buffer
        pos = self._pos
        size = len(buffer)
        find = buffer.find
        append = args.append
        taken = 0
        self._wanted = 0
        while remaining:
            if pos >= size:
                break
            if buffer[pos] != 36:  # "$"
                raise self._fail(f"expected '$', got '{chr(buffer[pos])}'")
            end = find(b"\r\n", pos)
            if end < 0:
                if size - pos > self.max_inline_length:
                    raise self._fail("too big bulk count string")
                break
            digits = buffer[pos + 1 : end]
            # isdigit() refuses what int() would forgive: signs, spaces, underscores.
            if not digits.isdigit():
                raise self._fail("invalid bulk length")
            length = int(digits)
            if length > self.max_bulk_length:
                raise self._fail(f"invalid bulk length {length} (limit {self.max_bulk_length})")
            if self._partial_size + taken + length + ARGUMENT_OVERHEAD > self.max_command_size:
                raise self._fail(f"command larger than {self.max_command_size} bytes")
            start = end + 2
            stop = start + length
            if stop + 2 > size:
                self._wanted = stop + 2 - pos
                break
            if buffer[stop : stop + 2] != b"\r\n":
                raise self._fail("bulk string not terminated by CRLF")
            append(buffer[start:stop])
            taken += length + ARGUMENT_OVERHEAD
            pos = stop + 2
            remaining -= 1
        self._pos = pos
        if remaining:
            self._args = args
            self._remaining = remaining
            self._partial_size += taken
            if self._partial_size + size - pos > self.max_command_size:
                raise self._fail(f"command larger than {self.max_command_size} bytes")
            return None
        self._args = []
        self._remaining = 0
        self._partial_size = 0
        self._wanted = 0
        return args

    def _parse_inline(self) -> Optional[Command]:
        buffer = self._buffer
        pos = self._pos
        end = buffer.find(b"\n", pos)
        if end < 0:
            if len(buffer) - pos > self.max_inline_length:
                raise self._fail("too big inline request")
            return None
        if end - pos > self.max_inline_length:
            raise self._fail("too big inline request")
        line = buffer[pos:end]
        self._pos = end + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        args = split_inline(line) if (b'"' in line or b"'" in line) else line.split()
        if args is None:
            raise self._fail("unbalanced quotes in request")
        return args  # empty for a blank line: no command (telnet users press Enter)
