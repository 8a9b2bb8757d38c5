"""The Redis commands the RESP server understands, as a dispatch table.

Theory of operation
-------------------
A command arrives as a list of ``bytes`` (see :mod:`handlers.resp_protocol`). Its
first element, folded to lower case, names an entry of :data:`COMMANDS`: the
function that runs it and its *arity* in Redis's convention (``n``: exactly ``n``
words including the name; ``-n``: at least ``n``). :meth:`Session.execute` checks
the arity, calls the function with the session and the words, and returns the
encoded reply. The functions run with ``store.lock`` held (the caller takes it once
per batch), so each is atomic.

A function returns its reply as bytes. For errors it may either return an encoded
error or raise :class:`ReplyError`; a write that would break the memory cap raises
:class:`~handlers.resp_store.OutOfMemory`, which becomes Redis's ``-OOM`` reply.

:class:`Session` is one connection's state (client id and name, whether QUIT was
asked) plus the :class:`ServerState` all connections share: the store and the
counters ``INFO`` reports.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any, Callable, Optional

from handlers.resp_protocol import (
    EMPTY_ARRAY,
    NULL_BULK,
    OK,
    PONG,
    encode_array,
    encode_bulk,
    encode_error,
    encode_integer,
    encode_simple,
)
from handlers.resp_store import KeyValueStore, OutOfMemory, glob_to_regex

__all__ = ["COMMANDS", "ReplyError", "ServerState", "Session"]

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


CommandFunction = Callable[["Session", list[bytes]], bytes]


class Session:
    """One connection: its id, name and QUIT flag, and the shared server state."""

    def __init__(self, state: ServerState, address: Any = None) -> None:
        self.state = state
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
        table = COMMANDS
        with self.store.lock:
            for args in commands:
                name = args[0]
                entry = table.get(name) or table.get(name.lower())
                if entry is None:
                    append(_unknown_command(args))
                    continue
                function, arity = entry
                if (len(args) != arity) if arity > 0 else (len(args) < -arity):
                    append(_wrong_arity(name))
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


def _unknown_command(args: list[bytes]) -> bytes:
    shown = " ".join(f"'{_text(arg)[:128]}'" for arg in args[1:])
    return encode_error(
        f"ERR unknown command '{_text(args[0])[:128]}', with args beginning with: {shown}"
    )


def _wrong_arity(name: bytes) -> bytes:
    return encode_error(f"ERR wrong number of arguments for '{_text(name).lower()}' command")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _integer(arg: bytes) -> int:
    """A strict signed 64-bit decimal (Redis's string2ll), else a ReplyError."""
    digits = arg[1:] if arg[:1] == b"-" else arg
    if not digits.isdigit() or len(arg) > 20:
        raise ReplyError(NOT_AN_INTEGER)
    number = int(arg)
    if not -(2**63) <= number < 2**63:
        raise ReplyError(NOT_AN_INTEGER)
    return number


# -- connection and server commands -------------------------------------------------


def ping(session: Session, args: list[bytes]) -> bytes:
    if len(args) > 2:
        return _wrong_arity(args[0])
    return PONG if len(args) == 1 else encode_bulk(args[1])


def echo(session: Session, args: list[bytes]) -> bytes:
    return encode_bulk(args[1])


def quit_(session: Session, args: list[bytes]) -> bytes:
    session.closing = True
    return OK


def select(session: Session, args: list[bytes]) -> bytes:
    index = _integer(args[1])
    if index != 0:  # one database: Redis Cluster's rule, and clients cope with it
        return b"-ERR DB index is out of range\r\n"
    return OK


def hello(session: Session, args: list[bytes]) -> bytes:
    rest = args[1:]
    if rest:
        try:
            version = int(rest[0])
        except ValueError:
            return b"-ERR Protocol version is not an integer or out of range\r\n"
        if version != 2:
            return b"-NOPROTO sorry, this protocol version is not supported\r\n"
        rest = rest[1:]
    while rest:
        option = rest[0].lower()
        if option == b"setname" and len(rest) >= 2:
            _set_client_name(session, rest[1])
            rest = rest[2:]
        elif option == b"auth" and len(rest) >= 3:
            return b"-ERR AUTH is not supported by this server\r\n"
        else:
            return SYNTAX_ERROR
    fields = [
        (b"server", encode_bulk(b"redis")),
        (b"version", encode_bulk(REDIS_VERSION.encode())),
        (b"proto", encode_integer(2)),
        (b"id", encode_integer(session.client_id)),
        (b"mode", encode_bulk(b"standalone")),
        (b"role", encode_bulk(b"master")),
        (b"modules", EMPTY_ARRAY),
    ]
    return encode_array([part for key, value in fields for part in (encode_bulk(key), value)])


def _set_client_name(session: Session, name: bytes) -> None:
    if any(byte <= 32 or byte > 126 for byte in name):
        raise ReplyError(
            b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
        )
    session.name = name


def client(session: Session, args: list[bytes]) -> bytes:
    sub = args[1].lower()
    if sub == b"setname" and len(args) == 3:
        _set_client_name(session, args[2])
        return OK
    if sub == b"getname" and len(args) == 2:
        return encode_bulk(session.name or None)
    if sub == b"id" and len(args) == 2:
        return encode_integer(session.client_id)
    if sub == b"setinfo" and len(args) == 4:
        return OK  # library name and version: accepted, not kept
    if sub == b"info" and len(args) == 2:
        return encode_bulk(b"id=%d addr=%s name=%s db=0\n" % (
            session.client_id, str(session.address).encode(), session.name))
    return encode_error(
        f"ERR unknown subcommand or wrong number of arguments for '{_text(args[1])[:64]}'."
        " Try CLIENT HELP."
    )


def command(session: Session, args: list[bytes]) -> bytes:
    sub = args[1].lower() if len(args) > 1 else b""
    if sub == b"count":
        return encode_integer(len(_CANONICAL))
    if sub == b"docs":
        return EMPTY_ARRAY  # no documentation: clients only use it for hints
    if sub == b"info":
        names = args[2:] or list(_CANONICAL)
        return encode_array([_command_info(name.lower()) for name in names])
    if sub == b"":
        return encode_array([_command_info(name) for name in _CANONICAL])
    return encode_error(f"ERR unknown subcommand '{_text(args[1])[:64]}'. Try COMMAND HELP.")


def _command_info(name: bytes) -> bytes:
    entry = COMMANDS.get(name)
    if entry is None:
        return b"*-1\r\n"
    write = name in _WRITE_COMMANDS
    first, last, step = _KEY_POSITIONS.get(name, (0, 0, 0))
    flags = [encode_simple(b"write" if write else b"readonly")]
    return encode_array([
        encode_bulk(name), encode_integer(entry[1]) if entry[1] >= 0
        else b":%d\r\n" % entry[1], encode_array(flags), b":%d\r\n" % first,
        b":%d\r\n" % last, b":%d\r\n" % step,
    ])


def config(session: Session, args: list[bytes]) -> bytes:
    sub = args[1].lower()
    if sub == b"get" and len(args) >= 3:
        settings = {
            b"maxmemory": b"%d" % session.store.max_memory,
            b"save": b"",
            b"appendonly": b"no",
            b"databases": b"1",
        }
        found: list[bytes] = []
        for pattern in args[2:]:
            match = glob_to_regex(pattern.lower()).fullmatch
            for key, value in settings.items():
                if match(key):
                    found += [encode_bulk(key), encode_bulk(value)]
        return encode_array(found)
    if sub == b"resetstat" and len(args) == 2:
        session.state.commands_processed = 0
        return OK
    return encode_error(f"ERR unknown subcommand '{_text(args[1])[:64]}'. Try CONFIG HELP.")


def info(session: Session, args: list[bytes]) -> bytes:
    state = session.state
    store = state.store
    store.expire_due()
    sections = {
        "server": [f"redis_version:{REDIS_VERSION}", "redis_mode:standalone",
                   "server_name:pyserve", f"process_id:{os.getpid()}",
                   f"uptime_in_seconds:{int(time.monotonic() - state.started)}"],
        "clients": [f"connected_clients:{state.connected_clients}"],
        "memory": [f"used_memory:{store.used_memory}", f"maxmemory:{store.max_memory}",
                   "maxmemory_policy:noeviction"],
        "stats": [f"total_commands_processed:{state.commands_processed}"],
        "keyspace": [f"db0:keys={len(store.data)},expires={len(store.expires)},avg_ttl=0"]
        if store.data else [],
    }
    wanted = {_text(arg).lower() for arg in args[1:]} - {"all", "everything", "default"}
    lines: list[str] = []
    for title, body in sections.items():
        if not wanted or title in wanted:
            lines += [f"# {title.capitalize()}", *body, ""]
    return encode_bulk("\r\n".join(lines).encode())


# -- keys and strings ------------------------------------------------------------------


def get(session: Session, args: list[bytes]) -> bytes:
    value = session.store.get(args[1])
    if value is None:
        return NULL_BULK
    return b"$%d\r\n%b\r\n" % (len(value), value)


def set_(session: Session, args: list[bytes]) -> bytes:
    store = session.store
    if len(args) == 3:  # the common case, kept short
        store.put(args[1], args[2])
        return OK
    options: dict[str, Any] = {}
    return_old = False
    i = 3
    while i < len(args):
        option = args[i].lower()
        if option in (b"ex", b"px") and i + 1 < len(args) and "expire_at" not in options:
            amount = _integer(args[i + 1])
            if amount <= 0:
                return b"-ERR invalid expire time in 'set' command\r\n"
            seconds = amount if option == b"ex" else amount / 1000
            options["expire_at"] = time.monotonic() + seconds
            i += 2
            continue
        if option == b"nx" and "only_if_present" not in options:
            options["only_if_missing"] = True
        elif option == b"xx" and "only_if_missing" not in options:
            options["only_if_present"] = True
        elif option == b"keepttl" and "expire_at" not in options:
            options["keep_ttl"] = True
        elif option == b"get":
            return_old = True
        else:
            return SYNTAX_ERROR
        i += 1
    if "keep_ttl" in options and "expire_at" in options:
        return SYNTAX_ERROR
    old = store.get(args[1]) if return_old else None
    done = store.set(args[1], args[2], **options)
    if return_old:
        return encode_bulk(old)
    return OK if done else NULL_BULK


def mget(session: Session, args: list[bytes]) -> bytes:
    get_value = session.store.get
    return encode_array([encode_bulk(get_value(key)) for key in args[1:]])


def mset(session: Session, args: list[bytes]) -> bytes:
    if len(args) % 2 == 0:
        return _wrong_arity(args[0])
    store = session.store
    pairs = dict(zip(args[1::2], args[2::2]))
    if store.max_memory:
        # All or nothing, as MSET is atomic: refuse before writing any pair.
        growth = 0
        for key, value in pairs.items():
            old = store.data.get(key)
            growth += len(value) - (len(old) if old is not None else -len(key))
        if growth > 0 and store.used_memory + growth > store.max_memory:
            raise OutOfMemory(args[1])
    for key, value in pairs.items():
        store.set(key, value)
    return OK


def delete(session: Session, args: list[bytes]) -> bytes:
    remove = session.store.delete
    return encode_integer(sum(remove(key) for key in args[1:]))


def exists(session: Session, args: list[bytes]) -> bytes:
    present = session.store.exists
    return encode_integer(sum(present(key) for key in args[1:]))


def type_(session: Session, args: list[bytes]) -> bytes:
    return b"+string\r\n" if session.store.exists(args[1]) else b"+none\r\n"


def _increment(session: Session, key: bytes, delta: int) -> bytes:
    try:
        return encode_integer(session.store.increment(key, delta))
    except ValueError:
        return NOT_AN_INTEGER
    except OverflowError:
        return b"-ERR increment or decrement would overflow\r\n"


def incr(session: Session, args: list[bytes]) -> bytes:
    return _increment(session, args[1], 1)


def decr(session: Session, args: list[bytes]) -> bytes:
    return _increment(session, args[1], -1)


def incrby(session: Session, args: list[bytes]) -> bytes:
    return _increment(session, args[1], _integer(args[2]))


def decrby(session: Session, args: list[bytes]) -> bytes:
    return _increment(session, args[1], -_integer(args[2]))


def _expire(session: Session, args: list[bytes], scale: float) -> bytes:
    if len(args) != 3:
        return SYNTAX_ERROR  # NX/XX/GT/LT options are not supported
    amount = _integer(args[2])
    return encode_integer(session.store.set_deadline(args[1], time.monotonic() + amount * scale))


def expire(session: Session, args: list[bytes]) -> bytes:
    return _expire(session, args, 1.0)


def pexpire(session: Session, args: list[bytes]) -> bytes:
    return _expire(session, args, 0.001)


def _ttl(session: Session, key: bytes, scale: int) -> bytes:
    try:
        left = session.store.ttl(key)
    except KeyError:
        return b":-2\r\n"
    if left is None:
        return b":-1\r\n"
    return encode_integer(int(left * scale + 0.5))


def ttl(session: Session, args: list[bytes]) -> bytes:
    return _ttl(session, args[1], 1)


def pttl(session: Session, args: list[bytes]) -> bytes:
    return _ttl(session, args[1], 1000)


def persist(session: Session, args: list[bytes]) -> bytes:
    return encode_integer(session.store.set_deadline(args[1], None))


def keys(session: Session, args: list[bytes]) -> bytes:
    return encode_array([encode_bulk(key) for key in session.store.keys(args[1])])


def scan(session: Session, args: list[bytes]) -> bytes:
    cursor_arg = args[1]
    if not cursor_arg.isdigit():
        return b"-ERR invalid cursor\r\n"
    pattern: Optional[bytes] = None
    count = 10
    i = 2
    while i < len(args):
        option = args[i].lower()
        if i + 1 >= len(args):
            return SYNTAX_ERROR
        if option == b"match":
            pattern = args[i + 1]
        elif option == b"count":
            count = _integer(args[i + 1])
            if count < 1:
                return SYNTAX_ERROR
        elif option == b"type":
            if args[i + 1].lower() != b"string":
                return encode_array([encode_bulk(b"0"), EMPTY_ARRAY])
        else:
            return SYNTAX_ERROR
        i += 2
    cursor, found = session.store.scan(int(cursor_arg), pattern, count)
    return encode_array([
        encode_bulk(b"%d" % cursor), encode_array([encode_bulk(key) for key in found])
    ])


def dbsize(session: Session, args: list[bytes]) -> bytes:
    return encode_integer(session.store.size())


def flushdb(session: Session, args: list[bytes]) -> bytes:
    if len(args) > 2 or (len(args) == 2 and args[1].lower() not in (b"sync", b"async")):
        return SYNTAX_ERROR
    session.store.flush()
    return OK


#: Command name (lower case) -> (function, arity in Redis's convention).
COMMANDS: dict[bytes, tuple[CommandFunction, int]] = {
    b"ping": (ping, -1), b"echo": (echo, 2), b"quit": (quit_, -1), b"select": (select, 2),
    b"hello": (hello, -1), b"client": (client, -2), b"command": (command, -1),
    b"config": (config, -2), b"info": (info, -1),
    b"get": (get, 2), b"set": (set_, -3), b"mget": (mget, -2), b"mset": (mset, -3),
    b"del": (delete, -2), b"unlink": (delete, -2), b"exists": (exists, -2),
    b"type": (type_, 2), b"incr": (incr, 2), b"decr": (decr, 2), b"incrby": (incrby, 3),
    b"decrby": (decrby, 3), b"expire": (expire, -3), b"pexpire": (pexpire, -3),
    b"ttl": (ttl, 2), b"pttl": (pttl, 2), b"persist": (persist, 2), b"keys": (keys, 2),
    b"scan": (scan, -2), b"dbsize": (dbsize, 1), b"flushdb": (flushdb, -1),
    b"flushall": (flushdb, -1),
}
_CANONICAL = list(COMMANDS)
# Clients send upper case (redis-benchmark, redis-py): one dict hit, no lower().
COMMANDS.update({name.upper(): entry for name, entry in list(COMMANDS.items())})

_WRITE_COMMANDS = frozenset(
    b"set mset del unlink incr decr incrby decrby expire pexpire persist flushdb flushall"
    .split()
)
_KEY_POSITIONS = {
    b"get": (1, 1, 1), b"set": (1, 1, 1), b"mget": (1, -1, 1), b"mset": (1, -1, 2),
    b"del": (1, -1, 1), b"unlink": (1, -1, 1), b"exists": (1, -1, 1), b"type": (1, 1, 1),
    b"incr": (1, 1, 1), b"decr": (1, 1, 1), b"incrby": (1, 1, 1), b"decrby": (1, 1, 1),
    b"expire": (1, 1, 1), b"pexpire": (1, 1, 1), b"ttl": (1, 1, 1), b"pttl": (1, 1, 1),
    b"persist": (1, 1, 1),
}
