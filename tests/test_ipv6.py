"""IPv6: the address family follows the address; dual-stack is one flag.

Every server binds port 0 on ::1 or 127.0.0.1 (dual-stack needs the "::"
wildcard: only loopback clients talk to it), every client socket has a timeout,
and ``serving()`` checks that nothing leaked. The tests skip, saying why, where
the kernel has no IPv6 loopback.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Optional

import pytest

from pyserve import ForkingMixIn, StreamRequestHandler, TCPServer, ThreadingMixIn, UDPServer
from pyserve.pool.workers import ThreadPoolMixIn
from pyserve.request import DatagramRequestHandler
from pyserve.testing import serving

TIMEOUT = 10.0


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _has_ipv6_loopback(), reason="this kernel has no IPv6 loopback (::1)"
)

STRATEGIES = [
    pytest.param(None, id="sync"),
    pytest.param(ThreadingMixIn, id="threading"),
    pytest.param(ThreadPoolMixIn, id="pool"),
    pytest.param(
        ForkingMixIn,
        id="forking",
        marks=pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here"),
    ),
]


def server_class(base: type[Any], strategy: Optional[type[Any]], **attributes: Any) -> Any:
    bases = (strategy, base) if strategy is not None else (base,)
    return type("Server", bases, attributes)


class WhoAmI(StreamRequestHandler):
    """Echoes one line, followed by the client address the server saw."""

    def handle(self) -> None:
        line = self.rfile.readline().strip()
        self.wfile.write(line + b" " + str(self.client_address[0]).encode() + b"\n")


class DatagramEcho(DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def ask(address: Any, family: int, line: bytes = b"hello") -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(TIMEOUT)
        client.connect(address[:2])
        client.sendall(line + b"\n")
        return client.makefile("rb").readline().strip()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ipv6_literal_makes_an_ipv6_server(strategy: Optional[type[Any]]) -> None:
    server = server_class(TCPServer, strategy)(("::1", 0), WhoAmI)
    with serving(server):
        assert server.socket.family == socket.AF_INET6
        assert server.address_family == socket.AF_INET6
        assert ask(server.server_address, socket.AF_INET6) == b"hello ::1"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ipv4_literal_keeps_an_ipv4_server(strategy: Optional[type[Any]]) -> None:
    server = server_class(TCPServer, strategy)(("127.0.0.1", 0), WhoAmI)
    with serving(server):
        assert server.socket.family == socket.AF_INET
        assert ask(server.server_address, socket.AF_INET) == b"hello 127.0.0.1"


def test_udp_server_on_ipv6_literal_answers_datagrams() -> None:
    server = UDPServer(("::1", 0), DatagramEcho)
    with serving(server), socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.sendto(b"ping", server.server_address)
        assert client.recvfrom(100)[0] == b"ping"


def test_four_tuple_address_makes_an_ipv6_server() -> None:
    with TCPServer(("::1", 0, 0, 0), WhoAmI, bind_and_activate=True) as server:
        assert server.socket.family == socket.AF_INET6
        assert server.server_address[0] == "::1"


def test_class_address_family_is_unchanged_by_instances() -> None:
    with TCPServer(("::1", 0), WhoAmI):
        pass
    assert TCPServer.address_family == socket.AF_INET


def _resolves_to(host: str) -> set[int]:
    try:
        return {info[0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return set()


def test_hostname_with_an_ipv4_address_binds_ipv4_as_the_stdlib_does() -> None:
    if socket.AF_INET not in _resolves_to("localhost"):
        pytest.skip("'localhost' has no IPv4 address on this machine")
    with TCPServer(("localhost", 0), WhoAmI) as server:
        assert server.socket.family == socket.AF_INET


def test_hostname_with_only_ipv6_addresses_binds_ipv6() -> None:
    candidates = ("ip6-localhost", "ip6-loopback", "localhost6")
    names = [name for name in candidates if _resolves_to(name) == {socket.AF_INET6}]
    if not names:
        pytest.skip(f"none of {candidates} resolves to IPv6 only here (see /etc/hosts)")
    server = TCPServer((names[0], 0), WhoAmI)
    with serving(server):
        assert server.socket.family == socket.AF_INET6
        assert ask(server.server_address, socket.AF_INET6) == b"hello ::1"


def test_class_that_sets_ipv6_wins_over_the_address() -> None:
    class Six(TCPServer):
        address_family = socket.AF_INET6

    # "" is IPv4's wildcard to the stdlib; a class that insists on IPv6 gets "::".
    with Six(("", 0), WhoAmI) as server:
        assert server.socket.family == socket.AF_INET6


def test_class_that_sets_ipv4_keeps_the_stdlib_behaviour() -> None:
    class Four(TCPServer):
        address_family = socket.AF_INET

    with pytest.raises(socket.gaierror):  # an IPv6 literal on an AF_INET socket
        Four(("::1", 0), WhoAmI)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_dualstack_serves_ipv4_and_ipv6_on_one_socket(strategy: Optional[type[Any]]) -> None:
    if not socket.has_dualstack_ipv6():
        pytest.skip("no dual-stack support on this system")
    server = server_class(TCPServer, strategy, dualstack_ipv6=True)(("::", 0), WhoAmI)
    with serving(server):
        port = server.server_address[1]
        assert server.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert ask(("::1", port), socket.AF_INET6) == b"hello ::1"
        assert ask(("127.0.0.1", port), socket.AF_INET) == b"hello ::ffff:127.0.0.1"


def test_dualstack_reads_empty_host_as_ipv6_wildcard() -> None:
    if not socket.has_dualstack_ipv6():
        pytest.skip("no dual-stack support on this system")

    class Both(TCPServer):
        dualstack_ipv6 = True

    with Both(("", 0), WhoAmI) as server:
        assert server.socket.family == socket.AF_INET6
        assert server.server_address[0] == "::"


def test_dualstack_with_an_ipv4_address_is_refused_naming_it() -> None:
    class Both(TCPServer):
        dualstack_ipv6 = True

    with pytest.raises(ValueError, match=r"dualstack_ipv6.*'127\.0\.0\.1'"):
        Both(("127.0.0.1", 0), WhoAmI)
