"""The key-value store behind the RESP server: strings, expiry, a memory cap.

Theory of operation
-------------------
:class:`KeyValueStore` keeps three things:

* ``data``: a dict from key to value (both ``bytes``: this store holds strings only);
* ``expires``: a dict from key to its deadline, for the keys that have one, in
  ``time.monotonic()`` seconds (the wall clock may jump; a TTL must not);
* ``used_memory``: the bytes of every key plus its value, kept current on each
  write, so the cap (``max_memory``) is checked in O(1).

Expired keys are removed in two ways, as Redis does: *lazily*, when a command
touches the key, and *actively*, from a heap of ``(deadline, key)`` that write
commands and the listing commands pop while its top is due. The heap may hold stale
entries (a key whose TTL changed); they are recognised by comparing with
``expires`` and skipped, and the heap is rebuilt when stale entries outnumber live
ones, so its size stays bounded.

Concurrency: the store does not lock by itself. Every method expects the caller to
hold ``store.lock``; the RESP handler takes it once per batch of pipelined commands,
so a batch costs one acquire and commands from different connections never
interleave inside one another.

Keys for ``KEYS`` and ``SCAN MATCH`` are matched against Redis glob patterns
(``*``, ``?``, ``[a-z]``, ``[^a]``, ``\\x``) by :func:`glob_to_regex`, which works on
bytes: keys need not be text.
"""

from __future__ import annotations

import functools
import heapq
import re
import threading
import time
import zlib
from typing import Optional

__all__ = ["KeyValueStore", "OutOfMemory", "glob_to_regex"]

#: INCR and friends work on signed 64-bit integers, as in Redis.
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class OutOfMemory(Exception):
    """A write would take ``used_memory`` past ``max_memory``."""


class KeyValueStore:
    """Strings with optional expiry, under a memory cap. Hold ``lock`` around calls.

    ``max_memory``: the most bytes of keys plus values the store may hold (0: no
    cap). A write that would exceed it raises :class:`OutOfMemory`; deletes and
    overwrites with smaller values always succeed.
    """

    def __init__(self, max_memory: int = 0) -> None:
        if isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory < 0:
            raise ValueError(f"max_memory must be a non-negative integer, not {max_memory!r}")
        self.max_memory = max_memory
        self.lock = threading.Lock()
        self.data: dict[bytes, bytes] = {}
        self.expires: dict[bytes, float] = {}
        self.used_memory = 0
        self._deadlines: list[tuple[float, bytes]] = []

    # -- reading ---------------------------------------------------------------------

    def get(self, key: bytes) -> Optional[bytes]:
        """The value of ``key``, or None if it is missing or expired."""
        if self.expires and key in self.expires:
            self._expire_if_due(key)
        return self.data.get(key)

    def exists(self, key: bytes) -> bool:
        return self.get(key) is not None

    def ttl(self, key: bytes) -> Optional[float]:
        """Seconds left, None without expiry. Raises KeyError for a missing key."""
        if self.get(key) is None:
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
        match = glob_to_regex(pattern).fullmatch
        return [key for key in self.data if match(key)]

    def scan(
        self, cursor: int, pattern: Optional[bytes] = None, count: int = 10
    ) -> tuple[int, list[bytes]]:
        """About ``count`` keys from ``cursor`` on; returns the next cursor (0: done).

        Keys are visited in the order of a hash of their bytes (CRC-32), and the
        cursor is the next hash to visit. So a key present for the whole iteration
        is returned exactly once, whatever is added or removed meanwhile (Redis
        promises "at least once"); each call costs O(n).
        """
        self.expire_due()
        pending = [(zlib.crc32(key), key) for key in self.data]
        pending = [item for item in pending if item[0] >= cursor]
        if len(pending) <= count:
            batch, next_cursor = pending, 0
        else:
            last_hash = heapq.nsmallest(count, pending)[-1][0]
            # Every key sharing the last hash goes in this batch, so none is skipped.
            batch = [item for item in pending if item[0] <= last_hash]
            next_cursor = last_hash + 1 if len(batch) < len(pending) else 0
        keys = [key for _h, key in batch]
        if pattern is not None and pattern != b"*":
            match = glob_to_regex(pattern).fullmatch
            keys = [key for key in keys if match(key)]
        return next_cursor, keys

    # -- writing -----------------------------------------------------------------------

    def put(self, key: bytes, value: bytes) -> None:
        """``set(key, value)`` without options: the fast path of a plain SET."""
        if self._deadlines:  # some key has a TTL: take the general path
            self.set(key, value)
            return
        data = self.data
        old = data.get(key)
        growth = len(value) - (len(old) if old is not None else -len(key))
        if growth > 0 and self.max_memory and self.used_memory + growth > self.max_memory:
            raise OutOfMemory(key)
        data[key] = value
        self.used_memory += growth

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
        old = self.get(key)
        if (only_if_missing and old is not None) or (only_if_present and old is None):
            return False
        growth = len(value) - (len(old) if old is not None else -len(key))
        if growth > 0 and self.max_memory and self.used_memory + growth > self.max_memory:
            raise OutOfMemory(key)
        self.data[key] = value
        self.used_memory += growth
        if expire_at is not None:
            self.set_deadline(key, expire_at)
        elif not keep_ttl and self.expires:
            self.expires.pop(key, None)
        return True

    def delete(self, key: bytes) -> bool:
        if self.get(key) is None:
            return False
        value = self.data.pop(key)
        self.expires.pop(key, None)
        self.used_memory -= len(key) + len(value)
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

    def set_deadline(self, key: bytes, deadline: Optional[float]) -> bool:
        """Give ``key`` an expiry (monotonic time) or, with None, remove it."""
        if self.get(key) is None:
            return False
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
        self.data.clear()
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
        value = self.data.pop(key, None)
        self.expires.pop(key, None)
        if value is None:
            return 0
        self.used_memory -= len(key) + len(value)
        return 1


