"""The RESP string and key commands, and the complete command table.

Strings and keys: GET, SET (EX, PX, NX, XX, KEEPTTL, GET), MGET, MSET, DEL,
UNLINK, EXISTS, TYPE, INCR, DECR, INCRBY, DECRBY, EXPIRE, PEXPIRE, TTL, PTTL,
PERSIST, KEYS, SCAN (MATCH, COUNT, TYPE), DBSIZE, FLUSHDB and FLUSHALL. Each
function follows the contract of :mod:`handlers.resp.session` and works on the
session's :class:`~handlers.resp.store.KeyValueStore`.

:data:`COMMANDS` joins these with the tables of the other command modules
(connection, transactions, lists, sets, hashes, sorted sets); it holds
every name in lower and upper case, so the usual spelling costs one dict lookup.
:func:`open_session` makes a session that uses it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Optional

from handlers.resp.connection_commands import CONNECTION_COMMANDS
from handlers.resp.encoding import (
    NULL_BULK,
    OK,
    encode_array,
    encode_bulk,
    encode_integer,
)
from handlers.resp.glob import compile_glob
from handlers.resp.hash_commands import HASH_COMMANDS
from handlers.resp.list_commands import LIST_COMMANDS
from handlers.resp.runs import RUNS
from handlers.resp.session import (
    NOT_AN_INTEGER,
    SYNTAX_ERROR,
    CommandTable,
    RunTable,
    ServerState,
    Session,
    integer_argument,
    text,
    wrong_arity,
)
from handlers.resp.set_commands import SET_COMMANDS
from handlers.resp.store import KeyValueStore, OutOfMemory
from handlers.resp.transactions import TRANSACTION_COMMANDS
from handlers.resp.values import KEY_OVERHEAD, value_size
from handlers.resp.zset_commands import ZSET_COMMANDS

__all__ = ["COMMANDS", "RUN_TABLE", "open_session"]


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
            amount = integer_argument(args[i + 1])
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
    values = [get_value(key) for key in args[1:]]
    # One key named many times multiplies a big value: check before building.
    session.check_reply_size(sum([len(value) for value in values if value is not None]))
    return encode_array([encode_bulk(value) for value in values])


def mset(session: Session, args: list[bytes]) -> bytes:
    if len(args) % 2 == 0:
        return wrong_arity(args[0])
    store = session.store
    pairs = dict(zip(args[1::2], args[2::2]))
    if store.max_memory:
        # All or nothing, as MSET is atomic: refuse before writing any pair.
        growth = 0
        for key, value in pairs.items():
            old = store.value(key)
            growth += len(value) - (KEY_OVERHEAD + len(key) if old is None else value_size(old))
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
    return b"+%s\r\n" % session.store.type_of(args[1]).encode()


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
    return _increment(session, args[1], integer_argument(args[2]))


def decrby(session: Session, args: list[bytes]) -> bytes:
    return _increment(session, args[1], -integer_argument(args[2]))


def _expire(session: Session, args: list[bytes], scale: float) -> bytes:
    if len(args) != 3:
        return SYNTAX_ERROR  # NX/XX/GT/LT options are not supported
    amount = integer_argument(args[2])
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


#: KEYS over more keys than this (and SCAN with a larger COUNT) runs in steps of
#: this many, with the store lock released between them (a step costs a few
#: milliseconds), instead of holding every other client for the whole walk.
#: KEYS's answer then has SCAN's guarantee: every key present throughout is in it.
KEYS_STEP = 20_000


def keys(session: Session, args: list[bytes]) -> Any:
    store = session.store
    if len(store.data) <= KEYS_STEP:
        return encode_array([encode_bulk(key) for key in store.keys(args[1])])
    return _keys_in_steps(store, args[1])


def _keys_in_steps(store: KeyValueStore, pattern: bytes) -> Iterator[Optional[bytes]]:
    match = None if pattern == b"*" else compile_glob(pattern)
    parts: list[bytes] = []
    found = 0
    cursor = 0
    while True:
        store.expire_due()
        cursor, batch = store.keyspace.scan(cursor, KEYS_STEP)
        if match is not None:
            batch = list(filter(match, batch))
        found += len(batch)
        parts.append(b"".join([b"$%d\r\n%b\r\n" % (len(key), key) for key in batch]))
        if cursor == 0:
            break
        yield None
    yield b"*%d\r\n" % found + b"".join(parts)


def scan(session: Session, args: list[bytes]) -> Any:
    cursor_arg = args[1]
    if not cursor_arg.isdigit():
        return b"-ERR invalid cursor\r\n"
    pattern: Optional[bytes] = None
    kind: Optional[str] = None
    count = 10
    i = 2
    while i < len(args):
        option = args[i].lower()
        if i + 1 >= len(args):
            return SYNTAX_ERROR
        if option == b"match":
            pattern = args[i + 1]
        elif option == b"count":
            count = integer_argument(args[i + 1])
            if count < 1:
                return SYNTAX_ERROR
        elif option == b"type":
            kind = text(args[i + 1]).lower()
        else:
            return SYNTAX_ERROR
        i += 2
    if count > KEYS_STEP:  # "SCAN 0 COUNT 100000000" is a KEYS: in steps too
        return _scan_in_steps(session.store, int(cursor_arg), pattern, count, kind)
    cursor, found = session.store.scan(int(cursor_arg), pattern, count, kind)
    return encode_array([
        encode_bulk(b"%d" % cursor), encode_array([encode_bulk(key) for key in found])
    ])


def _scan_in_steps(
    store: KeyValueStore, cursor: int, pattern: Optional[bytes], count: int, kind: Optional[str]
) -> Iterator[Optional[bytes]]:
    """One SCAN of ``count`` slots' worth, ``KEYS_STEP`` at a time with the lock
    released between steps; the cursor only moves forward, so the slot table's
    guarantee holds across the steps as across calls."""
    parts: list[bytes] = []  # each step's keys encoded in that step, as KEYS does
    found = 0
    left = count
    while True:
        step = min(left, KEYS_STEP)
        cursor, batch = store.scan(cursor, pattern, step, kind)
        found += len(batch)
        parts.append(b"".join([encode_bulk(key) for key in batch]))
        left -= step
        if cursor == 0 or left <= 0:
            break
        yield None
    yield b"*2\r\n" + encode_bulk(b"%d" % cursor) + b"*%d\r\n" % found + b"".join(parts)


def dbsize(session: Session, args: list[bytes]) -> bytes:
    return encode_integer(session.store.size())


def flushdb(session: Session, args: list[bytes]) -> bytes:
    if len(args) > 2 or (len(args) == 2 and args[1].lower() not in (b"sync", b"async")):
        return SYNTAX_ERROR
    session.store.flush()
    return OK


_DATA_COMMANDS: CommandTable = {
    b"get": (get, 2), b"set": (set_, -3), b"mget": (mget, -2), b"mset": (mset, -3),
    b"del": (delete, -2), b"unlink": (delete, -2), b"exists": (exists, -2),
    b"type": (type_, 2), b"incr": (incr, 2), b"decr": (decr, 2), b"incrby": (incrby, 3),
    b"decrby": (decrby, 3), b"expire": (expire, -3), b"pexpire": (pexpire, -3),
    b"ttl": (ttl, 2), b"pttl": (pttl, 2), b"persist": (persist, 2), b"keys": (keys, 2),
    b"scan": (scan, -2), b"dbsize": (dbsize, 1), b"flushdb": (flushdb, -1),
    b"flushall": (flushdb, -1),
}

#: Every command: name (lower and upper case) -> (function, arity).
COMMANDS: CommandTable = {
    **CONNECTION_COMMANDS, **TRANSACTION_COMMANDS, **_DATA_COMMANDS, **LIST_COMMANDS,
    **SET_COMMANDS, **HASH_COMMANDS, **ZSET_COMMANDS,
}
# Clients send upper case (redis-benchmark, redis-py): one dict hit, no lower().
COMMANDS.update({name.upper(): entry for name, entry in list(COMMANDS.items())})

#: The commands with a fast path for runs (see :mod:`handlers.resp.runs`): name
#: (lower and upper case) -> (run function, arity).
RUN_TABLE: RunTable = {
    name: (RUNS[name.lower()], arity)
    for name, (_function, arity) in COMMANDS.items()
    if name.lower() in RUNS
}


def open_session(state: ServerState, address: Any = None) -> Session:
    """A session on ``state`` that understands every command in :data:`COMMANDS`."""
    return Session(state, COMMANDS, address, RUN_TABLE)
