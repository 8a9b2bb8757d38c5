"""MulticastUDPServer: joining a group on an interface and serving its datagrams.

Everything stays on loopback: the server joins an administratively scoped group
(239.255.0.0/16) on 127.0.0.1, and the sender sends to the group through
127.0.0.1 with IP_MULTICAST_LOOP on. Where the kernel refuses multicast on
loopback the tests skip, saying so. Each group carries the pid so parallel runs
never hear each other; handlers reply by unicast, so every wait is a recv with a
timeout.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Optional

import pytest

from pyserve import ForkingMixIn, ThreadingMixIn
from pyserve.net.multicast import MulticastUDPServer
from pyserve.pool.workers import ThreadPoolMixIn
from pyserve.request import DatagramRequestHandler
from pyserve.testing import serving

TIMEOUT = 10.0
GROUP = f"239.255.{os.getpid() % 250}.{os.getpid() // 250 % 250 + 1}"

STRATEGIES = [
    pytest.param(None, id="sync"),
    pytest.param(ThreadingMixIn, id="threading"),
    pytest.param(ThreadPoolMixIn, id="pool"),
    pytest.param(ForkingMixIn, id="forking"),
]


class Echo(DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def server_class(strategy: Optional[type[Any]], **attributes: Any) -> Any:
    bases = (strategy, MulticastUDPServer) if strategy else (MulticastUDPServer,)
    return type("Server", bases, {"multicast_interface": "127.0.0.1", **attributes})


def make_server(strategy: Optional[type[Any]] = None, **attributes: Any) -> Any:
    try:
        return server_class(strategy, **attributes)((GROUP, 0), Echo)
    except OSError as exc:
        pytest.skip(f"this kernel refuses to join {GROUP} on loopback: {exc}")


def sender() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(TIMEOUT)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_server_receives_datagrams_sent_to_its_group(strategy: Optional[type[Any]]) -> None:
    server = make_server(strategy)
    with serving(server), sender() as client:
        assert server.multicast_group == GROUP
        client.sendto(b"to the group", (GROUP, server.server_address[1]))
        assert client.recvfrom(100)[0] == b"to the group"


def test_server_bound_to_its_group_ignores_unicast_to_its_port() -> None:
    server = make_server()
    with serving(server), sender() as client:
        port = server.server_address[1]
        client.sendto(b"unicast", ("127.0.0.1", port))
        client.sendto(b"multicast", (GROUP, port))
        # Datagrams on loopback keep their order: had the unicast one been
        # delivered, its echo would arrive first.
        assert client.recvfrom(100)[0] == b"multicast"


def test_interface_may_be_named() -> None:
    server = make_server(multicast_interface="lo")
    with serving(server), sender() as client:
        client.sendto(b"by name", (GROUP, server.server_address[1]))
        assert client.recvfrom(100)[0] == b"by name"


def test_two_receivers_share_the_group_port() -> None:
    first = make_server()
    second = server_class(None)((GROUP, first.server_address[1]), Echo)
    with serving(first), serving(second), sender() as client:
        client.sendto(b"both", (GROUP, first.server_address[1]))
        assert [client.recvfrom(100)[0] for _ in range(2)] == [b"both", b"both"]


def test_a_unicast_group_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"multicast_group '127\.0\.0\.1' is not a multicast"):
        MulticastUDPServer(("127.0.0.1", 0), Echo)


def test_an_unknown_interface_is_refused_naming_it() -> None:
    cls = server_class(None, multicast_interface="no-such-if0")
    with pytest.raises(ValueError, match="multicast_interface 'no-such-if0'"):
        cls((GROUP, 0), Echo)
