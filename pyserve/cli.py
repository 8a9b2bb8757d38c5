"""The ``pyserve`` command: serve a handler from the command line.

``python -m pyserve`` (or ``pyserve``) with no arguments serves a line echo on
127.0.0.1:9999 and prints where, so a newcomer sees a server answer within a
minute (then ``nc 127.0.0.1 9999``). The general form::

    pyserve [TARGET] [--bind ADDRESS]... [--concurrency sync|thread|pool|fork]
            [--max-workers N] [--processes N] [--idle-timeout S] [--max-connections N]
            [--trace] [--access-log] [--log-level LEVEL]

TARGET is a name from the handlers registry (``echo``, ``daytime``, ...; see
``handlers.registry``) or ``module:attr``: a handler class, or a function that
takes the address and returns a server.

Once every socket is listening (port 0 resolved), the command prints one line
per bind on stdout, flushed, in a stable format that scripts may parse::

    pyserve: serving echo on tcp://127.0.0.1:9999

How it runs
-----------
One server per ``--bind``, each ``serve_forever()`` in its own thread. The main
thread only waits, on a socket pair that receives both signals
(``signal.set_wakeup_fd``) and "a server stopped" notes from the serving
threads: no polling. SIGTERM or SIGINT starts a graceful stop of every server
at once (``server.drain(grace)`` where the server has it, else ``shutdown()``
then ``server_close()``, which waits for requests in flight), bounded by
``--drain-timeout``; a second signal, or the deadline passing, ends the process
at once. With ``--processes N`` the prefork supervisor (:mod:`pyserve.prefork`)
runs instead and handles the signals itself (SIGHUP rolls the workers).

Exit codes
----------
====  =====================================================================
code  meaning
====  =====================================================================
0     stopped cleanly after SIGTERM/SIGINT
1     stop forced: a second signal, or requests still running at the deadline
2     bad command line, including a malformed ``--bind``
3     TARGET names nothing servable (unknown name, import error, wrong kind)
4     address already in use
5     permission denied (a privileged port, an unwritable socket path)
6     any other error opening a socket (address not available, ...)
7     a server's loop failed unexpectedly
====  =====================================================================

Errors are one line on stderr (``pyserve: error: ...``); with ``--log-level
debug`` the traceback follows.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import platform
import selectors
import signal
import socket
import sys
import threading
import time
from types import FrameType
from typing import Any, Callable, Optional

import pyserve
from pyserve import cli_build
from pyserve.cli_build import (
    EXIT_TARGET,
    EXIT_USAGE,
    Bind,
    CliError,
    Features,
    Target,
    format_address,
    parse_bind,
    resolve_target,
)
from pyserve.prefork import Prefork

__all__ = ["main"]

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_ADDRESS_IN_USE = 4
EXIT_PERMISSION = 5
EXIT_BIND_FAILED = 6
EXIT_CRASHED = 7
assert (EXIT_USAGE, EXIT_TARGET) == (2, 3)  # defined with the parsers that raise them

DEFAULT_TARGET = "echo"
DEFAULT_BIND = "127.0.0.1:9999"
#: Seconds a drain waits after forcing (shutting connections for reading): a
#: handler blocked on a read sees EOF at once, so two seconds is plenty.
FORCE_TIMEOUT = 2.0
#: Seconds allowed beyond the drain for the servers to close their sockets.
CLOSE_MARGIN = 2.0

logger = logging.getLogger("pyserve.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyserve",
        description="Serve a handler: a name from the handlers registry or module:attr.",
        epilog="Exit codes: 0 ok, 1 forced stop, 2 usage, 3 bad target, "
        "4 address in use, 5 permission denied, 6 socket error, 7 server failed.",
    )
    parser.add_argument(
        "target",
        nargs="?",
        default=DEFAULT_TARGET,
        help="handler short name (e.g. echo, daytime) or module:attr (default: %(default)s)",
    )
    parser.add_argument(
        "--bind",
        action="append",
        metavar="ADDRESS",
        help="HOST:PORT, [::]:PORT, udp://HOST:PORT, unix:/path or unixgram:/path; "
        f"repeat for several servers (default: {DEFAULT_BIND})",
    )
    parser.add_argument(
        "--concurrency",
        choices=cli_build.CONCURRENCY,
        default="thread",
        help="where a request runs: the loop's thread, a new thread, a child process "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-workers",
        type=_positive(int),
        metavar="N",
        help="threads in the pool (--concurrency pool; default 32)",
    )
    parser.add_argument(
        "--processes",
        type=_positive(int),
        metavar="N",
        help="prefork: N worker processes share the port (one --bind)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=_positive(float),
        default=10.0,
        metavar="SECONDS",
        help="how long a graceful stop may wait for requests in flight (default: %(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_positive(float),
        metavar="SECONDS",
        help="drop a connection silent this long (stream servers)",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive(int),
        metavar="N",
        help="refuse connections beyond N in flight at once",
    )
    parser.add_argument(
        "--trace", action="store_true", help="explain mode: print every hook call on stderr"
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log one line per request (pyserve.access)"
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="logging threshold; debug also shows tracebacks (default: %(default)s)",
    )
    parser.add_argument("--version", action="version", version=version_text())
    return parser


def version_text() -> str:
    implementation = platform.python_implementation()
    return f"pyserve {pyserve.__version__} ({implementation} {platform.python_version()})"


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


# -- feature wiring: each option becomes mix-ins and class attributes ------------


def features_from(args: argparse.Namespace) -> list[Features]:
    return [
        cli_build.pool_feature(args.concurrency, args.max_workers),
        cli_build.limits_feature(args.idle_timeout, args.max_connections),
        cli_build.trace_feature(sys.stderr if args.trace else None),
        cli_build.access_log_feature(args.access_log),
    ]


# -- main ---------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command; returns its exit code (the console script exits with it)."""
    args = build_parser().parse_args(argv)
    debug = args.log_level == "debug"
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return run(args)
    except CliError as exc:
        return _fail(str(exc), exc.exit_code, debug)
    except OSError as exc:
        code = {
            errno.EADDRINUSE: EXIT_ADDRESS_IN_USE,
            errno.EACCES: EXIT_PERMISSION,
            errno.EPERM: EXIT_PERMISSION,
        }.get(exc.errno or 0, EXIT_BIND_FAILED)
        return _fail(_describe_os_error(exc), code, debug)


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        logger.exception("the traceback")
    print(f"pyserve: error: {message}", file=sys.stderr, flush=True)
    return code


