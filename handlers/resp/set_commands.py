"""RESP set commands: SADD, SREM, SPOP, SCARD, SISMEMBER, SMEMBERS.

A set is a Python ``set`` of bytes. Each function follows the contract of
:mod:`handlers.resp.session`: growth is counted with the store before anything
changes (the memory cap refuses an SADD whole), and an emptied set is removed.
SPOP takes an arbitrary member, as Redis's is random.
"""

from __future__ import annotations

from handlers.resp.encoding import NULL_BULK, encode_array, encode_bulk, encode_integer
from handlers.resp.session import CommandTable, ReplyError, Session, integer_argument
from handlers.resp.values import SET_MEMBER_OVERHEAD

__all__ = ["SET_COMMANDS"]


def sadd(session: Session, args: list[bytes]) -> bytes:
    store = session.store
    key = args[1]
    members = set(args[2:])
    existing = store.collection(key, set)
    new = members if existing is None else members - existing
    growth = sum(map(len, new)) + SET_MEMBER_OVERHEAD * len(new)
    store.prepare(key, existing, set, growth).update(new)
    return encode_integer(len(new))


def srem(session: Session, args: list[bytes]) -> bytes:
    store = session.store
    key = args[1]
    existing = store.collection(key, set)
    if existing is None:
        return b":0\r\n"
    gone = existing.intersection(args[2:])
    store.changed(key, -(sum(map(len, gone)) + SET_MEMBER_OVERHEAD * len(gone)))
    existing.difference_update(gone)
    store.drop_if_empty(key)
    return encode_integer(len(gone))


def spop(session: Session, args: list[bytes]) -> bytes:
    if len(args) > 3:
        raise ReplyError(b"-ERR syntax error\r\n")
    count = integer_argument(args[2]) if len(args) == 3 else None
    if count is not None and count < 0:
        return b"-ERR value is out of range, must be positive\r\n"
    store = session.store
    key = args[1]
    existing = store.collection(key, set)
    if existing is None:
        return NULL_BULK if count is None else b"*0\r\n"
    taken = [existing.pop() for _ in range(1 if count is None else min(count, len(existing)))]
    store.changed(key, -(sum(map(len, taken)) + SET_MEMBER_OVERHEAD * len(taken)))
    store.drop_if_empty(key)
    if count is None:
        return encode_bulk(taken[0])
    return encode_array([encode_bulk(member) for member in taken])


def scard(session: Session, args: list[bytes]) -> bytes:
    existing = session.store.collection(args[1], set)
    return encode_integer(0 if existing is None else len(existing))


def sismember(session: Session, args: list[bytes]) -> bytes:
    existing = session.store.collection(args[1], set)
    return b":1\r\n" if existing is not None and args[2] in existing else b":0\r\n"


def smembers(session: Session, args: list[bytes]) -> bytes:
    existing = session.store.collection(args[1], set) or ()
    return encode_array([encode_bulk(member) for member in existing])


#: Name (lower case) -> (function, arity).
SET_COMMANDS: CommandTable = {
    b"sadd": (sadd, -3), b"srem": (srem, -3), b"spop": (spop, -2), b"scard": (scard, 2),
    b"sismember": (sismember, 3), b"smembers": (smembers, 2),
}
