"""The RESP server against real Redis software: redis-benchmark, redis-py, redis-server.

Each tool is looked up on PATH. Missing, the test is skipped locally but fails
under ``CI=true``, where the tools are part of the job's setup. redis-server runs
on a Unix socket in the test's temporary directory (``--port 0`` turns TCP off),
and is stopped by its PID.
"""

from __future__ import annotations

import random
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import recv_exactly, wait_until
from peers import require_binary, require_module

from handlers.resp import RespServer
from handlers.resp.encoding import encode_command

redis = require_module("redis", "redis-py, in the test extra")

Serve = Callable[..., Any]


def client_for(server: Any) -> Any:
    host, port = server.server_address[:2]
    return redis.Redis(host=host, port=port, socket_timeout=10, protocol=2)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Path]:
    """A redis-server on a Unix socket; yields the socket's path."""
    binary = require_binary("redis-server", "redis-server")
    path = tmp_path / "redis.sock"
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(path), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: process.poll() is not None or _answers_ping(path), timeout=20)
        assert process.poll() is None, "redis-server exited at start"
        yield path
    finally:
        process.terminate()
        process.wait(timeout=20)


def _answers_ping(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(5)
            probe.connect(str(path))
            probe.sendall(b"PING\r\n")
            return probe.recv(16) == b"+PONG\r\n"
    except OSError:
        return False


# -- redis-benchmark ------------------------------------------------------------------------

DEFAULT_TESTS = [
    "PING_INLINE", "PING_MBULK", "SET", "GET", "INCR", "LPUSH", "RPUSH", "LPOP", "RPOP",
    "SADD", "HSET", "SPOP", "ZADD", "ZPOPMIN", "LPUSH (needed to benchmark LRANGE)",
    "LRANGE_100 (first 100 elements)", "LRANGE_300 (first 300 elements)",
    "LRANGE_500 (first 500 elements)", "LRANGE_600 (first 600 elements)", "MSET (10 keys)",
]


def test_redis_benchmark_default_run_completes_every_test(serve: Serve) -> None:
    # It once stopped at LPUSH: no lists, sets, hashes or sorted sets.
    binary = require_binary("redis-benchmark", "redis-tools")
    server = serve(RespServer(("127.0.0.1", 0)))
    host, port = server.server_address[:2]
    done = subprocess.run(
        [binary, "-h", host, "-p", str(port), "-q", "-n", "2000", "--csv"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "error" not in (done.stdout + done.stderr).lower()
    names = [line.split(",")[0].strip('"') for line in done.stdout.splitlines()[1:]]
    assert names == DEFAULT_TESTS


# -- redis-py ---------------------------------------------------------------------------------


def test_redis_py_default_pipeline_is_a_transaction(serve: Serve) -> None:
    # redis-py's pipeline() wraps commands in MULTI/EXEC: "unknown command 'EXEC'".
    client = client_for(serve(RespServer(("127.0.0.1", 0))))
    try:
        pipe = client.pipeline()  # transaction=True
        pipe.set("k", "1").incr("k").rpush("l", "a", "b").hset("h", "f", "v").get("k")
        assert pipe.execute() == [True, 2, 2, 1, b"2"]
    finally:
        client.close()


def test_redis_py_watch_conflict_raises_watch_error(serve: Serve) -> None:
    server = serve(RespServer(("127.0.0.1", 0)))
    client, other = client_for(server), client_for(server)
    try:
        client.set("balance", 10)
        with client.pipeline() as pipe:
            pipe.watch("balance")
            other.set("balance", 99)  # another client changes the watched key
            pipe.multi()
            pipe.set("balance", 0)
            with pytest.raises(redis.WatchError):
                pipe.execute()
        assert client.get("balance") == b"99"
    finally:
        client.close()
        other.close()


def test_redis_py_collections_round_trip(serve: Serve) -> None:
    client = client_for(serve(RespServer(("127.0.0.1", 0))))
    try:
        client.zadd("z", {"a": 1.5, "b": 0.5})
        assert client.zrange("z", 0, -1, withscores=True) == [(b"b", 0.5), (b"a", 1.5)]
        client.hset("h", mapping={"x": "1", "y": "2"})
        assert client.hgetall("h") == {b"x": b"1", b"y": b"2"}
        client.sadd("s", "m", "n")
        assert client.smembers("s") == {b"m", b"n"}
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            client.lpush("h", "x")
        assert sorted(client.scan_iter(count=1)) == [b"h", b"s", b"z"]
    finally:
        client.close()


# -- the same answers as redis-server -------------------------------------------------------

GLOB_KEYS = [b"a", b"ab", b"abc", b"[", b"]", b"\\", b"a*b", b"h?llo", b"hello", b"hallo",
             b"-", b"^", b"x]y", b"aaab", b"[a", b"abcabc", b"a-c", b"z"]
GLOB_PATTERNS = [b"**", b"?", b"a*", b"*b", b"a*c", b"[", b"[a", b"[]", b"[^]", b"[]a]",
                 b"[a-]", b"[z-a]", b"[^a]*", b"\\", b"a\\*b", b"*\\", b"[\\]]", b"h[ae]llo",
                 b"[a-c]*", b"*a*a*b", b"?*?", b"a[", b"[^", b"[\\", b"x[]]y", b"[-]",
                 b"a?c", b"[a-c]-c", b"*[", b"*?"]


def _random_patterns(count: int) -> list[bytes]:
    chooser = random.Random(7)  # a fixed table: the same cases every run
    alphabet = b"ab*?[]^-\\c"
    return [bytes(chooser.choice(alphabet) for _ in range(chooser.randint(1, 6)))
            for _ in range(count)]


def test_glob_patterns_match_what_redis_server_matches(
    serve: Serve, redis_server: Path
) -> None:
    theirs = redis.Redis(unix_socket_path=str(redis_server), socket_timeout=10, protocol=2)
    ours = client_for(serve(RespServer(("127.0.0.1", 0))))
    try:
        for client in (theirs, ours):
            client.mset(dict.fromkeys(GLOB_KEYS, b"1"))
        for pattern in GLOB_PATTERNS + _random_patterns(200):
            assert set(ours.keys(pattern)) == set(theirs.keys(pattern)), pattern
    finally:
        theirs.close()
        ours.close()


SCRIPT = [
    [b"RPUSH", b"l", b"a", b"b", b"c"], [b"LPOP", b"l", b"2"], [b"LPOP", b"l", b"0"],
    [b"LRANGE", b"l", b"-5", b"5"], [b"LINDEX", b"l", b"-1"], [b"LPOP", b"nol"],
    [b"RPOP", b"nol", b"1"], [b"LSET", b"nol", b"0", b"x"], [b"GET", b"l"],
    [b"SADD", b"s", b"x", b"x"], [b"SREM", b"s", b"y"], [b"SISMEMBER", b"s", b"x"],
    [b"SPOP", b"nos"], [b"SPOP", b"nos", b"2"], [b"HSET", b"h", b"f", b"1"],
    [b"HINCRBY", b"h", b"f", b"-4"], [b"HINCRBY", b"h", b"f", b"x"], [b"HSET", b"h", b"g"],
    [b"HMGET", b"h", b"f", b"zz"], [b"HGET", b"noh", b"f"], [b"ZADD", b"z", b"0.1", b"a"],
    [b"ZADD", b"z", b"CH", b"GT", b"0.2", b"a", b"5", b"b"], [b"ZADD", b"z", b"INCR", b"1", b"a"],
    [b"ZADD", b"z", b"NX", b"XX", b"1", b"a"], [b"ZADD", b"z", b"inf", b"c"],
    [b"ZRANGE", b"z", b"0", b"-1", b"WITHSCORES"], [b"ZINCRBY", b"z", b"-inf", b"c"],
    [b"ZPOPMIN", b"z", b"2"], [b"ZSCORE", b"z", b"b"], [b"ZPOPMIN", b"noz"],
    [b"ZADD", b"z", b"x", b"a"], [b"TYPE", b"z"], [b"TYPE", b"h"], [b"INCR", b"h"],
    [b"MULTI"], [b"INCR", b"n"], [b"LPUSH", b"h", b"v"], [b"EXEC"], [b"MULTI"],
    [b"NOSUCH"], [b"EXEC"], [b"EXEC"], [b"WATCH", b"n"], [b"MULTI"], [b"WATCH", b"n"],
    [b"DISCARD"], [b"UNWATCH"],
]


def _replies(sock: socket.socket, script: list[list[bytes]]) -> list[bytes]:
    """Send each command and read its reply (replies here are one read each)."""
    replies = []
    for command in script:
        sock.sendall(encode_command(*command))
        replies.append(sock.recv(65536))
    return replies


def test_command_replies_are_byte_for_byte_those_of_redis_server(
    serve: Serve, redis_server: Path
) -> None:
    server = serve(RespServer(("127.0.0.1", 0)))
    with socket.socket(socket.AF_UNIX) as theirs, socket.create_connection(
        server.server_address[:2], timeout=10
    ) as ours:
        theirs.settimeout(10)
        theirs.connect(str(redis_server))
        for sock in (theirs, ours):
            sock.sendall(b"FLUSHALL\r\n")
            assert recv_exactly(sock, 5) == b"+OK\r\n"
        assert _replies(ours, SCRIPT) == _replies(theirs, SCRIPT)
