"""Prefork: N worker processes serving one port, kept alive by a small supervisor.

Theory of operation
-------------------
:class:`Prefork` is the *parent*. It never serves a request; it owns the listening
sockets and the worker processes, and turns signals into lifecycle changes::

    Prefork(ThreadingTCPServer, ("0.0.0.0", 8000), Handler, workers=4).run()

**Sockets belong to the parent**, one per worker slot where the platform has
``SO_REUSEPORT``, else one shared by all: the constructor creates them, so
``server_address`` (port 0 resolved) is known before any fork, and they outlive
the workers, so a queue survives a crashed or rolled worker. How and why is in
:mod:`pyserve.prefork.sockets`.

**Workers build their server after the fork, from a factory.** A server built
before the fork would carry the parent's threads, locks and wake-up pipe into
every child, and a restarted worker needs a fresh one anyway. By default the
worker builds ``server_class`` around the slot's socket (``adopt_listener``),
which fits every class with the stdlib's constructor; ``make_server(listener)``
replaces that for anything else.

**Readiness by construction.** Each worker gets a pipe; it writes one byte once its
``serve_forever()`` loop runs. The supervisor waits for that byte (with a
deadline) before it counts the worker as ready.

**Signals** are installed only by :meth:`Prefork.run`, in the main thread, and
restored when it returns. They land on a self-pipe (``signal.set_wakeup_fd``), so
the supervisor's single ``select()`` sees signals, readiness bytes and child exits
(``SIGCHLD``) alike, and computes its timeout from its own deadlines:

* ``SIGTERM``/``SIGINT``: graceful stop. The supervisor closes its listening
  sockets at once (and removes a Unix socket file it created), and every worker
  gets ``SIGTERM``, which makes it withdraw its own copy of the listener, drain
  its requests for up to ``drain_timeout`` seconds and exit (the worker's side is
  in :mod:`pyserve.prefork.worker`). Once the last process has closed the
  listener the kernel refuses new connections instead of completing handshakes
  nobody will serve. A worker still alive ``KILL_MARGIN`` seconds past the
  deadline gets ``SIGKILL``; a second signal kills at once. ``run()`` returns 0
  after a graceful stop, 1 if a request had to be cut short (a worker killed, or
  a worker that exited with requests still running).
* ``SIGHUP``: roll, one slot at a time: start the new worker, wait until it is
  ready, then drain the old one, then the next slot. A new worker that fails to
  become ready aborts the roll and the old one keeps serving. (The new workers
  fork from this same parent: a roll renews processes and whatever the factory
  reads at start, not the Python code already imported.)
* a worker that exits on its own is restarted after a back-off that doubles on
  each consecutive failure up to ``restart_backoff_max``
  (:mod:`pyserve.prefork.backoff`).

The worker side (signals, readiness, drain) lives in :mod:`pyserve.prefork.worker`.
"""

from __future__ import annotations

import enum
import logging
import os
import select
import signal
import socket
import threading
import time
from types import FrameType, TracebackType
from typing import Any, Callable, Optional

from pyserve.prefork.backoff import RestartSchedule
from pyserve.prefork.sockets import Listeners, adopt_listener
from pyserve.prefork.worker import READY, become_worker

__all__ = ["Prefork"]

logger = logging.getLogger("pyserve.prefork")

#: Seconds between the drain deadline and SIGKILL. A worker exits by itself within
#: ``worker.EXIT_MARGIN`` (0.5 s) of the deadline, having given the requests it
#: forced ``worker.FORCE_TIMEOUT`` (0.25 s) to end; the kill catches only a worker
#: too wedged to do so (it holds the GIL in C code, say), and the extra half second
#: keeps it from cutting short a worker that is closing cleanly on a loaded
#: machine. So the workers are gone by ``drain_timeout`` + 0.5 s as a rule, and
#: by ``drain_timeout`` + 1 s at worst.
KILL_MARGIN = 1.0

_SUPERVISED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def _ignore_signal(signum: int, frame: Optional[FrameType]) -> None:
    """A handler that does nothing: the wake-up fd already recorded the signal."""


