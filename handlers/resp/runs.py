"""Fast paths for a pipelined run of one command: the whole run in one loop.

Theory of operation
-------------------
A pipelining client mostly sends *runs*: sixteen ``SET``, then sixteen ``GET``
(``redis-benchmark -P 16``), a queue producer's ``LPUSH`` after ``LPUSH``. Run one
at a time, each command pays for its dispatch (a table look-up, the arity check,
the MULTI check, the size of its reply against the budget) and, often, for
several small store methods; for a short command that is most of its cost.

:meth:`~handlers.resp.session.Session.execute_some` hands a batch to the *run
function* of its command when every command in it has the same name, spelled the
same way, and the same number of words, with no transaction open (see
:data:`RUNS`). A run function answers a *prefix* of the run and says how long it
is; the general loop takes the rest, one command at a time. The contract that
keeps a fast path honest:

* the replies and the store afterwards are exactly what the commands would give
  one at a time (``tests/test_handlers_resp_runs.py`` compares both ways on
  random batches);
* a run function stops *before* any command it does not take cheaply (a key
  with a TTL, a key of another kind, a write the memory cap refuses, a store
  with WATCHed keys), having changed nothing for it: the general loop then runs
  that command and gives its reply or its error;
* it stops after the reply that brings the replies to ``budget`` bytes, as the
  general loop does, so a long pipeline is still answered in pieces.

The memory cap, WRONGTYPE and watchers are the store's own rules: the run
functions use :meth:`~handlers.resp.store.KeyValueStore.put_run` and the same
checks the one-command paths make.

*One key*: a producer pushes many items onto one queue, a consumer pops many
from it, a loader fills one hash, a client reads a hot key again and again (GET
then formats its reply once; SET, in the store's ``put_run``, stores the last
value). When every command of the run names the same
key, which already holds a collection of the right kind and no TTL, the list and
hash runs change it in one call (``extend``, ``update``) after checking the
whole run against the cap and the budget at once; when a check cannot be made
that cheaply (the cap would be reached part-way, a reply would pass the budget,
a hash run that sets some fields twice) they fall back to the loop, one command
at a time, which stops exactly where the general path would.
"""

from __future__ import annotations

import collections
import itertools
import operator
from typing import Any, Callable, Optional

from handlers.resp.encoding import NULL_BULK, OK, PONG
from handlers.resp.hash_commands import hget
from handlers.resp.list_commands import llen
from handlers.resp.session import CommandFunction, ReplyError, Session
from handlers.resp.store import KeyValueStore as Store
from handlers.resp.store import OutOfMemory, WrongType
from handlers.resp.values import ELEMENT_OVERHEAD, FIELD_OVERHEAD

__all__ = ["RUNS", "RunFunction"]

#: (session, run, budget) -> (the replies of a prefix of run, its length).
RunFunction = Callable[[Session, list[list[bytes]], int], tuple[bytes, int]]

_Deque = collections.deque
_KEY = operator.itemgetter(1)
_ARG2 = operator.itemgetter(2)
_ARG3 = operator.itemgetter(3)
# The longest reply of an LPUSH/RPUSH: a list's length as a 64-bit integer.
_LONGEST_INTEGER = len(b":%d\r\n" % (2**63))
# The most bytes a bulk reply adds to its item: "$", a 64-bit length, two CRLFs.
_LONGEST_FRAMING = len(b"$%d\r\n\r\n" % (2**63))


