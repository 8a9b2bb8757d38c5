"""Socket lifecycle: the socket base, TCP, UDP and Unix-domain servers.

Theory of operation
-------------------
:class:`SocketServer` owns one socket for its whole life: create it in
``__init__``, ``server_bind()`` it, ``server_activate()`` it, and close it in
``server_close()`` (also when bind or listen fails, so a failed constructor never
leaks a descriptor). The two transports then differ only in what a *request* is:

* :class:`TCPServer` (streams): ``get_request()`` is ``accept()``; a request is the
  connected socket; ending it sends FIN (``SHUT_WR``) so the peer sees every byte
  before the close.
* :class:`UDPServer` (datagrams): ``get_request()`` is one ``recvfrom()``; a request
  is ``(data, server_socket)``; there is nothing to close.

In the stdlib, ``UDPServer`` subclasses ``TCPServer`` and inherits ``listen``/
``accept`` plumbing it must then undo. Here both sit on the shared base, so each
class says only what is true of it. (``isinstance(udp_server, TCPServer)`` is
therefore False: a deliberate difference, listed in the docs.)

Defaults that differ from the stdlib, each for a reason:

* ``request_queue_size`` is ``socket.SOMAXCONN`` (stdlib: 5, which drops most of a
  burst of connections and makes clients wait out SYN retransmits; Python 3.15 makes
  the same change);
* ``TCPServer.allow_reuse_address`` is true on POSIX, so a restarted server binds
  while old connections sit in TIME_WAIT (asyncio, gevent, Twisted, trio and Tornado
  do the same; on POSIX it never lets two live listeners share a port). It stays
  false on Windows, where SO_REUSEADDR *would* allow that;
* a datagram longer than ``max_packet_size`` is not delivered truncated: it is
  logged, counted in ``datagrams_truncated`` and dropped;
* Unix servers remove the socket file they created when they close, and replace a
  *stale* socket file (nobody listening) on bind, but never a live socket or a
  file of another kind.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from pyserve.base import BaseServer
from pyserve.errors import RequestDropped

__all__ = [
    "SocketServer",
    "TCPServer",
    "UDPServer",
    "UnixDatagramServer",
    "UnixStreamServer",
]

logger = logging.getLogger("pyserve")

#: What a server may be bound to: (host, port), (host, port, flowinfo, scope_id), or
#: a Unix path (str or bytes; a leading NUL byte means Linux's abstract namespace).
Address = Union[tuple[str, int], tuple[str, int, int, int], str, bytes]


class SocketServer(BaseServer):
    """A server that owns one socket: the shared base of TCP, UDP and Unix servers.

    Class attributes that may be overridden: ``address_family``, ``socket_type``,
    ``request_queue_size``, ``allow_reuse_address``, ``allow_reuse_port``.
    """

    #: The socket's address family (``AF_INET``, ``AF_INET6``, ``AF_UNIX``).
    address_family: int = socket.AF_INET
    #: The socket's type (``SOCK_STREAM`` or ``SOCK_DGRAM``).
    socket_type: int = socket.SOCK_STREAM
    #: Listen backlog: as much as the kernel allows (it caps the value itself).
    request_queue_size: int = socket.SOMAXCONN
    #: Set SO_REUSEADDR before binding.
    allow_reuse_address: bool = False
    #: Set SO_REUSEPORT before binding (several sockets then share the port).
    allow_reuse_port: bool = False

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: Callable[..., Any],
        bind_and_activate: bool = True,
    ) -> None:
        super().__init__(server_address, RequestHandlerClass)
        self.socket = socket.socket(self.address_family, self.socket_type)
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise

    def server_bind(self) -> None:
        """Set the reuse options and bind. May be extended."""
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.allow_reuse_port and hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Make the socket ready for requests. May be overridden."""

    def server_close(self) -> None:
        """Close the socket. May be extended."""
        self.socket.close()

    def fileno(self) -> int:
        """The socket's descriptor, for selectors."""
        return self.socket.fileno()


