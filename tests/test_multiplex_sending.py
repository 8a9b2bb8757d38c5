"""How a multiplexing server sends: output written in a turn goes out at its end."""

from __future__ import annotations

import socket
from typing import Any, Callable

from conftest import TIMEOUT, recv_exactly, wait_until

import pyserve
from pyserve.multiplex.sending import JOIN_LIMIT
from pyserve.testing import read_until_eof

Serve = Callable[..., Any]
LOCAL = ("127.0.0.1", 0)


def connect(server: Any) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=TIMEOUT)


def test_output_written_in_a_turn_is_buffered_until_its_end(serve: Serve) -> None:
    """Inside a callback, write() only buffers (write_buffer_size counts it); by
    the next callback the turn's end has sent it, every write in one piece."""
    sizes: list[int] = []

    class TwoWrites(pyserve.ConnectionHandler[Any]):
        def data_received(self, data: bytes) -> None:
            sizes.append(self.write_buffer_size)
            self.write(b"one ")
            self.write(b"two;")
            sizes.append(self.write_buffer_size)

    server = serve(pyserve.MultiplexingTCPServer(LOCAL, TwoWrites))
    with connect(server) as client:
        client.sendall(b"a")
        assert recv_exactly(client, 8) == b"one two;"
        client.sendall(b"b")
        assert recv_exactly(client, 8) == b"one two;"
    assert sizes == [0, 8, 0, 8]


def test_write_buffer_drained_follows_a_gathered_send(serve: Serve) -> None:
    """A handler that held back while its output waited hears that it was sent."""
    drained: list[int] = []

    class Counts(pyserve.ConnectionHandler[Any]):
        def data_received(self, data: bytes) -> None:
            self.write(data)

        def write_buffer_drained(self) -> None:
            drained.append(self.write_buffer_size)

    server = serve(pyserve.MultiplexingTCPServer(LOCAL, Counts))
    with connect(server) as client:
        client.sendall(b"ping")
        assert recv_exactly(client, 4) == b"ping"
        wait_until(lambda: drained == [0])


def test_a_write_from_write_buffer_drained_goes_out_without_new_input(serve: Serve) -> None:
    """What write_buffer_drained() writes (after the turn's sends) is gathered for
    the next turn, and the loop starts that turn at once: it does not wait for
    the peer, which waits for this very output, to send anything."""

    parts = [b"third", b"second "]

    class Streams(pyserve.ConnectionHandler[Any]):
        def data_received(self, data: bytes) -> None:
            self.write(b"first ")

        def write_buffer_drained(self) -> None:
            if parts:
                self.write(parts.pop())

    server = serve(pyserve.MultiplexingTCPServer(LOCAL, Streams))
    with connect(server) as client:
        client.sendall(b"go")
        assert recv_exactly(client, 18) == b"first second third"


def test_close_after_a_write_sends_it_then_ends(serve: Serve) -> None:
    class Bye(pyserve.ConnectionHandler[Any]):
        def data_received(self, data: bytes) -> None:
            self.write(b"bye")
            self.close()
            self.write(b" (not sent: closing)")

    server = serve(pyserve.MultiplexingTCPServer(LOCAL, Bye))
    with connect(server) as client:
        client.sendall(b"x")
        assert read_until_eof(client) == b"bye"


def test_a_turn_of_output_too_big_to_join_arrives_whole_and_in_order(serve: Serve) -> None:
    """Writes of one turn past JOIN_LIMIT go out one by one (the rest when the
    socket has room), never copied together, and the peer gets every byte."""
    pieces = [bytes([65 + n]) * (JOIN_LIMIT // 2 + 1) for n in range(4)]

    class Big(pyserve.ConnectionHandler[Any]):
        def data_received(self, data: bytes) -> None:
            for piece in pieces:
                self.write(piece)

    server = serve(pyserve.MultiplexingTCPServer(LOCAL, Big))
    with connect(server) as client:
        client.sendall(b"go")
        assert recv_exactly(client, sum(map(len, pieces))) == b"".join(pieces)
