"""The ``pyserve`` command's serving phase: several servers, one signal-driven stop.

:func:`serve_until_signalled` runs each server's ``serve_forever()`` in a thread
of its own and leaves the main thread waiting on two socket pairs: one receives
signals (``signal.set_wakeup_fd`` writes the signal number as a byte), the other
receives notes from the serving and stopping threads. One ``select()`` sees both,
so nothing polls.

The first SIGTERM or SIGINT (or a server loop that dies) starts a stop of every
server at once, each in its own thread: ``drain(grace)`` where the server has it
(stop accepting, let requests finish, then force them), ``shutdown()``, join the
serving thread, ``server_close()``. The main thread waits for every "closed"
note until a deadline; a second signal, or the deadline, ends the process with
``os._exit`` (request threads that ignore the drain would otherwise hold the
interpreter's exit forever).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from types import FrameType
from typing import Any, Callable, Optional

from pyserve.cli.exits import EXIT_CRASHED, EXIT_FORCED, EXIT_OK

__all__ = ["drain_summary", "serve_until_signalled"]

logger = logging.getLogger("pyserve.cli")

#: Seconds a drain waits after forcing (shutting connections for reading): a
#: handler blocked on a read sees EOF at once, so a quarter second is plenty,
#: and the documented deadline (--drain-timeout) stays the real one.
FORCE_TIMEOUT = 0.25
#: Seconds allowed beyond that for the servers to close their sockets; then the
#: process ends at once. So the command exits half a second past
#: --drain-timeout at the latest, whatever its handlers do (plus the moment
#: os._exit() and the kernel take to end the process).
CLOSE_MARGIN = 0.25

# -- serving several servers until a signal --------------------------------------

_STOPPED = b"s"  # a serving thread's note: its loop returned
_CRASHED = b"c"  # ... its loop raised
_CLOSED = b"d"  # a stopper thread's note: its server is drained and closed


def serve_until_signalled(
    servers: list[Any],
    announce: Callable[[], None],
    drain_timeout: float,
    names: Optional[list[str]] = None,
) -> int:
    """Serve every server in its own thread; call ``announce()`` once they all
    listen with signals caught; stop them all on SIGTERM/SIGINT. ``names`` are
    the servers' addresses as announced (for the log). Returns the exit code."""
    names = names or [str(server.server_address) for server in servers]
    notes_in, notes_out = socket.socketpair()
    for end in (notes_in, notes_out):
        end.setblocking(False)
    signals_in, signals_out = socket.socketpair()
    for end in (signals_in, signals_out):
        end.setblocking(False)
    previous = _catch_signals(signals_out.fileno())
    try:
        threads = [
            _start_serving(server, f"serve-{number}", notes_out)
            for number, server in enumerate(servers, 1)
        ]
        announce()
        return _wait_and_stop(
            servers, threads, signals_in, notes_in,
            notes_out=notes_out, grace=drain_timeout, names=names,
        )  # fmt: skip
    finally:
        _restore_signals(previous)
        for end in (notes_in, notes_out, signals_in, signals_out):
            end.close()


def _start_serving(server: Any, name: str, notes: socket.socket) -> threading.Thread:
    def serve() -> None:
        note = _CRASHED
        try:
            server.serve_forever()
            note = _STOPPED
        except Exception:
            logger.exception("the server for %s failed", server.server_address)
        finally:
            _send(notes, note)

    # A short name: explain mode (--trace) prints it in a 10-character column.
    thread = threading.Thread(target=serve, name=name, daemon=True)
    thread.start()
    return thread


def _send(sock: socket.socket, note: bytes) -> None:
    try:
        sock.send(note)
    except OSError:
        pass  # the main thread has gone: nobody is waiting for the note


