"""handlers.registry: short names to handler classes, per transport."""

from __future__ import annotations

import socket
import struct
import uuid
from collections.abc import Iterator

import pytest

from handlers import registry
from handlers.lines import UpperCaseHandler
from handlers.simple import EchoDatagramHandler, EchoStreamHandler
from pyserve import (
    DatagramRequestHandler,
    StreamRequestHandler,
    ThreadingTCPServer,
    ThreadingUDPServer,
)
from pyserve.testing import serving

BUILT_IN = {
    "echo": ("tcp", "udp"),
    "discard": ("tcp", "udp"),
    "chargen": ("tcp",),
    "qotd": ("tcp",),
    "daytime": ("tcp", "udp"),
    "time": ("tcp", "udp"),
    "uppercase": ("tcp",),
    "welcome": ("tcp",),
    "message-echo": ("tcp",),
    "message-echo-network": ("tcp",),
}


@pytest.fixture
def name() -> Iterator[str]:
    """A fresh service name, removed from the registry after the test."""
    fresh = f"test-{uuid.uuid4().hex[:8]}"
    yield fresh
    if fresh in registry.names():
        registry.unregister(fresh)


def test_built_in_services_are_listed_with_their_transports() -> None:
    for service, transports in BUILT_IN.items():
        assert service in registry.names()
        assert registry.transports(service) == transports
        assert registry.describe(service)


def test_names_are_sorted() -> None:
    assert registry.names() == sorted(registry.names())


@pytest.mark.parametrize(
    ("service", "transport"),
    [(s, t) for s, ts in BUILT_IN.items() for t in ts],
)
def test_every_built_in_resolves_to_a_handler_of_its_transport(service, transport) -> None:
    handler = registry.get(service, transport)
    expected = StreamRequestHandler if transport == "tcp" else DatagramRequestHandler
    assert issubclass(handler, expected)


def test_get_without_transport_prefers_tcp() -> None:
    assert registry.get("echo") is EchoStreamHandler
    assert registry.get("echo", "udp") is EchoDatagramHandler
    assert registry.get("uppercase") is UpperCaseHandler


def test_get_without_transport_takes_the_only_one(name) -> None:
    registry.register(name, udp=EchoDatagramHandler)
    assert registry.get(name) is EchoDatagramHandler


def test_unknown_name_raises_key_error_listing_known_names() -> None:
    with pytest.raises(KeyError, match=r"no service named 'nope' \(known: .*echo"):
        registry.get("nope")


def test_missing_transport_raises_key_error_naming_what_exists() -> None:
    with pytest.raises(KeyError, match=r"'uppercase' has no 'udp' handler.*offers: tcp"):
        registry.get("uppercase", "udp")


def test_register_by_import_path_is_one_line(name) -> None:
    registry.register(name, tcp="handlers.lines:WelcomeHandler", description="hi")
    assert registry.get(name).__name__ == "WelcomeHandler"
    assert registry.describe(name) == "hi"


def test_registering_a_name_twice_needs_replace(name) -> None:
    registry.register(name, tcp=EchoStreamHandler)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(name, tcp=UpperCaseHandler)
    registry.register(name, tcp=UpperCaseHandler, replace=True)
    assert registry.get(name) is UpperCaseHandler


def test_decorator_registers_and_returns_the_class(name) -> None:
    @registry.service(name, "tcp", description="shouts")
    class Shout(UpperCaseHandler):
        pass

    @registry.service(name, "udp")
    class ShoutDatagram(EchoDatagramHandler):
        pass

    assert registry.get(name) is Shout
    assert registry.get(name, "udp") is ShoutDatagram
    assert registry.transports(name) == ("tcp", "udp")
    assert registry.describe(name) == "shouts"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs a tcp or udp handler"),
        ({"tcp": "no colon here"}, "must be a class or 'module:Class'"),
        ({"tcp": 42}, "must be a class"),
    ],
)
def test_bad_registrations_raise_value_error(name, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        registry.register(name, **kwargs)


def test_bad_names_and_transports_raise_value_error() -> None:
    with pytest.raises(ValueError, match="service name ''"):
        registry.register("", tcp=EchoStreamHandler)
    with pytest.raises(ValueError, match="transport 'sctp'"):
        registry.service("x", "sctp")


def test_an_import_path_to_a_non_class_raises_type_error(name) -> None:
    registry.register(name, tcp="handlers.simple:chargen_lines")
    with pytest.raises(TypeError, match="is not a class"):
        registry.get(name)


# -- served by name, end to end ----------------------------------------------------------


def test_services_looked_up_by_name_serve_over_tcp() -> None:
    exchanges = {"echo": (b"ping\n", b"ping\n"), "uppercase": (b"shout\n", b"SHOUT\n")}
    for service, (request, reply) in exchanges.items():
        server = ThreadingTCPServer(("127.0.0.1", 0), registry.get(service, "tcp"))
        with serving(server), socket.create_connection(server.server_address, timeout=10) as c:
            c.sendall(request)
            assert c.recv(100) == reply


def test_a_service_looked_up_by_name_serves_over_udp() -> None:
    server = ThreadingUDPServer(("127.0.0.1", 0), registry.get("time", "udp"))
    with serving(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(b"", server.server_address)
        assert len(sock.recv(100)) == 4


@pytest.mark.parametrize("name", ["chargen", "qotd"])
def test_amplifying_udp_services_are_withheld_with_the_reason_and_the_opt_in(name) -> None:
    with pytest.raises(KeyError) as refused:
        registry.get(name, "udp")
    message = refused.value.args[0]
    assert "amplif" in message
    assert f"handlers.simple:{name.capitalize()}DatagramHandler" in message
    assert registry.get(name) is registry.get(name, "tcp")


def test_message_echo_reads_the_length_in_this_machines_byte_order() -> None:
    server = ThreadingTCPServer(("127.0.0.1", 0), registry.get("message-echo"))
    with serving(server), socket.create_connection(server.server_address, timeout=10) as c:
        c.sendall(struct.pack("I", 5) + b"hello")
        assert c.recv(100) == struct.pack("I", 5) + b"hello"
    assert registry.get("message-echo-network").framing.encode(b"x") == b"\0\0\0\1x"
