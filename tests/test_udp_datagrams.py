"""Datagrams of every size arrive whole, and an empty reply is a reply.

Measured sizes: from the empty datagram up to 65,507 bytes, the most an IPv4
UDP datagram can carry. With default settings every one of them must make an
echo round trip unchanged; a datagram is dropped only above a
``max_packet_size`` the program chose (see tests/test_fix_udp_unix.py for the
drop, its counter and its single log line).

A ``DatagramRequestHandler`` replies when the handler wrote, even ``b""``, and
stays silent when it never called ``write()``.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import TIMEOUT

import pyserve

HOST = "127.0.0.1"
SIZES = [0, 1, 7, 100, 512, 1472, 4096, 8192, 8193, 16384, 32768, 65507]


class Echo(pyserve.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def _pattern(size: int) -> bytes:
    """``size`` bytes that differ from position to position, so a cut shows."""
    return bytes(i % 251 for i in range(size))


@pytest.mark.parametrize("size", SIZES)
def test_udp_echo_round_trips_every_size(size: int, running: Any) -> None:
    server = pyserve.UDPServer((HOST, 0), Echo)
    payload = _pattern(size)
    with running(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.sendto(payload, server.server_address)
        assert client.recv(65536) == payload
    assert server.datagrams_truncated == 0


@pytest.fixture
def unix_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="pyd-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        yield path
    finally:
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX")
@pytest.mark.parametrize("size", SIZES)
def test_unix_datagram_echo_round_trips_every_size(size: int, running: Any, unix_dir: str) -> None:
    server = pyserve.UnixDatagramServer(os.path.join(unix_dir, "s"), Echo)
    payload = _pattern(size)
    with running(server), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.bind(os.path.join(unix_dir, "c"))
        client.sendto(payload, server.server_address)
        assert client.recv(65536) == payload


def test_default_max_packet_size_admits_the_largest_udp_datagram() -> None:
    assert pyserve.UDPServer.max_packet_size >= 65507


def test_handler_that_writes_an_empty_reply_sends_it(impl: Any, running: Any) -> None:
    class EchoEmpty(impl.DatagramRequestHandler):  # type: ignore[misc]
        def handle(self) -> None:
            self.wfile.write(self.rfile.read())

    server = impl.UDPServer((HOST, 0), EchoEmpty)
    with running(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.sendto(b"", server.server_address)
        assert client.recvfrom(100) == (b"", server.server_address)


def test_handler_writelines_of_nothing_is_a_reply(running: Any) -> None:
    class Lines(pyserve.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.writelines([b"", b""])

    server = pyserve.UDPServer((HOST, 0), Lines)
    with running(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.sendto(b"x", server.server_address)
        assert client.recv(100) == b""
