"""Concurrency strategies: how ``process_request()`` runs a request.

Theory of operation
-------------------
:class:`~pyserve.base.BaseServer` runs each request synchronously inside the loop.
A strategy is a mix-in placed *before* the server class (``class S(ThreadingMixIn,
TCPServer)``) that overrides ``process_request()`` to run the request elsewhere and
``server_close()`` to wait for what is still running:

* :class:`ThreadingMixIn`: one new thread per request. Live threads sit in a
  registry that each thread leaves itself when it ends, so starting a request is
  O(1). (The stdlib walks its whole thread list on every accept to drop the dead
  ones: opening 5,000 connections takes it seconds.) Before Python 3.13 request
  threads start as daemon threads, because CPython scans every live non-daemon
  thread on each start; pyserve then waits for the ones ``daemon_threads = False``
  protects at interpreter exit itself (see ``_START_AS_DAEMON`` below).
* :class:`ForkingMixIn`: one child process per request. The parent watches each
  child's *pidfd* (Linux) so it reaps a child the moment it exits: no zombies, no
  polling. Where pidfds are missing it reaps on every loop turn instead. When
  ``max_children`` are running, the loop simply stops watching the listener (the
  kernel backlog holds new connections) instead of blocking in ``waitpid()`` as the
  stdlib does, so ``shutdown()`` still answers at once. A child closes its copy of a
  stream listener, so a closed server stops accepting even while children run.

Each strategy declares its state in ``_init_dispatch_state()`` (see
:mod:`pyserve.base` for why not in ``__init__``), and enters every request in the
server's registry of live requests (``_track``/``_started``/``_ended``, see
:mod:`pyserve.lifecycle.drain`): a request thread reports for itself, a forked child is
reported by the parent when it forks and when it reaps.

Closing is bounded: ``server_close()`` waits for running requests at most
``close_timeout`` seconds (30 by default), then shuts their connections for reading
(or sends SIGTERM to the children) and gives up after ``drain_force_timeout`` more,
logging what was left. (The stdlib waits as long as a keep-alive client stays.)
``close_timeout = None`` restores the unbounded wait.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator

from pyserve.base import BaseServer

__all__ = ["ForkingMixIn", "ThreadingMixIn"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional
    _Base = BaseServer
else:
    _Base = object


# -- request threads and interpreter exit --------------------------------------------
#
# Before Python 3.13, starting a *non-daemon* thread makes CPython's threading module
# scan the shutdown locks of every live non-daemon thread (_maintain_shutdown_locks):
# O(n) per start, which doubles the cost of opening 5,000 connections. There,
# request threads are started as daemon threads, and pyserve itself keeps the
# process alive for those that ``daemon_threads = False`` says should: it joins them
# when the interpreter exits, from the hook concurrent.futures uses for the same
# purpose (threading._register_atexit, run just before threading joins its own
# non-daemon threads). From 3.13 on the scan is gone and threads start as asked.
_START_AS_DAEMON = sys.version_info < (3, 13)

#: Request threads the interpreter must wait for at exit (insertion-ordered set).
_outliving: dict[threading.Thread, None] = {}


def _keep_process_alive_for(thread: threading.Thread) -> None:
    _outliving[thread] = None  # a dict operation is atomic; the thread removes itself


def _join_outliving_threads() -> None:
    """At interpreter exit: wait for request threads that are not daemons."""
    while _outliving:
        try:
            thread = next(iter(_outliving))
        except (StopIteration, RuntimeError):  # emptied or changed meanwhile: look again
            continue
        if thread.ident is not None:
            thread.join()
        _outliving.pop(thread, None)


if _START_AS_DAEMON:
    _register_at_exit = getattr(threading, "_register_atexit", None)
    if _register_at_exit is not None:
        _register_at_exit(_join_outliving_threads)
    else:  # pragma: no cover - every CPython from 3.9 has it; other interpreters may not
        import atexit

        atexit.register(_join_outliving_threads)


class RequestThreads:
    """The live request threads of a :class:`ThreadingMixIn` server.

    Available as ``server._threads`` (the stdlib's name). Adding and removing are
    O(1); a thread removes itself when its request is done, so nothing is ever
    swept. It behaves enough like the stdlib's list for code that pokes it:
    ``len()``, iteration, ``append()``, ``reap()`` and ``join()``.
    """

    def __init__(self) -> None:
        # A dict keeps insertion order (join oldest first) with O(1) removal; the
        # value says whether the thread is one that server_close() and interpreter
        # exit wait for (daemon_threads = False), which on Python < 3.13 its
        # ``daemon`` flag does not tell (see _START_AS_DAEMON).
        self._live: dict[threading.Thread, bool] = {}
        self._lock = threading.Lock()

    def append(self, thread: threading.Thread, waited_for: Optional[bool] = None) -> None:
        with self._lock:
            self._live[thread] = (not thread.daemon) if waited_for is None else waited_for

    add = append

    def discard(self, thread: threading.Thread) -> None:
        with self._lock:
            self._live.pop(thread, None)

    def reap(self) -> None:
        """Drop finished threads (they normally leave by themselves)."""
        with self._lock:
            for thread in [t for t in self._live if not t.is_alive() and t.ident]:
                del self._live[thread]

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait for every non-daemon request thread, as ``block_on_close`` asks."""
        for thread in self.waited_for():
            thread.join(timeout)

    def waited_for(self) -> list[threading.Thread]:
        """The started threads that ``daemon_threads = False`` says to wait for."""
        with self._lock:
            return [t for t, waited in self._live.items() if waited and t.ident is not None]

    def snapshot(self) -> list[threading.Thread]:
        with self._lock:
            return list(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[threading.Thread]:
        return iter(self.snapshot())


class ThreadingMixIn(_Base):
    """Run each request in a new thread.

    Class attributes that may be overridden:

    - ``daemon_threads``: request threads do not keep the process alive
    - ``block_on_close``: ``server_close()`` waits for non-daemon request threads
    - ``close_timeout``: ... but at most this many seconds before forcing them to end
      (None: as long as they run, as the stdlib does)
    """

    daemon_threads: bool = False
    block_on_close: bool = True
    #: Long enough for any reply in progress; short enough that a keep-alive client
    #: cannot hold a closing server (or a test run) hostage.
    close_timeout: Optional[float] = 30.0

    def _init_dispatch_state(self) -> None:
        super()._init_dispatch_state()
        self._threads = RequestThreads()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The body of a request thread: the stdlib's error contract."""
        self._serve_off_loop(request, client_address)

    def _run_request_thread(self, request: Any, client_address: Any, entry: Any) -> None:
        self._started(entry)
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._ended(entry)
            current = threading.current_thread()
            self._threads.discard(current)
            _outliving.pop(current, None)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a thread that runs the request."""
        entry = self._track(request, client_address)
        waited_for = not self.daemon_threads
        thread = threading.Thread(
            target=self._run_request_thread,
            args=(request, client_address, entry),
            daemon=_START_AS_DAEMON or self.daemon_threads,
        )
        self._threads.add(thread, waited_for)
        if waited_for and _START_AS_DAEMON:
            _keep_process_alive_for(thread)
        try:
            thread.start()
        except BaseException as exc:
            self._threads.discard(thread)
            _outliving.pop(thread, None)
            self._ended(entry, exc)
            raise

    def server_close(self) -> None:
        super().server_close()
        if not self.block_on_close:
            return
        if self.close_timeout is None:
            self._threads.join()
            return
        if not self.daemon_threads:
            self._settle(self.close_timeout, None, "server_close")
        deadline = time.monotonic() + self.drain_force_timeout
        for thread in self._threads.waited_for():  # their requests are over: exiting
            thread.join(max(0.0, deadline - time.monotonic()))


_HAVE_PIDFD = hasattr(os, "pidfd_open")


def _exit_failure(pid: int, status: Optional[int]) -> Optional[BaseException]:
    """None if a child's wait status says it succeeded, else an error describing it."""
    if status is None or status == 0:
        return None
    if os.WIFSIGNALED(status):
        import signal  # noqa: PLC0415 - a failed child is rare; importers need not pay for it

        name = signal.Signals(os.WTERMSIG(status)).name
        return ChildProcessError(f"request child {pid} killed by {name}")
    return ChildProcessError(f"request child {pid} exited with status {os.WEXITSTATUS(status)}")


class ForkingMixIn(_Base):
    """Run each request in a child process (POSIX only).

    Class attributes that may be overridden:

    - ``max_children``: at most this many children at once; beyond it the server
      stops accepting until one exits
    - ``block_on_close``: ``server_close()`` waits for the children
    - ``close_timeout``: ... but at most this many seconds, then SIGTERM, then
      SIGKILL after ``drain_force_timeout`` (None: wait as long as they run)
    - ``timeout``: ``handle_request()``'s wait (300 s, as in the stdlib, so
      a server driven by ``handle_request()`` still reaps its children)
    """

    timeout: Optional[float] = 300
    #: The pids of running children. The class says None, as the stdlib's does
    #: (code reads it there); every instance has its own set from
    #: _init_dispatch_state() on, so instance code never sees None.
    active_children: set[int] = None  # type: ignore[assignment]
    max_children: int = 40
    block_on_close: bool = True
    #: See ThreadingMixIn.close_timeout.
    close_timeout: Optional[float] = 30.0

    def _init_dispatch_state(self) -> None:
        super()._init_dispatch_state()
        self.active_children: set[int] = set()
        self._child_pidfds: dict[int, int] = {}
        self._child_requests: dict[int, Any] = {}  # pid -> registry entry

    def _reaps_children(self) -> bool:
        return True

    def _reap_children_now(self) -> None:
        self.collect_children()

    # -- parent side -------------------------------------------------------------------

    def collect_children(self, *, blocking: bool = False) -> None:
        """Reap the children that have exited (all of them, if ``blocking``)."""
        for pid in list(self.active_children):
            status: Optional[int] = None
            try:
                done, status = os.waitpid(pid, 0 if blocking else os.WNOHANG)
            except ChildProcessError:
                done = pid  # reaped elsewhere: forget it
            except OSError:
                continue
            if done:
                self._forget_child(pid, status)

    def handle_timeout(self) -> None:
        self.collect_children()

    def service_actions(self) -> None:
        super().service_actions()
        if not _HAVE_PIDFD:
            self.collect_children()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Fork; the child runs the request and exits, the parent closes its copy."""
        while len(self.active_children) >= self.max_children:
            self._wait_for_a_child()  # only without a loop: the loop holds accepts
        entry = self._track(request, client_address)
        try:
            pid = os.fork()
        except BaseException as exc:
            self._ended(entry, exc)
            raise
        if pid:
            self._child_requests[pid] = entry
            self._started(entry, pid)
            self._track_child(pid)
            self.close_request(request)
            return
        self._run_in_child(request, client_address)

    def _wait_for_a_child(self) -> None:
        oldest = next(iter(self.active_children))
        try:
            os.waitpid(oldest, 0)
        except ChildProcessError:
            pass  # already reaped elsewhere: nothing left to wait for
        self._forget_child(oldest)

    def _track_child(self, pid: int) -> None:
        self.active_children.add(pid)
        if _HAVE_PIDFD:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pidfd = -1  # old kernel: service_actions cannot help; reap on max
            if pidfd >= 0:
                import functools  # noqa: PLC0415 - not loaded by socketserver on 3.13: defer

                self._child_pidfds[pid] = pidfd
                self._watch(pidfd, functools.partial(self._child_exited, pid))
        if len(self.active_children) >= self.max_children:
            self._hold_accept("max-children")

    def _child_exited(self, pid: int) -> None:
        status: Optional[int] = None
        try:
            _pid, status = os.waitpid(pid, 0)  # the pidfd said it exited: no blocking
        except ChildProcessError:
            pass
        self._forget_child(pid, status)

    def _forget_child(self, pid: int, status: Optional[int] = None) -> None:
        self.active_children.discard(pid)
        entry = self._child_requests.pop(pid, None)
        if entry is not None:
            self._ended(entry, _exit_failure(pid, status))
        pidfd = self._child_pidfds.pop(pid, None)
        if pidfd is not None:
            self._unwatch(pidfd)
            os.close(pidfd)
        if len(self.active_children) < self.max_children:
            self._release_accept("max-children")

    def server_close(self) -> None:
        super().server_close()
        if self.block_on_close and self.close_timeout is not None:
            self._settle(self.close_timeout, None, "server_close")
        self.collect_children(blocking=self.block_on_close)
        for pidfd in self._child_pidfds.values():  # children left running
            self._unwatch(pidfd)
            os.close(pidfd)
        self._child_pidfds.clear()

    # -- child side --------------------------------------------------------------------

    def _run_in_child(self, request: Any, client_address: Any) -> None:
        status = 1
        try:
            self._become_child()
            self.finish_request(request, client_address)
            status = 0
        except Exception:
            self.handle_error(request, client_address)
        finally:
            try:
                self.shutdown_request(request)
            finally:
                os._exit(status)

    def _become_child(self) -> None:
        """Drop what belongs to the parent: its listener and its children."""
        for pidfd in self._child_pidfds.values():
            os.close(pidfd)
        self._child_pidfds.clear()
        self.active_children = set()
        self._child_requests = {}
        listener = getattr(self, "socket", None)
        # A datagram server replies through its one socket, so only a stream
        # listener is closed.
        if isinstance(listener, socket.socket) and listener.type == socket.SOCK_STREAM:
            listener.close()
