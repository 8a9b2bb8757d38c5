"""The RESP server end to end: raw sockets, redis-py and redis-cli."""

from __future__ import annotations

import logging
import socket
import subprocess
from typing import Any, Callable

import pytest
from conftest import recv_exactly, wait_until
from peers import needs_binary, require_module

from handlers.resp import RespConnection, RespHandler, RespServer, server_state
from handlers.resp.encoding import encode_command
from pyserve import ThreadingTCPServer
from pyserve.testing import read_until_eof

redis = require_module("redis", "redis-py, in the test extra")

Serve = Callable[..., Any]

# redis-py 8 asks for RESP3 (HELLO 3) unless told otherwise; this server speaks RESP2
# and refuses HELLO 3 with NOPROTO, as Redis servers before 6 did.


def connect(server: Any) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=10)


def threaded(address: Any, handler: Any = RespHandler) -> ThreadingTCPServer:
    return ThreadingTCPServer(address, handler)


# Both forms of the server: multiplexed (RespServer) and a thread per connection.
both_forms = pytest.mark.parametrize(
    "make", [RespServer, threaded], ids=["multiplexed", "threaded"]
)


@both_forms
def test_pipelined_commands_are_answered_in_order(serve: Serve, make: Any) -> None:
    server = serve(make(("127.0.0.1", 0)))
    with connect(server) as client:
        client.sendall(b"".join(encode_command(b"INCR", b"n") for _ in range(500)))
        expected = b"".join(b":%d\r\n" % i for i in range(1, 501))
        assert recv_exactly(client, len(expected)) == expected


@both_forms
def test_inline_commands_work_over_a_plain_socket(serve: Serve, make: Any) -> None:
    server = serve(make(("127.0.0.1", 0)))
    with connect(server) as client:
        client.sendall(b'SET greeting "hello world"\r\nGET greeting\r\nQUIT\r\n')
        assert read_until_eof(client) == b"+OK\r\n$11\r\nhello world\r\n+OK\r\n"


@both_forms
def test_protocol_error_is_answered_logged_once_and_closes(
    serve: Serve, caplog: pytest.LogCaptureFixture, make: Any
) -> None:
    server = serve(make(("127.0.0.1", 0)))
    with connect(server) as bystander, connect(server) as client:
        bystander.sendall(b"PING\r\n")
        assert recv_exactly(bystander, 7) == b"+PONG\r\n"
        with caplog.at_level(logging.INFO, logger="pyserve"):
            client.sendall(b"PING\r\n*1\r\n$x\r\n")
            assert read_until_eof(client) == (
                b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
            )
        bystander.sendall(b"PING\r\n")
        assert recv_exactly(bystander, 7) == b"+PONG\r\n"
    reasons = [r for r in caplog.records if r.name.startswith("pyserve")]
    assert len(reasons) == 1
    assert "invalid bulk length" in reasons[0].getMessage()


class SmallConnection(RespConnection):
    max_bulk_length = 1024


class SmallHandler(RespHandler):
    max_bulk_length = 1024


@pytest.mark.parametrize(
    "make",
    [lambda a: RespServer(a, SmallConnection), lambda a: threaded(a, SmallHandler)],
    ids=["multiplexed", "threaded"],
)
def test_oversized_bulk_closes_the_connection(serve: Serve, make: Any) -> None:
    server = serve(make(("127.0.0.1", 0)))
    with connect(server) as client:
        client.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000\r\n")
        assert read_until_eof(client).startswith(b"-ERR Protocol error: invalid bulk length 2000")


def test_resp_server_refuses_a_blocking_handler_class() -> None:
    with pytest.raises(TypeError, match=r"ConnectionHandler subclass.*RespHandler"):
        RespServer(("127.0.0.1", 0), RespHandler)


