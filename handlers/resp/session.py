"""One RESP connection's state, the state all connections share, and batch execution.

Theory of operation
-------------------
A :class:`Session` is one client connection: its id and name, whether it asked to
QUIT, and the :class:`ServerState` every connection of a server shares (the
:class:`~handlers.resp.store.KeyValueStore` and the counters ``INFO`` reports).

:meth:`Session.execute` runs a batch of commands. Each command's first word,
as sent or folded to lower case, names an entry of the session's command table
(built in :mod:`handlers.resp.commands`): the function that runs it and its
*arity* in Redis's convention (``n``: exactly ``n`` words including the name;
``-n``: at least ``n``). The whole batch runs with ``store.lock`` held, so each
command is atomic and a pipelined batch costs one lock acquisition.

A command function returns its reply as bytes. For errors it may return an
encoded error or raise :class:`ReplyError`; a write that would break the memory
cap raises :class:`~handlers.resp.store.OutOfMemory`, which becomes Redis's
``-OOM`` reply. The helpers here (argument parsing, the standard error texts) are
shared by the command modules.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable

from handlers.resp.encoding import encode_error
from handlers.resp.store import KeyValueStore, OutOfMemory

__all__ = ["CommandTable", "ReplyError", "ServerState", "Session"]

#: The version clients are told. 7.0 is what the commands here behave like.
REDIS_VERSION = "7.0.0"

SYNTAX_ERROR = b"-ERR syntax error\r\n"
NOT_AN_INTEGER = b"-ERR value is not an integer or out of range\r\n"
OOM_ERROR = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"


class ReplyError(Exception):
    """Raised by a command to answer with an (already encoded) error reply."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply)
        self.reply = reply


class ServerState:
    """What every connection of one server shares: the store and the counters."""

    def __init__(self, max_memory: int = 0) -> None:
        self.store = KeyValueStore(max_memory)
        self.started = time.monotonic()
        self.connected_clients = 0
        self.commands_processed = 0
        self._client_ids = itertools.count(1)
        self._lock = threading.Lock()

    def connect(self) -> int:
        """Count a new connection; return its client id."""
        with self._lock:
            self.connected_clients += 1
            return next(self._client_ids)

    def disconnect(self) -> None:
        with self._lock:
            self.connected_clients -= 1


#: A command's implementation: (session, words including the name) -> reply bytes.
CommandFunction = Callable[["Session", list[bytes]], bytes]
#: Command name -> (function, arity in Redis's convention).
CommandTable = dict[bytes, tuple[CommandFunction, int]]


class Session:
    """One connection: its id, name and QUIT flag, and the shared server state."""

    def __init__(self, state: ServerState, commands: CommandTable, address: Any = None) -> None:
        self.state = state
        self.commands = commands
        self.store = state.store
        self.address = address
        self.client_id = state.connect()
        self.name = b""
        self.closing = False

    def close(self) -> None:
        self.state.disconnect()

    def execute(self, commands: list[list[bytes]]) -> bytes:
        """Run a batch of commands (holding the store lock); return every reply."""
        replies: list[bytes] = []
        append = replies.append
        table = self.commands
        with self.store.lock:
            for args in commands:
                name = args[0]
                entry = table.get(name) or table.get(name.lower())
                if entry is None:
                    append(unknown_command(args))
                    continue
                function, arity = entry
                if (len(args) != arity) if arity > 0 else (len(args) < -arity):
                    append(wrong_arity(name))
                    continue
                try:
                    append(function(self, args))
                except ReplyError as exc:
                    append(exc.reply)
                except OutOfMemory:
                    append(OOM_ERROR)
                if self.closing:
                    break
            self.state.commands_processed += len(commands)
        return b"".join(replies)


def unknown_command(args: list[bytes]) -> bytes:
    shown = " ".join(f"'{text(arg)[:128]}'" for arg in args[1:])
    return encode_error(
        f"ERR unknown command '{text(args[0])[:128]}', with args beginning with: {shown}"
    )


def wrong_arity(name: bytes) -> bytes:
    return encode_error(f"ERR wrong number of arguments for '{text(name).lower()}' command")


def text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def integer_argument(arg: bytes) -> int:
    """A strict signed 64-bit decimal (Redis's string2ll), else a ReplyError."""
    digits = arg[1:] if arg[:1] == b"-" else arg
    if not digits.isdigit() or len(arg) > 20:
        raise ReplyError(NOT_AN_INTEGER)
    number = int(arg)
    if not -(2**63) <= number < 2**63:
        raise ReplyError(NOT_AN_INTEGER)
    return number
