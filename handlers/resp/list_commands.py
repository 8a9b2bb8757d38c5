"""RESP list commands: LPUSH, RPUSH, LPOP, RPOP, LLEN, LINDEX, LRANGE, LSET, LTRIM.

A list is a ``collections.deque`` of bytes (O(1) at both ends, which is what
queues and redis-benchmark's LPUSH/LPOP use). Each function follows the contract
of :mod:`handlers.resp.session`: a write counts its growth with the store before
changing anything, so the memory cap refuses a push whole, and a list emptied by
a pop is removed, as Redis never keeps an empty list.
"""

from __future__ import annotations

import collections
import itertools

from handlers.resp.encoding import (
    NULL_ARRAY,
    NULL_BULK,
    OK,
    encode_array,
    encode_bulk,
    encode_integer,
)
from handlers.resp.session import CommandTable, ReplyError, Session, integer_argument
from handlers.resp.values import ELEMENT_OVERHEAD

__all__ = ["LIST_COMMANDS", "index_range"]

_OUT_OF_RANGE = b"-ERR value is out of range, must be positive\r\n"


def index_range(start: int, stop: int, length: int) -> tuple[int, int]:
    """Redis's inclusive ``start..stop`` (negative counts from the end) as a slice."""
    if start < 0:
        start = max(0, length + start)
    if stop < 0:
        stop += length
    stop = min(stop, length - 1)
    if start > stop or start >= length:
        return 0, 0
    return start, stop + 1


def _push(session: Session, args: list[bytes], left: bool) -> bytes:
    store = session.store
    key = args[1]
    if len(args) == 3:  # one element: the common case, kept short
        item = args[2]
        values = store.collection(key, collections.deque)
        values = store.prepare(key, values, collections.deque, len(item) + ELEMENT_OVERHEAD)
        if left:
            values.appendleft(item)
        else:
            values.append(item)
        return encode_integer(len(values))
    items = args[2:]
    growth = sum(map(len, items)) + ELEMENT_OVERHEAD * len(items)
    values = store.prepare(
        key, store.collection(key, collections.deque), collections.deque, growth
    )
    if left:
        values.extendleft(items)
    else:
        values.extend(items)
    return encode_integer(len(values))


def lpush(session: Session, args: list[bytes]) -> bytes:
    return _push(session, args, left=True)


def rpush(session: Session, args: list[bytes]) -> bytes:
    return _push(session, args, left=False)


def _pop(session: Session, args: list[bytes], left: bool) -> bytes:
    store = session.store
    key = args[1]
    if len(args) == 2:  # one element: the common case, kept short
        values = store.collection(key, collections.deque)
        if values is None:
            return NULL_BULK
        item = values.popleft() if left else values.pop()
        store.changed(key, -len(item) - ELEMENT_OVERHEAD)
        if not values:
            store.drop_if_empty(key)
        return b"$%d\r\n%b\r\n" % (len(item), item)
    if len(args) > 3:
        raise ReplyError(b"-ERR syntax error\r\n")
    count = integer_argument(args[2])
    if count < 0:
        return _OUT_OF_RANGE
    values = store.collection(key, collections.deque)
    if values is None:
        return NULL_ARRAY
    take = values.popleft if left else values.pop
    taken = [take() for _ in range(min(count, len(values)))]
    store.changed(key, -(sum(map(len, taken)) + ELEMENT_OVERHEAD * len(taken)))
    store.drop_if_empty(key)
    return encode_array([encode_bulk(item) for item in taken])


def lpop(session: Session, args: list[bytes]) -> bytes:
    return _pop(session, args, left=True)


def rpop(session: Session, args: list[bytes]) -> bytes:
    return _pop(session, args, left=False)


def llen(session: Session, args: list[bytes]) -> bytes:
    values = session.store.collection(args[1], collections.deque)
    return encode_integer(0 if values is None else len(values))


def lindex(session: Session, args: list[bytes]) -> bytes:
    index = integer_argument(args[2])
    values = session.store.collection(args[1], collections.deque)
    if values is None or not -len(values) <= index < len(values):
        return NULL_BULK
    return encode_bulk(values[index])


def lrange(session: Session, args: list[bytes]) -> bytes:
    start, stop = integer_argument(args[2]), integer_argument(args[3])
    values = session.store.collection(args[1], collections.deque)
    if values is None:
        return b"*0\r\n"
    first, end = index_range(start, stop, len(values))
    return encode_array([encode_bulk(item) for item in itertools.islice(values, first, end)])


def lset(session: Session, args: list[bytes]) -> bytes:
    index = integer_argument(args[2])
    store = session.store
    values = store.collection(args[1], collections.deque)
    if values is None:
        return b"-ERR no such key\r\n"
    if not -len(values) <= index < len(values):
        return b"-ERR index out of range\r\n"
    store.changed(args[1], len(args[3]) - len(values[index]))
    values[index] = args[3]
    return OK


def ltrim(session: Session, args: list[bytes]) -> bytes:
    start, stop = integer_argument(args[2]), integer_argument(args[3])
    store = session.store
    values = store.collection(args[1], collections.deque)
    if values is None:
        return OK
    first, end = index_range(start, stop, len(values))
    kept = list(itertools.islice(values, first, end))
    removed = len(values) - len(kept)
    freed = sum(map(len, values)) - sum(map(len, kept)) + ELEMENT_OVERHEAD * removed
    store.changed(args[1], -freed)
    values.clear()
    values.extend(kept)
    store.drop_if_empty(args[1])
    return OK


#: Name (lower case) -> (function, arity).
LIST_COMMANDS: CommandTable = {
    b"lpush": (lpush, -3), b"rpush": (rpush, -3), b"lpop": (lpop, -2), b"rpop": (rpop, -2),
    b"llen": (llen, 2), b"lindex": (lindex, 3), b"lrange": (lrange, 4), b"lset": (lset, 4),
    b"ltrim": (ltrim, 4),
}
