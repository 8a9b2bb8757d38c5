"""A UDP server that receives a multicast group's datagrams.

Theory of operation
-------------------
Multicast receivers differ from a plain :class:`~pyserve.sockets.UDPServer` in
three small steps, all in ``server_bind()``:

1. ``SO_REUSEADDR`` is set (``allow_reuse_address``), so several receivers on one
   host, say a test and a daemon, can share the group's port: each gets a copy.
2. The socket binds to ``server_address``. With the default, the address *is* the
   group, ``("239.1.2.3", 5000)``, and binding to it makes the kernel deliver only
   that group's datagrams, not unicast ones to the same port nor other groups'
   (Linux and the BSDs; Windows cannot bind a group address: bind ``("", port)``
   and name the group in ``multicast_group`` there).
3. The socket joins the group on ``multicast_interface`` (``IP_ADD_MEMBERSHIP``,
   or ``IPV6_JOIN_GROUP`` for an IPv6 group): an interface name such as ``"eth0"``,
   an IPv4 address of the interface, or ``None`` for the kernel's choice (the
   interface of the default route). Closing the socket leaves the group.

Everything else (handlers, replies with ``sendto()``, every concurrency mix-in)
is the UDP server's. The family follows the group, as any address's does.

Cookbook: print every announcement sent to 239.255.42.99:5000 on eth0::

    class Announcements(DatagramRequestHandler):
        def handle(self):
            print(self.client_address, self.rfile.read())

    class Listener(MulticastUDPServer):
        multicast_interface = "eth0"

    with Listener(("239.255.42.99", 5000), Announcements) as server:
        server.serve_forever()
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Optional

from pyserve.sockets import UDPServer

__all__ = ["MulticastUDPServer"]


class MulticastUDPServer(UDPServer):
    """A UDP server that joins a multicast group (see the module docstring).

    Class attributes beyond :class:`~pyserve.sockets.UDPServer`'s:
    ``multicast_group`` (None: the host of ``server_address``) and
    ``multicast_interface`` (None: the kernel's choice). After binding,
    ``self.multicast_group`` is the group joined. A bad group or interface raises
    ``ValueError`` naming it.
    """

    allow_reuse_address = True
    #: The group to join; None: the host part of ``server_address``.
    multicast_group: Optional[str] = None
    #: Where to join: an interface name (``"eth0"``), an IPv4 address of the
    #: interface, or None for the kernel's choice.
    multicast_interface: Optional[str] = None

    def server_bind(self) -> None:
        """Bind, then join the group on the interface. May be extended."""
        group = self.multicast_group
        if group is None and isinstance(self.server_address, tuple):
            group = self.server_address[0]
        try:
            parsed = ipaddress.ip_address(str(group).split("%")[0])
        except ValueError:
            parsed = None
        if parsed is None or not parsed.is_multicast:
            raise ValueError(f"multicast_group {group!r} is not a multicast address")
        super().server_bind()
        self.multicast_group = str(group)
        if parsed.version == 4:
            self._join_ipv4(parsed.packed)
        else:
            self._join_ipv6(parsed.packed)

    def _join_ipv4(self, group: bytes) -> None:
        interface = self.multicast_interface
        if interface is None:
            request = group + socket.inet_aton("0.0.0.0")  # ip_mreq: kernel's choice
        else:
            try:
                request = group + socket.inet_aton(interface)  # ip_mreq by address
            except OSError:
                # ip_mreqn: group, local address (any), interface index.
                request = group + socket.inet_aton("0.0.0.0") + struct.pack("@i", self._index())
        self.socket.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, request)

    def _join_ipv6(self, group: bytes) -> None:
        index = 0 if self.multicast_interface is None else self._index()
        request = group + struct.pack("@I", index)  # ipv6_mreq
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, request)

    def _index(self) -> int:
        interface = self.multicast_interface
        try:
            return _interface_index(str(interface))
        except OSError as exc:
            raise ValueError(
                f"multicast_interface {interface!r} is neither an interface name "
                f"nor an IPv4 address"
            ) from exc


def _interface_index(name: str) -> int:
    """The kernel's index of a network interface, by name.

    ``socket.if_nametoindex`` where the interpreter has it; PyPy 3.9 does not, so
    on Linux the same number is read from sysfs.
    """
    lookup = getattr(socket, "if_nametoindex", None)
    if lookup is not None:
        return int(lookup(name))
    if "/" in name or name in ("", ".", ".."):
        raise OSError(f"no interface named {name!r}")
    with open(f"/sys/class/net/{name}/ifindex") as index_file:  # OSError if unknown
        return int(index_file.read())
