"""A chat room over TCP where a slow or stalled client cannot hold up the others.

Theory of operation
-------------------
Everyone connected to a :class:`ChatServer` is in one :class:`Room`. A client
sends lines of UTF-8 text; a plain line is broadcast to everyone else as
``<nick> text``, and a few lines are commands (:func:`parse_line` tells which,
without any I/O):

* ``/nick NAME``: change nickname (1-32 letters, digits, ``_`` or ``-``; unique);
* ``/who``: list who is in the room;
* ``/quit``: leave (so does closing the connection).

Joins, leaves and nickname changes are announced with lines starting ``* ``.
A new client is greeted and given a nickname ``guestN`` it may change.

The classic version of this example writes to every other client's socket from
the sender's thread; one client that stops reading fills its socket buffer, the
sender blocks in ``send()``, and the whole room freezes. Here every member has an
:class:`Outbox`: a bounded queue drained by that member's own *writer thread*. A
broadcast only appends to outboxes (under the room's lock, so everyone sees the
same order) and never touches a socket. When a member's outbox is full, because
that client has not read for ``max_queued_lines`` lines, the member is disconnected
with one logged reason on the ``pyserve.chat`` logger: its socket is shut down,
which wakes both its reader (end of file) and its writer (broken pipe).

Each connection thus has two threads: the request thread reads lines (``handle``)
and the writer thread sends. ``finish`` closes the outbox and joins the writer
(with a deadline), so no thread outlives its connection.

Fairness: the outbox rule alone would let one member who *sends* 100,000 lines a
second overflow every reader's outbox, and the room would drop its readers as
"too slow". So every member also has a :class:`RateLimit` (a token bucket:
``max_lines_per_second``, bursts of ``max_burst_lines``), taken for each line it
sends, commands included. A member over its budget first waits: its request
thread pauses before reading its next line, so its own socket buffers fill and
TCP slows *its* sender down. A member still over budget after
``max_throttled_seconds`` of that (a flood, not a paste) is disconnected, so a
flooder that hangs up does not leave a thread reading its backlog at ten lines
a second. Readers receive at most the sum of the senders' budgets and stay.

Terminal safety: what one member types is printed on the others' terminals, so
control characters are escaped before relay (:func:`handlers.chat_limits.clean_text`): C0 controls
(ESC, BEL, CR, backspace...), DEL, C1 controls and the bidirectional overrides
that can reorder a terminal line come out as visible ``\\x1b``-style text, so
nobody can retitle, clear or recolour another's terminal, write to its clipboard
(OSC 52) or forge a line. TAB is kept: it only moves the cursor right on the same
line, and pasted code and tables use it.

Logging: disconnections for a peer's fault (too slow, line too long) are logged
on ``pyserve.chat`` at most once per reason per minute per room, with a count.
"""

from __future__ import annotations

import collections
import logging
import re
import socket
import threading
import time
from typing import Any, NamedTuple, Optional

from handlers._per_server import PerServer
from handlers.chat_limits import RateLimit, clean_text
from pyserve import StreamRequestHandler, ThreadingTCPServer
from pyserve.logs import RateLimitedLog, escape

__all__ = [
    "ChatHandler",
    "ChatServer",
    "Command",
    "Member",
    "Outbox",
    "RateLimit",
    "Room",
    "clean_text",
    "parse_line",
]

logger = logging.getLogger("pyserve.chat")

_NICK = re.compile(r"[A-Za-z0-9_-]{1,32}")


class Command(NamedTuple):
    """One line from a client: ``kind`` is "say", "nick", "who", "quit" or "unknown"."""

    kind: str
    argument: str


def parse_line(line: str) -> Command:
    """Classify one line of input (without its line ending)."""
    if not line.startswith("/") or line.startswith("//"):
        return Command("say", line[1:] if line.startswith("//") else line)
    name, _, argument = line[1:].partition(" ")
    name = name.lower()
    if name in ("nick", "who", "quit"):
        return Command(name, argument.strip())
    return Command("unknown", name)


