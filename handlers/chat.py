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
"""

from __future__ import annotations

import collections
import logging
import re
import socket
import threading
import weakref
from typing import Any, NamedTuple, Optional

from pyserve import StreamRequestHandler, ThreadingTCPServer

__all__ = ["ChatHandler", "ChatServer", "Command", "Member", "Outbox", "Room", "parse_line"]

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
        logger.warning(
            "disconnecting chat client %s (%s): %d lines queued and it is not reading",
            member.nick, member.address, member.outbox.limit,
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
    - ``send_buffer_size``: the connection's SO_SNDBUF (None: the system's)
    - ``writer_join_timeout``: how long ``finish`` waits for the writer thread
    """

    max_line_length: int = 1024
    #: At a few hundred lines, a client that reads at all keeps up; one that stopped
    #: is dropped after a bounded amount of memory (lines x max_line_length).
    max_queued_lines: int = 256
    send_buffer_size: Optional[int] = None
    writer_join_timeout: float = 5.0

    def setup(self) -> None:
        super().setup()
        if self.send_buffer_size is not None:
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_size)
        self.outbox = Outbox(self.max_queued_lines)
        self.writer = threading.Thread(
            target=self._write_loop, name=f"pyserve chat writer {self.client_address}",
            daemon=True,
        )
        self.writer.start()
        self.room = _room_of(self.server)
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
                logger.warning(
                    "disconnecting chat client %s (%s): line longer than %d bytes",
                    self.member.nick, self.client_address, limit,
                )
                return
            command = parse_line(raw.decode("utf-8", "replace").rstrip("\r\n"))
            if not self._obey(command):
                return

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


_rooms_lock = threading.Lock()
_rooms: weakref.WeakKeyDictionary[Any, Room] = weakref.WeakKeyDictionary()


def _room_of(server: Any) -> Room:
    """The server's room: ``server.room`` if it has one, else one kept beside it.

    A plain server (``ThreadingTCPServer(addr, ChatHandler)``, as the CLI builds
    one) is not modified: its room lives in a weak mapping keyed by the server.
    """
    room = getattr(server, "room", None)
    if isinstance(room, Room):
        return room
    with _rooms_lock:
        room = _rooms.get(server)
        if room is None:
            room = _rooms[server] = Room()
        return room