def _how_many(count: int, reply_size: int, budget: int) -> int:
    """How many replies of ``reply_size`` bytes the budget lets a piece hold."""
    if not budget:
        return count
    return min(count, -(-budget // reply_size))  # the one reaching the budget counts


def _within_budget(items: list[bytes], budget: int) -> int:
    """How many of ``items``' bulk replies a piece of ``budget`` bytes holds
    (the one reaching the budget counts), without building them."""
    if sum(map(len, items)) + _LONGEST_FRAMING * len(items) < budget:
        return len(items)  # the usual run of small items: no count needed
    size = 0
    for count, item in enumerate(items, 1):
        length = len(item)
        size += length + len(str(length)) + 5  # b"$%d\r\n%b\r\n"
        if size >= budget:
            return count
    return len(items)


def _one_collection(store: Store, run: list[list[bytes]], kind: type) -> Optional[Any]:
    """The collection every command of ``run`` names, if they all name one key
    holding a ``kind`` without a TTL; else None (the one-at-a-time loop)."""
    key = run[0][1]
    value = store.data.get(key)
    if type(value) is not kind or (store.expires and key in store.expires):
        return None
    keys = list(map(_KEY, run))
    return value if keys.count(key) == len(keys) else None


def ping_run(session: Session, run: list[list[bytes]], budget: int) -> tuple[bytes, int]:
    if len(run[0]) != 1:
        return b"", 0  # PING message: the general path
    count = _how_many(len(run), len(PONG), budget)
    return PONG * count, count


def get_run(session: Session, run: list[list[bytes]], budget: int) -> tuple[bytes, int]:
    store = session.store
    get = store.data.get
    expires = store.expires
    key = run[0][1]
    if run[-1][1] == key and list(map(_KEY, run)).count(key) == len(run):
        # One key read again and again (a hot key): one look-up, one reply.
        value = get(key)
        if type(value) is bytes and not (expires and key in expires):
            reply = b"$%d\r\n%b\r\n" % (len(value), value)
            count = _how_many(len(run), len(reply), budget)
            return reply * count, count
    replies = []
    size = 0
    for _name, key in run:
        value = get(key)
        if value is None:
            reply = NULL_BULK
        elif type(value) is not bytes or (expires and key in expires):
            break  # another kind (WRONGTYPE), a TTL (it may be due): the general path
        else:
            reply = b"$%d\r\n%b\r\n" % (len(value), value)
        replies.append(reply)
        size += len(reply)
        if budget and size >= budget:
            break
    return b"".join(replies), len(replies)


def set_run(session: Session, run: list[list[bytes]], budget: int) -> tuple[bytes, int]:
    if len(run[0]) != 3:
        return b"", 0  # options (EX, NX, GET...): the general path
    count = session.store.put_run(run, _how_many(len(run), len(OK), budget))
    return OK * count, count


def _push_run(
    session: Session, run: list[list[bytes]], budget: int, left: bool
) -> tuple[bytes, int]:
    """LPUSH/RPUSH of one element each (the usual queue producer)."""
    store = session.store
    if len(run[0]) != 3 or store.watchers:
        return b"", 0
    data = store.data
    expires = store.expires
    cap = store.max_memory
    used = store.used_memory
    lengths: list[int] = []  # each reply: the list's length after the push
    limit = _how_many(len(run), _LONGEST_INTEGER, budget)
    head = run[:limit]
    values = _one_collection(store, head, _Deque)
    if values is not None:
        done = _push_one_list(store, values, head, left)
        if done is not None:
            return done
    try:
        for _name, key, item in head:
            values = data.get(key)
            growth = len(item) + ELEMENT_OVERHEAD
            if values is None:  # a new list: made and counted by the store
                store.used_memory = used
                try:
                    values = store.prepare(key, None, _Deque, growth)
                except OutOfMemory:
                    break  # the general path answers it
                used = store.used_memory
            elif type(values) is not _Deque or (expires and key in expires):
                break  # another kind, a TTL: the general path
            elif cap and used + growth > cap:
                break  # OOM: the general path answers it
            else:
                used += growth
            if left:
                values.appendleft(item)
            else:
                values.append(item)
            lengths.append(len(values))
    finally:
        store.used_memory = used
    # One format call for every reply (half the cost of one call per reply).
    return (":%d\r\n" * len(lengths) % tuple(lengths)).encode(), len(lengths)


def _push_one_list(
    store: Store, values: collections.deque[bytes], run: list[list[bytes]], left: bool
) -> Optional[tuple[bytes, int]]:
    """Pushes onto one existing list in one extend; None if the cap would stop
    them part-way (the loop then stops where one at a time does)."""
    items = list(map(_ARG2, run))
    growth = sum(map(len, items)) + ELEMENT_OVERHEAD * len(items)
    if store.max_memory and store.used_memory + growth > store.max_memory:
        return None
    before = len(values)
    if left:
        values.extendleft(items)
    else:
        values.extend(items)
    store.used_memory += growth
    count = len(items)
    return (":%d\r\n" * count % tuple(range(before + 1, before + count + 1))).encode(), count


def lpush_run(session: Session, run: list[list[bytes]], budget: int) -> tuple[bytes, int]:
    return _push_run(session, run, budget, True)


def rpush_run(session: Session, run: list[list[bytes]], budget: int) -> tuple[bytes, int]:
    return _push_run(session, run, budget, False)


def _pop_run(
    session: Session, run: list[list[bytes]], budget: int, left: bool
) -> tuple[bytes, int]:
    """LPOP/RPOP of one element each (the usual queue consumer)."""
    store = session.store
    if len(run[0]) != 2 or store.watchers:
        return b"", 0
    data = store.data
    expires = store.expires
    used = store.used_memory
    values = _one_collection(store, run, _Deque)
    if values is not None:
        items = list(itertools.islice(values if left else reversed(values), len(run)))
        if budget:  # cut before building: the whole run's replies may be huge
            del items[_within_budget(items, budget):]
        count = len(items)
        reply = b"$%d\r\n%b\r\n" * count % tuple(
            itertools.chain.from_iterable(zip(map(len, items), items))
        )
        pop = values.popleft if left else values.pop
        for _ in items:
            pop()
        store.used_memory = used - sum(map(len, items)) - ELEMENT_OVERHEAD * count
        if not values:  # Redis keeps no empty list
            store.drop_if_empty(run[0][1])
        return reply, count
    replies = []
    size = 0
    try:
        for _name, key in run:
            values = data.get(key)
            if values is None:
                reply = NULL_BULK
            elif type(values) is not _Deque or (expires and key in expires):
                break  # another kind, a TTL: the general path
            else:
                item = values.popleft() if left else values.pop()
                used -= len(item) + ELEMENT_OVERHEAD
                if not values:  # Redis keeps no empty list
                    store.used_memory = used
                    store.drop_if_empty(key)
                    used = store.used_memory
                reply = b"$%d\r\n%b\r\n" % (len(item), item)
            replies.append(reply)
            size += len(reply)
            if budget and size >= budget:
                break
    finally:
        store.used_memory = used
    return b"".join(replies), len(replies)


def lpop_run(session: Session, run: list[list[bytes]], budget: int) -> tuple[bytes, int]:
    return _pop_run(session, run, budget, True)


def rpop_run(session: Session, run: list[list[bytes]], budget: int) -> tuple[bytes, int]:
    return _pop_run(session, run, budget, False)


def hset_run(session: Session, run: list[list[bytes]], budget: int) -> tuple[bytes, int]:
    """HSET of one field each (a missing hash is made, as HSET makes it)."""
    store = session.store
    if len(run[0]) != 4 or store.watchers:
        return b"", 0
    data = store.data
    expires = store.expires
    cap = store.max_memory
    used = store.used_memory
    head = run[: _how_many(len(run), 4, budget)]
    existing = _one_collection(store, head, dict)
    if existing is not None:
        done = _hset_one_hash(store, existing, head)
        if done is not None:
            return done
    replies = []
    try:
        for _name, key, field, value in head:
            existing = data.get(key)
            if existing is None:  # a new hash: made and counted by the store
                store.used_memory = used
                try:
                    store.prepare(key, None, dict, FIELD_OVERHEAD + len(field) + len(value))
                except OutOfMemory:
                    break  # the general path answers it
                used = store.used_memory
                data[key][field] = value
                replies.append(b":1\r\n")
                continue
            if type(existing) is not dict or (expires and key in expires):
                break  # another kind, a TTL: the general path
            old = existing.get(field)
            if old is None:
                growth = FIELD_OVERHEAD + len(field) + len(value)
            else:
                growth = len(value) - len(old)
            if growth > 0 and cap and used + growth > cap:
                break  # OOM: the general path answers it
            used += growth
            existing[field] = value
            replies.append(b":1\r\n" if old is None else b":0\r\n")
    finally:
        store.used_memory = used
    return b"".join(replies), len(replies)


def _hset_one_hash(
    store: Store, existing: dict[bytes, bytes], run: list[list[bytes]]
) -> Optional[tuple[bytes, int]]:
    """HSETs of one existing hash in one update, when every field differs or all
    are one field; None when the loop must decide (fields repeated otherwise, or
    the cap may be reached part-way)."""
    fields = list(map(_ARG2, run))
    values = list(map(_ARG3, run))
    count = len(fields)
    cap = store.max_memory
    if fields.count(fields[0]) == count:  # one field, set count times: the last stays
        field = fields[0]
        old = existing.get(field)
        base = FIELD_OVERHEAD + len(field) if old is None else -len(old)
        # Every step's growth is at most base + its value: check the largest.
        if cap and store.used_memory + base + max(map(len, values)) > cap:
            return None
        existing[field] = values[-1]
        store.used_memory += base + len(values[-1])
        first = b":1\r\n" if old is None else b":0\r\n"
        return first + b":0\r\n" * (count - 1), count
    if len(set(fields)) != count:
        return None
    olds = list(map(existing.get, fields))
    growths = [
        FIELD_OVERHEAD + len(field) + len(value) if old is None else len(value) - len(old)
        for field, value, old in zip(fields, values, olds)
    ]
    # One at a time, a step that grows may meet the cap even if a later one
    # shrinks: only the sum of the growing steps is safe to compare.
    if cap and store.used_memory + sum(g for g in growths if g > 0) > cap:
        return None
    existing.update(zip(fields, values))
    store.used_memory += sum(growths)
    return b"".join([b":1\r\n" if old is None else b":0\r\n" for old in olds]), count


def _each(function: CommandFunction) -> RunFunction:
    """A run function that calls ``function`` per command, without the dispatch.

    For commands whose every reply is bytes and that leave the session's state
    alone (no QUIT, no MULTI): stops before a command that raises, which the
    general loop then runs again for its error (such a command changed nothing:
    the command functions check before they write).
    """

    def each(session: Session, run: list[list[bytes]], budget: int) -> tuple[bytes, int]:
        replies: list[bytes] = []
        append = replies.append
        size = 0
        try:
            for args in run:
                reply = function(session, args)
                append(reply)
                size += len(reply)
                if budget and size >= budget:
                    break
        except (ReplyError, WrongType, OutOfMemory):
            pass
        return b"".join(replies), len(replies)

    return each


#: Command name (lower case) -> its run function. :mod:`handlers.resp.commands`
#: makes the session's table of them (:data:`~handlers.resp.commands.RUN_TABLE`).
RUNS: dict[bytes, RunFunction] = {
    b"ping": ping_run,
    b"get": get_run,
    b"set": set_run,
    b"lpush": lpush_run,
    b"rpush": rpush_run,
    b"lpop": lpop_run,
    b"rpop": rpop_run,
    b"hset": hset_run,
    b"hget": _each(hget),
    b"llen": _each(llen),
}
