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

import os
import socket
import sys

# The core, loaded at once: what the stdlib's module defines eagerly too.
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
from pyserve.request import BaseRequestHandler, DatagramRequestHandler, StreamRequestHandler
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
    __all__ += ["ForkingUDPServer", "ForkingTCPServer", "ForkingMixIn"]
if hasattr(socket, "AF_UNIX"):
    __all__ += [
        "UnixStreamServer",
        "UnixDatagramServer",
        "ThreadingUnixStreamServer",
        "ThreadingUnixDatagramServer",
    ]
    if hasattr(os, "fork"):
        __all__ += ["ForkingUnixStreamServer", "ForkingUnixDatagramServer"]

# pyserve's own public names.
__all__ += ["SocketServer", "PyserveError", "ProtocolError", "RequestDropped"]
if hasattr(os, "fork"):
    __all__ += ["Prefork"]
# Production concurrency and lifecycle (thread pool, registry, drain, limits, events).
__all__ += [
    "ThreadPoolMixIn", "ThreadPoolTCPServer", "ThreadPoolUDPServer",
    "InFlight", "DrainReport", "Stats", "ServerEvent", "LoggingObserver",
    "LineTooLong", "RequestTimedOut",
    "ACCEPTED", "REJECTED", "STARTED", "FINISHED", "ERRORED", "TIMED_OUT", "DRAINED",
    "EVENT_KINDS",
]  # fmt: skip
if hasattr(socket, "AF_UNIX"):
    __all__ += ["ThreadPoolUnixStreamServer", "ThreadPoolUnixDatagramServer"]
# One I/O thread for many connections: callback handlers that never block.
__all__ += ["ConnectionHandler", "MultiplexingMixIn", "MultiplexingTCPServer"]
if hasattr(socket, "AF_UNIX"):
    __all__ += ["MultiplexingUnixStreamServer"]
# Network edges: multicast, systemd activation, TLS, PROXY protocol. (The module
# pyserve.sockopts is an attribute too, but not in __all__: `import *` binds no module.)
__all__ += ["MulticastUDPServer", "ActivationError"]
__all__ += [
    "TLSMixIn",
    "ProxyProtocolMixIn",
    "ProxiedAddress",
    "ProxiedPath",
    "ProxyHeader",
    "ProxyParser",
]

# Everything not imported above is imported on first use (PEP 562: __getattr__
# below), so a process that imports pyserve pays for the Unix servers (with their
# socket-file care: fcntl, grp, pwd), the ready server combinations, the thread
# pool, the multiplexer, prefork, multicast, PROXY and TLS (with ssl) only when it
# touches them; `from pyserve import X` and `pyserve.X` work the same either way.
# Each name -> the module defining it.
_SERVERS = "pyserve.servers"
_LAZY: dict[str, str] = {
    "UnixStreamServer": "pyserve.unix",
    "UnixDatagramServer": "pyserve.unix",
    "ThreadingTCPServer": _SERVERS,
    "ThreadingUDPServer": _SERVERS,
    "ForkingTCPServer": _SERVERS,
    "ForkingUDPServer": _SERVERS,
    "ThreadingUnixStreamServer": _SERVERS,
    "ThreadingUnixDatagramServer": _SERVERS,
    "ForkingUnixStreamServer": _SERVERS,
    "ForkingUnixDatagramServer": _SERVERS,
    "ThreadPoolTCPServer": _SERVERS,
    "ThreadPoolUDPServer": _SERVERS,
    "ThreadPoolUnixStreamServer": _SERVERS,
    "ThreadPoolUnixDatagramServer": _SERVERS,
    "MultiplexingTCPServer": _SERVERS,
    "MultiplexingUnixStreamServer": _SERVERS,
    "ThreadPoolMixIn": "pyserve.pool.workers",
    "ConnectionHandler": "pyserve.multiplex.connection",
    "MultiplexingMixIn": "pyserve.multiplex.server",
    "Prefork": "pyserve.prefork.supervisor",
    "MulticastUDPServer": "pyserve.net.multicast",
    "ActivationError": "pyserve.net.activation",
    "sockopts": "pyserve.net.sockopts",  # a module: the name is the module itself
    "TLSMixIn": "pyserve.net.tls",
    "ProxyProtocolMixIn": "pyserve.net.proxy",
    "ProxiedAddress": "pyserve.net.proxy",
    "ProxiedPath": "pyserve.net.proxy",
    "ProxyHeader": "pyserve.net.proxy_header",
    "ProxyParser": "pyserve.net.proxy_header",
}
# Only what this platform has (no Forking* without fork, no Unix* without AF_UNIX).
_LAZY = {
    name: module for name, module in _LAZY.items() if name in __all__ or name == "sockopts"
}

TYPE_CHECKING = False
if TYPE_CHECKING:  # type checkers see every name; the interpreter loads them lazily
    from typing import Any

    from pyserve.multiplex.connection import ConnectionHandler
    from pyserve.multiplex.server import MultiplexingMixIn
    from pyserve.net import sockopts as sockopts
    from pyserve.net.activation import ActivationError
    from pyserve.net.multicast import MulticastUDPServer
    from pyserve.net.proxy import ProxiedAddress, ProxiedPath, ProxyProtocolMixIn
    from pyserve.net.proxy_header import ProxyHeader, ProxyParser
    from pyserve.net.tls import TLSMixIn
    from pyserve.pool.workers import ThreadPoolMixIn
    from pyserve.prefork.supervisor import Prefork
    from pyserve.servers import (
        ForkingTCPServer,
        ForkingUDPServer,
        ForkingUnixDatagramServer,
        ForkingUnixStreamServer,
        MultiplexingTCPServer,
        MultiplexingUnixStreamServer,
        ThreadingTCPServer,
        ThreadingUDPServer,
        ThreadingUnixDatagramServer,
        ThreadingUnixStreamServer,
        ThreadPoolTCPServer,
        ThreadPoolUDPServer,
        ThreadPoolUnixDatagramServer,
        ThreadPoolUnixStreamServer,
    )
    from pyserve.unix import UnixDatagramServer, UnixStreamServer


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyserve' has no attribute {name!r}")
    __import__(module)  # not importlib.import_module: importlib costs every importer
    imported = sys.modules[module]
    value = imported if imported.__name__.endswith("." + name) else getattr(imported, name)
    globals()[name] = value  # later lookups are plain module attributes
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
