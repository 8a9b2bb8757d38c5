"""ThreadPoolMixIn: bounded reused workers, a bounded queue, accept backpressure."""

from __future__ import annotations

import selectors
import socket
import threading
import time

import pytest
from conftest import Echo, held_clients, held_handler, round_trip, wait_until

import pyserve
from pyserve.testing import serving

DEADLINE = 10.0


class LineEcho(pyserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "4"])
def test_max_workers_below_one_or_not_int_is_refused_by_value(bad) -> None:
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
        pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), Echo, max_workers=bad)


def test_negative_queue_size_is_refused_by_value() -> None:
    with pytest.raises(ValueError, match="-1"):
        pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), Echo, queue_size=-1)


def test_refused_arguments_leave_no_socket_open() -> None:
    before = pyserve.testing.open_sockets()
    with pytest.raises(ValueError, match="max_workers"):
        pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), Echo, max_workers=0)
    assert pyserve.testing.open_sockets() == before


def test_listener_timeout_is_untouched_by_batch_accepts() -> None:
    with serving(pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), Echo)) as server:
        for _ in range(5):
            assert round_trip(server.server_address) == b"ping\n"
        assert server.socket.gettimeout() is None


def test_sequential_requests_reuse_the_same_worker_threads() -> None:
    seen: set[str] = set()

    class Names(pyserve.BaseRequestHandler):
        def handle(self) -> None:
            seen.add(threading.current_thread().name)
            self.request.sendall(b"ok")

    with serving(pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), Names, max_workers=3)) as server:
        for _ in range(30):
            assert round_trip(server.server_address) == b"ok"
    assert 1 <= len(seen) <= 3
    assert all(name.startswith("pyserve-pool-") for name in seen)


def test_stream_handler_on_pool_serves_lines() -> None:
    with serving(pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), LineEcho)) as server:
        assert round_trip(server.server_address, b"hello\n") == b"hello\n"


def test_udp_pool_answers_datagrams() -> None:
    class Upper(pyserve.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.read().upper())

    server = pyserve.ThreadPoolUDPServer(("127.0.0.1", 0), Upper, max_workers=2)
    with serving(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(DEADLINE)
        for word in (b"a", b"b", b"c"):
            client.sendto(word, server.server_address)
            assert client.recv(100) == word.upper()


def test_unix_stream_pool_serves(tmp_path) -> None:
    path = str(tmp_path / "pool.sock")
    server = pyserve.ThreadPoolUnixStreamServer(path, Echo, max_workers=2)
    with serving(server), socket.socket(socket.AF_UNIX) as client:
        client.settimeout(DEADLINE)
        client.connect(path)
        client.sendall(b"x")
        assert client.recv(10) == b"x"


def test_full_pool_stops_accepting_and_resumes_when_a_worker_frees() -> None:
    release = threading.Event()

    held = held_handler(release, b"done")
    server = pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), held, max_workers=1, queue_size=1)
    server.workers_accept = False  # the loop hands requests over, through a queue
    with serving(server), held_clients(server.server_address, 4, release) as clients:
        wait_until(lambda: "pool-full" in server._accept_holds)
        # One running, one queued; the other two wait in the kernel backlog.
        assert server.stats.accepted == 2
        assert threading.active_count() <= 3  # main, loop, one worker
        release.set()
        assert [c.recv(10) for c in clients] == [b"done"] * 4
    assert server.stats.finished == 4
    assert server.stats.rejected == 0


def test_burst_of_2000_connections_is_served_with_bounded_threads() -> None:
    workers, total = 8, 2000
    server = pyserve.ThreadPoolTCPServer(("127.0.0.1", 0), Echo, max_workers=workers, queue_size=8)
    baseline = threading.active_count()
    peak_threads = baseline
    answered = 0
    with serving(server), selectors.DefaultSelector() as selector:
        for number in range(total):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(server.server_address)
            selector.register(client, selectors.EVENT_WRITE, number)
        deadline = time.monotonic() + 60
        while selector.get_map() and time.monotonic() < deadline:
            for key, events in selector.select(1.0):
                client = key.fileobj
                message = b"%d\n" % key.data
                if events & selectors.EVENT_WRITE:
                    client.send(message)
                    selector.modify(client, selectors.EVENT_READ, key.data)
                else:
                    assert client.recv(100) == message
                    answered += 1
                    selector.unregister(client)
                    client.close()
            peak_threads = max(peak_threads, threading.active_count())
        for key in list(selector.get_map().values()):
            key.fileobj.close()
    assert answered == total
    assert server.stats.finished == total
    assert peak_threads <= baseline + workers + 1  # + the serving loop's thread