class Outbox:
    """A bounded queue of lines for one client, drained by its writer thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lines: collections.deque[bytes] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._closed = False

    def put(self, line: bytes) -> bool:
        """Queue a line; False if the outbox is full (the client is not reading)."""
        with self._ready:
            if self._closed:
                return True  # leaving anyway: nothing to complain about
            if len(self._lines) >= self.limit:
                return False
            self._lines.append(line)
            self._ready.notify()
            return True

    def close(self) -> None:
        """No more lines; the writer sends what is queued, then stops."""
        with self._ready:
            self._closed = True
            self._ready.notify()

    def take(self) -> Optional[bytes]:
        """Everything queued, joined (waits for something), or None once closed and empty."""
        with self._ready:
            while not self._lines and not self._closed:
                self._ready.wait()
            if not self._lines:
                return None
            data = b"".join(self._lines)
            self._lines.clear()
            return data


class Member:
    """One connected client as the room sees it."""

    def __init__(self, nick: str, outbox: Outbox, sock: socket.socket, address: Any) -> None:
        self.nick = nick
        self.outbox = outbox
        self.sock = sock
        self.address = address
        self.dropped = False  # set when the room disconnected it for being slow


#: The first line every client reads.
WELCOME = "* Welcome! You are {nick}. Commands: /nick NAME, /who, /quit\n"


class Room:
    """The members and the broadcast. All methods are safe from any thread."""

    def __init__(self) -> None:
        self._members: dict[str, Member] = {}
        self._lock = threading.Lock()
        self._guest_number = 0
        #: Peer faults (slow readers, over-long lines): one line per reason per minute.
        self.faults = RateLimitedLog(logger)

    def join(self, outbox: Outbox, sock: socket.socket, address: Any) -> Member:
        with self._lock:
            self._guest_number += 1
            nick = f"guest{self._guest_number}"
            while nick in self._members:
                self._guest_number += 1
                nick = f"guest{self._guest_number}"
            member = Member(nick, outbox, sock, address)
            # The welcome goes into the outbox before the member is visible to
            # broadcasts, so it is always the first line the client reads.
            outbox.put(WELCOME.format(nick=nick).encode())
            self._members[nick] = member
            self._broadcast_locked(f"* {nick} has joined\n", exclude=member)
            return member

    def leave(self, member: Member) -> None:
        with self._lock:
            if self._members.get(member.nick) is member:
                del self._members[member.nick]
                reason = " (too slow)" if member.dropped else ""
                self._broadcast_locked(f"* {member.nick} has left{reason}\n")

    def rename(self, member: Member, nick: str) -> Optional[str]:
        """Change a nickname; returns an error message, or None when done."""
        if not _NICK.fullmatch(nick):
            return "nicknames are 1-32 letters, digits, '_' or '-'"
        with self._lock:
            if nick in self._members:
                return f"{nick} is taken"
            old = member.nick
            del self._members[old]
            member.nick = nick
            self._members[nick] = member
            self._broadcast_locked(f"* {old} is now known as {nick}\n")
            return None

    def say(self, member: Member, text: str) -> None:
        text = clean_text(text)
        with self._lock:
            self._broadcast_locked(f"<{member.nick}> {text}\n", exclude=member)

    def who(self) -> list[str]:
        with self._lock:
            return sorted(self._members)

    def _broadcast_locked(self, text: str, exclude: Optional[Member] = None) -> None:
        line = text.encode("utf-8")
        for member in list(self._members.values()):
            if member is exclude or member.dropped:  # dropped meanwhile, by recursion
                continue
            if not member.outbox.put(line):
                self._drop_locked(member)

    def _drop_locked(self, member: Member) -> None:
        del self._members[member.nick]
        member.dropped = True
        self.faults.report(
            logging.WARNING,
            "too slow",
            "disconnecting chat client %s (%s): %d lines queued and it is not reading",
            member.nick,
            escape(member.address),
            member.outbox.limit,
        )
        try:
            member.sock.shutdown(socket.SHUT_RDWR)  # wakes its reader and its writer
        except OSError:
            pass  # already gone
        self._broadcast_locked(f"* {member.nick} has left (too slow)\n")


class ChatHandler(StreamRequestHandler["ChatServer"]):
    """One chat client: reads its lines; its writer thread sends it the room's lines.

    Class attributes that may be overridden:

    - ``max_line_length``: longest line accepted, in bytes; a longer one ends the
      connection with a logged reason
    - ``max_queued_lines``: how many lines may wait for a client that is not reading
      before it is disconnected
    - ``max_lines_per_second`` / ``max_burst_lines``: each member's sending budget;
      over it, the member's next line waits (its own sender is slowed, nobody
      else is affected)
    - ``send_buffer_size``: the connection's SO_SNDBUF (None: the system's)
    - ``writer_join_timeout``: how long ``finish`` waits for the writer thread
    """

    max_line_length: int = 1024
    #: At a few hundred lines, a client that reads at all keeps up; one that stopped
    #: is dropped after a bounded amount of memory (lines x max_line_length).
    max_queued_lines: int = 256
    #: Faster than anyone types, slow enough that a room of a dozen senders at full
    #: budget (120 lines a second) is read comfortably by any client that reads.
    max_lines_per_second: float = 10.0
    #: A pasted paragraph or a short listing goes through at once.
    max_burst_lines: int = 30
    #: Over budget without a pause for this long is a flood: the member is dropped.
    #: Five seconds let a paste of about 80 lines through (30 at once, 10 a second).
    max_throttled_seconds: float = 5.0
    send_buffer_size: Optional[int] = None
    writer_join_timeout: float = 5.0

    def setup(self) -> None:
        super().setup()
        if self.send_buffer_size is not None:
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_size)
        self.outbox = Outbox(self.max_queued_lines)
        self.writer = threading.Thread(
            target=self._write_loop,
            name=f"pyserve chat writer {self.client_address}",
            daemon=True,
        )
        self.writer.start()
        self.room = _room_of(self.server)
        self.rate_limit = RateLimit(self.max_lines_per_second, self.max_burst_lines)
        #: When this member last went over budget without a pause since (None: within).
        self.throttled_since: Optional[float] = None
        self.member = self.room.join(self.outbox, self.request, self.client_address)

    def _write_loop(self) -> None:
        sendall = self.request.sendall
        while True:
            data = self.outbox.take()
            if data is None:
                return
            try:
                sendall(data)
            except OSError:
                self.outbox.close()  # the client is gone; the reader will notice
                return

    def handle(self) -> None:
        limit = self.max_line_length
        while True:
            try:
                raw = self.rfile.readline(limit + 1)
            except OSError:
                return  # shut down by the room, or reset by the peer
            if not raw:
                return
            if len(raw) > limit and not raw.endswith(b"\n"):
                self.room.faults.report(
                    logging.WARNING,
                    "line too long",
                    "disconnecting chat client %s (%s): line longer than %d bytes",
                    self.member.nick,
                    escape(self.client_address),
                    limit,
                )
                return
            if not self._pace():
                return
            command = parse_line(raw.decode("utf-8", "replace").rstrip("\r\n"))
            if not self._obey(command):
                return

    def _pace(self) -> bool:
        """Wait out this line's share of the budget; False once it is a flood."""
        delay = self.rate_limit.wait()
        if delay <= 0:
            self.throttled_since = None
            return True
        now = time.monotonic()
        if self.throttled_since is None:
            self.throttled_since = now
        elif now - self.throttled_since > self.max_throttled_seconds:
            self.room.faults.report(
                logging.WARNING,
                "flooding",
                "disconnecting chat client %s (%s): over %g lines a second for %g s",
                self.member.nick,
                escape(self.client_address),
                self.max_lines_per_second,
                self.max_throttled_seconds,
            )
            return False
        # Not reading is what slows the sender (TCP flow control); nobody else waits.
        time.sleep(delay)
        return True

    def _obey(self, command: Command) -> bool:
        """Carry out one command; False when the client asked to leave."""
        if command.kind == "say":
            if command.argument:
                self.room.say(self.member, command.argument)
        elif command.kind == "nick":
            error = self.room.rename(self.member, command.argument)
            if error is not None:
                self.outbox.put(f"* {error}\n".encode())
        elif command.kind == "who":
            self.outbox.put(f"* In the room: {', '.join(self.room.who())}\n".encode())
        elif command.kind == "quit":
            self.outbox.put(b"* Bye\n")
            return False
        else:
            self.outbox.put(f"* Unknown command /{command.argument}\n".encode())
        return True

    def finish(self) -> None:
        self.room.leave(self.member)
        self.outbox.close()
        self.writer.join(self.writer_join_timeout)
        if self.writer.is_alive():  # stuck sending to a client that does not read
            try:
                self.request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.writer.join(self.writer_join_timeout)
        super().finish()


class ChatServer(ThreadingTCPServer):
    """A threaded TCP server with one chat :class:`Room` (``server.room``)."""

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: Any = ChatHandler,
        bind_and_activate: bool = True,
    ) -> None:
        self.room: Optional[Room] = Room()
        super().__init__(server_address, RequestHandlerClass, bind_and_activate)


_rooms: PerServer[Room] = PerServer(Room)


def _room_of(server: Any) -> Room:
    """The server's room: ``server.room`` if it has one, else one kept beside it.

    A plain server (``ThreadingTCPServer(addr, ChatHandler)``, as the CLI builds
    one) is not modified: its room lives in a weak mapping keyed by the server.
    """
    room = getattr(server, "room", None)
    if isinstance(room, Room):
        return room
    return _rooms.get(server)
