"""The chat room: commands, notices, and a stalled client that cannot block the others."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from handlers.chat import ChatHandler, ChatServer, Outbox, clean_text, parse_line
from pyserve import ThreadingTCPServer

Serve = Callable[..., Any]


class Client:
    """A chat client for tests: line reads with a deadline."""

    def __init__(self, server: Any, *, receive_buffer: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer:  # before connect(), so the advertised window stays tiny
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect(server.server_address[:2])
        self._buffer = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def line(self) -> str:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed; unread: {self._buffer!r}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def wait_for(self, wanted: str) -> list[str]:
        """Read lines until ``wanted`` arrives; return the lines before it."""
        seen: list[str] = []
        while True:
            line = self.line()
            if line == wanted:
                return seen
            seen.append(line)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def chat(serve: Serve) -> Iterator[Callable[..., Any]]:
    clients: list[Client] = []

    def start(handler: type[ChatHandler] = ChatHandler) -> Callable[..., Client]:
        server = serve(ChatServer(("127.0.0.1", 0), handler))

        def connect(**options: Any) -> Client:
            client = Client(server, **options)
            clients.append(client)
            return client

        return connect

    yield start
    for client in clients:
        client.close()


def joined(client: Client) -> str:
    """Read the welcome line; return the nickname it gives."""
    welcome = client.line()
    assert welcome.startswith("* Welcome! You are ")
    return welcome.split()[4].rstrip(".")


# -- parsing, without sockets ------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kind", "argument"),
    [
        ("hello there", "say", "hello there"),
        ("/nick alice", "nick", "alice"),
        ("/NICK  bob ", "nick", "bob"),
        ("/who", "who", ""),
        ("/quit", "quit", ""),
        ("/dance", "unknown", "dance"),
        ("//not a command", "say", "/not a command"),
    ],
)
def test_parse_line(line: str, kind: str, argument: str) -> None:
    assert parse_line(line) == (kind, argument)


def test_outbox_refuses_lines_beyond_its_limit() -> None:
    outbox = Outbox(2)
    assert outbox.put(b"a\n")
    assert outbox.put(b"b\n")
    assert not outbox.put(b"c\n")
    assert outbox.take() == b"a\nb\n"
    outbox.close()
    assert outbox.take() is None


# -- the room, over TCP --------------------------------------------------------------


def test_messages_reach_everyone_else_with_the_senders_nick(chat: Any) -> None:
    connect = chat()
    alice = connect()  # one at a time: threads may join the room in either order
    alice_nick = joined(alice)
    bob = connect()
    bob_nick = joined(bob)
    alice.send("/nick alice")
    bob.wait_for(f"* {alice_nick} is now known as alice")
    bob.send("hi alice")
    assert alice.wait_for(f"<{bob_nick}> hi alice")  # after the join notice


def test_join_and_leave_are_announced(chat: Any) -> None:
    connect = chat()
    first = connect()
    joined(first)
    second = connect()
    nick = joined(second)
    first.wait_for(f"* {nick} has joined")
    second.send("/quit")
    second.wait_for("* Bye")
    first.wait_for(f"* {nick} has left")


def test_who_lists_the_room(chat: Any) -> None:
    connect = chat()
    one, two = connect(), connect()
    names = sorted([joined(one), joined(two)])
    one.send("/who")
    one.wait_for(f"* In the room: {', '.join(names)}")


def test_nick_must_be_valid_and_free(chat: Any) -> None:
    connect = chat()
    one, two = connect(), connect()
    taken = joined(one)
    joined(two)
    two.send(f"/nick {taken}")
    two.wait_for(f"* {taken} is taken")
    two.send("/nick no spaces!")
    two.wait_for("* nicknames are 1-32 letters, digits, '_' or '-'")


def test_unknown_command_is_reported(chat: Any) -> None:
    client = chat()()
    joined(client)
    client.send("/dance")
    client.wait_for("* Unknown command /dance")


def test_too_long_line_disconnects_with_a_logged_reason(
    chat: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = chat()()
    joined(client)
    # ChatHandler.max_line_length is also StreamRequestHandler's core line limit,
    # so pyserve itself may report it (logger "pyserve"); either way: one line.
    with caplog.at_level(logging.WARNING, logger="pyserve"):
        client.sock.sendall(b"x" * 5000 + b"\n")
        with pytest.raises(EOFError):
            client.wait_for("never")
    reasons = [r.getMessage() for r in caplog.records if "line longer than" in r.getMessage()]
    assert len(reasons) == 1
    assert "1024" in reasons[0]


def test_plain_threading_server_gets_a_room(serve: Serve) -> None:
    server = serve(ThreadingTCPServer(("127.0.0.1", 0), ChatHandler))
    # Connect the second client only once the first is in the room: handler threads
    # may run in either order, and a member hears only of those who join after it.
    one = Client(server)
    two = None
    try:
        joined(one)
        two = Client(server)
        nick = joined(two)
        one.wait_for(f"* {nick} has joined")
    finally:
        one.close()
        if two is not None:
            two.close()
    assert not hasattr(server, "room")


# -- the slow-client guarantee -------------------------------------------------------


class SmallBuffers(ChatHandler):
    # Small kernel buffers, so a client that never reads fills them quickly and its
    # outbox overflows within the test; fast readers lag at most one round (50 lines).
    send_buffer_size = 4096
    max_queued_lines = 200
    # This test is about readers; the talkers' own rate limit is not in question.
    max_lines_per_second = 1e6
    max_burst_lines = 1_000_000


MESSAGES = 1000
ROUND = 50


def test_stalled_client_cannot_block_the_others(
    chat: Any, caplog: pytest.LogCaptureFixture
) -> None:
    connect = chat(SmallBuffers)
    stalled = connect(receive_buffer=1024)  # never reads a byte
    stalled_nick = joined_without_reading(stalled)
    talkers = [connect(), connect()]
    listener = connect()
    nicks = [joined(client) for client in (*talkers, listener)]
    listener.send("/who")
    listener.wait_for(f"* In the room: {', '.join(sorted([stalled_nick, *nicks]))}")

    padding = "x" * 150  # ~200-byte lines: the stalled client's buffers fill fast
    received: dict[int, list[str]] = {id(c): [] for c in (*talkers, listener)}
    deadline = time.monotonic() + 60
    with caplog.at_level(logging.WARNING, logger="pyserve.chat"):
        for number in range(0, MESSAGES, ROUND):
            sender = talkers[(number // ROUND) % 2]
            sender_nick = nicks[talkers.index(sender)]
            lines = [f"message {n} {padding}" for n in range(number, number + ROUND)]
            sender.sock.sendall("".join(line + "\n" for line in lines).encode())
            for reader in (*talkers, listener):
                if reader is sender:
                    continue
                last = f"<{sender_nick}> {lines[-1]}"
                seen = [*reader.wait_for(last), last]
                received[id(reader)] += [line for line in seen if line.startswith("<")]
            assert time.monotonic() < deadline, f"only {number} messages in 60 s"

    # Everyone who reads got every message from the others, in order.
    for index, reader in enumerate((*talkers, listener)):
        expected = [
            f"<{nicks[(n // ROUND) % 2]}> message {n} {padding}"
            for n in range(MESSAGES)
            if reader is listener or (n // ROUND) % 2 != index
        ]
        assert received[id(reader)] == expected
    # And the stalled client was disconnected, with one logged reason.
    reasons = [r.getMessage() for r in caplog.records]
    assert len(reasons) == 1
    assert f"disconnecting chat client {stalled_nick}" in reasons[0]
    assert "not reading" in reasons[0]


def joined_without_reading(client: Client) -> str:
    """The stalled client reads nothing after its welcome line."""
    return joined(client)


# -- a flooding member ---------------------------------------------------------------

FLOOD_SECONDS = 1.5


def flood(client: Client, seconds: float) -> int:
    """Send short lines as fast as the server takes them for ``seconds``; count them."""
    chunk = b"flood\n" * 1000
    client.sock.settimeout(0.05)
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sent += client.sock.send(chunk) // 6
        except socket.timeout:
            continue  # the server stopped reading us: the point
        except OSError:
            break  # disconnected: also a way of being limited
    client.sock.settimeout(10)
    return sent


def test_a_flooding_member_is_slowed_and_a_reading_member_stays(
    chat: Any, caplog: pytest.LogCaptureFixture
) -> None:
    connect = chat()
    reader, flooder, witness = connect(), connect(), connect()
    reader_nick = joined(reader)
    flooder_nick = joined(flooder)
    witness_nick = joined(witness)
    reader.send("/who")
    everyone = ", ".join(sorted([reader_nick, flooder_nick, witness_nick]))
    reader.wait_for(f"* In the room: {everyone}")

    sent: list[int] = []
    flooding = threading.Thread(target=lambda: sent.append(flood(flooder, FLOOD_SECONDS)))
    with caplog.at_level(logging.WARNING, logger="pyserve.chat"):
        flooding.start()
        flood_lines = 0
        try:
            # The reader keeps reading through the flood; the flood ends by itself.
            end = time.monotonic() + FLOOD_SECONDS
            while time.monotonic() < end:
                line = reader.line()
                assert "has left" not in line, line
                flood_lines += line == f"<{flooder_nick}> flood"
        finally:
            flooding.join(10)
        witness.send("still here")
        before = reader.wait_for(f"<{witness_nick}> still here")  # the reader is connected
        assert not [line for line in before if "has left" in line]
        flood_lines += before.count(f"<{flooder_nick}> flood")
        # Still over budget after max_throttled_seconds: the flooder is dropped.
        flood_lines += reader.wait_for(f"* {flooder_nick} has left").count(
            f"<{flooder_nick}> flood"
        )
    # The flooder pushed far more than the room relayed: it was the one limited.
    seconds = FLOOD_SECONDS + ChatHandler.max_throttled_seconds + 5  # + 5: a loaded machine
    limit = ChatHandler.max_burst_lines + ChatHandler.max_lines_per_second * seconds
    assert sent[0] > 10 * limit, sent
    assert 0 < flood_lines <= limit
    reasons = [r.getMessage() for r in caplog.records]
    assert len(reasons) == 1
    assert f"disconnecting chat client {flooder_nick}" in reasons[0]
    assert "over 10 lines a second" in reasons[0]


def test_control_characters_are_escaped_before_relay(chat: Any) -> None:
    connect = chat()
    reader = connect()  # reader first, so it is in the room to hear the sender join
    joined(reader)
    sender = connect()
    nick = joined(sender)
    reader.wait_for(f"* {nick} has joined")
    sender.sock.sendall(
        b"a\x1b]0;pwned\x07b\x1b]52;c;ZXZpbA==\x07c\x1b[2Jd\re\x7ff\xc2\x9bg\th\xe2\x80\xaei\n"
    )
    line = reader.line()
    assert line == (
        f"<{nick}> a\\x1b]0;pwned\\x07b\\x1b]52;c;ZXZpbA==\\x07c\\x1b[2Jd\\x0de\\x7ff"
        "\\x9bg\th\\u202ei"
    )


def test_clean_text_keeps_tab_and_readable_text() -> None:
    assert clean_text("中文\u3000text\twith tab") == "中文\u3000text\twith tab"
    assert clean_text("\x00\x1b\x7f\x85\u2067") == "\\x00\\x1b\\x7f\\x85\\u2067"
