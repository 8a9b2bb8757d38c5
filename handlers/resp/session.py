"""One RESP connection's state, the state all connections share, and batch execution.

Theory of operation
-------------------
A :class:`Session` is one client connection: its id and name, whether it asked to
QUIT, and the :class:`ServerState` every connection of a server shares (the
:class:`~handlers.resp.store.KeyValueStore` and the counters ``INFO`` reports).

:meth:`Session.execute_some` runs a client's commands. Each command's first
word, as sent or folded to lower case, names an entry of the session's command
table (built in :mod:`handlers.resp.commands`): the function that runs it and its
*arity* in Redis's convention (``n``: exactly ``n`` words including the name;
``-n``: at least ``n``). Commands run with ``store.lock`` held, so each is atomic
and a pipelined batch costs one lock acquisition; with a *budget* it stops once
the replies reach that many bytes, so a long pipeline is answered in pieces and
the lock is released between them. A command that could hold the lock long
(``KEYS`` over a large keyspace) returns an iterator of steps instead of its
reply, and each call runs one step. Inside ``MULTI`` commands are queued instead
(see :mod:`handlers.resp.transactions`). :meth:`Session.execute` runs them all.
A batch that is a *run* (every command the same, as pipelining clients send them)
goes first to its command's run function, which answers it in one loop without the
per-command dispatch (see :mod:`handlers.resp.runs`); whatever it leaves, the
general loop answers.

A command function returns its reply as bytes. For errors it may return an
encoded error or raise :class:`ReplyError`; a write that would break the memory
cap raises :class:`~handlers.resp.store.OutOfMemory`, which becomes Redis's
``-OOM`` reply, and a key of the wrong kind raises
:class:`~handlers.resp.store.WrongType`, which becomes ``-WRONGTYPE``. The
helpers here (argument parsing, the standard error texts) are shared by the
command modules.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional, cast

from handlers.resp.encoding import encode_error
from handlers.resp.faults import FaultLog
from handlers.resp.protocol import Run
from handlers.resp.store import DEFAULT_MAX_MEMORY, KeyValueStore, OutOfMemory, WrongType

__all__ = [
    "TRANSACTION_CONTROL", "CommandTable", "ReplyError", "ReplyTooBig", "ServerState", "Session"
]

#: The version clients are told. 7.0 is what the commands here behave like.
REDIS_VERSION = "7.0.0"

SYNTAX_ERROR = b"-ERR syntax error\r\n"
NOT_AN_INTEGER = b"-ERR value is not an integer or out of range\r\n"
OOM_ERROR = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"
WRONG_TYPE = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
QUEUED = b"+QUEUED\r\n"


class ReplyError(Exception):
    """Raised by a command to answer with an (already encoded) error reply."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply)
        self.reply = reply


class ServerState:
    """What every connection of one server shares: the store and the counters."""

    def __init__(self, max_memory: int = DEFAULT_MAX_MEMORY) -> None:
        self.store = KeyValueStore(max_memory)
        self.faults = FaultLog()
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


#: A command's implementation: (session, words including the name) -> reply bytes,
#: or, for a long command, an iterator of steps: None after each step but the
#: last, which is the reply. The store lock is released between steps.
CommandFunction = Callable[["Session", list[bytes]], Any]
#: Command name -> (function, arity in Redis's convention).
CommandTable = dict[bytes, tuple[CommandFunction, int]]
#: A run function (see :mod:`handlers.resp.runs`): (session, commands of one name
#: and one length, budget) -> (the replies of a prefix of them, its length).
RunTable = dict[bytes, tuple[Callable[["Session", list[list[bytes]], int], tuple[bytes, int]], int]]


class ReplyTooBig(ReplyError):
    """Raised (by :meth:`Session.check_reply_size`) for a reply that would pass the
    session's ``max_reply_size``: it is refused before it is built, with no reply,
    and the session closes (the handlers log it as the output buffer limit)."""

    def __init__(self, size: int) -> None:
        super().__init__(b"")
        self.size = size


