"""The listening sockets of a prefork server: made by the supervisor, shared by workers.

Theory of operation
-------------------
**Sockets belong to the supervisor, one per worker slot.** :class:`Listeners` is
built by the ``Prefork`` constructor, before any fork, so the bound address (port
0 resolved) is known at once and connections queue from then on. Where the
platform has ``SO_REUSEPORT`` (Linux, BSDs; TCP and UDP over IP) there is one
socket per slot, all bound to the same address, and the kernel spreads new
connections (or datagrams) across them. Elsewhere, and for Unix-domain sockets,
there is one socket, inherited by every worker, which they all accept (or
receive) from.

Because the supervisor keeps its copy open, a socket outlives the worker using
it: connections queued on a crashed worker's socket wait for its replacement
instead of being reset, and during a roll the old and the new worker of a slot
share the slot's socket, so a connection is never refused while the old one
drains. (Sockets opened *in* the workers would lose their queue each time a
worker closed its listener.)

**Non-blocking for good.** Every socket is switched to non-blocking once, here,
and never back. Several processes wait on one socket (all workers, where it is
shared; the old and the new worker of a slot during a roll), and one connection
makes every waiter's ``select()`` readable; only one ``accept()`` gets it. A
blocking loser would sleep inside ``accept()``, where neither its loop's wake-up
nor a drain reaches it; a non-blocking one gets EAGAIN, which the serve loop
treats as the normal "another worker won" and goes back to waiting. Blocking
mode is a property of the socket's shared file description, so it is set
before any fork and nobody may toggle it afterwards. The connections a worker
accepts are blocking all the same (``TCPServer.get_request()`` sees to it).

In a forked worker, :meth:`Listeners.keep_only` closes every socket but its
slot's. The worker's server adopts that socket (:func:`adopt_listener`): it is
built with ``bind_and_activate=False``, so it neither binds nor, for a Unix
socket, believes it owns the socket file. Only the supervisor removes the file
it created, in :meth:`Listeners.close`.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Optional, Union

from pyserve.net.addresses import is_filesystem_path
from pyserve.unix import clear_stale_socket

__all__ = ["Listeners", "adopt_listener"]


def _platform_reuses_port(family: int) -> bool:
    return hasattr(socket, "SO_REUSEPORT") and family in (socket.AF_INET, socket.AF_INET6)


class Listeners:
    """The bound (and, for streams, listening) sockets for ``slots`` workers.

    The socket family, type, backlog and ``SO_REUSEADDR`` come from the server
    class's attributes, as the server itself would use them. ``reuse_port``: one
    socket per slot with ``SO_REUSEPORT`` (None: wherever the platform has it).
    After construction, ``address`` is the bound address.
    """

    def __init__(
        self,
        server_class: Callable[..., Any],
        address: Any,
        slots: int,
        reuse_port: Optional[bool] = None,
    ) -> None:
        family = getattr(server_class, "address_family", socket.AF_INET)
        self.reuse_port = _platform_reuses_port(family) if reuse_port is None else reuse_port
        self.address: Any = address
        self.sockets: list[socket.socket] = []
        # The Unix socket file we bound: (path, st_dev, st_ino), so close() removes
        # it only while the path still names our socket, as Unix servers do.
        self._created_file: Optional[tuple[Union[str, bytes], int, int]] = None
        try:
            self._open(server_class, family, slots if self.reuse_port else 1)
        except BaseException:
            self.close()
            raise

    def _open(self, server_class: Callable[..., Any], family: int, count: int) -> None:
        kind = getattr(server_class, "socket_type", socket.SOCK_STREAM)
        backlog = getattr(server_class, "request_queue_size", socket.SOMAXCONN)
        reuse_address = getattr(server_class, "allow_reuse_address", False)
        for _ in range(count):
            listener = socket.socket(family, kind)
            self.sockets.append(listener)
            if reuse_address and family != getattr(socket, "AF_UNIX", None):
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if is_filesystem_path(self.address):
                clear_stale_socket(self.address, kind)  # the Unix servers' own rule
            listener.bind(self.address)
            if is_filesystem_path(self.address):
                info = os.stat(self.address)
                self._created_file = (self.address, info.st_dev, info.st_ino)
            # The first bind resolves port 0; the others bind that same port.
            self.address = listener.getsockname()
            if kind == socket.SOCK_STREAM:
                listener.listen(backlog)
            listener.setblocking(False)  # for good: see the module documentation

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or construction failed)."""
        return not self.sockets

    def for_slot(self, slot: int) -> socket.socket:
        """The socket the worker of ``slot`` serves."""
        return self.sockets[slot if self.reuse_port else 0]

    def keep_only(self, slot: int) -> socket.socket:
        """In a forked worker: close the other slots' sockets; return this slot's."""
        mine = self.for_slot(slot)
        for other in self.sockets:
            if other is not mine:
                other.close()
        return mine

    def close(self) -> None:
        """Close the sockets (and remove a Unix socket file we created)."""
        for listener in self.sockets:
            listener.close()
        self.sockets.clear()
        created, self._created_file = self._created_file, None
        if created is None:
            return
        path, device, inode = created
        try:
            info = os.stat(path)
            if (info.st_dev, info.st_ino) == (device, inode):
                os.unlink(path)
        except OSError:
            pass  # already gone


def adopt_listener(
    server_class: Callable[..., Any], RequestHandlerClass: Any, listener: socket.socket
) -> Any:
    """Build ``server_class`` around an already bound ``listener``.

    Fits every class with the stdlib's constructor: the server is made with
    ``bind_and_activate=False`` and its own fresh socket is swapped for ``listener``.
    """
    server = server_class(listener.getsockname(), RequestHandlerClass, bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    server.server_address = listener.getsockname()
    return server
