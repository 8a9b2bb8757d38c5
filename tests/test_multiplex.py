"""MultiplexingMixIn: many connections served by callbacks from one I/O thread."""

from __future__ import annotations

import io
import logging
import socket
import struct
import threading
import time
from typing import Any, Callable, ClassVar, Optional

import pytest
from conftest import TIMEOUT, LogCatcher, recv_exactly, wait_until

import pyserve
from pyserve.testing import read_until_eof

Serve = Callable[..., Any]
LOCAL = ("127.0.0.1", 0)


class Recorder(pyserve.ConnectionHandler[Any]):
    """Echo, and note every callback with the thread it ran in."""

    calls: ClassVar[list[tuple[str, int]]] = []

    def note(self, what: str) -> None:
        self.calls.append((what, threading.get_ident()))

    def connection_made(self) -> None:
        self.note("made")

    def data_received(self, data: bytes) -> None:
        self.note("data")
        self.write(data)

    def eof_received(self) -> None:
        self.note("eof")
        super().eof_received()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.note(f"lost:{exc!r}")


def connect(server: Any) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=TIMEOUT)


def test_callbacks_run_in_order_in_one_io_thread(serve: Serve) -> None:
    calls: list[tuple[str, int]] = []
    handler = type("R", (Recorder,), {"calls": calls})
    server = serve(pyserve.MultiplexingTCPServer(LOCAL, handler))
    clients = [connect(server) for _ in range(20)]
    for number, client in enumerate(clients):
        client.sendall(b"hello %d" % number)
    for number, client in enumerate(clients):
        assert recv_exactly(client, len(b"hello %d" % number)) == b"hello %d" % number
    for client in clients:
        client.shutdown(socket.SHUT_WR)
        assert read_until_eof(client) == b""  # the server closed after our EOF
        client.close()
    wait_until(lambda: server.stats.finished == 20)
    assert len({ident for _, ident in calls}) == 1  # one I/O thread served all twenty
    assert calls[0][1] != threading.get_ident()
    kinds = [what for what, _ in calls]
    assert kinds.count("made") == kinds.count("eof") == kinds.count("lost:None") == 20
    assert server.stats.active == 0
    assert server.stats.errored == 0


