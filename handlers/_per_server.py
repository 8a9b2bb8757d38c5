"""State the ready handlers keep beside each server, without modifying it.

Theory of operation
-------------------
A ready handler often needs one object per *server*, shared by all its
connections: the chat room, the RESP store, the peer-fault logs. The CLI builds
plain servers (``ThreadingTCPServer(addr, ChatHandler)``), so the handler cannot
count on an attribute the server class set up. :class:`PerServer` keeps that
object in a weak mapping keyed by the server: it is made on first use (under a
lock, so two connections arriving at once share one), and it dies with the
server. A server that cannot be weakly referenced (``__slots__`` without
``__weakref__``) gets one object shared by every such server, which is still
bounded.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Generic, Optional, TypeVar

__all__ = ["PerServer"]

T = TypeVar("T")


class PerServer(Generic[T]):
    """One ``factory()`` result per server, made on first use."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._values: weakref.WeakKeyDictionary[Any, T] = weakref.WeakKeyDictionary()
        self._shared: Optional[T] = None  # for servers without weak references

    def get(self, server: Any, make: Optional[Callable[[], T]] = None) -> T:
        """The value kept for ``server``, made now (by ``make``, else the
        factory) if it has none yet."""
        with self._lock:
            try:
                value = self._values.get(server)
            except TypeError:  # not weakly referenceable
                if self._shared is None:
                    self._shared = (make or self._factory)()
                return self._shared
            if value is None:
                value = self._values[server] = (make or self._factory)()
            return value
