"""The worker side of :mod:`pyserve.prefork.supervisor`: one forked process serving one socket.

Theory of operation
-------------------
The supervisor forks with its signals blocked and calls :func:`become_worker` in
the child, which never returns. It first closes every descriptor that belongs to
the supervisor alone (the two ends of its signal pipe, the readiness pipes of
the other workers, the other slots' sockets): a worker that kept the write end
of the supervisor's signal pipe could wake the supervisor, and would keep pipes
and sockets alive that the supervisor believes closed. What the worker keeps is
its slot's listener, its own readiness pipe, and whatever the program had open
before it made the supervisor. Then it runs :func:`serve_in_worker` and ends the
process with ``os._exit`` (a failure is logged and is exit status 1). A
``WorkerProcess``:

1. installs its own signal handling: ``SIGTERM`` means *drain and exit*;
   ``SIGINT`` and ``SIGHUP`` are ignored (the supervisor decides); only then are
   signals unblocked, so a ``SIGTERM`` sent early is delivered, not lost;
2. builds its server with the supervisor's factory, around the inherited socket;
3. runs ``serve_forever()`` in a thread and, once the loop runs, writes one byte
   to the readiness pipe: the supervisor's proof that this worker accepts;
4. sleeps in ``select()`` on a wake-up pipe until ``SIGTERM`` (or until the loop
   ends by itself, a failure);
5. stops, within a deadline of ``grace`` seconds from the signal (below).

Stopping
--------
The listener is shared with other processes (the supervisor, the other workers,
during a roll this slot's new worker), so a stopping worker must *withdraw* it
from this process, never shut it down for everyone. A helper thread does, in
order:

1. **stop accepting**: ``shutdown()`` ends the serve loop (a synchronous server
   first finishes the request it runs). Once the loop has ended nothing in this
   process accepts;
2. **withdraw the listener**: take every connection the kernel has already
   queued (it completed their handshakes: the clients believe they are being
   served, and the last process to close the socket would reset them), close
   this process's copy of the socket, log ``closed its listener``, then serve
   what it took like any other request. A synchronous server serves them here,
   one after another; its own drain could not (it never serves beside its loop
   thread);
3. **drain** what is in flight: ``server.drain(remaining grace)`` (pyserve's
   graceful drain: at the deadline it shuts open connections for reading, so a
   handler blocked in a read sees EOF, and gives them ``FORCE_TIMEOUT``
   more), then ``server_close()``. A server without ``drain()`` gets
   ``shutdown()`` and ``server_close()`` only.

The main thread waits for that helper until the deadline plus
``EXIT_MARGIN`` and then exits regardless: a request still running then is
cut short by the end of the process, and the exit status is 1 (0 when every
request ended). The supervisor kills a worker still alive a little later
(``KILL_MARGIN`` in :mod:`pyserve.prefork.supervisor`), for a worker too wedged even
to exit.

Why the main thread waits and a thread serves: the kernel may deliver ``SIGTERM``
to any thread, but Python runs handlers only in the main thread, so the handler
is paired with ``signal.set_wakeup_fd``, which makes the main thread's
``select()`` return whichever thread caught the signal. Stopping in a helper
thread keeps ``shutdown()`` away from the signal handler (it takes locks), and
leaves the main thread free to keep the deadline.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterable
from types import FrameType
from typing import Any, Callable, NoReturn, Optional

from pyserve.base import BaseServer
from pyserve.prefork.sockets import Listeners

__all__ = ["READY", "become_worker", "serve_in_worker"]

logger = logging.getLogger("pyserve.prefork")

#: The byte a worker writes to its readiness pipe once its loop runs.
READY = b"R"

#: Seconds the handlers still running at the deadline get, once their connections
#: are shut for reading, to end: a handler blocked in a read sees EOF at once.
#: (The same as the ``pyserve`` command's own, so both stop alike.)
FORCE_TIMEOUT = 0.25
#: Seconds past the deadline after which a worker exits whatever its requests do:
#: ``FORCE_TIMEOUT``, then a quarter second to close the server.
EXIT_MARGIN = 0.5
#: At most this many queued connections are taken when a worker withdraws its
#: listener (a bound for the loop; a listen backlog is rarely deeper).
_MOST_QUEUED = 4096


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
        status = self._stop(server, thread)
        return status if self.asked_to_stop.is_set() else 1

    def _wait_for_stop(self) -> None:
        while not (self.asked_to_stop.is_set() or self.loop_ended.is_set()):
            select.select([self._wake_r], [], [])
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass  # another wake-up consumed it

    def _stop(self, server: Any, serving: threading.Thread) -> int:
        """Stop within the deadline (see the module documentation); the exit status."""
        deadline = time.monotonic() + self.grace
        logger.info("worker %d draining (up to %.1fs)", self.pid, self.grace)
        outcome: list[int] = []
        stopper = threading.Thread(
            target=self._stop_server,
            args=(server, serving, deadline, outcome),
            name="pyserve-prefork-stop",
            daemon=True,
        )
        stopper.start()
        stopper.join(max(0.0, deadline + EXIT_MARGIN - time.monotonic()))
        if stopper.is_alive() or not outcome:
            logger.warning(
                "worker %d: requests still running %.2fs after the deadline; exiting",
                self.pid, EXIT_MARGIN,
            )
            return 1
        return outcome[0]

    def _stop_server(
        self,
        server: Any,
        serving: threading.Thread,
        deadline: float,
        outcome: list[int],
    ) -> None:
        if _withdrawable(server):
            self._withdraw(server, serving, deadline)
        clean = True
        drain = getattr(server, "drain", None)
        if callable(drain):
            report = drain(max(0.0, deadline - time.monotonic()), force_timeout=FORCE_TIMEOUT)
            logger.info("worker %d drained: %s", self.pid, report)
            clean = not report.stragglers
        else:
            server.shutdown()
        serving.join(max(0.0, deadline + FORCE_TIMEOUT - time.monotonic()))
        if serving.is_alive():
            clean = False
        if clean:  # nothing left to wait for: closing is quick
            server.server_close()
        outcome.append(0 if clean else 1)

    def _withdraw(self, server: Any, serving: threading.Thread, deadline: float) -> None:
        """Steps 1 and 2 of a stop (see the module documentation)."""
        threading.Thread(target=server.shutdown, name="pyserve-prefork-shutdown",
                         daemon=True).start()
        serving.join(max(0.0, deadline - time.monotonic()))
        if serving.is_alive():
            # A synchronous request still runs at the deadline: the drain closes
            # the listener beside it (its barrier allows that), then forces it.
            return
        taken = []
        for _ in range(_MOST_QUEUED):
            if not select.select([server], [], [], 0)[0]:
                break
            request = server._accept_and_admit()  # None: another process won it
            if request is not None:
                taken.append(request)
        server.socket.close()  # this process's copy only: the others keep theirs
        logger.info("worker %d closed its listener; %d queued connections taken",
                    self.pid, len(taken))
        for request in taken:
            server._serve_accepted(*request)


def _withdrawable(server: Any) -> bool:
    """True for a pyserve stream server (its accept path is known to this module)."""
    listener = getattr(server, "socket", None)
    return (
        isinstance(server, BaseServer)
        and isinstance(listener, socket.socket)
        and listener.type == socket.SOCK_STREAM
    )


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
    supervisor_fds: Iterable[int],
) -> NoReturn:
    """In a freshly forked child: close the supervisor's own descriptors
    (``supervisor_fds`` and the other slots' sockets), serve ``slot``, ``os._exit``."""
    status = 1
    try:
        signal.set_wakeup_fd(-1)
        for fd in supervisor_fds:
            os.close(fd)
        listener = listeners.keep_only(slot)
        status = serve_in_worker(make_server, listener, ready_w, grace, mask)
    except BaseException:
        logger.exception("worker %d failed", os.getpid())
    finally:
        os._exit(status)