def send_at_most(sock: socket.socket, size: int) -> None:
    chunk = b"x" * 65536
    for _ in range(size // len(chunk)):
        sock.sendall(chunk)


def test_a_peer_that_never_reads_is_paused_and_others_are_served(serve: Serve) -> None:
    reply = b"r" * 65536
    buffered: list[int] = []

    class Flood(pyserve.ConnectionHandler[Any]):
        max_write_buffer = 256 * 1024

        def data_received(self, data: bytes) -> None:
            self.write(reply)  # 64 KiB for every chunk received
            buffered.append(self._output_size)

    server = serve(pyserve.MultiplexingTCPServer(LOCAL, Flood))
    with connect(server) as greedy, connect(server) as polite:
        greedy.settimeout(0.5)
        with pytest.raises(socket.timeout):  # the server stops reading it: sends block
            send_at_most(greedy, 64 * 1024 * 1024)
        # Memory stayed bounded: at most the limit plus what one callback wrote.
        assert max(buffered) <= Flood.max_write_buffer + len(reply)
        polite.sendall(b"y")
        assert recv_exactly(polite, len(reply)) == reply


def test_callback_error_closes_only_that_connection(serve: Serve, pyserve_log: LogCatcher) -> None:
    class Picky(pyserve.ConnectionHandler[Any]):
        def data_received(self, data: bytes) -> None:
            if data.startswith(b"bad"):
                raise pyserve.ProtocolError(f"refused {data!r}")
            if data.startswith(b"bug"):
                raise ZeroDivisionError("a bug")
            self.write(data)

    server = serve(pyserve.MultiplexingTCPServer(LOCAL, Picky))
    with connect(server) as good, connect(server) as bad, connect(server) as buggy:
        bad.sendall(b"bad input")
        assert read_until_eof(bad) == b""
        buggy.sendall(b"bug")
        assert read_until_eof(buggy) == b""
        good.sendall(b"fine")
        assert recv_exactly(good, 4) == b"fine"
    wait_until(lambda: server.stats.finished + server.stats.errored == 3)
    assert server.stats.errored == 2
    warnings = [r for r in pyserve_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "refused b'bad input'" in warnings[0].getMessage()
    errors = [r for r in pyserve_log.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None


def test_a_reset_connection_is_logged_quietly(serve: Serve, pyserve_log: LogCatcher) -> None:
    server = serve(pyserve.MultiplexingTCPServer(LOCAL, Recorder))
    with connect(server) as bystander:
        victim = connect(server)
        victim.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        victim.sendall(b"x")
        assert recv_exactly(victim, 1) == b"x"
        victim.close()  # RST
        wait_until(lambda: server.stats.active == 1)
        bystander.sendall(b"still here")
        assert recv_exactly(bystander, 10) == b"still here"
    assert not [r for r in pyserve_log.records if r.levelno >= logging.WARNING]


def test_idle_connection_times_out_while_a_busy_one_is_served(serve: Serve) -> None:
    class Idle(Recorder):
        calls: ClassVar[list[tuple[str, int]]] = []
        idle_timeout = 0.5

    server = serve(pyserve.MultiplexingTCPServer(LOCAL, Idle))
    with connect(server) as silent, connect(server) as busy:
        started = time.monotonic()
        slowest = 0.0
        while time.monotonic() - started < 1.0:  # keeps talking past the silent one's limit
            before = time.monotonic()
            busy.sendall(b"ping")
            assert recv_exactly(busy, 4) == b"ping"
            slowest = max(slowest, time.monotonic() - before)
        assert read_until_eof(silent) == b""
        assert time.monotonic() - started < 0.5 + 1.0
    # The one I/O thread never made the busy client wait out the silent one's timeout.
    # (A bound tied to the timeout, not to this machine's speed: a loaded CI core once
    # took 137 ms for a round trip, which an absolute 100 ms bound called a failure.)
    assert slowest < Idle.idle_timeout / 2
    wait_until(lambda: server.stats.timed_out == 1)
    assert any(what.startswith("lost:RequestTimedOut") for what, _ in Idle.calls)


class Unanswering(pyserve.ConnectionHandler[Any]):
    """Takes what arrives and never answers: a request in progress, for a drain."""

    def data_received(self, data: bytes) -> None:
        self.server.received.release()  # type: ignore[attr-defined]


def test_drain_forces_connections_with_requests_in_progress_and_counts_them(
    serve: Serve,
) -> None:
    server = serve(pyserve.MultiplexingTCPServer(LOCAL, Unanswering))
    server.received = threading.Semaphore(0)  # type: ignore[attr-defined]
    clients = [connect(server) for _ in range(10)]
    for client in clients:
        client.sendall(b"hi")
        assert server.received.acquire(timeout=TIMEOUT)  # type: ignore[attr-defined]
    report = server.drain(0.2, force_timeout=5.0)
    assert report.forced == 10
    assert report.stragglers == ()
    for client in clients:
        assert read_until_eof(client) == b""
        client.close()
    assert server.stats.active == 0
    assert server.stats.drained == 10


def test_drain_closes_answered_keep_alive_connections_at_once(serve: Serve) -> None:
    server = serve(pyserve.MultiplexingTCPServer(LOCAL, Recorder))
    clients = [connect(server) for _ in range(10)]
    for client in clients:
        client.sendall(b"hi")
        assert recv_exactly(client, 2) == b"hi"
    report = server.drain(5.0, force_timeout=5.0)
    assert report.elapsed < 2.0  # not the grace: idle connections are closed at once
    assert (report.completed, report.forced, report.stragglers) == (10, 0, ())
    for client in clients:
        assert read_until_eof(client) == b""
        client.close()
    assert server.stats.active == 0


def test_server_close_is_bounded_with_clients_still_connected() -> None:
    class Quick(pyserve.MultiplexingTCPServer):
        close_timeout = 0.2

    server = Quick(LOCAL, Recorder)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    client = connect(server)
    try:
        client.sendall(b"x")
        assert recv_exactly(client, 1) == b"x"
        server.shutdown()
        thread.join(TIMEOUT)
        started = time.monotonic()
        server.server_close()
        assert time.monotonic() - started < 0.2 + 2.0
        assert read_until_eof(client) == b""
    finally:
        client.close()
    assert not [t for t in threading.enumerate() if t.name == "pyserve-io"]


def test_connection_limit_applies(serve: Serve) -> None:
    class Limited(pyserve.MultiplexingTCPServer):
        max_connections = 2

    server = serve(Limited(LOCAL, Recorder))
    with connect(server) as one, connect(server) as two:
        for client in one, two:
            client.sendall(b"a")
            assert recv_exactly(client, 1) == b"a"
        with connect(server) as three:
            assert read_until_eof(three) == b""
    assert server.stats.rejected == 1


def test_call_soon_runs_in_the_io_thread(serve: Serve) -> None:
    handlers: list[pyserve.ConnectionHandler[Any]] = []

    class Remember(Recorder):
        def connection_made(self) -> None:
            handlers.append(self)

    server = serve(pyserve.MultiplexingTCPServer(LOCAL, Remember))
    with connect(server) as client:
        wait_until(lambda: handlers)
        server.call_soon(lambda: handlers[0].write(b"pushed"))
        assert recv_exactly(client, 6) == b"pushed"


def test_close_sends_buffered_output_first(serve: Serve) -> None:
    payload = b"z" * (4 * 1024 * 1024)

    class SayAndGo(pyserve.ConnectionHandler[Any]):
        def connection_made(self) -> None:
            self.write(payload)
            self.close()

    server = serve(pyserve.MultiplexingTCPServer(LOCAL, SayAndGo))
    with connect(server) as client:
        assert read_until_eof(client) == payload


def test_a_blocking_handler_class_is_refused() -> None:
    with pytest.raises(TypeError, match=r"ConnectionHandler subclass.*BaseRequestHandler"):
        pyserve.MultiplexingTCPServer(LOCAL, pyserve.BaseRequestHandler)


def test_a_datagram_server_is_refused() -> None:
    class MuxUDP(pyserve.MultiplexingMixIn, pyserve.UDPServer):
        pass

    with MuxUDP(LOCAL, Recorder) as server, pytest.raises(TypeError, match="stream sockets"):
        server.process_request((b"x", server.socket), ("127.0.0.1", 1))


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
def test_unix_stream_server(serve: Serve, tmp_path: Any) -> None:
    path = str(tmp_path / "mux.sock")
    serve(pyserve.MultiplexingUnixStreamServer(path, Recorder))
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(TIMEOUT)
        client.connect(path)
        client.sendall(b"over unix")
        assert recv_exactly(client, 9) == b"over unix"


def test_explain_mode_shows_the_callbacks_in_the_io_thread(serve: Serve) -> None:
    lines = io.StringIO()

    class Explained(pyserve.MultiplexingTCPServer):
        explain = lines

    class Echo(pyserve.ConnectionHandler[Any]):
        def data_received(self, data: bytes) -> None:
            self.write(data)

    server = serve(Explained(LOCAL, Echo))
    with connect(server) as client:
        client.sendall(b"hi")
        assert recv_exactly(client, 2) == b"hi"
        client.shutdown(socket.SHUT_WR)
        assert read_until_eof(client) == b""
    wait_until(lambda: "connection_lost" in lines.getvalue())
    loop_steps = {"serve_forever", "_handle_request_noblock", "service_actions"}
    request_lines = [line for line in lines.getvalue().splitlines()
                     if line.split("|", 1)[1].split()[0] not in loop_steps]
    hooks = [line.split("|", 1)[1].split()[0] for line in request_lines]
    assert hooks == [
        "get_request",
        "verify_request",
        "process_request",
        "connection_made",
        "data_received",
        "eof_received",
        "shutdown_request",
        "close_request",
        "connection_lost",
    ]
    assert "pyserve-io" in request_lines[3]


def test_half_close_answers_after_eof_once(serve: Serve) -> None:
    eofs: list[int] = []

    class Collect(pyserve.ConnectionHandler[Any]):
        """Reads everything the peer sends, answers once it has finished."""

        def connection_made(self) -> None:
            self.received = b""

        def data_received(self, data: bytes) -> None:
            self.received += data

        def eof_received(self) -> None:
            eofs.append(1)
            self.write(b"%d bytes" % len(self.received) + b" " * 300_000)
            self.close()

    server = serve(pyserve.MultiplexingTCPServer(LOCAL, Collect))
    with connect(server) as client:
        client.sendall(b"a" * 100_000)
        client.shutdown(socket.SHUT_WR)
        assert read_until_eof(client).startswith(b"100000 bytes ")
    wait_until(lambda: server.stats.finished == 1)
    assert eofs == [1]


def test_call_soon_after_close_is_refused() -> None:
    server = pyserve.MultiplexingTCPServer(LOCAL, Recorder)
    server.server_close()
    with pytest.raises(RuntimeError, match="is closed"):
        server.call_soon(lambda: None)


def test_a_connection_accepted_as_the_server_closes_is_not_left_in_flight() -> None:
    server = pyserve.MultiplexingTCPServer(LOCAL, Recorder)
    server.server_close()
    ours, peer = socket.socketpair()
    with ours, peer, pytest.raises(RuntimeError, match="is closed"):
        server.process_request(ours, ("127.0.0.1", 1))
    stats = server.stats
    assert (stats.active, stats.queued) == (0, 0)
    assert server.in_flight() == ()


@pytest.mark.parametrize("batch", [0, -1, 2.5, True])
def test_a_bad_accept_batch_is_refused_at_construction(batch: Any) -> None:
    server_class = type("Batched", (pyserve.MultiplexingTCPServer,), {"accept_batch": batch})
    with pytest.raises(ValueError, match=f"accept_batch .*{batch!r}"):
        server_class(LOCAL, Recorder)


def test_a_mix_in_working_in_finish_request_is_refused() -> None:
    class Logged(pyserve.MultiplexingTCPServer):
        def finish_request(self, request: Any, client_address: Any) -> None:
            super().finish_request(request, client_address)

    with pytest.raises(TypeError, match=r"never calls finish_request\(\).*Logged"):
        Logged(LOCAL, Recorder)
    assert pyserve.multiplex.finish_request_overriders(pyserve.MultiplexingTCPServer) == []


# -- the hand-over, the poller and the Transport protocol ------------------------------


def test_connection_made_greets_a_client_that_sends_nothing(serve: Serve) -> None:
    class Greeter(pyserve.ConnectionHandler[Any]):
        def connection_made(self) -> None:
            self.write(b"hello\n")

    server = serve(pyserve.MultiplexingTCPServer(LOCAL, Greeter))
    clients = [connect(server) for _ in range(5)]
    try:
        for client in clients:  # opened without a byte from the peer
            assert recv_exactly(client, 6) == b"hello\n"
    finally:
        for client in clients:
            client.close()


def test_a_burst_of_connections_is_opened_and_served(serve: Serve) -> None:
    count = 200
    server = serve(pyserve.MultiplexingTCPServer(LOCAL, Recorder))
    clients = []
    try:
        for _ in range(count):  # all connected before any is read
            clients.append(connect(server))
        for number, client in enumerate(clients):
            client.sendall(b"%d;" % number)
        for number, client in enumerate(clients):
            assert recv_exactly(client, len(b"%d;" % number)) == b"%d;" % number
    finally:
        for client in clients:
            client.close()
    wait_until(lambda: server.stats.finished == count)
    assert server.stats.accepted == count


def test_a_handler_that_fails_to_construct_closes_only_its_connection(
    serve: Serve, pyserve_log: LogCatcher
) -> None:
    made: list[bool] = []

    class Fragile(Recorder):
        def __init__(self, request: Any, client_address: Any, server: Any) -> None:
            super().__init__(request, client_address, server)
            made.append(True)
            if len(made) == 1:
                raise ZeroDivisionError("the first one breaks")

    server = serve(pyserve.MultiplexingTCPServer(LOCAL, type("F", (Fragile,), {"calls": []})))
    with connect(server) as broken:
        assert read_until_eof(broken) == b""
    with connect(server) as working:
        working.sendall(b"ok")
        assert recv_exactly(working, 2) == b"ok"
    wait_until(lambda: server.stats.errored == 1)
    assert [r for r in pyserve_log.records if r.levelno == logging.ERROR]


def test_a_peer_that_resets_while_its_reading_is_paused_is_ended(serve: Serve) -> None:
    reply = b"r" * 65536
    lost: list[Optional[BaseException]] = []
    done = threading.Event()

    class Flood(pyserve.ConnectionHandler[Any]):
        max_write_buffer = 64 * 1024

        def data_received(self, data: bytes) -> None:
            self.write(reply)

        def connection_lost(self, exc: Optional[BaseException]) -> None:
            lost.append(exc)
            done.set()

    server = serve(pyserve.MultiplexingTCPServer(LOCAL, Flood))
    greedy = connect(server)
    greedy.settimeout(0.5)
    with pytest.raises(socket.timeout):  # the server stopped reading it
        send_at_most(greedy, 64 * 1024 * 1024)
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    greedy.close()  # RST while the server watches it for writing only
    assert done.wait(TIMEOUT)
    assert isinstance(lost[0], OSError)
    wait_until(lambda: server.stats.active == 0)
    with connect(server) as polite:  # and the loop still serves
        polite.sendall(b"y")
        assert recv_exactly(polite, len(reply)) == reply


def test_a_handler_runs_on_any_transport() -> None:
    """ConnectionHandler needs only the Transport protocol, not the server's loop."""
    calls: list[tuple[str, Any]] = []

    class Recording:
        def watch(self, handler: pyserve.ConnectionHandler[Any]) -> None:
            calls.append(("watch", handler._output_size))

        def finish(
            self, handler: pyserve.ConnectionHandler[Any], exc: Optional[BaseException]
        ) -> None:
            calls.append(("finish", exc))

    transport: pyserve.multiplex.Transport = Recording()
    ours, peer = socket.socketpair()
    with ours, peer:
        ours.setblocking(False)
        peer.settimeout(TIMEOUT)
        handler = pyserve.ConnectionHandler[Any](ours, "peer", None)
        with pytest.raises(RuntimeError, match="not open"):
            handler.write(b"too early")
        handler._loop = transport
        handler.write(b"sent at once")
        assert peer.recv(64) == b"sent at once"
        assert calls == []  # the kernel took it all: nothing to watch
        handler._output.append(b"queued")  # as if the kernel had been full
        handler._output_size = 6
        handler.write(b"after")
        assert calls == [("watch", 11)]
        handler.close()
        assert calls[-1] == ("watch", 11)  # buffered output first: no finish yet
        handler._output.clear()
        handler._output_size = 0
        other = pyserve.ConnectionHandler[Any](ours, "peer", None)
        other._loop = transport
        other.close()
        assert calls[-1] == ("finish", None)


def test_a_write_after_the_handler_closed_its_socket_never_reaches_another_socket(
    serve: Serve,
) -> None:
    """write() uses the socket's descriptor as the socket has it *when it sends*
    (the end of the turn): a handler that closed ``request`` itself (not
    ``close()``) frees the number, and a new socket may take it at once; the send
    must fail (EBADF) and end the connection, not go there."""
    outcome: list[Any] = []

    class ClosesItsSocket(pyserve.ConnectionHandler[Any]):
        def data_received(self, data: bytes) -> None:
            number = self.request.fileno()
            self.request.close()
            # The lowest free numbers: ours reuses it, and stays open until the
            # gathered write has been tried.
            self.pair = socket.socketpair()
            outcome.append(self.pair[0].fileno() == number)
            self.write(b"secret")

        def connection_lost(self, exc: Optional[BaseException]) -> None:
            ours, peer = self.pair
            with ours, peer:
                peer.setblocking(False)
                try:
                    leaked = peer.recv(64)
                except BlockingIOError:
                    leaked = b""
            outcome.append((type(exc), leaked))

    server = serve(pyserve.MultiplexingTCPServer(LOCAL, ClosesItsSocket))
    with connect(server) as client:
        client.sendall(b"go")
        wait_until(lambda: len(outcome) == 2)
    reused, (lost, leaked) = outcome
    assert reused, "the freed number was not reused: the test proved nothing"
    assert leaked == b""
    assert lost is OSError  # the failed send ended the connection


class ChunkRecorder(pyserve.ConnectionHandler[Any]):
    """Echo, and note the size of every chunk data_received() gets."""

    sizes: ClassVar[list[int]] = []

    def data_received(self, data: bytes) -> None:
        self.sizes.append(len(data))
        self.write(data)


@pytest.mark.parametrize("burst", [100, 479, 480, 6000])
def test_what_a_peer_sends_at_once_arrives_in_one_piece(serve: Serve, burst: int) -> None:
    """Reads start small (a few hundred bytes: cheap to allocate); one that comes
    back full reads the rest at once, so a larger burst is still one chunk, and
    the reads after it stay large."""
    sizes: list[int] = []
    handler = type("C", (ChunkRecorder,), {"sizes": sizes})
    server = serve(pyserve.MultiplexingTCPServer(LOCAL, handler))
    with connect(server) as client:
        for size in (burst, 3000, 50):
            # One send of a few KiB is one segment on the loopback: the server
            # finds it whole in the kernel, or not at all.
            client.sendall(b"x" * size)
            assert recv_exactly(client, size) == b"x" * size
    assert sizes == [burst, 3000, 50]


def test_reads_never_exceed_receive_size(serve: Serve) -> None:
    sizes: list[int] = []
    handler = type("C", (ChunkRecorder,), {"sizes": sizes, "receive_size": 1000})
    server = serve(pyserve.MultiplexingTCPServer(LOCAL, handler))
    with connect(server) as client:
        client.sendall(b"y" * 3000)
        assert recv_exactly(client, 3000) == b"y" * 3000
    assert sum(sizes) == 3000
    assert max(sizes) <= 1000


def test_a_burst_arrives_in_one_piece_while_output_waits(serve: Serve) -> None:
    """The same while the connection also waits to write (its events are then
    served off the usual path): a burst read small would come in pieces."""
    sizes: list[int] = []

    class Floods(ChunkRecorder):
        max_write_buffer = 64 << 20  # reading goes on while output waits

        def connection_made(self) -> None:
            self.write(b"z" * (32 << 20))  # more than the kernel takes: output waits

        def data_received(self, data: bytes) -> None:
            self.sizes.append(len(data))

    handler = type("F", (Floods,), {"sizes": sizes})
    server = serve(pyserve.MultiplexingTCPServer(LOCAL, handler))
    with connect(server) as client:
        client.recv(1)  # connected and flooding; the client reads no more
        client.sendall(b"x" * 6000)
        wait_until(lambda: sum(sizes) >= 6000)
    assert sizes == [6000]
