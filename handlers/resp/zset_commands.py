"""RESP sorted-set commands: ZADD, ZINCRBY, ZSCORE, ZCARD, ZREM, ZRANGE, ZRANK,
ZPOPMIN, ZPOPMAX.

A sorted set is a :class:`~handlers.resp.values.SortedSet`. Scores are doubles
as in Redis and are written back the way Redis 7.0 writes them (``%.17g``: ``1``,
``2.5``, ``0.10000000000000001``, ``inf``). ``ZRANGE`` takes ranks (with
``WITHSCORES`` and ``REV``); ``BYSCORE``/``BYLEX`` are not supported. Each function
follows the contract of :mod:`handlers.resp.session`: growth is counted with the
store before anything changes, and an emptied sorted set is removed.
"""

from __future__ import annotations

import math
from typing import Optional

from handlers.resp.encoding import NULL_BULK, encode_array, encode_bulk, encode_integer
from handlers.resp.list_commands import index_range
from handlers.resp.session import SYNTAX_ERROR, CommandTable, ReplyError, Session, integer_argument
from handlers.resp.values import MEMBER_OVERHEAD, SortedSet

__all__ = ["ZSET_COMMANDS"]

_NOT_A_FLOAT = b"-ERR value is not a valid float\r\n"


def float_argument(arg: bytes) -> float:
    """A score as Redis reads one (no NaN, no spaces), else a ReplyError."""
    try:
        number = float(arg)
    except ValueError:
        raise ReplyError(_NOT_A_FLOAT) from None
    if math.isnan(number) or b"_" in arg or arg[:1].isspace() or arg[-1:].isspace():
        raise ReplyError(_NOT_A_FLOAT)
    return number


def encode_score(score: float) -> bytes:
    return encode_bulk(b"%.17g" % score)


def _zadd_options(args: list[bytes]) -> tuple[set[bytes], list[bytes]]:
    """ZADD's flags and its score/member pairs, or a ReplyError."""
    flags: set[bytes] = set()
    i = 2
    while i < len(args) and args[i].lower() in (b"nx", b"xx", b"gt", b"lt", b"ch", b"incr"):
        flags.add(args[i].lower())
        i += 1
    pairs = args[i:]
    if not pairs or len(pairs) % 2:
        raise ReplyError(SYNTAX_ERROR)
    if b"nx" in flags and b"xx" in flags:
        raise ReplyError(b"-ERR XX and NX options at the same time are not compatible\r\n")
    if len(flags & {b"nx", b"gt", b"lt"}) > 1:
        raise ReplyError(
            b"-ERR GT, LT, and/or NX options at the same time are not compatible\r\n"
        )
    if b"incr" in flags and len(pairs) != 2:
        raise ReplyError(b"-ERR INCR option supports a single increment-element pair\r\n")
    return flags, pairs


def zadd(session: Session, args: list[bytes]) -> bytes:
    flags, pairs = _zadd_options(args)
    scores = [float_argument(score) for score in pairs[0::2]]
    store = session.store
    key = args[1]
    existing: Optional[SortedSet] = store.collection(key, SortedSet)
    updates: dict[bytes, float] = {}
    for score, member in zip(scores, pairs[1::2]):
        old = updates.get(member, existing.scores.get(member) if existing else None)
        if (old is None and b"xx" in flags) or (old is not None and b"nx" in flags):
            continue
        new = score + old if (b"incr" in flags and old is not None) else score
        if math.isnan(new):
            return b"-ERR resulting score is not a number (NaN)\r\n"
        if old is not None and ((b"gt" in flags and new <= old) or (b"lt" in flags and new >= old)):
            continue
        updates[member] = new
    known = existing.scores if existing else {}
    growth = sum(MEMBER_OVERHEAD + len(m) for m in updates if m not in known)
    if not updates and existing is None:
        return NULL_BULK if b"incr" in flags else b":0\r\n"
    target: SortedSet = store.prepare(key, existing, SortedSet, growth)
    added = changed = 0
    for member, score in updates.items():
        before = target.scores.get(member)
        added += target.add(member, score)
        changed += before is not None and before != score
    if b"incr" in flags:
        member = pairs[1]
        return encode_score(updates[member]) if member in updates else NULL_BULK
    return encode_integer(added + changed if b"ch" in flags else added)