class Session:
    """One connection: its id, name, QUIT flag, transaction, and the shared state."""

    def __init__(
        self,
        state: ServerState,
        commands: CommandTable,
        address: Any = None,
        runs: Optional[RunTable] = None,
    ) -> None:
        self.state = state
        self.commands = commands
        self.runs: RunTable = runs or {}
        self.store = state.store
        self.address = address
        self.client_id = state.connect()
        self.name = b""
        self.closing = False
        # The largest reply a command may build (0: any), and the size of the one
        # refused for it (0: none; the session is then closing).
        self.max_reply_size = 0
        self.too_big = 0
        # MULTI ... EXEC: the queued commands (None: no transaction open), whether
        # queuing met an error (EXEC then refuses), the WATCHed keys, and whether one
        # of them changed since (EXEC then answers nil).
        self.queued: Optional[list[list[bytes]]] = None
        self.queue_failed = False
        self.watched: set[bytes] = set()
        self.watched_changed = False
        # A command running in steps (KEYS over a large keyspace): its generator.
        self.stepping: Optional[Iterator[Optional[bytes]]] = None

    def close(self) -> None:
        with self.store.lock:
            self.unwatch()
        self.state.disconnect()

    def key_changed(self) -> None:
        """A watched key changed (called by the store)."""
        self.watched_changed = True

    def unwatch(self) -> None:
        """Forget every WATCHed key. The caller holds the store lock."""
        watchers = self.store.watchers
        for key in self.watched:
            sessions = watchers.get(key)
            if sessions is not None:
                sessions.discard(self)
                if not sessions:
                    del watchers[key]
        self.watched.clear()
        self.watched_changed = False

    def execute(self, commands: list[list[bytes]]) -> bytes:
        """Run a batch of commands to the end; return every reply."""
        replies, index = self.execute_some(commands)
        if index >= len(commands) or self.closing:
            return replies
        parts = [replies]
        while index < len(commands) and not self.closing:  # a command run in steps
            replies, index = self.execute_some(commands, index)
            parts.append(replies)
        return b"".join(parts)

    def execute_some(
        self, commands: list[list[bytes]], start: int = 0, budget: int = 0
    ) -> tuple[bytes, int]:
        """Run ``commands[start:]`` under the store lock; the replies and where it stopped.

        With a ``budget`` (bytes), it stops after the first command whose reply
        brings the replies to that size, so a client's pipeline is answered in
        pieces no bigger than about budget plus one reply, and the lock is
        released between pieces. It also stops after QUIT.
        """
        replies: list[bytes] = []
        append = replies.append
        table = self.commands
        index = start
        end = len(commands)
        size = 0
        with self.store.lock:
            # (A step of a long command goes on; one command alone gains nothing
            # from a run function.)
            lead = (
                self._lead(commands, index, end, budget)
                if end - index > 1 or self.stepping is not None
                else (b"", 0)
            )
            if lead is None:
                return b"", index  # a step of a long command, not its last
            if lead[1]:
                index += lead[1]
                if index == end:  # a whole run (or a long command's last step)
                    self.state.commands_processed += index - start
                    return lead[0], index
                append(lead[0])
                size = len(lead[0])
                # A full piece skips the loop.
                end = index if budget and size >= budget else end
            # The loop is written out (no call per command): it is the hot path.
            while index < end:
                args = commands[index]
                index += 1
                name = args[0]
                entry = table.get(name) or table.get(name.lower())
                if entry is None or (
                    (len(args) != entry[1]) if entry[1] > 0 else (len(args) < -entry[1])
                ):
                    reply = self._refuse(args, entry is None)
                elif self.queued is not None and entry[0] not in TRANSACTION_CONTROL:
                    self.queued.append(args)
                    reply = QUEUED
                else:
                    try:
                        reply = entry[0](self, args)
                    except ReplyError as exc:
                        reply = exc.reply
                    except WrongType:
                        reply = WRONG_TYPE
                    except OutOfMemory:
                        reply = OOM_ERROR
                    if type(reply) is not bytes:  # steps: the next call goes on
                        self.stepping = cast(Iterator[Optional[bytes]], reply)
                        index -= 1
                        break
                append(reply)
                size += len(reply)
                if (budget and size >= budget) or self.closing:
                    break
            self.state.commands_processed += index - start
        return b"".join(replies), index

    def _lead(
        self, commands: list[list[bytes]], start: int, end: int, budget: int
    ) -> Optional[tuple[bytes, int]]:
        """What goes before the general loop: the next step of a command run in
        steps, or a run function (see :mod:`handlers.resp.runs`) if the commands
        are a run: one name spelled one way, one number of words, the arity right.

        The reply and how many commands it answers; None after a step but the last.
        """
        if self.stepping is not None:
            reply = next(self.stepping)
            if reply is None:
                return None
            self.stepping = None
            return reply, 1
        entry = self.runs.get(commands[start][0]) if start < end and self.queued is None else None
        if entry is None:
            return b"", 0
        run = commands[start:end] if start else commands
        if not _is_run(run, entry[1]):
            return b"", 0
        return entry[0](self, run, budget)

    def check_reply_size(self, size: int) -> None:
        """Raise :class:`ReplyTooBig` if a reply of ``size`` bytes is too big to build."""
        if self.max_reply_size and size > self.max_reply_size:
            self.too_big = size
            self.closing = True  # the loop stops after this command
            raise ReplyTooBig(size)

    def _refuse(self, args: list[bytes], unknown: bool) -> bytes:
        """The error for an unknown command or a wrong number of arguments."""
        self.queue_failed = self.queued is not None  # EXEC will refuse to run
        return unknown_command(args) if unknown else wrong_arity(args[0])

    def call(self, args: list[bytes]) -> bytes:
        """Run one command now (EXEC runs its queue with this); the lock is held."""
        function, _arity = self.commands[args[0].lower()]
        try:
            reply = function(self, args)
            if type(reply) is not bytes:  # in steps: all of them, here
                reply = next(step for step in reply if step is not None)
            return cast(bytes, reply)
        except ReplyError as exc:
            return exc.reply
        except WrongType:
            return WRONG_TYPE
        except OutOfMemory:
            return OOM_ERROR


#: The functions that run at once inside MULTI instead of being queued (filled
#: in by :mod:`handlers.resp.transactions`).
TRANSACTION_CONTROL: set[CommandFunction] = set()


def _is_run(commands: list[list[bytes]], arity: int) -> bool:
    """Whether ``commands`` are one name spelled one way, with one number of words
    that ``arity`` allows. (The parser says so by returning a Run.)"""
    name = commands[0][0]
    width = len(commands[0])
    if width != arity if arity > 0 else width < -arity:
        return False
    if type(commands) is Run:
        return True
    # A plain loop: all() over a generator costs a frame switch per command.
    for args in commands:  # noqa: SIM110
        if len(args) != width or args[0] != name:
            return False
    return True


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
