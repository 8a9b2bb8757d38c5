"""Lists, sets, hashes, sorted sets and transactions of the RESP server, without sockets.

Replies are compared with what redis-server 7.0 answers to the same commands.
"""

from __future__ import annotations

import pytest

from handlers.resp.commands import open_session
from handlers.resp.session import ServerState, Session
from handlers.resp.store import KeyValueStore
from handlers.resp.values import KEY_OVERHEAD, value_size

WRONGTYPE = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"


def run(session: Session, *args: bytes) -> bytes:
    return session.execute([list(args)])


@pytest.fixture
def session() -> Session:
    return open_session(ServerState())


def counted_memory(store: KeyValueStore) -> int:
    """What used_memory should be: recomputed from every key's contents."""
    return sum(KEY_OVERHEAD + len(key) + value_size(value) for key, value in store.data.items())


def test_list_push_pop_range_and_length(session: Session) -> None:
    assert run(session, b"RPUSH", b"l", b"a", b"b", b"c") == b":3\r\n"
    assert run(session, b"LPUSH", b"l", b"x", b"y") == b":5\r\n"
    assert run(session, b"LRANGE", b"l", b"0", b"-1") == (
        b"*5\r\n$1\r\ny\r\n$1\r\nx\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"
    )
    assert run(session, b"LRANGE", b"l", b"-2", b"100") == b"*2\r\n$1\r\nb\r\n$1\r\nc\r\n"
    assert run(session, b"LRANGE", b"l", b"3", b"1") == b"*0\r\n"
    assert run(session, b"LINDEX", b"l", b"-1") == b"$1\r\nc\r\n"
    assert run(session, b"LINDEX", b"l", b"9") == b"$-1\r\n"
    assert run(session, b"LPOP", b"l") == b"$1\r\ny\r\n"
    assert run(session, b"RPOP", b"l", b"2") == b"*2\r\n$1\r\nc\r\n$1\r\nb\r\n"
    assert run(session, b"LLEN", b"l") == b":2\r\n"
    assert run(session, b"LPOP", b"l", b"-1") == b"-ERR value is out of range, must be positive\r\n"
    assert run(session, b"LPOP", b"missing") == b"$-1\r\n"
    assert run(session, b"LPOP", b"missing", b"2") == b"*-1\r\n"


def test_a_list_emptied_by_pops_is_removed(session: Session) -> None:
    run(session, b"RPUSH", b"l", b"a")
    run(session, b"LPOP", b"l")
    assert run(session, b"EXISTS", b"l") == b":0\r\n"
    assert session.store.used_memory == 0


def test_set_commands(session: Session) -> None:
    assert run(session, b"SADD", b"s", b"a", b"b", b"a") == b":2\r\n"
    assert run(session, b"SADD", b"s", b"b", b"c") == b":1\r\n"
    assert run(session, b"SCARD", b"s") == b":3\r\n"
    assert run(session, b"SISMEMBER", b"s", b"c") == b":1\r\n"
    assert run(session, b"SREM", b"s", b"c", b"zz") == b":1\r\n"
    members = run(session, b"SMEMBERS", b"s")
    assert members.startswith(b"*2\r\n")
    assert b"$1\r\na\r\n" in members
    popped = run(session, b"SPOP", b"s")
    assert popped in (b"$1\r\na\r\n", b"$1\r\nb\r\n")
    run(session, b"SPOP", b"s")
    assert run(session, b"TYPE", b"s") == b"+none\r\n"


def test_hash_commands(session: Session) -> None:
    assert run(session, b"HSET", b"h", b"f", b"1", b"g", b"2") == b":2\r\n"
    assert run(session, b"HSET", b"h", b"f", b"10") == b":0\r\n"
    assert run(session, b"HGET", b"h", b"f") == b"$2\r\n10\r\n"
    assert run(session, b"HGETALL", b"h") == b"*4\r\n$1\r\nf\r\n$2\r\n10\r\n$1\r\ng\r\n$1\r\n2\r\n"
    assert run(session, b"HINCRBY", b"h", b"g", b"5") == b":7\r\n"
    assert run(session, b"HINCRBY", b"h", b"g", b"x") == (
        b"-ERR value is not an integer or out of range\r\n"
    )
    assert run(session, b"HLEN", b"h") == b":2\r\n"
    assert run(session, b"HEXISTS", b"h", b"nope") == b":0\r\n"
    assert run(session, b"HDEL", b"h", b"f", b"nope") == b":1\r\n"
    assert run(session, b"HSET", b"h", b"odd") == (
        b"-ERR wrong number of arguments for 'hset' command\r\n"
    )