def test_quit_after_pipelined_commands_answers_them_all_then_closes(serve: Serve) -> None:
    server = serve(RespServer(("127.0.0.1", 0)))
    with connect(server) as client:
        client.sendall(encode_command(b"SET", b"k", b"v") + b"GET k\r\nQUIT\r\nPING\r\n")
        assert read_until_eof(client) == b"+OK\r\n$1\r\nv\r\n+OK\r\n"
    wait_until(lambda: server.stats.finished == 1)  # counted just after the close


def test_plain_threading_server_gets_a_store_from_the_handler(serve: Serve) -> None:
    server = serve(ThreadingTCPServer(("127.0.0.1", 0), RespHandler))
    with connect(server) as client:
        client.sendall(encode_command(b"SET", b"k", b"v"))
        assert recv_exactly(client, 5) == b"+OK\r\n"
    assert server_state(server).store.data == {b"k": b"v"}
    assert not hasattr(server, "resp_state")  # the server object was not modified


@both_forms
def test_redis_py_client_works(serve: Serve, make: Any) -> None:
    server = serve(make(("127.0.0.1", 0)))
    host, port = server.server_address[:2]
    client = redis.Redis(host=host, port=port, socket_timeout=10, protocol=2)
    try:
        assert client.ping() is True
        assert client.set("name", "pyserve") is True
        assert client.get("name") == b"pyserve"
        assert client.set("name", "x", nx=True) is None
        assert client.set("temp", "1", ex=100) is True
        assert 0 < client.ttl("temp") <= 100
        assert client.incr("counter") == 1
        assert client.incrby("counter", 9) == 10
        assert client.mset({"a": "1", "b": "2"}) is True
        assert client.mget(["a", "b", "c"]) == [b"1", b"2", None]
        assert client.delete("a", "c") == 1
        assert sorted(client.keys("*")) == [b"b", b"counter", b"name", b"temp"]
        assert sorted(client.scan_iter(match="n*", count=2)) == [b"name"]
        assert client.dbsize() == 4
        assert client.client_setname("tester") is True
        assert client.client_getname() == "tester"
        assert client.info()["redis_version"]
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.execute_command("NOSUCHCOMMAND")
        pipe = client.pipeline(transaction=False)
        for _ in range(100):
            pipe.incr("piped")
        assert pipe.execute() == list(range(1, 101))
        assert client.flushdb() is True
        assert client.dbsize() == 0
    finally:
        client.close()


def test_redis_py_sees_the_memory_cap(serve: Serve) -> None:
    server = serve(RespServer(("127.0.0.1", 0), max_memory=1000))
    host, port = server.server_address[:2]
    client = redis.Redis(host=host, port=port, socket_timeout=10, protocol=2)
    try:
        client.set("small", "x" * 100)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("big", "x" * 1000)
        assert client.get("big") is None
    finally:
        client.close()


needs_redis_cli = needs_binary("redis-cli", "redis-tools")


def redis_cli(server: Any, *args: str, stdin: str = "") -> str:
    host, port = server.server_address[:2]
    done = subprocess.run(
        ["redis-cli", "-h", host, "-p", str(port), *args],
        input=stdin, capture_output=True, text=True, timeout=30, check=True,
    )
    return done.stdout


@needs_redis_cli
def test_redis_cli_commands(serve: Serve) -> None:
    server = serve(RespServer(("127.0.0.1", 0)))
    assert redis_cli(server, "PING") == "PONG\n"
    assert redis_cli(server, "SET", "k", "hello world") == "OK\n"
    assert redis_cli(server, "GET", "k") == "hello world\n"
    assert redis_cli(server, "INCRBY", "n", "5") == "5\n"
    assert redis_cli(server, "--scan", "--pattern", "k*") == "k\n"
    assert "unknown command" in redis_cli(server, "NOPE")


@needs_redis_cli
def test_redis_cli_pipe_mode_mass_insert(serve: Serve) -> None:
    server = serve(RespServer(("127.0.0.1", 0)))
    commands = "".join(f"SET key:{i} {i}\r\n" for i in range(2000))
    output = redis_cli(server, "--pipe", stdin=commands)
    assert "errors: 0, replies: 2000" in output
    assert redis_cli(server, "DBSIZE") == "2000\n"
