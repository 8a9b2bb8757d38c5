"""handlers.auth: the HMAC challenge-response mix-in and its client helper."""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import threading

import pytest

from handlers._handshake import FailureThrottle
from handlers.auth import (
    ACCEPTED,
    CHALLENGE_SIZE,
    CONTEXT,
    MAGIC,
    REJECTED,
    AuthenticationFailed,
    HMACAuthMixIn,
    answer_challenge,
    authenticate,
)
from handlers.lines import UpperCaseHandler
from pyserve import StreamRequestHandler, ThreadingTCPServer
from pyserve.testing import StreamHarness, serving

KEY = b"sixteen byte key and then some"
OTHER_KEY = b"another key, also long enough"


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


class Echo(StreamRequestHandler):
    handled: threading.Event

    def handle(self) -> None:
        type(self).handled.set()
        line = self.rfile.readline()
        if line:
            self.wfile.write(line)


def make_handler(timeout: float = 5.0) -> type[Echo]:
    class Guarded(HMACAuthMixIn, Echo):
        auth_key = KEY
        auth_timeout = timeout
        handled = threading.Event()

    return Guarded


def auth_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("pyserve") and r.levelno >= logging.WARNING
    ]


# -- the exchange, over a socket pair ---------------------------------------------------


def test_answer_is_hmac_sha256_over_context_and_challenge() -> None:
    challenge = MAGIC + bytes(32)
    expected = hmac.new(KEY, CONTEXT + challenge, hashlib.sha256).digest()
    assert answer_challenge(KEY, challenge) == expected


def test_right_key_is_accepted_and_the_handler_runs() -> None:
    handler = make_handler()
    with StreamHarness(handler) as client:
        authenticate(client, KEY)
        client.sendall(b"after auth\n")
        assert recv_exactly(client, 11) == b"after auth\n"
    assert handler.handled.is_set()


def test_challenges_are_fresh_for_every_connection() -> None:
    handler = make_handler()
    challenges = []
    for _ in range(3):
        with StreamHarness(handler) as client:
            challenges.append(recv_exactly(client, CHALLENGE_SIZE))
    assert len(set(challenges)) == 3
    assert all(c.startswith(MAGIC) and len(c) == 40 for c in challenges)


