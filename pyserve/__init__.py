"""pyserve: the standard library's socketserver, reimplemented and finished.

``import pyserve as socketserver`` changes nothing for correct code: every name,
attribute, hook, default and call order of the stdlib module is here. What the
stdlib leaves broken is fixed (instant shutdown, no deadlocks, accept-error
back-off, O(1) thread tracking, reaped children, a real listen backlog, no silent
datagram truncation, tidy Unix socket files, logging instead of printing).

Where to look: :mod:`pyserve.base` (the loop), :mod:`pyserve.sockets` (TCP, UDP,
Unix), :mod:`pyserve.concurrency` (threads, processes), :mod:`pyserve.request`
(handlers), :mod:`pyserve.servers` (ready combinations), :mod:`pyserve.testing`
(helpers for your tests).
"""

from __future__ import annotations

import importlib
import os
import socket
from typing import TYPE_CHECKING, Any

from pyserve.base import BaseServer
from pyserve.concurrency import ForkingMixIn, ThreadingMixIn
from pyserve.errors import LineTooLong, ProtocolError, PyserveError, RequestDropped, RequestTimedOut
from pyserve.lifecycle.drain import DrainReport
from pyserve.lifecycle.events import (
    ACCEPTED,
    DRAINED,
    ERRORED,
    EVENT_KINDS,
    FINISHED,
    REJECTED,
    STARTED,
    TIMED_OUT,
    LoggingObserver,
    ServerEvent,
    Stats,
)
from pyserve.lifecycle.registry import InFlight
from pyserve.pool.workers import ThreadPoolMixIn
from pyserve.request import BaseRequestHandler, DatagramRequestHandler, StreamRequestHandler
from pyserve.servers import (
    ThreadingTCPServer,
    ThreadingUDPServer,
    ThreadPoolTCPServer,
    ThreadPoolUDPServer,
)
from pyserve.sockets import SocketServer, TCPServer, UDPServer

__version__ = "0.1.0"

# The stdlib's names first (in the stdlib's order), then pyserve's extras.
__all__ = [
    "BaseServer",
    "TCPServer",
    "UDPServer",
    "ThreadingUDPServer",
    "ThreadingTCPServer",
    "BaseRequestHandler",
    "StreamRequestHandler",
    "DatagramRequestHandler",
    "ThreadingMixIn",
]

if hasattr(os, "fork"):
    from pyserve.servers import ForkingTCPServer, ForkingUDPServer

    __all__ += ["ForkingUDPServer", "ForkingTCPServer", "ForkingMixIn"]

if hasattr(socket, "AF_UNIX"):
    from pyserve.servers import (
        ThreadingUnixDatagramServer,
        ThreadingUnixStreamServer,
        ThreadPoolUnixDatagramServer,
        ThreadPoolUnixStreamServer,
    )
    from pyserve.unix import UnixDatagramServer, UnixStreamServer

    __all__ += [
        "UnixStreamServer",
        "UnixDatagramServer",
        "ThreadingUnixStreamServer",
        "ThreadingUnixDatagramServer",
    ]
    if hasattr(os, "fork"):
        from pyserve.servers import ForkingUnixDatagramServer, ForkingUnixStreamServer

        __all__ += ["ForkingUnixStreamServer", "ForkingUnixDatagramServer"]

# pyserve's own public names.
__all__ += ["SocketServer", "PyserveError", "ProtocolError", "RequestDropped"]

if hasattr(os, "fork"):
    from pyserve.prefork.supervisor import Prefork

    __all__ += ["Prefork"]
# Production concurrency and lifecycle (thread pool, registry, drain, limits, events).
__all__ += [
    "ThreadPoolMixIn", "ThreadPoolTCPServer", "ThreadPoolUDPServer",
    "InFlight", "DrainReport", "Stats", "ServerEvent", "LoggingObserver",
    "LineTooLong", "RequestTimedOut",
    "ACCEPTED", "REJECTED", "STARTED", "FINISHED", "ERRORED", "TIMED_OUT", "DRAINED",
    "EVENT_KINDS",
]
if hasattr(socket, "AF_UNIX"):
    __all__ += ["ThreadPoolUnixStreamServer", "ThreadPoolUnixDatagramServer"]
# One I/O thread for many connections: callback handlers that never block.
from pyserve.multiplex.connection import ConnectionHandler  # noqa: E402
from pyserve.multiplex.server import MultiplexingMixIn  # noqa: E402
from pyserve.servers import MultiplexingTCPServer  # noqa: E402

__all__ += ["ConnectionHandler", "MultiplexingMixIn", "MultiplexingTCPServer"]
if hasattr(socket, "AF_UNIX"):
    from pyserve.servers import MultiplexingUnixStreamServer

    __all__ += ["MultiplexingUnixStreamServer"]
# Network edges (issue 4): multicast, systemd activation, socket options.
from pyserve.net import sockopts as sockopts  # noqa: E402 - an attribute, not in *
from pyserve.net.activation import ActivationError  # noqa: E402
from pyserve.net.multicast import MulticastUDPServer  # noqa: E402

__all__ += ["MulticastUDPServer", "ActivationError"]  # sockopts: a module, not in *

# Network edges (issue 4): TLS and the PROXY protocol.
from pyserve.net.proxy import ProxiedAddress, ProxiedPath, ProxyProtocolMixIn  # noqa: E402
from pyserve.net.proxy_header import ProxyHeader, ProxyParser  # noqa: E402

__all__ += [
    "TLSMixIn",
    "ProxyProtocolMixIn",
    "ProxiedAddress",
    "ProxiedPath",
    "ProxyHeader",
    "ProxyParser",
]


if TYPE_CHECKING:  # type checkers see the real class; the interpreter loads it lazily
    from pyserve.net.tls import TLSMixIn

# TLSMixIn is imported on first use: it needs the ssl module, which costs every
# process that imports pyserve about 4.5 MiB of memory, TLS or not (PEP 562).
_LAZY = {"TLSMixIn": "pyserve.net.tls"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyserve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups are plain module attributes
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
