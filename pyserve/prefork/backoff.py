"""The restart back-off of :mod:`pyserve.prefork.supervisor`: when each worker slot (re)starts.

Theory of operation
-------------------
A :class:`RestartSchedule` holds, per worker slot, the moment its next worker is
due (or None: none wanted, because one is running or starting) and how many times
in a row the slot's worker has exited on its own. Every slot is due at once when
the schedule is made, so the supervisor starts all workers on its first turn.

When a serving worker exits unasked, :meth:`RestartSchedule.record_exit` counts
the failure and returns the delay before its replacement: ``initial``, doubled on
each consecutive failure, capped at ``maximum``. A worker that had lived longer
than ``maximum`` seconds counts as having been healthy, so its exit starts the
count afresh. A worker crashing in a loop thus costs at most one fork per
``maximum`` seconds, while an occasional crash is repaired after ``initial``.

The supervisor decides whether to use the delay (:meth:`~RestartSchedule.due_at`):
it does not when a roll's new worker is already starting on that slot. It asks
:meth:`~RestartSchedule.take_due` each turn which slots to start now, and
:meth:`~RestartSchedule.moments` when it next has to wake up for one.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["RestartSchedule"]


class RestartSchedule:
    """Per-slot restart times with a doubling, capped back-off (in seconds)."""

    def __init__(self, slots: int, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self._failures = [0] * slots
        self._due: list[Optional[float]] = [0.0] * slots  # None: not wanted

    def take_due(self, now: float) -> list[int]:
        """The slots whose start is due by ``now``; they are no longer scheduled."""
        slots = [slot for slot, when in enumerate(self._due) if when is not None and when <= now]
        for slot in slots:
            self._due[slot] = None
        return slots

    def moments(self) -> list[float]:
        """The moments at which some slot becomes due."""
        return [when for when in self._due if when is not None]

    def due_at(self, slot: int, when: float) -> None:
        """Start a worker for ``slot`` at ``when`` (a ``time.monotonic()`` value)."""
        self._due[slot] = when

    def record_exit(self, slot: int, lived: float) -> float:
        """Count an unasked exit of ``slot``'s worker after ``lived`` seconds; return the delay."""
        if lived > self.maximum:
            self._failures[slot] = 0  # it had been healthy
        self._failures[slot] += 1
        return min(self.initial * 2.0 ** (self._failures[slot] - 1), self.maximum)