class _Role(enum.Enum):
    SERVING = "serving"  # the slot's current worker (or starting to be)
    INCOMING = "incoming"  # started by a roll; takes over once ready
    DRAINING = "draining"  # told to stop; killed at its deadline


class _Worker:
    def __init__(self, pid: int, slot: int, ready_fd: int, role: _Role, ready_by: float) -> None:
        self.pid = pid
        self.slot = slot
        self.ready_fd: Optional[int] = ready_fd  # None once the byte (or EOF) came
        self.role = role
        self.started_at = time.monotonic()
        self.deadline: Optional[float] = ready_by  # ready by, or killed by (draining)


class Prefork:
    """Run ``workers`` processes, each serving ``server_address`` with its own server.

    For the caller: ``run()`` (blocks until stopped; returns the exit status),
    ``close()`` (release the sockets without running), ``server_address``,
    ``worker_pids()``, and use as a context manager.

    Parameters: ``server_class``, ``server_address`` and ``RequestHandlerClass`` as
    for the server; ``workers``; ``make_server(listener)`` to build a worker's
    server some other way; ``reuse_port`` (None: wherever the platform has it);
    ``drain_timeout`` (seconds a worker may drain); ``ready_timeout`` (seconds a new
    worker may take to start); ``restart_backoff_initial``/``restart_backoff_max``.
    """

    def __init__(
        self,
        server_class: Callable[..., Any],
        server_address: Any,
        RequestHandlerClass: Any = None,
        *,
        workers: int = 2,
        make_server: Optional[Callable[[socket.socket], Any]] = None,
        reuse_port: Optional[bool] = None,
        drain_timeout: float = 30.0,
        ready_timeout: float = 30.0,
        restart_backoff_initial: float = 0.1,
        restart_backoff_max: float = 10.0,
    ) -> None:
        if not hasattr(os, "fork"):
            raise RuntimeError("Prefork needs os.fork(), which this platform lacks")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers!r}")
        for name, value in (
            ("drain_timeout", drain_timeout),
            ("ready_timeout", ready_timeout),
            ("restart_backoff_initial", restart_backoff_initial),
            ("restart_backoff_max", restart_backoff_max),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        self.server_class = server_class
        self.RequestHandlerClass = RequestHandlerClass
        self.workers = workers
        self.make_server = make_server or self._default_make_server
        self.drain_timeout = drain_timeout
        self.ready_timeout = ready_timeout
        self.restart_backoff_initial = restart_backoff_initial
        self.restart_backoff_max = restart_backoff_max
        self._listeners = Listeners(server_class, server_address, workers, reuse_port)
        self.reuse_port = self._listeners.reuse_port
        self.server_address: Any = self._listeners.address
        # Supervisor state (used by run()).
        self._live: dict[int, _Worker] = {}
        self._restarts = RestartSchedule(workers, restart_backoff_initial, restart_backoff_max)
        self._roll_queue: list[int] = []
        self._rolling = False
        self._stopping = False
        self._forced = False  # a request was cut short during the stop
        self._wake_r = -1
        self._wake_w = -1

    # -- sockets -------------------------------------------------------------------

    def _default_make_server(self, listener: socket.socket) -> Any:
        return adopt_listener(self.server_class, self.RequestHandlerClass, listener)

    def close(self) -> None:
        """Close the listening sockets (and remove a Unix socket file we created)."""
        self._listeners.close()

    def __enter__(self) -> Prefork:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def worker_pids(self) -> list[int]:
        """The process ids of the live workers (including starting and draining)."""
        return sorted(self._live)

    # -- the supervisor loop -------------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them until stopped; return an exit status.

        Must be called from the main thread (signal handlers live there). Returns
        0 when every request in flight ended in time, 1 when one had to be cut
        short (see the module documentation). The listening sockets are closed
        on return (on a stop signal, at once) and the previous signal handlers
        restored.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("Prefork.run() must be called from the main thread")
        if self._listeners.closed:
            raise RuntimeError("Prefork.run() called after close()")
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self._wake_r, self._wake_w = wake_r, wake_w
        previous = {signum: signal.getsignal(signum) for signum in _SUPERVISED}
        previous_wakeup = signal.set_wakeup_fd(wake_w)
        try:
            for signum in _SUPERVISED:
                signal.signal(signum, _ignore_signal)
            logger.info(
                "supervising %d workers on %s (%s)",
                self.workers,
                self.server_address,
                "SO_REUSEPORT" if self.reuse_port else "one shared socket",
            )
            while self._live or not self._stopping:
                self._turn()
            return 1 if self._forced else 0
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            for worker in list(self._live.values()):  # only if run() itself failed
                self._kill(worker)
                self._reap(blocking=True)
            os.close(wake_r)
            os.close(wake_w)
            self._wake_r = self._wake_w = -1
            self.close()

    def _turn(self) -> None:
        now = time.monotonic()
        if not self._stopping:
            self._start_wanted_workers(now)
            self._advance_roll()
        self._enforce_deadlines(now)
        waiting = [w.ready_fd for w in self._live.values() if w.ready_fd is not None]
        readable, _, _ = select.select([self._wake_r, *waiting], [], [], self._timeout(now))
        if self._wake_r in readable:
            self._read_signals()
        for worker in list(self._live.values()):
            if worker.ready_fd is not None and worker.ready_fd in readable:
                self._read_ready(worker)
        self._reap(blocking=False)

    def _timeout(self, now: float) -> float:
        moments: list[float] = [w.deadline for w in self._live.values() if w.deadline]
        if not self._stopping:
            moments += self._restarts.moments()
        # Signals and child exits wake select() anyway; the cap only bounds the wait
        # if a SIGCHLD was coalesced with another and lost its byte.
        return max(0.0, min([now + 5.0, *moments]) - now)

    def _read_signals(self) -> None:
        try:
            data = os.read(self._wake_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._on_stop_signal(signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                self._on_roll_signal()

    def _on_stop_signal(self, name: str) -> None:
        if self._stopping:
            logger.warning("%s again: killing %d workers now", name, len(self._live))
            for worker in self._live.values():
                self._kill(worker)
            return
        logger.info("%s: draining %d workers (up to %.1fs)", name, len(self._live),
                    self.drain_timeout)
        self._stopping = True
        self._roll_queue.clear()
        # Nobody will be started again: close our copies now, so that the kernel
        # stops completing handshakes as soon as the workers have closed theirs.
        self.close()
        logger.info("closed the listening sockets")
        for worker in self._live.values():
            self._drain(worker)

    def _on_roll_signal(self) -> None:
        if self._stopping:
            return
        if self._rolling:
            logger.info("SIGHUP: a roll is already under way; ignored")
            return
        logger.info("SIGHUP: rolling %d workers, one at a time", self.workers)
        self._roll_queue = list(range(self.workers))
        self._rolling = True

    # -- workers -------------------------------------------------------------------

    def _start_wanted_workers(self, now: float) -> None:
        for slot in self._restarts.take_due(now):
            self._spawn(slot, _Role.SERVING)

    def _advance_roll(self) -> None:
        if any(w.role is _Role.INCOMING for w in self._live.values()) or any(
            w.role is _Role.DRAINING for w in self._live.values()
        ):
            return  # one slot at a time: wait for the current step to finish
        while self._roll_queue:
            slot = self._roll_queue.pop(0)
            # A slot without a serving worker is restarting anyway: nothing to roll.
            if self._serving(slot) is not None:
                self._spawn(slot, _Role.INCOMING)
                return
        if self._rolling:
            self._rolling = False
            logger.info("roll complete: workers %s", self.worker_pids())

    def _serving(self, slot: int) -> Optional[_Worker]:
        for worker in self._live.values():
            if worker.slot == slot and worker.role is _Role.SERVING:
                return worker
        return None

    def _spawn(self, slot: int, role: _Role) -> None:
        ready_r, ready_w = os.pipe()
        # Signals stay blocked across fork() so a SIGTERM cannot reach the child
        # before it has installed its own handlers (it would be swallowed).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISED)
        try:
            pid = os.fork()
            if pid == 0:
                become_worker(self.make_server, self._listeners, slot, ready_w=ready_w,
                              grace=self.drain_timeout, mask=blocked,
                              supervisor_fds=[ready_r, *self._own_fds()])
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(ready_w)
        deadline = time.monotonic() + self.ready_timeout
        self._live[pid] = _Worker(pid, slot, ready_r, role, deadline)
        logger.info("worker %d starting (slot %d%s)", pid, slot,
                    ", rolling" if role is _Role.INCOMING else "")

    def _own_fds(self) -> list[int]:
        """The supervisor's own descriptors, which a new worker must close."""
        pipes = [w.ready_fd for w in self._live.values() if w.ready_fd is not None]
        return [self._wake_r, self._wake_w, *pipes]

    def _read_ready(self, worker: _Worker) -> None:
        assert worker.ready_fd is not None
        data = os.read(worker.ready_fd, 1)
        os.close(worker.ready_fd)
        worker.ready_fd = None
        if data != READY:
            return  # EOF: it died before it was ready; _reap() sees the exit
        if worker.role is not _Role.DRAINING:
            worker.deadline = None
        logger.info("worker %d ready (slot %d)", worker.pid, worker.slot)
        if worker.role is _Role.INCOMING:
            old = self._serving(worker.slot)
            worker.role = _Role.SERVING
            if old is not None:
                self._drain(old)

    def _drain(self, worker: _Worker) -> None:
        worker.role = _Role.DRAINING
        worker.deadline = time.monotonic() + self.drain_timeout + KILL_MARGIN
        self._signal(worker, signal.SIGTERM)

    def _kill(self, worker: _Worker) -> None:
        if self._stopping:
            self._forced = True  # the stop was not graceful for everyone
        self._signal(worker, signal.SIGKILL)

    def _signal(self, worker: _Worker, signum: int) -> None:
        try:
            os.kill(worker.pid, signum)
        except ProcessLookupError:
            pass  # it exited already; _reap() will collect it

    def _enforce_deadlines(self, now: float) -> None:
        for worker in list(self._live.values()):
            if worker.deadline is None or worker.deadline > now:
                continue
            worker.deadline = None
            if worker.role is _Role.DRAINING:
                logger.warning("worker %d did not drain in time: killed", worker.pid)
            else:
                logger.error("worker %d not ready after %.1fs: killed", worker.pid,
                             self.ready_timeout)
            self._kill(worker)

    def _reap(self, *, blocking: bool) -> None:
        for worker in list(self._live.values()):
            try:
                pid, status = os.waitpid(worker.pid, 0 if blocking else os.WNOHANG)
            except ChildProcessError:
                pid, status = worker.pid, 0
            if pid:
                self._exited(worker, status)

    def _exited(self, worker: _Worker, status: int) -> None:
        del self._live[worker.pid]
        if worker.ready_fd is not None:
            os.close(worker.ready_fd)
        how = _describe_status(status)
        if worker.role is _Role.DRAINING or self._stopping:
            logger.info("worker %d exited (%s)", worker.pid, how)
            if self._stopping and status != 0:
                self._forced = True  # it had to cut requests short, or was killed
            return
        lived = time.monotonic() - worker.started_at
        if worker.role is _Role.INCOMING:
            logger.error("new worker %d %s before it was ready: roll aborted", worker.pid, how)
            self._roll_queue.clear()
            self._rolling = False
            if self._serving(worker.slot) is None:  # the old one died meanwhile
                self._restarts.due_at(worker.slot, time.monotonic())
            return
        delay = self._restarts.record_exit(worker.slot, lived)
        logger.warning("worker %d %s; restarting slot %d in %.2fs", worker.pid, how,
                       worker.slot, delay)
        # If a roll's new worker is already starting on this slot, it takes over.
        if not any(w.slot == worker.slot for w in self._live.values()):
            self._restarts.due_at(worker.slot, time.monotonic() + delay)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.WEXITSTATUS(status)}"