def test_sorted_set_commands_and_score_format(session: Session) -> None:
    assert run(session, b"ZADD", b"z", b"0.1", b"a", b"1", b"b", b"1e20", b"c") == b":3\r\n"
    assert run(session, b"ZRANGE", b"z", b"0", b"-1", b"WITHSCORES") == (
        b"*6\r\n$1\r\na\r\n$19\r\n0.10000000000000001\r\n$1\r\nb\r\n$1\r\n1\r\n"
        b"$1\r\nc\r\n$5\r\n1e+20\r\n"
    )
    assert run(session, b"ZINCRBY", b"z", b"1.5", b"b") == b"$3\r\n2.5\r\n"
    assert run(session, b"ZSCORE", b"z", b"b") == b"$3\r\n2.5\r\n"
    assert run(session, b"ZRANGE", b"z", b"0", b"0", b"REV") == b"*1\r\n$1\r\nc\r\n"
    assert run(session, b"ZADD", b"z", b"nan", b"a") == b"-ERR value is not a valid float\r\n"
    assert run(session, b"ZADD", b"z", b"XX", b"NX", b"1", b"a").startswith(b"-ERR XX and NX")
    assert run(session, b"ZPOPMIN", b"z") == b"*2\r\n$1\r\na\r\n$19\r\n0.10000000000000001\r\n"
    assert run(session, b"ZREM", b"z", b"b", b"zz") == b":1\r\n"
    assert run(session, b"ZCARD", b"z") == b":1\r\n"


@pytest.mark.parametrize(
    "command",
    [
        [b"LPUSH", b"k", b"x"], [b"LRANGE", b"k", b"0", b"1"], [b"SADD", b"k", b"x"],
        [b"HSET", b"k", b"f", b"v"], [b"ZADD", b"k", b"1", b"m"], [b"INCR", b"h"],
        [b"GET", b"h"], [b"HGET", b"k", b"f"], [b"ZPOPMIN", b"k"], [b"SPOP", b"k"],
    ],
)
def test_wrong_kind_of_key_is_refused_in_redis_words(
    session: Session, command: list[bytes]
) -> None:
    run(session, b"SET", b"k", b"string")
    run(session, b"HSET", b"h", b"f", b"v")
    assert session.execute([command]) == WRONGTYPE


def test_type_names_every_kind(session: Session) -> None:
    run(session, b"SET", b"s", b"v")
    run(session, b"RPUSH", b"l", b"v")
    run(session, b"SADD", b"e", b"v")
    run(session, b"HSET", b"h", b"f", b"v")
    run(session, b"ZADD", b"z", b"1", b"v")
    names = [run(session, b"TYPE", key) for key in (b"s", b"l", b"e", b"h", b"z", b"no")]
    assert names == [b"+string\r\n", b"+list\r\n", b"+set\r\n", b"+hash\r\n", b"+zset\r\n",
                     b"+none\r\n"]
    cursor_reply = run(session, b"SCAN", b"0", b"TYPE", b"hash")
    assert cursor_reply == b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\nh\r\n"