def _is_canonical_integer(value: bytes) -> bool:
    # Redis refuses "+1", " 1", "01" and "1_0" (which int() would accept).
    if not value or len(value) > 20:
        return False
    digits = value[1:] if value[:1] == b"-" else value
    return digits.isdigit() and (digits[:1] != b"0" or digits == b"0") and value != b"-0"


@functools.lru_cache(maxsize=256)
def glob_to_regex(pattern: bytes) -> re.Pattern[bytes]:
    """Compile a Redis glob pattern (bytes) to a regex for ``fullmatch``.

    ``*`` any run, ``?`` one byte, ``[abc]``/``[a-z]``/``[^a]`` a class, ``\\x`` the
    byte x literally. An unclosed ``[`` matches a literal ``[``, as in Redis.
    """
    out = bytearray()
    i = 0
    n = len(pattern)
    while i < n:
        byte = pattern[i]
        if byte == 42:  # *
            out += b".*"
        elif byte == 63:  # ?
            out += b"."
        elif byte == 92 and i + 1 < n:  # backslash escape
            i += 1
            out += re.escape(pattern[i : i + 1])
        elif byte == 91:  # [
            close = pattern.find(b"]", i + 2 if pattern[i + 1 : i + 2] == b"^" else i + 1)
            if close < 0:
                out += b"\\["
            else:
                out += _character_class(pattern[i + 1 : close])
                i = close
        else:
            out += re.escape(pattern[i : i + 1])
        i += 1
    return re.compile(bytes(out), re.DOTALL)


def _character_class(body: bytes) -> bytes:
    negate = body[:1] == b"^"
    if negate:
        body = body[1:]
    parts = bytearray(b"[^" if negate else b"[")
    i = 0
    while i < len(body):
        if body[i] == 92 and i + 1 < len(body):
            i += 1
        if i + 2 < len(body) and body[i + 1] == 45:  # a range such as a-z
            low, high = sorted((body[i], body[i + 2]))
            parts += b"\\x%02x-\\x%02x" % (low, high)
            i += 3
            continue
        parts += b"\\x%02x" % body[i]
        i += 1
    if len(parts) == (3 if negate else 1):
        return b"(?!)" if not negate else b"."  # "[]" matches nothing, "[^]" anything
    return bytes(parts + b"]")
