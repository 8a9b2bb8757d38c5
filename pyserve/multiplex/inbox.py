"""What other threads hand to a multiplexing server's I/O thread, and how it wakes.

The I/O thread (:mod:`pyserve.multiplex.ioloop`) sleeps in its poller; other
threads reach it only through an :class:`Inbox`, under one lock:

* ``call_soon()`` queues a callback and writes one wake-up byte to a socket pair
  whose reading end the poller watches, for a whole *batch*: a caller that finds
  a byte already on its way adds to the batch without writing another. The I/O
  thread empties the socket, then takes the batch (``take_callbacks()``), in that
  order, so a callback queued after the swap always brings a new byte.
* ``hand_over()`` files a connection another thread accepted under its
  descriptor and registers it with the poller for reading *and* writing. A new
  connection is writable, so the next poll reports it without any wake-up byte,
  and the I/O thread takes it with ``take_arrival()``.
* ``close()`` (the I/O thread, as it ends) refuses everything from then on,
  closes the poller under the lock (so no ``hand_over()`` registers with a closed
  poller) and returns the connections handed over but never opened.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import Any, Callable, Optional

from pyserve.lifecycle.registry import LiveRequest

__all__ = ["Arrival", "Inbox"]

#: A connection handed over: the socket, its client address, its registry entry.
Arrival = tuple[Any, Any, LiveRequest]


class Inbox:
    """Callbacks and connections for the I/O thread, with its wake-up socket."""

    def __init__(self, poller: Any) -> None:
        self.poller = poller
        self.lock = threading.Lock()
        self.receiver, self.sender = socket.socketpair()
        self.receiver.setblocking(False)
        self.sender.setblocking(False)
        self.wake_fd = self.receiver.fileno()
        poller.register(self.wake_fd, select.POLLIN)
        self.callbacks: list[Callable[[], None]] = []
        self.wake_pending = False  # a wake-up byte is on its way for this batch
        self.arriving: dict[int, Arrival] = {}
        self.closed = False  # the poller is closed: nothing is handed over any more

    # -- from any thread -------------------------------------------------------------

    def call_soon(self, callback: Callable[[], None]) -> None:
        with self.lock:
            self.callbacks.append(callback)
            if self.wake_pending:
                return  # the I/O thread will take this batch when it wakes
            self.wake_pending = True
        try:
            self.sender.send(b"x")
        except (BlockingIOError, InterruptedError):
            pass  # the pipe is full of wake-ups already
        except OSError:
            pass  # stopped: nothing runs callbacks any more

    def hand_over(self, request: Any, client_address: Any, entry: LiveRequest) -> bool:
        """File a connection just accepted (False: the I/O thread has stopped)."""
        fd = request.fileno()
        with self.lock:  # the poller stays open while we register
            if self.closed:
                return False
            self.arriving[fd] = (request, client_address, entry)
            self.poller.register(fd, select.POLLIN | select.POLLOUT)
        return True

    # -- in the I/O thread -----------------------------------------------------------

    def take_callbacks(self) -> list[Callable[[], None]]:
        """The batch queued so far (the wake-up socket emptied first)."""
        # At most one byte waits: only the caller that set wake_pending sends one.
        try:
            self.receiver.recv(4096)
        except (BlockingIOError, InterruptedError):
            pass
        with self.lock:
            batch, self.callbacks = self.callbacks, []
            self.wake_pending = False
        return batch

    def take_arrival(self, fd: int) -> Optional[Arrival]:
        """The connection handed over on ``fd``, if one was (else: a stale event)."""
        with self.lock:
            return self.arriving.pop(fd, None)

    def close(self, close_poller: Callable[[], None]) -> list[Arrival]:
        """Refuse hand-overs from now on, close the poller, and return the
        connections handed over but never opened."""
        with self.lock:
            self.closed = True
            arriving, self.arriving = self.arriving, {}
            close_poller()
        self.release()
        return list(arriving.values())

    def release(self) -> None:
        """Close the wake-up socket pair."""
        self.receiver.close()
        self.sender.close()
