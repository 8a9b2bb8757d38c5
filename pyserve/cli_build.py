"""From command-line words to servers: bind strings, targets, and server classes.

The ``pyserve`` command (:mod:`pyserve.cli`) turns each ``--bind`` into a
:class:`Bind`, the positional TARGET into a :class:`Target`, and the two into a
server with :func:`build_server`. Everything here raises :class:`CliError`
(carrying the exit code the command will return) or ``OSError`` from the socket
calls themselves; nothing prints or exits.

How a server class is made
--------------------------
The command never modifies a user's class. It composes a fresh class per bind,
exactly as one would by hand (``class Server(Feature..., Strategy, Transport)``):

* the *transport* comes from the bind: ``TCPServer``, ``UDPServer``,
  ``UnixStreamServer`` or ``UnixDatagramServer``;
* the *strategy* from ``--concurrency``: none (``sync``), ``ThreadingMixIn``
  (``thread``), ``ForkingMixIn`` (``fork``);
* each *feature* option is one small function below that returns the mix-ins
  and class attributes it needs (``explain`` for ``--trace``, the access log).
  Class attributes, not constructor arguments, so the same class also works
  where a server is built for us (prefork workers build theirs after the fork).
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Callable, Optional, Union

from handlers import registry
from pyserve.base import BaseServer
from pyserve.concurrency import ForkingMixIn, ThreadingMixIn
from pyserve.pool import ThreadPoolMixIn
from pyserve.sockets import TCPServer, UDPServer

if hasattr(socket, "AF_UNIX"):
    from pyserve.sockets import UnixDatagramServer, UnixStreamServer

__all__ = [
    "Bind",
    "CliError",
    "Target",
    "build_server",
    "format_address",
    "parse_bind",
    "resolve_target",
    "server_class",
]

#: Exit code for a bad command line (argparse's own choice, kept for ours).
EXIT_USAGE = 2
#: Exit code for a TARGET that names nothing servable.
EXIT_TARGET = 3

CONCURRENCY = ("sync", "thread", "pool", "fork")


class CliError(Exception):
    """A mistake the command reports in one line, with the exit code to return."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- --bind -------------------------------------------------------------------------


@dataclass(frozen=True)
class Bind:
    """One ``--bind`` value, parsed.

    ``transport`` is ``"tcp"``, ``"udp"``, ``"unix"`` (stream) or ``"unixgram"``;
    ``address`` is ``(host, port)`` or a path.
    """

    text: str
    transport: str
    address: Any

    @property
    def datagram(self) -> bool:
        """Whether requests are datagrams (the registry's ``"udp"`` handlers)."""
        return self.transport in ("udp", "unixgram")


def parse_bind(text: str) -> Bind:
    """Parse ``HOST:PORT``, ``[::1]:PORT``, ``tcp://``/``udp://HOST:PORT``,
    ``unix:/path`` or ``unixgram:/path``; :class:`CliError` says what is wrong."""
    for prefix, transport in (("unix:", "unix"), ("unixgram:", "unixgram")):
        if text.startswith(prefix):
            path = text[len(prefix) :]
            if not path:
                raise CliError(f"bad --bind {text!r}: {prefix} needs a path", EXIT_USAGE)
            return Bind(text, transport, path)
    transport, rest = "tcp", text
    if "://" in text:
        transport, _, rest = text.partition("://")
        if transport not in ("tcp", "udp"):
            raise CliError(
                f"bad --bind {text!r}: unknown scheme {transport!r} "
                "(use HOST:PORT, udp://HOST:PORT, unix:/path or unixgram:/path)",
                EXIT_USAGE,
            )
    host, colon, port_text = rest.rpartition(":")
    if not colon:
        raise CliError(f"bad --bind {text!r}: expected HOST:PORT", EXIT_USAGE)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise CliError(f"bad --bind {text!r}: write IPv6 hosts as [ADDRESS]:PORT", EXIT_USAGE)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise CliError(f"bad --bind {text!r}: port must be 0-65535", EXIT_USAGE)
    # An empty host means every interface, like the stdlib's ("", port).
    return Bind(text, transport, (host or "0.0.0.0", int(port_text)))


def format_address(transport: str, address: Any) -> str:
    """A bound address as a ``--bind`` would spell it (port 0 resolved)."""
    if transport in ("unix", "unixgram"):
        path = os.fsdecode(address) if isinstance(address, bytes) else str(address)
        return f"{transport}:{path}"
    host, port = address[0], address[1]
    host = f"[{host}]" if ":" in host else host
    return f"{transport}://{host}:{port}"


# -- TARGET --------------------------------------------------------------------------


@dataclass
class Target:
    """What to serve: a handler class per transport, or a server factory."""

    name: str
    handlers: dict[str, type] = field(default_factory=dict)
    service: Optional[str] = None  # a registry name: handlers are looked up lazily
    factory: Optional[Callable[[Any], Any]] = None

    def handler_for(self, bind: Bind) -> type:
        """The handler class for ``bind``'s kind of request."""
        kind = "udp" if bind.datagram else "tcp"
        if self.service is not None:
            try:
                return registry.get(self.service, kind)
            except KeyError as exc:
                raise CliError(f"{exc.args[0]} (for --bind {bind.text})", EXIT_TARGET) from None
        return self.handlers[kind] if kind in self.handlers else next(iter(self.handlers.values()))


