"""The ``pyserve`` command: serve a handler from the command line.

``python -m pyserve`` (or ``pyserve``) with no arguments serves a line echo on
127.0.0.1:9999 and prints where, so a newcomer sees a server answer within a
minute (then ``nc 127.0.0.1 9999``). The general form::

    pyserve [TARGET] [--bind ADDRESS]... [--concurrency sync|thread|pool|fork|multiplex]
            [--max-workers N] [--processes N] [--drain-timeout S] [--socket-mode OCTAL]
            [--tls-cert PEM [--tls-key PEM] [--tls-ca PEM [--tls-verify-client]]]
            [--proxy-protocol v1|v2|auto --trusted-proxy NETWORK...]
            [--idle-timeout S] [--max-connections N] [--max-connections-per-client N]
            [--trace] [--access-log] [--log-level LEVEL]

TARGET is a name from the handlers registry (``echo``, ``daytime``, ...; see
``handlers.registry``) or ``module:attr``: a handler class, a stream and a
datagram class (``module:Stream,Datagram``), or a function that takes the address
and returns a server (:mod:`pyserve.cli.target`).

Once every socket is listening (port 0 resolved), the command prints one line
per bind on stdout, flushed, in a stable format that scripts may parse::

    pyserve: serving echo on tcp://127.0.0.1:9999

(``udp://`` for UDP, ``tls://`` for TLS over TCP, ``unix:``/``unixgram:`` paths.)

How it runs
-----------
One server per ``--bind``, each ``serve_forever()`` in its own thread. The main
thread only waits, on a socket pair that receives both signals
(``signal.set_wakeup_fd``) and "a server stopped" notes from the serving
threads: no polling. SIGTERM or SIGINT starts a graceful stop of every server
at once (``server.drain(grace)`` where the server has it, else ``shutdown()``
then ``server_close()``, which waits for requests in flight), bounded by
``--drain-timeout``; a second signal, or the deadline passing, ends the process
at once. With ``--processes N`` the prefork supervisor (:mod:`pyserve.prefork.supervisor`)
runs instead and handles the signals itself (SIGHUP rolls the workers).

Exit codes
----------
====  =====================================================================
code  meaning
====  =====================================================================
0     stopped cleanly after SIGTERM/SIGINT
1     stop forced: a second signal, or requests still running at the deadline
      (or Ctrl-C before the servers listen)
2     bad command line, including a malformed ``--bind``
3     TARGET names nothing servable (unknown name, import error, wrong kind,
      Ctrl-C while importing it)
4     address already in use
5     permission denied (a privileged port, an unwritable socket path)
6     the TLS certificate, key or CA cannot be loaded
7     any other socket error (address not available, no such descriptor,
      no socket passed by systemd, ...)
8     a server's loop failed unexpectedly
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
import shutil
import sys
import textwrap
from typing import Any, Callable, Optional, Union

import pyserve
from pyserve.cli import build as cli_build
from pyserve.cli import features as cli_features
from pyserve.cli.build import THREAD_PER_CLIENT, Bind, Features, format_address, parse_bind
from pyserve.cli.exits import (
    EXIT_ADDRESS_IN_USE,
    EXIT_CRASHED,
    EXIT_FORCED,
    EXIT_OK,
    EXIT_PERMISSION,
    EXIT_SOCKET,
    EXIT_TARGET,
    EXIT_TLS,
    EXIT_USAGE,
    CliError,
)
from pyserve.cli.run import serve_until_signalled
from pyserve.cli.target import Target, ready_handlers, resolve_target

__all__ = ["main"]

# Every documented exit code, importable from here (tests and scripts use them).
EXIT_CODES = (
    EXIT_OK, EXIT_FORCED, EXIT_USAGE, EXIT_TARGET, EXIT_ADDRESS_IN_USE,
    EXIT_PERMISSION, EXIT_TLS, EXIT_SOCKET, EXIT_CRASHED,
)  # fmt: skip

DEFAULT_TARGET = "echo"
DEFAULT_BIND = "127.0.0.1:9999"

logger = logging.getLogger("pyserve.cli")


class _Parser(argparse.ArgumentParser):
    """``--help`` ends with the ready handlers' names, read from the registry only
    then (loading it is not free, and a ``module:attr`` run never needs it)."""

    def format_help(self) -> str:
        try:
            registry = ready_handlers()
            lines = _name_column([(name, registry.describe(name)) for name in registry.names()])
        except CliError as exc:
            lines = [f"  ({exc})"]
        return super().format_help() + "\nready handlers (TARGET):\n" + "\n".join(lines) + "\n"


def _name_column(entries: list[tuple[str, str]]) -> list[str]:
    """``name  description`` lines, the descriptions in one column and wrapped to
    the terminal's width as argparse wraps the options (its ``COLUMNS`` too)."""
    width = max(40, shutil.get_terminal_size().columns - 2)
    column = 2 + max(len(name) for name, _ in entries) + 2
    lines = []
    for name, description in entries:
        wrapped = textwrap.wrap(
            description, max(20, width - column), break_on_hyphens=False, break_long_words=False
        ) or [""]
        lines.append(f"  {name:<{column - 4}}  {wrapped[0]}".rstrip())
        lines.extend(" " * column + more for more in wrapped[1:])
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pyserve",
        description="Serve a handler: a name from the handlers registry or module:attr.",
        epilog="TARGET: a ready handler's name (below), module:Class, "
        "module:StreamClass,DatagramClass, or module:function (called with the address, "
        "returns a server). "
        "Exit codes: 0 ok, 1 forced stop, 2 usage, 3 bad target, "
        "4 address in use, 5 permission denied, 6 TLS certificate, 7 socket error, "
        "8 server failed.",
    )
    parser.add_argument(
        "target",
        nargs="?",
        default=DEFAULT_TARGET,
        help="a ready handler's name (listed below) or module:attr (default: %(default)s)",
    )
    parser.add_argument(
        "--bind",
        action="append",
        metavar="ADDRESS",
        help="HOST:PORT, [::]:PORT, udp://HOST:PORT, unix:/path, unixgram:/path, fd://N, "
        "systemd or systemd:NAME; "
        f"repeat for several servers (default: {DEFAULT_BIND})",
    )
    parser.add_argument(
        "--concurrency",
        choices=cli_build.CONCURRENCY,
        default=None,
        help="where a request runs: the loop's thread, a new thread, a pool thread, a "
        "child process, or one I/O thread for every connection (default: multiplex for "
        "a pyserve.ConnectionHandler, else thread)",
    )
    _add_positive(
        parser, "--max-workers", int, "threads in the pool (--concurrency pool; default 32)"
    )
    _add_positive(
        parser, "--processes", int, "prefork: N worker processes share the port (one --bind)"
    )
    _add_positive(
        parser,
        "--drain-timeout",
        float,
        "how long a graceful stop may wait for requests in flight (default: %(default)s)",
        default=10.0,
    )
    parser.add_argument(
        "--socket-mode",
        metavar="OCTAL",
        help="permissions of a unix: or unixgram: socket file, e.g. 600 or 660",
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain")
    parser.add_argument("--tls-key", metavar="PEM", help="its private key (if not in --tls-cert)")
    parser.add_argument(
        "--tls-ca",
        metavar="PEM",
        help="verify client certificates against these CAs (when a client sends one)",
    )
    parser.add_argument(
        "--tls-verify-client",
        action="store_true",
        help="mutual TLS: require a client certificate signed by --tls-ca",
    )
    parser.add_argument(
        "--proxy-protocol",
        choices=("v1", "v2", "auto"),
        help="expect a PROXY protocol header (from --trusted-proxy peers only)",
    )
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="NETWORK",
        help="an address or network allowed to send PROXY headers; repeatable "
        "('unix' trusts Unix-socket peers)",
    )
    _add_positive(
        parser, "--idle-timeout", float, "drop a connection silent this long (stream servers)"
    )
    _add_positive(parser, "--max-connections", int, "refuse connections beyond N in flight at once")
    parser.add_argument(
        "--max-connections-per-client",
        type=_count_or_zero,
        default=None,
        metavar="N",
        help="refuse a client host's connections beyond N in flight at once; 0: no limit "
        f"(default: {THREAD_PER_CLIENT} with thread, max-workers plus half the queue with pool)",
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


def _add_positive(
    parser: argparse.ArgumentParser,
    flag: str,
    kind: Union[type[int], type[float]],
    text: str,
    default: Optional[float] = None,
) -> None:
    """An option taking a number > 0: a count (int, shown as N) or seconds (float)."""
    parser.add_argument(
        flag,
        type=_positive(kind),
        default=default,
        metavar="N" if kind is int else "SECONDS",
        help=text,
    )


def _count_or_zero(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


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
        cli_features.pool_feature(args.concurrency, args.max_workers),
        cli_features.limits_feature(
            args.idle_timeout, args.max_connections, args.max_connections_per_client
        ),
        cli_features.proxy_feature(args.proxy_protocol, args.trusted_proxy),
        cli_features.tls_feature(args.tls_cert, args.tls_key, args.tls_ca, args.tls_verify_client),
        cli_features.socket_mode_feature(args.socket_mode),
        cli_features.trace_feature(sys.stderr if args.trace else None),
        cli_features.access_log_feature(args.access_log),
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
    except KeyboardInterrupt:  # before the servers listen (signals are caught after)
        return _fail("interrupted before serving", EXIT_FORCED, debug)
    except CliError as exc:
        return _fail(str(exc), exc.exit_code, debug)
    except OSError as exc:
        code = {
            errno.EADDRINUSE: EXIT_ADDRESS_IN_USE,
            errno.EACCES: EXIT_PERMISSION,
            errno.EPERM: EXIT_PERMISSION,
        }.get(exc.errno or 0, EXIT_SOCKET)
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
    actual: list[Bind] = []
    try:
        for bind in binds:
            server, bound = _open(target, bind, args.concurrency, features)
            servers.append(server)
            actual.append(bound)
    except BaseException:
        for server in servers:
            server.server_close()
        raise
    names = [where(server, bind) for server, bind in zip(servers, actual)]

    def announce_all() -> None:
        for name in names:
            print(f"pyserve: serving {target.name} on {name}", flush=True)

    return serve_until_signalled(servers, announce_all, args.drain_timeout, names)


def _open(
    target: Target, bind: Bind, concurrency: Optional[str], features: list[Features]
) -> tuple[Any, Bind]:
    try:
        return cli_build.build_server(target, bind, concurrency, features)
    except OSError as exc:
        exc.pyserve_bind = bind.text  # type: ignore[attr-defined]
        raise


def where(server: Any, bind: Bind) -> str:
    """A listening server's address as announced: ``tcp://``, ``udp://``, ``unix:``,
    ``unixgram:``; TLS (over TCP) is ``tls://``, over a Unix socket ``tls+unix:``."""
    address = format_address(bind.transport, server.server_address)
    if getattr(server, "ssl_context", None) is not None:
        address = (
            "tls://" + address[len("tcp://") :] if bind.transport == "tcp" else "tls+" + address
        )
    return address


def announce(target: Target, server: Any, bind: Bind) -> None:
    """The line scripts and tests wait for: the server is listening, here."""
    print(f"pyserve: serving {target.name} on {where(server, bind)}", flush=True)


def run_prefork(
    args: argparse.Namespace, target: Target, binds: list[Bind], features: list[Features]
) -> int:
    """``--processes N``: the prefork supervisor serves the one bind."""
    if len(binds) != 1 or target.factory is not None or binds[0].transport in ("fd", "systemd"):
        raise CliError(
            "--processes needs a handler target and exactly one address to bind", EXIT_USAGE
        )
    if not hasattr(os, "fork"):
        raise CliError("--processes: this platform cannot fork", EXIT_USAGE)
    bind = binds[0]
    handler = target.handler_for(bind.datagram, bind.text)
    strategy = cli_build.strategy_for(args.concurrency, handler)
    server_class = cli_build.server_class(bind, strategy, features)
    from pyserve.prefork.supervisor import Prefork  # noqa: PLC0415 - prefork runs only

    try:
        supervisor = Prefork(
            server_class,
            bind.address,
            handler,
            workers=args.processes,
            drain_timeout=args.drain_timeout,
        )
    except OSError as exc:
        exc.pyserve_bind = bind.text  # type: ignore[attr-defined]
        raise
    with supervisor:
        announce(target, supervisor, bind)
        return supervisor.run()