class TCPServer(SocketServer):
    """A stream server: one connected socket per request.

    Class attributes beyond :class:`SocketServer`'s: none. ``allow_reuse_address``
    is true on POSIX (see the module docstring).
    """

    address_family = socket.AF_INET
    socket_type = socket.SOCK_STREAM
    allow_reuse_address = os.name != "nt"

    def server_activate(self) -> None:
        """Listen with a backlog of :attr:`~SocketServer.request_queue_size`."""
        self.socket.listen(self.request_queue_size)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept one connection."""
        return self.socket.accept()

    def shutdown_request(self, request: socket.socket) -> None:
        """Send FIN so the peer reads everything written, then close."""
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer is already gone; closing is all that is left
        self.close_request(request)

    def close_request(self, request: socket.socket) -> None:
        request.close()


class UDPServer(SocketServer):
    """A datagram server: one datagram per request, as ``(data, socket)``.

    Class attributes: ``max_packet_size`` (longer datagrams are dropped and counted
    in ``datagrams_truncated``, never delivered cut short).
    """

    address_family = socket.AF_INET
    socket_type = socket.SOCK_DGRAM
    allow_reuse_address = False
    #: The longest datagram delivered to a handler; longer ones are dropped.
    max_packet_size: int = 8192

    #: Minimum seconds between two log lines about over-long datagrams: a peer can
    #: send thousands a second, and each would otherwise be a line.
    truncation_log_interval: float = 60.0

    def _init_dispatch_state(self) -> None:
        super()._init_dispatch_state()
        self.datagrams_truncated = 0
        self._truncation_logged_at: Optional[float] = None

    def get_request(self) -> tuple[tuple[bytes, socket.socket], Any]:
        """Receive one datagram of at most :attr:`max_packet_size` bytes.

        One byte more is asked of the kernel: if it arrives, the datagram was too
        long, and handing the handler its first ``max_packet_size`` bytes would
        corrupt the request silently (the stdlib does).
        """
        data, client_address = self.socket.recvfrom(self.max_packet_size + 1)
        if len(data) > self.max_packet_size:
            self._datagram_too_long(client_address)
            raise RequestDropped(errno.EMSGSIZE, "datagram longer than max_packet_size")
        return (data, self.socket), client_address

    def _datagram_too_long(self, client_address: Any) -> None:
        self.datagrams_truncated += 1
        now = time.monotonic()
        last = self._truncation_logged_at
        if last is None or now - last >= self.truncation_log_interval:
            self._truncation_logged_at = now
            logger.warning(
                "Dropped a datagram from %s longer than max_packet_size=%d "
                "(%d dropped so far)",
                client_address,
                self.max_packet_size,
                self.datagrams_truncated,
            )

    def shutdown_request(self, request: Any) -> None:
        """Nothing to shut down: the socket is the server's."""
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Nothing to close."""


if TYPE_CHECKING:
    _UnixBase = SocketServer
else:
    _UnixBase = object


def _is_filesystem_path(address: Any) -> bool:
    """True for a Unix path on the filesystem (not abstract, not a tuple)."""
    if isinstance(address, str):
        return bool(address) and not address.startswith("\0")
    if isinstance(address, bytes):
        return bool(address) and not address.startswith(b"\0")
    return False


def _clear_stale_socket(path: Union[str, bytes], socket_type: int) -> None:
    """Remove ``path`` if it is a socket nobody listens on; refuse a live one.

    A regular file (or anything that is not a socket) is left alone, so ``bind()``
    fails with EADDRINUSE rather than destroying someone's data.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        return
    probe = socket.socket(socket.AF_UNIX, socket_type)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # stale: a server died without cleaning up
    except OSError:
        return  # cannot tell (permissions, full backlog): let bind() report it
    else:
        raise OSError(errno.EADDRINUSE, f"a live server is listening on {path!r}")
    finally:
        probe.close()


class _UnixSocketFile(_UnixBase):
    """Owns a Unix server's socket file: replace it when stale, remove it on close."""

    def _init_dispatch_state(self) -> None:
        super()._init_dispatch_state()
        # (st_dev, st_ino, pid) of the file we created; None if we created none.
        self._socket_file: Optional[tuple[int, int, int]] = None

    def server_bind(self) -> None:
        path = self.server_address
        if _is_filesystem_path(path):
            _clear_stale_socket(path, self.socket_type)
        super().server_bind()
        if _is_filesystem_path(path):
            info = os.stat(path)
            self._socket_file = (info.st_dev, info.st_ino, os.getpid())

    def server_close(self) -> None:
        super().server_close()
        owned, self._socket_file = self._socket_file, None
        # Only the process that bound it removes it (not a forked child), and only
        # if the path still names our socket (not one a successor bound since).
        if owned is None or owned[2] != os.getpid():
            return
        try:
            info = os.stat(self.server_address)
            if (info.st_dev, info.st_ino) == owned[:2]:
                os.unlink(self.server_address)
        except OSError:
            pass  # already gone


if hasattr(socket, "AF_UNIX"):

    class UnixStreamServer(_UnixSocketFile, TCPServer):
        """A stream server on a Unix-domain socket path."""

        address_family = socket.AF_UNIX

    class UnixDatagramServer(_UnixSocketFile, UDPServer):
        """A datagram server on a Unix-domain socket path."""

        address_family = socket.AF_UNIX