def resolve_target(text: str) -> Target:
    """A registry short name (``echo``) or ``module:attr`` (a handler class or a
    factory called with the address that returns a server)."""
    if ":" not in text:
        if text not in registry.names():
            known = ", ".join(registry.names())
            raise CliError(
                f"unknown target {text!r}: not a handler name ({known}) nor module:attr",
                EXIT_TARGET,
            )
        return Target(text, service=text)
    module_name, _, attribute = text.partition(":")
    # Like `python -m`, look in the current directory first: `pyserve app:Handler`.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except ImportError as exc:
        raise CliError(f"cannot import target {text!r}: {exc}", EXIT_TARGET) from exc
    except AttributeError:
        message = f"target {text!r}: {module_name} has no {attribute!r}"
        raise CliError(message, EXIT_TARGET) from None
    if isinstance(found, type):
        if hasattr(found, "serve_forever"):
            raise CliError(
                f"target {text!r} is a server class: name its handler class, "
                "or a function that returns a server",
                EXIT_TARGET,
            )
        return Target(text, handlers={"tcp": found})
    if callable(found):
        return Target(text, factory=found)
    raise CliError(f"target {text!r} is neither a handler class nor a factory", EXIT_TARGET)


# -- server classes: one small function per feature ----------------------------------

Features = tuple[tuple[type, ...], dict[str, Any]]


def transport_class(bind: Bind) -> type:
    """The socket server class for ``bind``."""
    if bind.transport in ("unix", "unixgram"):
        if not hasattr(socket, "AF_UNIX"):
            raise CliError(f"--bind {bind.text}: no Unix sockets here", EXIT_USAGE)
        return UnixStreamServer if bind.transport == "unix" else UnixDatagramServer
    return UDPServer if bind.transport == "udp" else TCPServer


def strategy_mixins(concurrency: str) -> tuple[type, ...]:
    """``--concurrency``: the mix-in that decides where a request runs."""
    if concurrency == "thread":
        return (ThreadingMixIn,)
    if concurrency == "pool":
        return (ThreadPoolMixIn,)
    if concurrency == "fork":
        if not hasattr(os, "fork"):
            raise CliError("--concurrency fork: this platform cannot fork", EXIT_USAGE)
        return (ForkingMixIn,)
    return ()


def pool_feature(concurrency: str, max_workers: Optional[int]) -> Features:
    """``--max-workers``: the thread pool's size (``--concurrency pool`` only)."""
    if max_workers is None:
        return ((), {})
    if concurrency != "pool":
        raise CliError("--max-workers needs --concurrency pool", EXIT_USAGE)
    return ((), {"max_workers": max_workers})


def limits_feature(idle_timeout: Optional[float], max_connections: Optional[int]) -> Features:
    """``--idle-timeout`` and ``--max-connections``: the per-connection protections
    of :mod:`pyserve.limits`, as server attributes (every stream handler obeys them)."""
    attributes: dict[str, Any] = {}
    if idle_timeout is not None:
        attributes["idle_timeout"] = idle_timeout
    if max_connections is not None:
        attributes["max_connections"] = max_connections
    return ((), attributes)


def trace_feature(stream: Optional[IO[str]]) -> Features:
    """``--trace``: explain mode, one line per hook call, to ``stream``."""
    return ((), {"explain": stream}) if stream is not None else ((), {})


if TYPE_CHECKING:
    _Base = BaseServer
else:
    _Base = object


class AccessLogMixIn(_Base):
    """Logs one line per request to ``pyserve.access``: client, duration, outcome."""

    access_logger = logging.getLogger("pyserve.access")

    def finish_request(self, request: Any, client_address: Any) -> None:
        started = time.monotonic()
        outcome = "error"
        try:
            super().finish_request(request, client_address)
            outcome = "ok"
        finally:
            self.access_logger.info(
                "%s %.3fs %s", _client(client_address), time.monotonic() - started, outcome
            )


def _client(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else address[0]
        return f"{host}:{address[1]}"
    return str(address or "-")  # a Unix peer is usually unnamed


def access_log_feature(enabled: bool) -> Features:
    """``--access-log``: the access-log mix-in."""
    return ((AccessLogMixIn,), {}) if enabled else ((), {})


def server_class(bind: Bind, concurrency: str, features: list[Features]) -> type:
    """Compose ``class Server(*features, strategy, transport)`` for ``bind``."""
    transport = transport_class(bind)
    mixins: list[type] = []
    attributes: dict[str, Any] = {"__module__": __name__}
    for feature_mixins, feature_attributes in features:
        mixins.extend(feature_mixins)
        attributes.update(feature_attributes)
    if transport is TCPServer and ":" in bind.address[0]:
        attributes["address_family"] = socket.AF_INET6
    if concurrency == "thread":
        # Request threads are joined by server_close() (block_on_close); a forced
        # stop ends the process instead of waiting for them.
        attributes["daemon_threads"] = False
    bases = (*mixins, *strategy_mixins(concurrency), transport)
    name = "".join(base.__name__.replace("MixIn", "") for base in bases)
    return type(name, bases, attributes)


def build_server(
    target: Target, bind: Bind, concurrency: str, features: list[Features]
) -> Union[BaseServer, Any]:
    """A bound, listening server for ``bind`` (``OSError`` if the socket fails)."""
    if target.factory is not None:
        server = target.factory(bind.address)
        if not hasattr(server, "serve_forever"):
            raise CliError(
                f"target {target.name!r} returned {server!r}, not a server", EXIT_TARGET
            )
        return server
    handler = target.handler_for(bind)
    return server_class(bind, concurrency, features)(bind.address, handler)
