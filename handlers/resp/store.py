"""The key-value store behind the RESP server: typed values, expiry, an honest memory cap.

Theory of operation
-------------------
:class:`KeyValueStore` keeps:

* ``keyspace``: a :class:`~handlers.resp.keyspace.Keyspace`, the dict from key to
  value (any kind of :mod:`handlers.resp.values`) with the slot table that makes
  ``SCAN`` O(COUNT); ``data`` is its dict, for reading;
* ``expires``: a dict from key to its deadline, for the keys that have one, in
  ``time.monotonic()`` seconds (the wall clock may jump; a TTL must not);
* ``used_memory``: for every key, :data:`~handlers.resp.values.KEY_OVERHEAD` plus
  its bytes plus its value's size, kept current on each write, so the cap
  (``max_memory``) is checked in O(1) and bounds what the process really holds.

Strings are written through :meth:`KeyValueStore.set` and
:meth:`KeyValueStore.put`. Collection commands read with
:meth:`KeyValueStore.collection` (which refuses a key of another kind with
:class:`WrongType`), and count each change of size *before* making it with
:meth:`KeyValueStore.prepare` (which also makes a missing key's collection) or
:meth:`KeyValueStore.changed`; both refuse growth past the cap
(:class:`OutOfMemory`) and tell watchers the key changed. An emptied collection is
removed with :meth:`KeyValueStore.drop_if_empty`, as Redis never keeps empty ones.

Expired keys are removed in two ways, as Redis does: *lazily*, when a command
touches the key, and *actively*, from a heap of ``(deadline, key)`` that write
commands and the listing commands pop while its top is due. The heap may hold stale
entries (a key whose TTL changed); they are recognised by comparing with
``expires`` and skipped, and the heap is rebuilt when stale entries outnumber live
ones, so its size stays bounded.

``WATCH`` support: ``watchers`` maps a watched key to the sessions watching it;
every change of that key (a write, a delete, an expiry, a flush) calls their
``key_changed()``, so ``EXEC`` knows to fail. With nothing watched this costs one
test of an empty dict.

Concurrency: the store does not lock by itself. Every method expects the caller to
hold ``store.lock``; the RESP handler takes it once per chunk of pipelined
commands, so commands from different connections never interleave inside one
another.
"""

from __future__ import annotations

import heapq
import operator
import threading
import time
from typing import Any, Optional

from handlers.resp.glob import compile_glob
from handlers.resp.keyspace import Keyspace
from handlers.resp.values import KEY_OVERHEAD, Value, type_name, value_size

__all__ = ["DEFAULT_MAX_MEMORY", "KeyValueStore", "OutOfMemory", "WrongType"]

_KEY = operator.itemgetter(1)
_VALUE = operator.itemgetter(2)
_STRINGS = {bytes}
_POSITIVE = (0).__lt__

#: INCR and friends work on signed 64-bit integers, as in Redis.
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

#: The default cap: 256 MiB of counted memory. A Python server holding more is
#: better run as Redis; a cap that is on by default keeps a careless or hostile
#: client from taking the machine's memory.
DEFAULT_MAX_MEMORY = 256 * 1024 * 1024


class OutOfMemory(Exception):
    """A write would take ``used_memory`` past ``max_memory``."""


class WrongType(Exception):
    """The key holds another kind of value than the command works on."""


