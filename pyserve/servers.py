"""The ready combinations: a concurrency strategy mixed into a transport.

Each class is exactly ``class XServer(Strategy, Transport): pass``, as in the stdlib,
so the strategy's ``process_request()`` and ``server_close()`` come first in the
method resolution order. Forking classes exist where ``os.fork`` does, Unix classes
where ``socket.AF_UNIX`` does.
"""

from __future__ import annotations

import os
import socket

from pyserve.concurrency import ForkingMixIn, ThreadingMixIn
from pyserve.multiplex.server import MultiplexingMixIn
from pyserve.pool.workers import ThreadPoolMixIn
from pyserve.sockets import TCPServer, UDPServer

__all__ = [
    "MultiplexingTCPServer",
    "ThreadPoolTCPServer",
    "ThreadPoolUDPServer",
    "ThreadingTCPServer",
    "ThreadingUDPServer",
]


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    """A TCP server that runs each connection in its own thread."""


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    """A UDP server that runs each datagram in its own thread."""


class ThreadPoolTCPServer(ThreadPoolMixIn, TCPServer):
    """A TCP server that runs connections on a bounded pool of reused threads."""


class ThreadPoolUDPServer(ThreadPoolMixIn, UDPServer):
    """A UDP server that runs datagrams on a bounded pool of reused threads."""


class MultiplexingTCPServer(MultiplexingMixIn, TCPServer):
    """A TCP server that serves every connection from one I/O thread."""


if hasattr(os, "fork"):
    __all__ += ["ForkingTCPServer", "ForkingUDPServer"]

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        """A TCP server that runs each connection in a child process."""

    class ForkingUDPServer(ForkingMixIn, UDPServer):
        """A UDP server that runs each datagram in a child process."""


if hasattr(socket, "AF_UNIX"):
    from pyserve.unix import UnixDatagramServer, UnixStreamServer

    __all__ += [
        "MultiplexingUnixStreamServer",
        "ThreadPoolUnixDatagramServer",
        "ThreadPoolUnixStreamServer",
        "ThreadingUnixDatagramServer",
        "ThreadingUnixStreamServer",
    ]

    class ThreadPoolUnixStreamServer(ThreadPoolMixIn, UnixStreamServer):
        """A Unix stream server on a bounded pool of reused threads."""

    class ThreadPoolUnixDatagramServer(ThreadPoolMixIn, UnixDatagramServer):
        """A Unix datagram server on a bounded pool of reused threads."""

    class MultiplexingUnixStreamServer(MultiplexingMixIn, UnixStreamServer):
        """A Unix stream server that serves every connection from one I/O thread."""

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
        """A Unix stream server that runs each connection in its own thread."""

    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
        """A Unix datagram server that runs each datagram in its own thread."""

    if hasattr(os, "fork"):
        __all__ += ["ForkingUnixDatagramServer", "ForkingUnixStreamServer"]

        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
            """A Unix stream server that runs each connection in a child process."""

        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
            """A Unix datagram server that runs each datagram in a child process."""