def zincrby(session: Session, args: list[bytes]) -> bytes:
    return zadd(session, [args[0], args[1], b"incr", args[2], args[3]])


def zscore(session: Session, args: list[bytes]) -> bytes:
    existing = session.store.collection(args[1], SortedSet)
    score = None if existing is None else existing.scores.get(args[2])
    return NULL_BULK if score is None else encode_score(score)


def zcard(session: Session, args: list[bytes]) -> bytes:
    existing = session.store.collection(args[1], SortedSet)
    return encode_integer(0 if existing is None else len(existing))


def zrem(session: Session, args: list[bytes]) -> bytes:
    store = session.store
    existing = store.collection(args[1], SortedSet)
    if existing is None:
        return b":0\r\n"
    gone = {member for member in args[2:] if member in existing.scores}
    store.changed(args[1], -sum(MEMBER_OVERHEAD + len(member) for member in gone))
    for member in gone:
        existing.remove(member)
    store.drop_if_empty(args[1])
    return encode_integer(len(gone))


def zrange(session: Session, args: list[bytes]) -> bytes:
    start, stop = integer_argument(args[2]), integer_argument(args[3])
    options = {arg.lower() for arg in args[4:]}
    if options - {b"withscores", b"rev"}:
        return SYNTAX_ERROR  # BYSCORE, BYLEX, LIMIT: not supported
    existing = session.store.collection(args[1], SortedSet)
    if existing is None:
        return b"*0\r\n"
    order = existing.order[::-1] if b"rev" in options else existing.order
    first, end = index_range(start, stop, len(order))
    return _encode_members(order[first:end], b"withscores" in options)


def _encode_members(items: list[tuple[float, bytes]], with_scores: bool) -> bytes:
    if with_scores:
        return encode_array([part for score, member in items
                             for part in (encode_bulk(member), encode_score(score))])
    return encode_array([encode_bulk(member) for _score, member in items])


def zrank(session: Session, args: list[bytes]) -> bytes:
    existing = session.store.collection(args[1], SortedSet)
    score = None if existing is None else existing.scores.get(args[2])
    if existing is None or score is None:
        return NULL_BULK
    return encode_integer(existing.order.index((score, args[2])))


def _pop(session: Session, args: list[bytes], lowest: bool) -> bytes:
    if len(args) > 3:
        return SYNTAX_ERROR
    count = integer_argument(args[2]) if len(args) == 3 else 1
    if count < 0:
        return b"-ERR value is out of range, must be positive\r\n"
    store = session.store
    existing = store.collection(args[1], SortedSet)
    if existing is None:
        return b"*0\r\n"
    if lowest:
        taken = existing.pop_lowest(count)
    else:
        taken = existing.order[: -count - 1 : -1] if count else []
        for _score, member in taken:
            existing.remove(member)
    store.changed(args[1], -sum(MEMBER_OVERHEAD + len(member) for _s, member in taken))
    store.drop_if_empty(args[1])
    return _encode_members(taken, True)


def zpopmin(session: Session, args: list[bytes]) -> bytes:
    return _pop(session, args, lowest=True)


def zpopmax(session: Session, args: list[bytes]) -> bytes:
    return _pop(session, args, lowest=False)


#: Name (lower case) -> (function, arity).
ZSET_COMMANDS: CommandTable = {
    b"zadd": (zadd, -4), b"zincrby": (zincrby, 4), b"zscore": (zscore, 3),
    b"zcard": (zcard, 2), b"zrem": (zrem, -3), b"zrange": (zrange, -4), b"zrank": (zrank, 3),
    b"zpopmin": (zpopmin, -2), b"zpopmax": (zpopmax, -2),
}
