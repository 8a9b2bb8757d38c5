"""The five kinds of value a key may hold, their names, and what each costs in memory.

Theory of operation
-------------------
A key holds one of:

======== =============================== ==========================================
TYPE     Python object                   why this one
======== =============================== ==========================================
string   ``bytes``                       values are bytes on the wire
list     ``collections.deque`` of bytes  O(1) push and pop at both ends
set      ``set`` of bytes                O(1) add, remove, membership
hash     ``dict`` bytes -> bytes         O(1) field access
zset     :class:`SortedSet`              score order and O(1) score look-up
======== =============================== ==========================================

The store counts memory per key as :data:`KEY_OVERHEAD` plus the key's bytes plus
:func:`value_size` of its value (for a collection: what the empty container
costs, plus each element's bytes and overhead). The overheads are what CPython really spends
(measured with ``tracemalloc`` on 3.11: a key in the store's two dicts and slot
table, a bytes object's header, an element's place in its container), rounded up,
so ``maxmemory`` bounds the process's real growth instead of only the payload
(a million one-byte strings cost about 200 MB, not 2 MB). Collections keep their
size current as commands change them (see :meth:`~handlers.resp.store.KeyValueStore.changed`).
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterator
from typing import Optional, Union

__all__ = [
    "ELEMENT_OVERHEAD",
    "FIELD_OVERHEAD",
    "KEY_OVERHEAD",
    "MEMBER_OVERHEAD",
    "SET_MEMBER_OVERHEAD",
    "SortedSet",
    "type_name",
    "value_size",
]

#: A key: its entries in the values dict and the slot index, its slot, the key
#: object's header, and the value object's header (about 200 bytes measured).
KEY_OVERHEAD = 208
#: A list element: its bytes object's header and its place in the deque.
ELEMENT_OVERHEAD = 64
#: A set member: its bytes object's header and its hash-table entry.
SET_MEMBER_OVERHEAD = 96
#: A hash field and its value: two bytes objects and a dict entry.
FIELD_OVERHEAD = 128
#: A sorted-set member: its bytes, score, dict entry and (score, member) tuple.
MEMBER_OVERHEAD = 192


class SortedSet:
    """Members with scores, ordered by (score, member) as Redis orders them.

    ``scores`` maps member -> score; ``order`` is the sorted list of
    ``(score, member)``. Adding or removing costs O(n) in the worst case (a list
    insertion moves pointers in C), which is fast for the sizes a Python server
    holds; look-ups by member are O(1) and by rank O(1).
    """

    __slots__ = ("order", "scores")

    def __init__(self) -> None:
        self.scores: dict[bytes, float] = {}
        self.order: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self.scores)

    def __iter__(self) -> Iterator[tuple[float, bytes]]:
        return iter(self.order)

    def add(self, member: bytes, score: float) -> bool:
        """Set ``member``'s score; True if the member is new."""
        old = self.scores.get(member)
        if old is not None:
            if old == score:
                return False
            del self.order[bisect.bisect_left(self.order, (old, member))]
        self.scores[member] = score
        bisect.insort(self.order, (score, member))
        return old is None

    def remove(self, member: bytes) -> bool:
        score = self.scores.pop(member, None)
        if score is None:
            return False
        del self.order[bisect.bisect_left(self.order, (score, member))]
        return True

    def pop_lowest(self, count: int) -> list[tuple[float, bytes]]:
        taken = self.order[:count]
        del self.order[:count]
        for _score, member in taken:
            del self.scores[member]
        return taken


#: What a key may hold.
Value = Union[bytes, "collections.deque[bytes]", "set[bytes]", "dict[bytes, bytes]", SortedSet]

_TYPE_NAMES = {
    bytes: "string",
    collections.deque: "list",
    set: "set",
    dict: "hash",
    SortedSet: "zset",
}


def type_name(value: Optional[Value]) -> str:
    """The name ``TYPE`` answers for ``value`` (``none`` for a missing key)."""
    if value is None:
        return "none"
    return _TYPE_NAMES[type(value)]


#: What an empty container costs (a deque allocates a 64-slot block at once).
_EMPTY_SIZE = {collections.deque: 640, set: 224, dict: 240, SortedSet: 360}


def value_size(value: Value) -> int:
    """The bytes ``value`` is counted for (without its key's overhead)."""
    if isinstance(value, bytes):
        return len(value)
    base = _EMPTY_SIZE[type(value)]
    if isinstance(value, collections.deque):
        return base + sum(map(len, value)) + ELEMENT_OVERHEAD * len(value)
    if isinstance(value, set):
        return base + sum(map(len, value)) + SET_MEMBER_OVERHEAD * len(value)
    if isinstance(value, dict):
        payload = sum(map(len, value)) + sum(map(len, value.values()))
        return base + payload + FIELD_OVERHEAD * len(value)
    return base + sum(len(member) for member in value.scores) + MEMBER_OVERHEAD * len(value)
