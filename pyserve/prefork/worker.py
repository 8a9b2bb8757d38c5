"""The worker side of :mod:`pyserve.prefork.supervisor`: one forked process serving one socket.

Theory of operation
-------------------
The supervisor forks with its signals blocked and calls :func:`become_worker` in
the child, which never returns: it closes the supervisor's descriptors the child
inherited (its wake-up pipe, other workers' readiness pipes, other slots' sockets),
runs :func:`serve_in_worker` and ends the process with ``os._exit`` (a failure is
logged and is exit status 1). A ``WorkerProcess`` then:

1. installs its own signal handling: ``SIGTERM`` means *drain and exit*;
   ``SIGINT`` and ``SIGHUP`` are ignored (the supervisor decides); only then are
   signals unblocked, so a ``SIGTERM`` sent early is delivered, not lost;
2. builds its server with the supervisor's factory, around the inherited socket;
3. runs ``serve_forever()`` in a thread and, once the loop runs, writes one byte
   to the readiness pipe: the supervisor's proof that this worker accepts;
4. sleeps in ``select()`` on a wake-up pipe until ``SIGTERM`` (or until the loop
   ends by itself, a failure);
5. drains: ``server.drain(grace)`` when the server has one (pyserve's graceful
   drain), then ``shutdown()`` and ``server_close()``, which for the threading and
   forking mix-ins waits for the requests in flight. The supervisor kills the
   worker if this outlasts the grace period.

Why the main thread waits and a thread serves: the kernel may deliver ``SIGTERM``
to any thread, but Python runs handlers only in the main thread, so the handler
is paired with ``signal.set_wakeup_fd``, which makes the main thread's
``select()`` return whichever thread caught the signal. Draining from the main
thread also keeps ``shutdown()`` away from the signal handler (it takes locks).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any, Callable, NoReturn, Optional

from pyserve.prefork.sockets import Listeners

__all__ = ["READY", "become_worker", "serve_in_worker"]

logger = logging.getLogger("pyserve.prefork")

#: The byte a worker writes to its readiness pipe once its loop runs.
READY = b"R"


class WorkerProcess:
    """One worker's life: signals, server, readiness, wait, drain."""

    def __init__(self, make_server: Callable[[socket.socket], Any], grace: float) -> None:
        self.make_server = make_server
        self.grace = grace
        self.pid = os.getpid()
        self.asked_to_stop = threading.Event()
        self.loop_ended = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def install_signals(self, mask: Iterable[int]) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(self._wake_w)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _on_sigterm(self, signum: int, frame: Optional[FrameType]) -> None:
        if os.getpid() != self.pid:  # a process forked by the server (ForkingMixIn)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.asked_to_stop.set()
        self._wake_main_thread()

    def _wake_main_thread(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def run(self, listener: socket.socket, ready_w: int) -> int:
        """Serve until asked to stop; return the exit status (0: drained on request)."""
        server = self.make_server(listener)

        def serve() -> None:
            try:
                server.serve_forever()
            finally:
                self.loop_ended.set()
                self._wake_main_thread()

        thread = threading.Thread(target=serve, name="pyserve-prefork-worker", daemon=True)
        thread.start()
        running = getattr(server, "_loop_running", None)  # pyserve servers say when
        if isinstance(running, threading.Event):
            # The listener queues connections already; this only waits for the loop,
            # and gives up if the loop died (the supervisor then sees the exit).
            while not running.wait(0.05) and thread.is_alive():
                pass
        os.write(ready_w, READY)
        os.close(ready_w)
        self._wait_for_stop()
        self._drain(server, thread)
        return 0 if self.asked_to_stop.is_set() else 1

    def _wait_for_stop(self) -> None:
        while not (self.asked_to_stop.is_set() or self.loop_ended.is_set()):
            select.select([self._wake_r], [], [])
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass  # another wake-up consumed it

    def _drain(self, server: Any, thread: threading.Thread) -> None:
        logger.info("worker %d draining", self.pid)
        drain = getattr(server, "drain", None)
        if callable(drain):
            report = drain(self.grace)
            logger.info("worker %d drained: %s", self.pid, report)
        server.shutdown()
        thread.join(self.grace)
        server.server_close()  # the stdlib's mix-ins wait here for requests in flight


def serve_in_worker(
    make_server: Callable[[socket.socket], Any],
    listener: socket.socket,
    ready_w: int,
    grace: float,
    mask: Iterable[int],
) -> int:
    """Run a worker in this (freshly forked) process; return its exit status."""
    worker = WorkerProcess(make_server, grace)
    worker.install_signals(mask)
    return worker.run(listener, ready_w)


def become_worker(
    make_server: Callable[[socket.socket], Any],
    listeners: Listeners,
    slot: int,
    *,
    ready_w: int,
    grace: float,
    mask: Iterable[int],
    inherited: Iterable[int],
) -> NoReturn:
    """In a freshly forked child: close ``inherited`` fds, serve ``slot``, ``os._exit``."""
    status = 1
    try:
        signal.set_wakeup_fd(-1)
        for fd in inherited:
            os.close(fd)
        listener = listeners.keep_only(slot)
        status = serve_in_worker(make_server, listener, ready_w, grace, mask)
    except BaseException:
        logger.exception("worker %d failed", os.getpid())
    finally:
        os._exit(status)
