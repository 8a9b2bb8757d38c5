"""The RESP server's commands and store, driven without sockets."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.resp.commands import open_session
from handlers.resp.glob import glob_matches
from handlers.resp.session import ServerState, Session
from handlers.resp.store import KeyValueStore, OutOfMemory
from handlers.resp.values import KEY_OVERHEAD


def run(session: Session, *args: bytes) -> bytes:
    return session.execute([list(args)])


@pytest.fixture
def session() -> Session:
    return open_session(ServerState())


def test_set_then_get_returns_the_value(session: Session) -> None:
    assert run(session, b"SET", b"k", b"v") == b"+OK\r\n"
    assert run(session, b"GET", b"k") == b"$1\r\nv\r\n"
    assert run(session, b"get", b"missing") == b"$-1\r\n"


def test_command_names_are_case_insensitive(session: Session) -> None:
    assert run(session, b"pInG") == b"+PONG\r\n"


def test_batch_replies_come_back_in_order(session: Session) -> None:
    batch = [[b"INCR", b"n"], [b"INCR", b"n"], [b"GET", b"n"], [b"PING", b"x"]]
    assert session.execute(batch) == b":1\r\n:2\r\n$1\r\n2\r\n$1\r\nx\r\n"


def test_unknown_command_error_names_it_and_its_arguments(session: Session) -> None:
    assert run(session, b"FOO", b"a", b"b") == (
        b"-ERR unknown command 'FOO', with args beginning with: 'a' 'b'\r\n"
    )


def test_wrong_number_of_arguments_is_reported_in_redis_words(session: Session) -> None:
    assert run(session, b"GET") == b"-ERR wrong number of arguments for 'get' command\r\n"
    assert run(session, b"MSET", b"a") == b"-ERR wrong number of arguments for 'mset' command\r\n"


def test_set_nx_and_xx(session: Session) -> None:
    assert run(session, b"SET", b"k", b"1", b"XX") == b"$-1\r\n"
    assert run(session, b"SET", b"k", b"1", b"NX") == b"+OK\r\n"
    assert run(session, b"SET", b"k", b"2", b"NX") == b"$-1\r\n"
    assert run(session, b"SET", b"k", b"3", b"xx") == b"+OK\r\n"
    assert run(session, b"GET", b"k") == b"$1\r\n3\r\n"
    assert run(session, b"SET", b"k", b"3", b"NX", b"XX") == b"-ERR syntax error\r\n"


def test_set_ex_gives_a_ttl_and_plain_set_removes_it(session: Session) -> None:
    run(session, b"SET", b"k", b"v", b"EX", b"100")
    assert run(session, b"TTL", b"k") == b":100\r\n"
    assert 99_000 <= int(run(session, b"PTTL", b"k")[1:-2]) <= 100_000
    run(session, b"SET", b"k", b"v")
    assert run(session, b"TTL", b"k") == b":-1\r\n"


def test_set_with_bad_expire_is_refused(session: Session) -> None:
    assert run(session, b"SET", b"k", b"v", b"EX", b"0") == (
        b"-ERR invalid expire time in 'set' command\r\n"
    )
    assert run(session, b"SET", b"k", b"v", b"PX", b"x") == (
        b"-ERR value is not an integer or out of range\r\n"
    )


def test_expired_key_is_gone() -> None:
    store = KeyValueStore()
    store.set(b"k", b"v", expire_at=time.monotonic() - 1)
    assert store.get(b"k") is None
    assert store.size() == 0
    assert store.used_memory == 0


def test_expiry_is_reclaimed_without_touching_the_key() -> None:
    store = KeyValueStore()
    store.set(b"old", b"v")
    store.set_deadline(b"old", time.monotonic() + 0.000_001)
    deadline = time.monotonic() + 5
    while store.expires and time.monotonic() < deadline:
        store.set(b"other", b"x")  # writes sweep due keys
    assert b"old" not in store.data


def test_expire_ttl_persist(session: Session) -> None:
    assert run(session, b"EXPIRE", b"k", b"10") == b":0\r\n"
    run(session, b"SET", b"k", b"v")
    assert run(session, b"EXPIRE", b"k", b"10") == b":1\r\n"
    assert run(session, b"TTL", b"k") == b":10\r\n"
    assert run(session, b"PERSIST", b"k") == b":1\r\n"
    assert run(session, b"TTL", b"k") == b":-1\r\n"
    assert run(session, b"TTL", b"nope") == b":-2\r\n"
    assert run(session, b"EXPIRE", b"k", b"-1") == b":1\r\n"
    assert run(session, b"EXISTS", b"k") == b":0\r\n"


def test_incr_family(session: Session) -> None:
    assert run(session, b"INCR", b"n") == b":1\r\n"
    assert run(session, b"INCRBY", b"n", b"41") == b":42\r\n"
    assert run(session, b"DECR", b"n") == b":41\r\n"
    assert run(session, b"DECRBY", b"n", b"50") == b":-9\r\n"


def test_incr_refuses_non_integers_and_overflow(session: Session) -> None:
    run(session, b"SET", b"s", b"abc")
    assert run(session, b"INCR", b"s") == b"-ERR value is not an integer or out of range\r\n"
    run(session, b"SET", b"z", b"01")
    assert run(session, b"INCR", b"z") == b"-ERR value is not an integer or out of range\r\n"
    run(session, b"SET", b"big", b"9223372036854775807")
    assert run(session, b"INCR", b"big") == b"-ERR increment or decrement would overflow\r\n"


def test_mset_mget_del_exists(session: Session) -> None:
    assert run(session, b"MSET", b"a", b"1", b"b", b"2") == b"+OK\r\n"
    assert run(session, b"MGET", b"a", b"x", b"b") == b"*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n"
    assert run(session, b"EXISTS", b"a", b"a", b"x") == b":2\r\n"
    assert run(session, b"DEL", b"a", b"x") == b":1\r\n"
    assert run(session, b"DBSIZE") == b":1\r\n"
    assert run(session, b"FLUSHDB") == b"+OK\r\n"
    assert run(session, b"DBSIZE") == b":0\r\n"


def test_memory_cap_refuses_growth_but_allows_deletes() -> None:
    session = open_session(ServerState(max_memory=KEY_OVERHEAD + 100))
    assert run(session, b"SET", b"k", b"v" * 90) == b"+OK\r\n"
    assert run(session, b"SET", b"k2", b"v" * 20) == (
        b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"
    )
    assert run(session, b"MSET", b"a", b"1", b"b", b"v" * 20).startswith(b"-OOM")
    assert run(session, b"EXISTS", b"a") == b":0\r\n"  # MSET wrote nothing
    assert run(session, b"SET", b"k", b"small") == b"+OK\r\n"  # shrinking is fine
    assert run(session, b"DEL", b"k") == b":1\r\n"
    assert session.store.used_memory == 0


def test_memory_accounting_tracks_keys_and_values() -> None:
    store = KeyValueStore()
    store.set(b"key", b"value")
    store.set(b"key", b"v")
    store.increment(b"n", 1000)
    assert store.used_memory == 2 * KEY_OVERHEAD + len(b"key") + 1 + len(b"n") + 4


def test_select_only_database_zero(session: Session) -> None:
    assert run(session, b"SELECT", b"0") == b"+OK\r\n"
    assert run(session, b"SELECT", b"1") == b"-ERR DB index is out of range\r\n"


def test_hello_speaks_resp2_only(session: Session) -> None:
    assert run(session, b"HELLO", b"2").startswith(b"*14\r\n$6\r\nserver\r\n")
    assert run(session, b"HELLO", b"3").startswith(b"-NOPROTO")


def test_client_name_and_id(session: Session) -> None:
    assert run(session, b"CLIENT", b"GETNAME") == b"$-1\r\n"
    assert run(session, b"CLIENT", b"SETNAME", b"worker") == b"+OK\r\n"
    assert run(session, b"CLIENT", b"GETNAME") == b"$6\r\nworker\r\n"
    assert run(session, b"CLIENT", b"SETNAME", b"a b").startswith(b"-ERR Client names")
    assert run(session, b"CLIENT", b"ID") == b":%d\r\n" % session.client_id


def test_command_count_and_docs_let_clients_start(session: Session) -> None:
    count = int(run(session, b"COMMAND", b"COUNT")[1:-2])
    assert count > 20
    assert run(session, b"COMMAND").startswith(b"*%d\r\n" % count)
    assert run(session, b"COMMAND", b"DOCS") == b"*0\r\n"


def test_quit_replies_ok_and_stops_the_batch(session: Session) -> None:
    assert session.execute([[b"QUIT"], [b"PING"]]) == b"+OK\r\n"
    assert session.closing


def test_info_reports_keyspace(session: Session) -> None:
    run(session, b"SET", b"k", b"v")
    assert b"db0:keys=1,expires=0" in run(session, b"INFO", b"keyspace")


def test_keys_uses_redis_glob_patterns(session: Session) -> None:
    run(session, b"MSET", b"hello", b"1", b"hallo", b"1", b"hxllo", b"1", b"h*llo", b"1")
    found = run(session, b"KEYS", b"h[^e]llo")
    assert b"hallo" in found
    assert b"hxllo" in found
    assert b"hello" not in found
    assert run(session, b"KEYS", b"h\\*llo") == b"*1\r\n$5\r\nh*llo\r\n"


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        (b"*", b"\x00\xff\n", True),
        (b"h?llo", b"hallo", True),
        (b"h?llo", b"hllo", False),
        (b"h[a-b]llo", b"hbllo", True),
        (b"h[a-b]llo", b"hcllo", False),
        (b"user:[0-9]*", b"user:7abc", True),
        (b"[", b"[", False),  # an unclosed class, as in Redis (checked against it)
        (b"a.b", b"axb", False),
    ],
)
def test_glob_matches(pattern: bytes, key: bytes, matches: bool) -> None:
    assert glob_matches(pattern, key) is matches


def test_scan_with_match_and_count(session: Session) -> None:
    for i in range(50):
        run(session, b"SET", b"user:%d" % i, b"x")
        run(session, b"SET", b"other:%d" % i, b"x")
    found: list[bytes] = []
    cursor = 0
    for _ in range(1000):
        next_cursor, keys = session.store.scan(cursor, b"user:*", 7)
        found += keys
        cursor = next_cursor
        if cursor == 0:
            break
    assert sorted(found) == sorted(b"user:%d" % i for i in range(50))


@settings(max_examples=50, deadline=None)
@given(
    keys=st.sets(st.binary(max_size=8), max_size=60),
    count=st.integers(min_value=1, max_value=20),
    removed=st.sets(st.binary(max_size=8), max_size=10),
)
def test_scan_returns_every_stable_key_exactly_once(
    keys: set[bytes], count: int, removed: set[bytes]
) -> None:
    store = KeyValueStore()
    for key in keys:
        store.set(key, b"")
    seen: list[bytes] = []
    cursor, batch = store.scan(0, None, count)
    seen += batch
    for key in removed:  # mutations during the iteration
        store.delete(key)
        store.set(key + b"new", b"")
    for _ in range(len(keys) + len(removed) + 2):
        if cursor == 0:
            break
        cursor, batch = store.scan(cursor, None, count)
        seen += batch
    assert cursor == 0
    stable = {k for k in keys if k not in removed}
    assert all(seen.count(key) == 1 for key in stable)


def test_store_rejects_bad_max_memory() -> None:
    with pytest.raises(ValueError, match="max_memory"):
        KeyValueStore(-1)


def test_store_put_refuses_growth_past_the_cap() -> None:
    store = KeyValueStore(max_memory=KEY_OVERHEAD + 10)
    with pytest.raises(OutOfMemory):
        store.put(b"key", b"0123456789")