class KeyValueStore:
    """Typed values with optional expiry, under a memory cap. Hold ``lock`` around calls.

    ``max_memory``: the most bytes the store may count (see :mod:`handlers.resp.values`;
    0: no cap; default :data:`DEFAULT_MAX_MEMORY`). A write that would exceed it
    raises :class:`OutOfMemory`; deletes and shrinking writes always succeed.
    """

    def __init__(self, max_memory: int = DEFAULT_MAX_MEMORY) -> None:
        if isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory < 0:
            raise ValueError(f"max_memory must be a non-negative integer, not {max_memory!r}")
        self.max_memory = max_memory
        self.lock = threading.Lock()
        self.keyspace = Keyspace()
        self.data = self.keyspace.values
        self.expires: dict[bytes, float] = {}
        self.used_memory = 0
        self.watchers: dict[bytes, set[Any]] = {}
        self._deadlines: list[tuple[float, bytes]] = []

    # -- reading ---------------------------------------------------------------------

    def value(self, key: bytes) -> Any:
        """The value of ``key`` of any kind, or None if it is missing or expired."""
        if self.expires and key in self.expires:
            self._expire_if_due(key)
        return self.data.get(key)

    def get(self, key: bytes) -> Optional[bytes]:
        """The string in ``key``, or None if missing; WrongType for another kind."""
        value = self.value(key)
        if value is None or type(value) is bytes:
            return value
        raise WrongType(key)

    def collection(self, key: bytes, kind: type) -> Any:
        """The value of ``key`` if it is a ``kind``, None if missing, else WrongType."""
        if self.expires and key in self.expires:  # value(), inline: a hot path
            self._expire_if_due(key)
        value = self.data.get(key)
        if value is None or type(value) is kind:
            return value
        raise WrongType(key)

    def exists(self, key: bytes) -> bool:
        return self.value(key) is not None

    def type_of(self, key: bytes) -> str:
        return type_name(self.value(key))

    def ttl(self, key: bytes) -> Optional[float]:
        """Seconds left, None without expiry. Raises KeyError for a missing key."""
        if self.value(key) is None:
            raise KeyError(key)
        deadline = self.expires.get(key)
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def size(self) -> int:
        self.expire_due()
        return len(self.data)

    def keys(self, pattern: bytes = b"*") -> list[bytes]:
        self.expire_due()
        if pattern == b"*":
            return list(self.data)
        return list(filter(compile_glob(pattern), self.data))

    def scan(
        self,
        cursor: int,
        pattern: Optional[bytes] = None,
        count: int = 10,
        kind: Optional[str] = None,
    ) -> tuple[int, list[bytes]]:
        """About ``count`` keys from ``cursor`` on; returns the next cursor (0: done).

        A key present for the whole walk is returned exactly once, whatever is
        added or removed meanwhile (see :mod:`handlers.resp.keyspace`); a call
        costs O(count).
        """
        self.expire_due()
        cursor, keys = self.keyspace.scan(cursor, count)
        if pattern is not None and pattern != b"*":
            keys = list(filter(compile_glob(pattern), keys))
        if kind is not None:
            keys = [key for key in keys if type_name(self.data.get(key)) == kind]
        return cursor, keys

    # -- writing strings -----------------------------------------------------------------

    def put(self, key: bytes, value: bytes) -> None:
        """``set(key, value)`` without options: the fast path of a plain SET."""
        if self._deadlines or self.watchers:  # TTLs or watchers: the general path
            self.set(key, value)
            return
        old = self.data.get(key)
        growth = _string_growth(key, value, old)
        if growth > 0 and self.max_memory and self.used_memory + growth > self.max_memory:
            raise OutOfMemory(key)
        self.keyspace.store(key, value)
        self.used_memory += growth

    def put_run(self, run: list[list[bytes]], limit: int) -> int:
        """``put(key, value)`` for each ``[SET, key, value]`` of ``run[:limit]``.

        Stops before the first write :meth:`put` would not make as cheaply (TTLs
        or watchers in the store, a write the cap refuses: the caller runs that
        one the general way); returns how many were stored.
        """
        if self._deadlines or self.watchers:
            return 0
        run = run[:limit] if limit < len(run) else run
        done = self._put_at_once(run)
        if done:
            return done
        values = self.data
        get = values.get
        cap = self.max_memory
        used = self.used_memory
        try:
            for _name, key, value in run:
                old = get(key)
                growth = _string_growth(key, value, old)
                if growth > 0 and cap and used + growth > cap:
                    break
                if old is None:
                    self.keyspace.store(key, value)
                else:
                    values[key] = value
                used += growth
                done += 1
        finally:
            self.used_memory = used
        return done

    def _put_at_once(self, run: list[list[bytes]]) -> int:
        """The writes of ``run`` with a few calls in C, when the cap cannot stop
        one of them part-way: one key written again and again (a hot key), or
        keys that all differ and all hold strings already (a refresh). How many
        were stored: all, or none (then one at a time decides)."""
        count = len(run)
        keys = list(map(_KEY, run))
        values = self.data
        cap = self.max_memory
        if keys.count(keys[0]) == count:
            key = keys[0]
            old = values.get(key)
            if old is not None and type(old) is not bytes:
                return 0
            news = list(map(_VALUE, run))
            base = KEY_OVERHEAD + len(key) if old is None else -len(old)
            # After each write the key holds that value: the longest is the peak.
            if cap and self.used_memory + base + max(map(len, news)) > cap:
                return 0
            self.keyspace.store(key, news[-1])
            self.used_memory += base + len(news[-1])
            return count
        olds: list[Any] = list(map(values.get, keys))
        if set(map(type, olds)) != _STRINGS or len(set(keys)) != count:
            return 0
        news = list(map(_VALUE, run))
        growths = list(map(int.__sub__, map(len, news), map(len, olds)))
        # A write is refused only if it grows past the cap: the growing ones,
        # all together, bound what any of them meets.
        if cap and self.used_memory + sum(filter(_POSITIVE, growths)) > cap:
            return 0
        values.update(zip(keys, news))
        self.used_memory += sum(growths)
        return count

    def set(
        self,
        key: bytes,
        value: bytes,
        *,
        expire_at: Optional[float] = None,
        keep_ttl: bool = False,
        only_if_missing: bool = False,
        only_if_present: bool = False,
    ) -> bool:
        """Store ``value``; False if NX/XX prevented it. ``expire_at``: monotonic time."""
        if self._deadlines and self._deadlines[0][0] <= time.monotonic():
            self.expire_due()
        old = self.value(key)
        if (only_if_missing and old is not None) or (only_if_present and old is None):
            return False
        if old is None:
            growth = KEY_OVERHEAD + len(key) + len(value)
        else:
            growth = len(value) - value_size(old)
        self.changed(key, growth)
        self.keyspace.store(key, value)
        if expire_at is not None:
            self.set_deadline(key, expire_at)
        elif not keep_ttl and self.expires:
            self.expires.pop(key, None)
        return True

    def increment(self, key: bytes, delta: int) -> int:
        """Add ``delta`` to the integer in ``key`` (missing: 0); keeps its TTL.

        Raises ValueError if the value is not a 64-bit integer in decimal, or
        OverflowError if the result would not be one.
        """
        old = self.get(key)
        if old is None:
            number = 0
        elif not _is_canonical_integer(old):
            raise ValueError(old)
        else:
            number = int(old)
        result = number + delta
        if not _INT64_MIN <= result <= _INT64_MAX:
            raise OverflowError(result)
        self.set(key, b"%d" % result, keep_ttl=True)
        return result

    # -- writing collections -------------------------------------------------------------

    def prepare(self, key: bytes, value: Any, kind: type, growth: int) -> Any:
        """Count ``growth`` bytes for ``key`` (checking the cap); return its collection.

        ``value`` is what :meth:`KeyValueStore.collection` returned: None makes a new, empty
        ``kind`` at ``key`` (counted with the key's own overhead). Nothing is
        created when the cap refuses.
        """
        if value is None:
            value = kind()
            self.changed(key, KEY_OVERHEAD + len(key) + value_size(value) + growth)
            self.keyspace.store(key, value)
            return value
        self.changed(key, growth)
        return value

    def changed(self, key: bytes, growth: int) -> None:
        """``key`` is about to change by ``growth`` bytes: check the cap, count it."""
        if growth > 0 and self.max_memory and self.used_memory + growth > self.max_memory:
            raise OutOfMemory(key)
        self.used_memory += growth
        if self.watchers:
            self._tell_watchers(key)

    def drop_if_empty(self, key: bytes) -> None:
        """Remove ``key`` if it holds an empty collection (Redis keeps none)."""
        value = self.data.get(key)
        if value is not None and not value:
            self._remove(key)

    # -- keys ----------------------------------------------------------------------------

    def delete(self, key: bytes) -> bool:
        if self.value(key) is None:
            return False
        self._remove(key)
        return True

    def set_deadline(self, key: bytes, deadline: Optional[float]) -> bool:
        """Give ``key`` an expiry (monotonic time) or, with None, remove it."""
        if self.value(key) is None:
            return False
        if self.watchers:
            self._tell_watchers(key)
        if deadline is None:
            return self.expires.pop(key, None) is not None
        self.expires[key] = deadline
        heapq.heappush(self._deadlines, (deadline, key))
        if len(self._deadlines) > 2 * len(self.expires) + 64:
            # Mostly stale entries (keys whose TTL changed): rebuild from the truth.
            self._deadlines = [(when, name) for name, when in self.expires.items()]
            heapq.heapify(self._deadlines)
        if deadline <= time.monotonic():
            self._expire_if_due(key)
        return True

    def flush(self) -> None:
        for key in list(self.watchers):
            if key in self.data:
                self._tell_watchers(key)
        self.keyspace.clear()
        self.expires.clear()
        self._deadlines.clear()
        self.used_memory = 0

    # -- expiry ------------------------------------------------------------------------

    def expire_due(self) -> int:
        """Remove every key whose deadline has passed; return how many."""
        deadlines = self._deadlines
        now = time.monotonic()
        removed = 0
        while deadlines and deadlines[0][0] <= now:
            when, key = heapq.heappop(deadlines)
            if self.expires.get(key) == when:
                removed += self._remove(key)
        return removed

    def _expire_if_due(self, key: bytes) -> None:
        if self.expires[key] <= time.monotonic():
            self._remove(key)

    def _remove(self, key: bytes) -> int:
        value = self.keyspace.pop(key)
        self.expires.pop(key, None)
        if value is None:
            return 0
        self.used_memory -= KEY_OVERHEAD + len(key) + value_size(value)
        if self.watchers:
            self._tell_watchers(key)
        return 1

    def _tell_watchers(self, key: bytes) -> None:
        for session in self.watchers.get(key, ()):
            session.key_changed()


def _is_canonical_integer(value: bytes) -> bool:
    # Redis refuses "+1", " 1", "01" and "1_0" (which int() would accept).
    if not value or len(value) > 20:
        return False
    digits = value[1:] if value[:1] == b"-" else value
    return digits.isdigit() and (digits[:1] != b"0" or digits == b"0") and value != b"-0"


def _string_growth(key: bytes, value: bytes, old: Optional[Value]) -> int:
    """Bytes of memory a plain SET of ``key`` to ``value`` adds over ``old``
    (the key's present value, None for a new key)."""
    if old is None:
        return KEY_OVERHEAD + len(key) + len(value)
    if type(old) is bytes:
        return len(value) - len(old)
    return len(value) - value_size(old)