def _wait_and_stop(
    servers: list[Any],
    threads: list[threading.Thread],
    signals: socket.socket,
    notes: socket.socket,
    *,
    notes_out: socket.socket,
    grace: float,
    names: list[str],
) -> int:
    exit_code = EXIT_OK
    stopping_since: Optional[float] = None
    closed = 0
    with selectors.DefaultSelector() as selector:
        selector.register(signals, selectors.EVENT_READ, "signal")
        selector.register(notes, selectors.EVENT_READ, "note")
        while closed < len(servers):
            timeout = None
            if stopping_since is not None:
                deadline = stopping_since + grace + FORCE_TIMEOUT + CLOSE_MARGIN
                timeout = max(0.0, deadline - time.monotonic())
            ready = selector.select(timeout)
            if not ready:
                logger.error("requests still running after %ss: forcing the stop", grace)
                return _force()
            for key, _ in ready:
                data = key.fileobj.recv(64)  # type: ignore[union-attr]
                if key.data == "signal":
                    # One byte per signal: two signals may arrive as one read.
                    if stopping_since is not None or len(data) > 1:
                        logger.warning("second signal: forcing the stop")
                        return _force()
                    logger.info(
                        "%s: draining (up to %s s, %s in flight); "
                        "a second Ctrl-C or SIGTERM stops at once",
                        signal.Signals(data[0]).name, f"{grace:g}", _in_flight(servers),
                    )  # fmt: skip
                elif _CRASHED in data:
                    exit_code = EXIT_CRASHED
                closed += data.count(_CLOSED)
                if stopping_since is None and (key.data == "signal" or _CRASHED in data):
                    stopping_since = time.monotonic()
                    _stop_all(servers, threads, notes_out, grace, names)
    if exit_code == EXIT_OK:
        logger.info("stopped")
    return exit_code


def _in_flight(servers: list[Any]) -> str:
    count = 0
    for server in servers:
        in_flight = getattr(server, "in_flight", None)
        count += len(in_flight()) if callable(in_flight) else 0
    return f"{count} request{'s' if count != 1 else ''}"


def drain_summary(name: str, report: Any) -> str:
    """One readable line for a :class:`~pyserve.lifecycle.drain.DrainReport`."""
    stragglers = len(report.stragglers)
    return (
        f"{name} drained in {report.elapsed:.2f} s: {report.completed} finished, "
        f"{report.forced} forced, {stragglers} still running"
    )


def _stop_all(
    servers: list[Any],
    threads: list[threading.Thread],
    notes: socket.socket,
    grace: float,
    names: list[str],
) -> None:
    """Drain and close every server at once, each in a thread of its own."""
    for server, serving, name in zip(servers, threads, names):

        def stop(
            server: Any = server, serving: threading.Thread = serving, name: str = name
        ) -> None:
            try:
                drain = getattr(server, "drain", None)
                if callable(drain):
                    report = drain(grace, force_timeout=FORCE_TIMEOUT)
                    logger.info("%s", drain_summary(name, report))
                # Always, even after drain(): drain stops only a loop already
                # running, and a signal may come before serve_forever() started
                # (shutdown() first makes it return at once).
                server.shutdown()
                serving.join()
                server.server_close()
            finally:
                _send(notes, _CLOSED)

        threading.Thread(target=stop, name="stop", daemon=True).start()


def _force() -> int:
    """End the process now: request threads may be stuck, and would hold exit."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_FORCED)


def _catch_signals(wakeup_fd: int) -> Any:
    """Route SIGTERM/SIGINT to ``wakeup_fd`` (the signal number as one byte)."""

    def note(signum: int, frame: Optional[FrameType]) -> None:
        """The byte on the wake-up descriptor is the message; nothing else to do."""

    previous_fd = signal.set_wakeup_fd(wakeup_fd)
    handlers = {sig: signal.signal(sig, note) for sig in (signal.SIGTERM, signal.SIGINT)}
    return previous_fd, handlers


def _restore_signals(previous: Any) -> None:
    previous_fd, handlers = previous
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    signal.set_wakeup_fd(previous_fd)
