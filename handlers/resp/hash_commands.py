"""RESP hash commands: HSET, HMSET, HSETNX, HGET, HMGET, HGETALL, HDEL, HLEN, HEXISTS,
HKEYS, HVALS, HINCRBY.

A hash is a Python ``dict`` of bytes to bytes. Each function follows the contract
of :mod:`handlers.resp.session`: growth is counted with the store before anything
changes (the memory cap refuses an HSET whole), and an emptied hash is removed.
"""

from __future__ import annotations

from handlers.resp.encoding import NULL_BULK, OK, encode_array, encode_bulk, encode_integer
from handlers.resp.session import CommandTable, Session, integer_argument, wrong_arity
from handlers.resp.values import FIELD_OVERHEAD

__all__ = ["HASH_COMMANDS"]


def _write_fields(session: Session, key: bytes, pairs: dict[bytes, bytes]) -> int:
    """Set every field of ``pairs`` in ``key``'s hash; return how many are new."""
    store = session.store
    existing = store.collection(key, dict)
    growth = 0
    added = 0
    for field, value in pairs.items():
        old = None if existing is None else existing.get(field)
        if old is None:
            growth += FIELD_OVERHEAD + len(field) + len(value)
            added += 1
        else:
            growth += len(value) - len(old)
    store.prepare(key, existing, dict, growth).update(pairs)
    return added


def hset(session: Session, args: list[bytes]) -> bytes:
    if len(args) == 4:  # one field: the common case, kept short
        store = session.store
        key, field, value = args[1], args[2], args[3]
        existing = store.collection(key, dict)
        old = None if existing is None else existing.get(field)
        new_field = FIELD_OVERHEAD + len(field) + len(value)
        growth = new_field if old is None else len(value) - len(old)
        store.prepare(key, existing, dict, growth)[field] = value
        return b":1\r\n" if old is None else b":0\r\n"
    if len(args) % 2:
        return wrong_arity(args[0])
    return encode_integer(_write_fields(session, args[1], dict(zip(args[2::2], args[3::2]))))


def hmset(session: Session, args: list[bytes]) -> bytes:
    if len(args) % 2:
        return wrong_arity(args[0])
    _write_fields(session, args[1], dict(zip(args[2::2], args[3::2])))
    return OK


def hsetnx(session: Session, args: list[bytes]) -> bytes:
    existing = session.store.collection(args[1], dict)
    if existing is not None and args[2] in existing:
        return b":0\r\n"
    return encode_integer(_write_fields(session, args[1], {args[2]: args[3]}))


def hget(session: Session, args: list[bytes]) -> bytes:
    existing = session.store.collection(args[1], dict)
    return NULL_BULK if existing is None else encode_bulk(existing.get(args[2]))


def hmget(session: Session, args: list[bytes]) -> bytes:
    existing = session.store.collection(args[1], dict) or {}
    values = [existing.get(field) for field in args[2:]]
    # One field named many times multiplies a big value: check before building.
    session.check_reply_size(sum([len(value) for value in values if value is not None]))
    return encode_array([encode_bulk(value) for value in values])


def hgetall(session: Session, args: list[bytes]) -> bytes:
    existing = session.store.collection(args[1], dict) or {}
    return encode_array([encode_bulk(part) for pair in existing.items() for part in pair])


def hkeys(session: Session, args: list[bytes]) -> bytes:
    existing = session.store.collection(args[1], dict) or {}
    return encode_array([encode_bulk(field) for field in existing])


def hvals(session: Session, args: list[bytes]) -> bytes:
    existing = session.store.collection(args[1], dict) or {}
    return encode_array([encode_bulk(value) for value in existing.values()])


def hdel(session: Session, args: list[bytes]) -> bytes:
    store = session.store
    existing = store.collection(args[1], dict)
    if existing is None:
        return b":0\r\n"
    gone = {field: existing[field] for field in set(args[2:]) if field in existing}
    freed = sum(FIELD_OVERHEAD + len(field) + len(value) for field, value in gone.items())
    store.changed(args[1], -freed)
    for field in gone:
        del existing[field]
    store.drop_if_empty(args[1])
    return encode_integer(len(gone))


def hlen(session: Session, args: list[bytes]) -> bytes:
    existing = session.store.collection(args[1], dict)
    return encode_integer(0 if existing is None else len(existing))


def hexists(session: Session, args: list[bytes]) -> bytes:
    existing = session.store.collection(args[1], dict)
    return b":1\r\n" if existing is not None and args[2] in existing else b":0\r\n"


def hincrby(session: Session, args: list[bytes]) -> bytes:
    delta = integer_argument(args[3])
    existing = session.store.collection(args[1], dict)
    old = None if existing is None else existing.get(args[2])
    if old is None:
        number = 0
    else:
        digits = old[1:] if old[:1] == b"-" else old
        if not digits.isdigit() or len(old) > 20 or (digits[:1] == b"0" and digits != b"0"):
            return b"-ERR hash value is not an integer\r\n"
        number = int(old)
    result = number + delta
    if not -(2**63) <= result < 2**63:
        return b"-ERR increment or decrement would overflow\r\n"
    _write_fields(session, args[1], {args[2]: b"%d" % result})
    return encode_integer(result)



#: Name (lower case) -> (function, arity).
HASH_COMMANDS: CommandTable = {
    b"hset": (hset, -4), b"hmset": (hmset, -4), b"hsetnx": (hsetnx, 4), b"hget": (hget, 3),
    b"hmget": (hmget, -3), b"hgetall": (hgetall, 2), b"hkeys": (hkeys, 2),
    b"hvals": (hvals, 2), b"hdel": (hdel, -3), b"hlen": (hlen, 2), b"hexists": (hexists, 3),
    b"hincrby": (hincrby, 4),
}
