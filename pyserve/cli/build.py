"""From command-line words to servers: bind strings and server classes.

The ``pyserve`` command (:mod:`pyserve.cli.command`) turns each ``--bind`` into a
:class:`Bind` and, with the TARGET (a :class:`~pyserve.cli.target.Target`), into a
server with :func:`build_server`. Everything here raises
:class:`~pyserve.cli.exits.CliError` (carrying the exit code the command will
return) or ``OSError`` from the socket calls themselves; nothing prints or exits.

How a server class is made
--------------------------
The command never modifies a user's class. It composes a fresh class per bind,
exactly as one would by hand (``class Server(Feature..., Strategy, Transport)``):

* the *transport* comes from the bind: ``TCPServer``, ``UDPServer``,
  ``UnixStreamServer`` or ``UnixDatagramServer``;
* the *strategy* from ``--concurrency``: none (``sync``), ``ThreadingMixIn``
  (``thread``), ``ThreadPoolMixIn`` (``pool``), ``ForkingMixIn`` (``fork``),
  ``MultiplexingMixIn`` (``multiplex``); without the option, ``multiplex`` for a
  :class:`~pyserve.multiplex.connection.ConnectionHandler` and ``thread`` for the rest;
* each *feature* option is one small function in :mod:`pyserve.cli.features`
  that returns the mix-ins and class attributes it needs (``explain`` for
  ``--trace``, the access log).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Optional, Union

from pyserve.base import BaseServer
from pyserve.cli.exits import EXIT_SOCKET, EXIT_TARGET, EXIT_USAGE, CliError
from pyserve.cli.target import Target
from pyserve.concurrency import ForkingMixIn, ThreadingMixIn
from pyserve.multiplex.connection import ConnectionHandler
from pyserve.multiplex.server import MultiplexingMixIn, finish_request_overriders
from pyserve.net import activation
from pyserve.pool.workers import ThreadPoolMixIn
from pyserve.request import DatagramRequestHandler
from pyserve.sockets import TCPServer, UDPServer

if hasattr(socket, "AF_UNIX"):
    from pyserve.unix import UnixDatagramServer, UnixStreamServer

__all__ = [
    "Bind",
    "Features",
    "build_server",
    "format_address",
    "parse_bind",
    "server_class",
    "strategy_for",
]

CONCURRENCY = ("sync", "thread", "pool", "fork", "multiplex")
#: ``--concurrency thread``'s default ``max_connections_per_client``: a thread
#: per connection costs memory, so one address may hold this many at once.
THREAD_PER_CLIENT = 256


# -- --bind -------------------------------------------------------------------------


@dataclass(frozen=True)
class Bind:
    """One ``--bind`` value, parsed.

    ``transport`` is ``"tcp"``, ``"udp"``, ``"unix"`` (stream) or ``"unixgram"``,
    and ``address`` is ``(host, port)`` or a path; or, for a socket opened by
    someone else, ``"fd"`` (``address`` is the descriptor) or ``"systemd"``
    (``address`` is the socket's name, or None for the only one).
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
    ``unix:/path``, ``unixgram:/path``, ``fd://N``, ``systemd`` or
    ``systemd:NAME``; :class:`~pyserve.cli.exits.CliError` says what is wrong."""
    if text == "systemd" or text.startswith("systemd:"):
        return Bind(text, "systemd", text.partition(":")[2] or None)
    if text.startswith("fd://"):
        number = text[len("fd://") :]
        if not number.isdigit():
            raise CliError(f"bad --bind {text!r}: fd:// needs a descriptor number", EXIT_USAGE)
        return Bind(text, "fd", int(number))
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
                "(use HOST:PORT, udp://HOST:PORT, unix:/path, unixgram:/path, fd://N or systemd)",
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


# -- server classes: one small function per feature ----------------------------------

#: One option's part of a server class: its mix-ins and its class attributes.
Features = tuple[tuple[type, ...], dict[str, Any]]


def transport_class(bind: Bind) -> type:
    """The socket server class for ``bind``."""
    if bind.transport in ("unix", "unixgram"):
        if not hasattr(socket, "AF_UNIX"):
            raise CliError(f"--bind {bind.text}: no Unix sockets here", EXIT_USAGE)
        return UnixStreamServer if bind.transport == "unix" else UnixDatagramServer
    return UDPServer if bind.transport == "udp" else TCPServer


def strategy_for(concurrency: Optional[str], handler: Any) -> str:
    """``--concurrency`` checked against the handler, or the handler's default.

    A :class:`~pyserve.multiplex.connection.ConnectionHandler` is called by one I/O thread and
    runs only multiplexed; every other handler blocks and runs anywhere else.

    A datagram handler runs in the loop thread by default (``sync``): answering a
    datagram takes microseconds, and a thread per datagram turns a flood into a
    flood of threads that drains a few thousand datagrams a second while a
    well-behaved client's datagrams are dropped by the kernel.
    """
    callbacks = isinstance(handler, type) and issubclass(handler, ConnectionHandler)
    if concurrency is None:
        if callbacks:
            return "multiplex"
        datagram = isinstance(handler, type) and issubclass(handler, DatagramRequestHandler)
        return "sync" if datagram else "thread"
    if callbacks and concurrency != "multiplex":
        raise CliError(
            f"{handler.__name__} is a ConnectionHandler: it runs with --concurrency "
            f"multiplex, not {concurrency}",
            EXIT_USAGE,
        )
    if concurrency == "multiplex" and not callbacks:
        name = getattr(handler, "__name__", repr(handler))
        raise CliError(
            f"--concurrency multiplex needs a pyserve.ConnectionHandler; {name} is not one",
            EXIT_USAGE,
        )
    return concurrency


def strategy_mixins(concurrency: str) -> tuple[type, ...]:
    """``--concurrency``: the mix-in that decides where a request runs."""
    if concurrency == "multiplex":
        return (MultiplexingMixIn,)
    if concurrency == "thread":
        return (ThreadingMixIn,)
    if concurrency == "pool":
        return (ThreadPoolMixIn,)
    if concurrency == "fork":
        if not hasattr(os, "fork"):
            raise CliError("--concurrency fork: this platform cannot fork", EXIT_USAGE)
        return (ForkingMixIn,)
    return ()


def server_class(bind: Bind, concurrency: str, features: list[Features]) -> type:
    """Compose ``class Server(*features, strategy, transport)`` for ``bind``."""
    transport = transport_class(bind)
    mixins: list[type] = []
    attributes: dict[str, Any] = {"__module__": __name__}
    for feature_mixins, feature_attributes in features:
        mixins.extend(feature_mixins)
        attributes.update(feature_attributes)
    if bind.datagram and mixins:
        # Imported here: TLS needs ssl, which only a TLS server should pay for.
        from pyserve.net.proxy import ProxyProtocolMixIn  # noqa: PLC0415
        from pyserve.net.tls import TLSMixIn  # noqa: PLC0415

        if any(issubclass(mixin, (ProxyProtocolMixIn, TLSMixIn)) for mixin in mixins):
            raise CliError(f"--bind {bind.text}: TLS and PROXY need a stream socket", EXIT_USAGE)
    if "socket_mode" in attributes and bind.transport not in ("unix", "unixgram"):
        raise CliError(
            f"--socket-mode applies to unix: and unixgram: binds, not --bind {bind.text}",
            EXIT_USAGE,
        )
    if concurrency == "multiplex" and bind.datagram:
        raise CliError(f"--bind {bind.text}: multiplex serves stream sockets", EXIT_USAGE)
    if concurrency == "thread":
        # Request threads are joined by server_close() (block_on_close); a forced
        # stop ends the process instead of waiting for them.
        attributes["daemon_threads"] = False
        if bind.transport == "tcp":
            # A thread per connection: one address may not make threads without
            # end. (Unix-socket peers all share one empty address: not there.)
            attributes.setdefault("max_connections_per_client", THREAD_PER_CLIENT)
    bases = (*mixins, *strategy_mixins(concurrency), transport)
    name = "".join(base.__name__.replace("MixIn", "") for base in bases)
    composed = type(name, bases, attributes)
    skipped = finish_request_overriders(composed) if concurrency == "multiplex" else []
    if skipped:  # --access-log, TLS, PROXY: they work in finish_request()
        raise CliError(
            f"--concurrency multiplex never runs finish_request(), where "
            f"{', '.join(skipped)} do their work",
            EXIT_USAGE,
        )
    return composed


def build_server(
    target: Target, bind: Bind, concurrency: Optional[str], features: list[Features]
) -> tuple[Union[BaseServer, Any], Bind]:
    """A listening server for ``bind``, and the bind as it turned out (an adopted
    socket's own transport). ``OSError`` if the socket fails."""
    if bind.transport in ("fd", "systemd"):
        if target.factory is not None:
            raise CliError(f"--bind {bind.text} needs a handler target", EXIT_USAGE)
        return adopt(target, bind, concurrency, features)
    if target.factory is not None:
        try:
            server = target.factory(bind.address)
        except (OSError, CliError):
            raise  # a socket error has its own exit code
        except Exception as exc:
            message = f"target {target.name!r} raised {type(exc).__name__}: {exc}"
            raise CliError(" ".join(message.split()), EXIT_TARGET) from exc
        if not hasattr(server, "serve_forever"):
            raise CliError(f"target {target.name!r} returned {server!r}, not a server", EXIT_TARGET)
        return server, bind
    handler = target.handler_for(bind.datagram, bind.text)
    strategy = strategy_for(concurrency, handler)
    return server_class(bind, strategy, features)(bind.address, handler), bind


def adopt(
    target: Target, bind: Bind, concurrency: Optional[str], features: list[Features]
) -> tuple[BaseServer, Bind]:
    """``fd://N`` and ``systemd``: serve a socket someone else opened
    (:mod:`pyserve.net.activation`)."""
    try:
        if bind.transport == "fd":
            sock = socket.socket(fileno=bind.address)
        else:
            sock = activation.systemd_socket(bind.address)
    except activation.ActivationError as exc:
        raise CliError(f"--bind {bind.text}: {exc}", EXIT_SOCKET) from None
    try:
        unix = sock.family == getattr(socket, "AF_UNIX", None)
        datagram = sock.type == socket.SOCK_DGRAM
        transport = ("unixgram" if datagram else "unix") if unix else ("udp" if datagram else "tcp")
        actual = Bind(bind.text, transport, sock.getsockname())
        handler = target.handler_for(actual.datagram, actual.text)
        cls: Any = server_class(actual, strategy_for(concurrency, handler), features)
        server: BaseServer = cls.from_socket(sock, handler)
    except ValueError as exc:
        sock.close()
        raise CliError(f"--bind {bind.text}: {exc}", EXIT_SOCKET) from None
    except BaseException:
        sock.close()
        raise
    return server, actual