def test_wrong_key_is_rejected_and_logged_and_handle_never_runs(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pyserve")
    handler = make_handler()
    with StreamHarness(handler) as client:
        with pytest.raises(AuthenticationFailed, match="rejected"):
            authenticate(client, OTHER_KEY)
        assert client.recv(10) == b""  # closed
    assert not handler.handled.is_set()
    assert len(auth_warnings(caplog)) == 1
    assert "wrong answer" in auth_warnings(caplog)[0]


def test_replayed_answer_is_rejected(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pyserve")
    handler = make_handler()
    with StreamHarness(handler) as client:  # an eavesdropper records a good exchange
        recorded = answer_challenge(KEY, recv_exactly(client, CHALLENGE_SIZE))
        client.sendall(recorded)
        assert recv_exactly(client, 1) == ACCEPTED
    handler.handled.clear()
    with StreamHarness(handler) as client:  # ... and replays the answer later
        recv_exactly(client, CHALLENGE_SIZE)
        client.sendall(recorded)
        assert recv_exactly(client, 1) == REJECTED
        assert client.recv(10) == b""
    assert not handler.handled.is_set()
    assert ["wrong answer" in m for m in auth_warnings(caplog)] == [True]


def test_short_read_is_rejected_with_a_logged_reason(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pyserve")
    handler = make_handler()
    with StreamHarness(handler) as client:
        recv_exactly(client, CHALLENGE_SIZE)
        client.sendall(b"only ten b")
        client.shutdown(socket.SHUT_WR)
        assert client.recv(10) == b""
    assert not handler.handled.is_set()
    warnings = auth_warnings(caplog)
    assert len(warnings) == 1
    assert "short read" in warnings[0]
    assert "10 of 32" in warnings[0]


def test_silent_client_times_out_with_a_logged_reason(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pyserve")
    handler = make_handler(timeout=0.3)
    with StreamHarness(handler) as client:
        recv_exactly(client, CHALLENGE_SIZE)
        client.sendall(b"x")  # a trickle, then silence
        assert client.recv(10) == b""  # the server gave up and closed
    assert not handler.handled.is_set()
    warnings = auth_warnings(caplog)
    assert len(warnings) == 1
    assert "within 0.3 s" in warnings[0]


def test_bytes_sent_right_after_the_answer_reach_the_handler() -> None:
    handler = make_handler()
    with StreamHarness(handler) as client:
        challenge = recv_exactly(client, CHALLENGE_SIZE)
        client.sendall(answer_challenge(KEY, challenge) + b"eager\n")
        assert recv_exactly(client, 7) == ACCEPTED + b"eager\n"


def test_client_refuses_a_server_that_does_not_speak_the_protocol() -> None:
    left, right = socket.socketpair()
    with left, right:
        right.settimeout(5)
        left.sendall(b"HTTP/1.1 400 Bad Request\r\n" + b"x" * 20)
        with pytest.raises(AuthenticationFailed, match="not a"):
            authenticate(right, KEY)


def test_short_keys_are_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes, not 5 bytes"):
        answer_challenge(b"short", MAGIC + bytes(32))
    with pytest.raises(ValueError, match="not None"):
        answer_challenge(None, MAGIC + bytes(32))  # type: ignore[arg-type]


# -- end to end: a line service behind the handshake ------------------------------------


class SecretUpper(HMACAuthMixIn, UpperCaseHandler):
    auth_key = KEY


def test_authenticated_uppercase_service_over_tcp(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pyserve")
    with serving(ThreadingTCPServer(("127.0.0.1", 0), SecretUpper)) as server:
        with socket.create_connection(server.server_address, timeout=10) as good:
            authenticate(good, KEY)
            good.sendall(b"trusted\n")
            assert recv_exactly(good, 8) == b"TRUSTED\n"
        bad = socket.create_connection(server.server_address, timeout=10)
        with bad, pytest.raises(AuthenticationFailed):
            authenticate(bad, OTHER_KEY)
    assert len(auth_warnings(caplog)) == 1


# -- hostile clients: guessing is slowed, the log stays quiet ----------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_short_class_key_is_refused_when_the_class_is_defined() -> None:
    with pytest.raises(ValueError, match="Weak: auth key must be bytes of at least 16 bytes"):

        class Weak(HMACAuthMixIn, Echo):
            auth_key = b"short"


def test_each_failure_doubles_the_hosts_lock_out_up_to_the_cap() -> None:
    clock = FakeClock()
    throttle = FailureThrottle(1.0, 8.0, clock=clock)
    assert throttle.locked_for("10.0.0.1") == 0.0
    assert [throttle.failed("10.0.0.1") for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert throttle.locked_for("10.0.0.1") == 8.0
    assert throttle.locked_for("10.0.0.2") == 0.0  # other hosts are not affected
    clock.now += 8.0
    assert throttle.locked_for("10.0.0.1") == 0.0
    throttle.succeeded("10.0.0.1")
    assert throttle.failed("10.0.0.1") == 1.0  # a success wiped the history


def test_the_per_host_table_is_bounded_and_forgets() -> None:
    clock = FakeClock()
    throttle = FailureThrottle(1.0, 60.0, max_hosts=100, forget_after=600.0, clock=clock)
    for n in range(10_000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(throttle) == 100
    assert throttle.locked_for("10.0.0.0") == 0.0  # the oldest went first
    clock.now += 601.0
    assert throttle.locked_for("10.0.39.15") == 0.0  # the newest is forgotten in time
    assert len(throttle) == 99


def test_a_locked_out_host_is_closed_before_any_challenge(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pyserve")
    handler = make_handler()  # default lock-out: 1 s after the first failure
    server = ThreadingTCPServer(("127.0.0.1", 0), handler)
    address = server.server_address
    with serving(server):
        bad = socket.create_connection(address, timeout=10)
        with bad, pytest.raises(AuthenticationFailed, match="rejected"):
            authenticate(bad, OTHER_KEY)
        # Even the right key: the host waits out its lock-out first.
        good = socket.create_connection(address, timeout=10)
        with good, pytest.raises(AuthenticationFailed, match="after 0 of 40 bytes"):
            authenticate(good, KEY)
    assert not handler.handled.is_set()
    warnings = auth_warnings(caplog)
    assert len(warnings) == 2
    assert "locked out for 1 s" in warnings[0]
    assert "locked out for" in warnings[1]


def test_a_flood_of_wrong_answers_logs_one_line(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pyserve")

    class NoLockOut(HMACAuthMixIn, Echo):  # to reach the log, not the lock-out
        auth_key = KEY
        auth_failure_delay = 0.0
        auth_max_failure_delay = 0.0
        handled = threading.Event()

    server = ThreadingTCPServer(("127.0.0.1", 0), NoLockOut)
    with serving(server):
        for _ in range(50):
            bad = socket.create_connection(server.server_address, timeout=10)
            with bad, pytest.raises(AuthenticationFailed):
                authenticate(bad, OTHER_KEY)
    warnings = auth_warnings(caplog)
    assert len(warnings) == 1
    assert "wrong answer" in warnings[0]
