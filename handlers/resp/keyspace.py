"""The keys of the store and a SCAN cursor that keeps Redis's promise at O(COUNT) a call.

Theory of operation
-------------------
Redis promises that a full ``SCAN`` walk (cursor 0 back to cursor 0) returns every
key that was present for the whole walk at least once, however keys come and go
meanwhile, and that the walk ends. Redis keeps it with a reverse-binary cursor over
its hash table's buckets. A Python dict has no buckets to walk, so the
:class:`Keyspace` keeps, beside the dict of values, a *slot table*: a list in which
every key sits at a fixed position, and a dict from key to its position.

* A new key takes a free slot (one left by a deleted key) or, if there is none, a
  new slot at the end. A key never moves while it exists.
* A deleted key leaves an empty slot (``None``) and its position joins the free
  list. Empty slots at the end of the table are cut off.
* The cursor is a position in the table: a call walks forward from it and returns
  the keys it passes, and the position where it stopped (0 at the end).

A key present for the whole walk stays at one position, and the walk passes every
position below the table's end once, so it is returned exactly once. A key added
during the walk may land behind the cursor (a reused slot) and be missed, which
Redis allows. The walk ends because the cursor only moves forward and the table
has a finite end. Each call looks at ``count`` keys and at most ``10 x count``
empty slots (Redis's own bound), so a call is O(COUNT) even in a table emptied
by deletes.

The price: the table never shrinks below its highest occupied slot (8 bytes a
slot plus 8 in the free list), so after deleting most of a large keyspace the
table keeps about 16 bytes per slot of its peak, until ``FLUSHDB``.
"""

from __future__ import annotations

import array
from typing import Any, Optional

__all__ = ["Keyspace"]

#: Empty slots one SCAN call may pass per key asked for (Redis uses 10 too).
EMPTY_VISITS_PER_KEY = 10


class Keyspace:
    """Key -> value, with stable slots for SCAN. Not thread-safe (the store locks)."""

    def __init__(self) -> None:
        self.values: dict[bytes, Any] = {}
        self._slot_of: dict[bytes, int] = {}
        self._slots: list[Optional[bytes]] = []
        # Positions of empty slots, possibly stale (beyond the end after a cut).
        self._free = array.array("q")

    def __len__(self) -> int:
        return len(self.values)

    def __contains__(self, key: Any) -> bool:
        return key in self.values

    def get(self, key: bytes) -> Any:
        return self.values.get(key)

    def store(self, key: bytes, value: Any) -> None:
        """Set ``key`` to ``value`` (a new key takes a slot)."""
        values = self.values
        if key not in values:
            self._place(key)
        values[key] = value

    def pop(self, key: bytes) -> Any:
        """Remove ``key``; its value, or None if it was missing."""
        value = self.values.pop(key, None)
        if value is None:
            return None
        slot = self._slot_of.pop(key)
        slots = self._slots
        slots[slot] = None
        if slot == len(slots) - 1:
            while slots and slots[-1] is None:  # cut empty slots off the end
                slots.pop()
        else:
            self._free.append(slot)
        return value

    def clear(self) -> None:
        self.values.clear()
        self._slot_of.clear()
        self._slots.clear()
        self._free = array.array("q")

    def scan(self, cursor: int, count: int) -> tuple[int, list[bytes]]:
        """The keys in slots from ``cursor`` on (about ``count``); the next cursor."""
        slots = self._slots
        end = len(slots)
        found: list[bytes] = []
        position = cursor
        budget = count * EMPTY_VISITS_PER_KEY
        while position < end and len(found) < count and budget > 0:
            key = slots[position]
            if key is None:
                budget -= 1
            else:
                found.append(key)
            position += 1
        return (position if position < end else 0), found

    def _place(self, key: bytes) -> None:
        slots = self._slots
        free = self._free
        while free:
            slot = free.pop()
            if slot < len(slots) and slots[slot] is None:
                slots[slot] = key
                self._slot_of[key] = slot
                return
        self._slot_of[key] = len(slots)
        slots.append(key)