def test_memory_accounting_follows_every_kind_of_change(session: Session) -> None:
    script = [
        [b"RPUSH", b"l", b"aaa", b"bb"], [b"LPOP", b"l"], [b"LSET", b"l", b"0", b"longer"],
        [b"SADD", b"s", b"x", b"y"], [b"SREM", b"s", b"x"], [b"HSET", b"h", b"f", b"v"],
        [b"HSET", b"h", b"f", b"value"], [b"HINCRBY", b"h", b"n", b"100"],
        [b"ZADD", b"z", b"1", b"m", b"2", b"n"], [b"ZPOPMIN", b"z"], [b"SET", b"l", b"s"],
        [b"LTRIM", b"nothing", b"0", b"1"], [b"INCR", b"c"],
    ]
    for command in script:
        session.execute([command])
        assert session.store.used_memory == counted_memory(session.store), command
    run(session, b"FLUSHALL")
    assert session.store.used_memory == 0


def test_memory_cap_refuses_a_collection_write_whole() -> None:
    session = open_session(ServerState(max_memory=1000))
    assert run(session, b"RPUSH", b"l", b"x" * 2000).startswith(b"-OOM")
    assert run(session, b"EXISTS", b"l") == b":0\r\n"  # not even an empty list left
    assert run(session, b"SADD", b"s", b"a") == b":1\r\n"
    assert run(session, b"SADD", b"s", *[b"m%d" % i for i in range(100)]).startswith(b"-OOM")
    assert run(session, b"SCARD", b"s") == b":1\r\n"


def test_multi_exec_runs_the_queue_atomically(session: Session) -> None:
    replies = session.execute([
        [b"MULTI"], [b"SET", b"a", b"1"], [b"INCR", b"a"], [b"LPUSH", b"a", b"x"], [b"EXEC"],
    ])
    assert replies == (
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n"
        b"*3\r\n+OK\r\n:2\r\n" + WRONGTYPE
    )


def test_exec_after_a_queuing_error_runs_nothing(session: Session) -> None:
    replies = session.execute([[b"MULTI"], [b"SET", b"a", b"1"], [b"NOPE"], [b"EXEC"]])
    assert replies.endswith(b"-EXECABORT Transaction discarded because of previous errors.\r\n")
    assert run(session, b"EXISTS", b"a") == b":0\r\n"


def test_discard_and_misplaced_transaction_commands(session: Session) -> None:
    assert run(session, b"EXEC") == b"-ERR EXEC without MULTI\r\n"
    assert run(session, b"DISCARD") == b"-ERR DISCARD without MULTI\r\n"
    assert session.execute([[b"MULTI"], [b"MULTI"], [b"WATCH", b"k"], [b"DISCARD"]]) == (
        b"+OK\r\n-ERR MULTI calls can not be nested\r\n"
        b"-ERR WATCH inside MULTI is not allowed\r\n+OK\r\n"
    )


def test_watched_key_changed_by_another_client_makes_exec_return_nil() -> None:
    state = ServerState()
    mine, theirs = open_session(state), open_session(state)
    run(mine, b"WATCH", b"k")
    run(theirs, b"SET", b"k", b"changed")
    assert mine.execute([[b"MULTI"], [b"SET", b"k", b"mine"], [b"EXEC"]]).endswith(b"*-1\r\n")
    assert run(mine, b"GET", b"k") == b"$7\r\nchanged\r\n"
    # EXEC forgot the watch: the next transaction goes through.
    assert mine.execute([[b"MULTI"], [b"SET", b"k", b"mine"], [b"EXEC"]]).endswith(
        b"*1\r\n+OK\r\n"
    )
    assert state.store.watchers == {}


@pytest.mark.parametrize(
    "change",
    [[b"DEL", b"k"], [b"RPUSH", b"k", b"x"], [b"EXPIRE", b"k", b"100"], [b"FLUSHDB"]],
)
def test_any_change_to_a_watched_key_fails_exec(change: list[bytes]) -> None:
    state = ServerState()
    mine, theirs = open_session(state), open_session(state)
    run(theirs, b"RPUSH", b"k", b"a")
    run(mine, b"WATCH", b"k")
    theirs.execute([change])
    assert mine.execute([[b"MULTI"], [b"PING"], [b"EXEC"]]).endswith(b"*-1\r\n")


def test_closing_a_session_forgets_its_watches() -> None:
    state = ServerState()
    session = open_session(state)
    run(session, b"WATCH", b"a", b"b")
    session.close()
    assert state.store.watchers == {}