def _describe_os_error(exc: OSError) -> str:
    where = getattr(exc, "pyserve_bind", None)
    reason = exc.strerror or str(exc)
    return f"cannot listen on {where}: {reason}" if where else reason


def run(args: argparse.Namespace) -> int:
    """Build the servers for ``args`` and serve them until a signal."""
    binds = [parse_bind(text) for text in (args.bind or [DEFAULT_BIND])]
    target = resolve_target(args.target)
    features = features_from(args)
    if args.processes is not None:
        return run_prefork(args, target, binds, features)
    servers: list[Any] = []
    try:
        for bind in binds:
            servers.append(_open(target, bind, args.concurrency, features))
    except BaseException:
        for server in servers:
            server.server_close()
        raise
    return serve_until_signalled(servers, binds, target, args.drain_timeout)


def _open(target: Target, bind: Bind, concurrency: str, features: list[Features]) -> Any:
    try:
        return cli_build.build_server(target, bind, concurrency, features)
    except OSError as exc:
        exc.pyserve_bind = bind.text  # type: ignore[attr-defined]
        raise


def announce(target: Target, server: Any, bind: Bind) -> None:
    """The line scripts and tests wait for: the server is listening, here."""
    where = format_address(bind.transport, server.server_address)
    print(f"pyserve: serving {target.name} on {where}", flush=True)


def run_prefork(
    args: argparse.Namespace, target: Target, binds: list[Bind], features: list[Features]
) -> int:
    """``--processes N``: the prefork supervisor serves the one bind."""
    if len(binds) != 1 or target.factory is not None:
        raise CliError("--processes needs exactly one --bind and a handler target", EXIT_USAGE)
    if not hasattr(os, "fork"):
        raise CliError("--processes: this platform cannot fork", EXIT_USAGE)
    bind = binds[0]
    server_class = cli_build.server_class(bind, args.concurrency, features)
    try:
        supervisor = Prefork(
            server_class,
            bind.address,
            target.handler_for(bind),
            workers=args.processes,
            drain_timeout=args.drain_timeout,
        )
    except OSError as exc:
        exc.pyserve_bind = bind.text  # type: ignore[attr-defined]
        raise
    with supervisor:
        announce(target, supervisor, bind)
        return supervisor.run()


# -- serving several servers until a signal --------------------------------------

_STOPPED = b"s"  # a serving thread's note: its loop returned
_CRASHED = b"c"  # ... its loop raised
_CLOSED = b"d"  # a stopper thread's note: its server is drained and closed


def serve_until_signalled(
    servers: list[Any], binds: list[Bind], target: Target, drain_timeout: float
) -> int:
    """Serve every server in its own thread; stop them all on SIGTERM/SIGINT."""
    notes_in, notes_out = socket.socketpair()
    for end in (notes_in, notes_out):
        end.setblocking(False)
    signals_in, signals_out = socket.socketpair()
    for end in (signals_in, signals_out):
        end.setblocking(False)
    previous = _catch_signals(signals_out.fileno())
    try:
        threads = [_start_serving(server, notes_out) for server in servers]
        for server, bind in zip(servers, binds):
            announce(target, server, bind)
        return _wait_and_stop(
            servers, threads, signals_in, notes_in, notes_out=notes_out, grace=drain_timeout
        )
    finally:
        _restore_signals(previous)
        for end in (notes_in, notes_out, signals_in, signals_out):
            end.close()


def _start_serving(server: Any, notes: socket.socket) -> threading.Thread:
    def serve() -> None:
        note = _CRASHED
        try:
            server.serve_forever()
            note = _STOPPED
        except Exception:
            logger.exception("the server for %s failed", server.server_address)
        finally:
            _send(notes, note)

    thread = threading.Thread(target=serve, name=f"serve {server.server_address}", daemon=True)
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
                    if stopping_since is not None:
                        logger.warning("second signal: forcing the stop")
                        return _force()
                    name = signal.Signals(data[0]).name
                    logger.info("%s: draining (up to %ss)", name, grace)
                elif _CRASHED in data:
                    exit_code = EXIT_CRASHED
                closed += data.count(_CLOSED)
                if stopping_since is None and (key.data == "signal" or _CRASHED in data):
                    stopping_since = time.monotonic()
                    _stop_all(servers, threads, notes_out, grace)
    if exit_code == EXIT_OK:
        logger.info("stopped")
    return exit_code


def _stop_all(
    servers: list[Any], threads: list[threading.Thread], notes: socket.socket, grace: float
) -> None:
    """Drain and close every server at once, each in a thread of its own."""
    for server, serving in zip(servers, threads):

        def stop(server: Any = server, serving: threading.Thread = serving) -> None:
            try:
                drain = getattr(server, "drain", None)
                if callable(drain):
                    report = drain(grace, force_timeout=FORCE_TIMEOUT)
                    logger.info("%s drained: %s", server.server_address, report)
                else:
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
