"""handlers.simple: RFC 862-868 services, unit-tested and served to real clients."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time

from peers import needs_binary

from handlers import simple
from pyserve import ThreadingTCPServer, ThreadingUDPServer
from pyserve.testing import StreamHarness, run_datagram_handler, run_stream_handler, serving

#: 2001-09-09 01:46:40 UTC: a fixed clock for the time services.
BILLENNIUM = 1_000_000_000


class FixedDaytime(simple.DaytimeStreamHandler):
    def now(self) -> float:
        return BILLENNIUM


class FixedTime(simple.TimeStreamHandler):
    def now(self) -> float:
        return BILLENNIUM


class FixedUdpTime(simple.TimeDatagramHandler):
    def now(self) -> float:
        return BILLENNIUM


def udp_request(server, data: bytes = b"\n") -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(data, server.server_address)
        return sock.recv(4096)


def tcp_server(handler):
    return serving(ThreadingTCPServer(("127.0.0.1", 0), handler))


def udp_server(handler):
    return serving(ThreadingUDPServer(("127.0.0.1", 0), handler))


# -- formats ---------------------------------------------------------------------------


def test_chargen_lines_are_72_printable_characters_shifting_by_one() -> None:
    lines = simple.chargen_lines(0, 96).split(b"\r\n")[:-1]
    assert all(len(line) == 72 for line in lines)
    assert lines[0].startswith(b' !"#$%')
    assert lines[1] == lines[0][1:] + b"h"
    assert lines[95] == lines[0]  # the pattern repeats after 95 lines


def test_daytime_text_uses_english_names_in_utc() -> None:
    assert simple.daytime_text(BILLENNIUM) == "Sunday, September 9, 2001 01:46:40-UTC"


def test_rfc868_time_counts_from_1900_big_endian() -> None:
    assert simple.rfc868_time(0) == struct.pack("!I", 2_208_988_800)
    assert struct.unpack("!I", simple.rfc868_time(BILLENNIUM)) == (3_208_988_800,)


def test_daytime_and_time_over_a_stream_send_then_close() -> None:
    assert read_greeting(FixedDaytime) == b"Sunday, September 9, 2001 01:46:40-UTC\r\n"
    assert read_greeting(FixedTime) == simple.rfc868_time(BILLENNIUM)


def test_rfc868_time_wraps_in_2036() -> None:
    wrap = (1 << 32) - 2_208_988_800  # 2036-02-07 06:28:16 UTC
    assert simple.rfc868_time(wrap) == b"\x00\x00\x00\x00"


# -- handlers without a server ---------------------------------------------------------


def test_echo_stream_returns_every_byte() -> None:
    data = bytes(range(256)) * 1000
    assert run_stream_handler(simple.EchoStreamHandler, data) == data


def test_echo_datagram_returns_the_datagram_even_empty() -> None:
    assert run_datagram_handler(simple.EchoDatagramHandler, b"ping") == [b"ping"]
    assert run_datagram_handler(simple.EchoDatagramHandler, b"") == [b""]


def test_discard_answers_nothing() -> None:
    assert run_stream_handler(simple.DiscardStreamHandler, b"x" * 100_000) == b""
    assert run_datagram_handler(simple.DiscardDatagramHandler, b"x") == []


def read_greeting(handler) -> bytes:
    """What a speak-first handler sends before closing, the client sending nothing.

    (``run_stream_handler`` sends its data first, even b"", and that send races
    with a handler that has already closed: EPIPE.)
    """
    with StreamHarness(handler) as client:
        chunks = []
        while True:
            chunk = client.recv(4096)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def test_qotd_sends_one_short_ascii_quotation() -> None:
    reply = read_greeting(simple.QotdStreamHandler)
    assert reply.endswith(b"\r\n")
    assert reply[:-2].decode("ascii") in simple.QUOTES
    assert len(reply) < 512


def test_chargen_datagram_is_at_most_512_characters() -> None:
    sizes = {len(run_datagram_handler(simple.ChargenDatagramHandler, b"")[0]) for _ in range(200)}
    assert max(sizes) <= 512
    assert len(sizes) > 1  # a random length, as RFC 864 says


def test_chargen_datagram_size_may_be_fixed_even_to_zero() -> None:
    class Zero(simple.ChargenDatagramHandler):
        datagram_size = 0

    class Big(simple.ChargenDatagramHandler):
        datagram_size = 10_000  # clamped to the RFC's 512

    assert run_datagram_handler(Zero, b"") == [b""]
    assert len(run_datagram_handler(Big, b"")[0]) == 512


# -- real servers, real clients --------------------------------------------------------


def test_echo_over_tcp_and_udp() -> None:
    with tcp_server(simple.EchoStreamHandler) as server:
        sock = socket.create_connection(server.server_address, timeout=10)
        with sock:
            sock.sendall(b"hello")
            assert sock.recv(100) == b"hello"
    with udp_server(simple.EchoDatagramHandler) as server:
        assert udp_request(server, b"datagram") == b"datagram"


@needs_binary("nc", "netcat-openbsd")
def test_echo_with_netcat() -> None:
    with tcp_server(simple.EchoStreamHandler) as server:
        host, port = server.server_address
        done = subprocess.run(
            ["nc", "-N", "-w", "5", host, str(port)],
            input=b"echo via nc\n",
            capture_output=True,
            timeout=20,
            check=True,
        )
    assert done.stdout == b"echo via nc\n"


@needs_binary("socat", "socat")
def test_daytime_over_udp_with_socat() -> None:
    class FixedUdpDaytime(simple.DaytimeDatagramHandler):
        def now(self) -> float:
            return BILLENNIUM

    with udp_server(FixedUdpDaytime) as server:
        host, port = server.server_address
        done = subprocess.run(
            ["socat", "-T", "5", "-", f"UDP:{host}:{port}"],
            input=b"\n",
            capture_output=True,
            timeout=20,
            check=True,
        )
    assert done.stdout == b"Sunday, September 9, 2001 01:46:40-UTC\r\n"


@needs_binary("nc", "netcat-openbsd")
def test_daytime_over_tcp_with_netcat() -> None:
    with tcp_server(FixedDaytime) as server:
        host, port = server.server_address
        done = subprocess.run(
            ["nc", "-w", "5", host, str(port)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=20,
            check=True,
        )
    assert done.stdout == b"Sunday, September 9, 2001 01:46:40-UTC\r\n"


def test_qotd_and_time_over_udp_answer_each_datagram() -> None:
    with udp_server(simple.QotdDatagramHandler) as server:
        assert udp_request(server)[:-2].decode("ascii") in simple.QUOTES
    with udp_server(FixedUdpTime) as server:
        assert udp_request(server) == simple.rfc868_time(BILLENNIUM)


def run_rdate(server, *options: str) -> str:
    host, port = server.server_address
    done = subprocess.run(
        ["rdate", "-p", *options, "-o", str(port), host],
        capture_output=True,
        timeout=20,
        check=True,
        env={**os.environ, "TZ": "UTC"},
    )
    return done.stdout.decode()


needs_rdate = needs_binary("rdate", "rdate")


@needs_rdate
def test_time_over_tcp_with_rdate() -> None:
    with tcp_server(FixedTime) as server:
        assert "Sep  9 01:46:40 UTC 2001" in run_rdate(server)


@needs_rdate
def test_time_over_udp_with_rdate() -> None:
    with udp_server(FixedUdpTime) as server:
        assert "Sep  9 01:46:40 UTC 2001" in run_rdate(server, "-u")


def test_chargen_over_udp_sends_one_bounded_datagram_per_request() -> None:
    with udp_server(simple.ChargenDatagramHandler) as server:
        for _ in range(5):
            assert len(udp_request(server)) <= 512


class ObservedChargen(simple.ChargenStreamHandler):
    """Chargen that reports when its handler returns."""

    ended = threading.Event()

    def finish(self) -> None:
        super().finish()
        type(self).ended.set()


def test_chargen_over_tcp_streams_the_pattern() -> None:
    ObservedChargen.ended = threading.Event()
    with tcp_server(ObservedChargen) as server:
        with socket.create_connection(server.server_address, timeout=10) as sock:
            received = b""
            while len(received) < 74 * 100:
                received += sock.recv(65536)
        assert received[: 74 * 100] == simple.chargen_lines(0, 100)
        assert ObservedChargen.ended.wait(10)


def test_chargen_over_tcp_is_paced() -> None:
    class Slow(ObservedChargen):
        lines_per_second = 200.0
        tick = 0.05  # 10 lines per batch

    Slow.ended = threading.Event()
    with tcp_server(Slow) as server:
        with socket.create_connection(server.server_address, timeout=10) as sock:
            start = time.monotonic()
            received = b""
            while len(received) < 74 * 40:  # four batches: at least three ticks
                received += sock.recv(65536)
            elapsed = time.monotonic() - start
        assert Slow.ended.wait(10)
    # A lower bound only: contention can make us slower, never the pacing faster.
    assert elapsed >= 0.1


def test_chargen_stops_when_the_client_goes_away_without_reading() -> None:
    class Idle(ObservedChargen):
        lines_per_second = 20.0
        tick = 1.0  # one batch a second: its stop must not wait for the next send

    Idle.ended = threading.Event()
    with tcp_server(Idle) as server:
        with socket.create_connection(server.server_address, timeout=10) as sock:
            sock.recv(74)  # it has started
        start = time.monotonic()
        assert Idle.ended.wait(10)
    assert time.monotonic() - start < 5


def test_chargen_stops_on_a_reset() -> None:
    ObservedChargen.ended = threading.Event()
    with tcp_server(ObservedChargen) as server:
        sock = socket.create_connection(server.server_address, timeout=10)
        sock.recv(74)
        # SO_LINGER 0: close() sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        assert ObservedChargen.ended.wait(10)


@needs_binary("nc", "netcat-openbsd")
def test_chargen_serves_netcat_and_stops_when_netcat_is_killed() -> None:
    ObservedChargen.ended = threading.Event()
    with tcp_server(ObservedChargen) as server:
        host, port = server.server_address
        nc = subprocess.Popen(
            ["nc", "-d", host, str(port)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        # The read's deadline: if nothing comes, netcat is killed and the read ends.
        watchdog = threading.Timer(10, nc.kill)
        watchdog.start()
        try:
            assert nc.stdout is not None
            assert nc.stdout.read(74 * 20) == simple.chargen_lines(0, 20)
        finally:
            watchdog.cancel()
            watchdog.join()
            nc.kill()  # our own child, by its handle
            nc.wait(10)
            nc.stdout.close()  # type: ignore[union-attr]
        assert ObservedChargen.ended.wait(10)
