"""The fast paths for pipelined runs of one command (handlers.resp.runs).

A run function must answer exactly as the commands would one at a time: the same
replies, the same store afterwards (values, counted memory, TTLs, watchers told),
pieces cut at the same budget. Each test here runs the same commands through a
session with the run table and through one without it, and compares; and one
client's huge pipelined run must not hold up another client's PING.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from typing import Any, Callable

import pytest
from conftest import recv_exactly, slowest_ping
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.resp import RespHandler, RespServer, server_state
from handlers.resp.commands import COMMANDS, RUN_TABLE, open_session
from handlers.resp.encoding import encode_command
from handlers.resp.protocol import CommandParser, Run
from handlers.resp.session import ServerState, Session
from handlers.resp.values import SortedSet
from pyserve import ThreadingTCPServer

Serve = Callable[..., Any]
Command = list[bytes]

KEYS = [b"a", b"b", b"list", b"hash", b"ttl"]
SETUP: list[Command] = [
    [b"SET", b"a", b"1"],
    [b"LPUSH", b"list", b"x", b"y"],
    [b"HSET", b"hash", b"f", b"v"],
    [b"SET", b"ttl", b"t"],
]
# A key with a TTL sends SET runs the general way (the store's TTL heap is in use).
WITH_TTL: list[Command] = [[b"EXPIRE", b"ttl", b"1000"]]


def plain_session(state: ServerState) -> Session:
    """A session that runs every command one at a time (no run table)."""
    return Session(state, COMMANDS, None)


def snapshot(session: Session) -> Any:
    store = session.store
    values = {}
    for key, value in store.data.items():
        if isinstance(value, collections.deque):
            values[key] = ("list", list(value))
        elif isinstance(value, SortedSet):
            values[key] = ("zset", list(value))
        else:
            values[key] = value
    return values, store.used_memory, sorted(store.expires)


def two_worlds(
    max_memory: int, watch: bool, ttl: bool = False
) -> tuple[Session, Session, Session, Session]:
    """Two stores set up alike: (fast session, its watcher, plain session, its watcher)."""
    worlds = []
    for make in (open_session, plain_session):
        state = ServerState(max_memory)
        session = make(state)
        watcher = plain_session(state)
        for command in SETUP + (WITH_TTL if ttl else []):
            session.execute([command])
        if watch:
            watcher.execute([[b"WATCH", b"a", b"list", b"hash"]])
        worlds += [session, watcher]
    return worlds[0], worlds[1], worlds[2], worlds[3]


names = st.sampled_from(
    [b"PING", b"GET", b"SET", b"LPUSH", b"RPUSH", b"LPOP", b"RPOP", b"HSET", b"HGET",
     b"LLEN", b"get", b"set", b"lpush", b"Hset"]
)
words = st.one_of(st.sampled_from(KEYS), st.binary(max_size=6))
values = st.binary(max_size=40)


@st.composite
def runs(draw: Any) -> list[Command]:
    """One command name, one width, many commands: what a pipelining client sends
    (mostly to one key, as a queue or a counter is used)."""
    name = draw(names)
    width = draw(st.integers(1, 5))
    key = draw(st.sampled_from(KEYS))
    keys = st.one_of(st.just(key), st.just(key), st.just(key), st.sampled_from(KEYS))
    command = st.tuples(keys, values, words, words).map(
        lambda parts: [name, *parts][:width]
    )
    batch: list[Command] = draw(st.lists(command, min_size=1, max_size=40))
    return batch


settings_ = settings(max_examples=150, deadline=None)


@settings_
@given(
    batch=runs(),
    max_memory=st.sampled_from([0, 1500, 2500, 256 * 1024 * 1024]),
    watch=st.booleans(),
    ttl=st.booleans(),
)
def test_a_run_gives_the_replies_and_store_of_one_command_at_a_time(
    batch: list[Command], max_memory: int, watch: bool, ttl: bool
) -> None:
    fast, fast_watcher, plain, plain_watcher = two_worlds(max_memory, watch, ttl)
    together = fast.execute(batch)
    one_by_one = b"".join(plain.execute([command]) for command in batch)
    assert together == one_by_one
    assert snapshot(fast) == snapshot(plain)
    assert fast_watcher.watched_changed == plain_watcher.watched_changed


@settings_
@given(
    batch=st.lists(runs(), min_size=1, max_size=4).map(
        lambda parts: [command for run in parts for command in run]
    ),
    max_memory=st.sampled_from([0, 2500, 256 * 1024 * 1024]),
    ttl=st.booleans(),
)
def test_a_batch_mixing_runs_and_other_commands_answers_as_one_at_a_time(
    batch: list[Command], max_memory: int, ttl: bool
) -> None:
    fast, _, plain, _ = two_worlds(max_memory, watch=False, ttl=ttl)
    batch = [[b"SET", b"b", b"2"], *batch, [b"INCR", b"b"], *batch]
    together = fast.execute(batch)
    one_by_one = b"".join(plain.execute([command]) for command in batch)
    assert together == one_by_one
    assert snapshot(fast) == snapshot(plain)


@settings_
@given(batch=runs(), budget=st.integers(1, 200), ttl=st.booleans())
def test_a_run_is_cut_into_the_same_pieces_as_the_general_loop(
    batch: list[Command], budget: int, ttl: bool
) -> None:
    fast, _, plain, _ = two_worlds(0, watch=False, ttl=ttl)
    pieces = []
    for session in (fast, plain):
        cut = []
        index = 0
        for _ in range(len(batch) + 1):
            if index >= len(batch):
                break
            reply, index = session.execute_some(batch, index, budget)
            cut.append(reply)
        assert index == len(batch)
        pieces.append(cut)
    assert pieces[0] == pieces[1]


@st.composite
def one_key_runs(draw: Any) -> list[Command]:
    """A run of one list or hash command on one key that already exists (the
    one-call paths of handlers.resp.runs), fields and values drawn small so that
    a hash run sets distinct fields, one field, or some fields twice."""
    name = draw(st.sampled_from([b"LPUSH", b"RPUSH", b"LPOP", b"RPOP", b"HSET"]))
    length = draw(st.integers(1, 24))
    items = st.binary(min_size=0, max_size=draw(st.sampled_from([1, 8, 120])))
    if name == b"HSET":
        fields = st.sampled_from([b"f", b"g", b"h"]) if draw(st.booleans()) else items
        return [[name, b"hash", draw(fields), draw(items)] for _ in range(length)]
    if name.endswith(b"POP"):
        return [[name, b"list"] for _ in range(length)]
    return [[name, b"list", draw(items)] for _ in range(length)]


@settings_
@given(
    run=one_key_runs(),
    list_length=st.integers(0, 30),
    max_memory=st.sampled_from([0, 1500, 2500, 4000]),
    budget=st.sampled_from([0, 40, 400]),
)
def test_a_run_on_one_key_answers_as_one_command_at_a_time(
    run: list[Command], list_length: int, max_memory: int, budget: int
) -> None:
    fast, _, plain, _ = two_worlds(max_memory, watch=False)
    for session in (fast, plain):
        session.execute([[b"RPUSH", b"list", *[b"x%d" % i for i in range(list_length)]]])
    pieces = [session.execute_some(run, 0, budget) for session in (fast, plain)]
    assert pieces[0] == pieces[1]
    assert snapshot(fast) == snapshot(plain)


@settings_
@given(
    present=st.lists(st.binary(max_size=60), min_size=8, max_size=8),
    keys=st.one_of(
        st.lists(st.integers(0, 9), min_size=1, max_size=12),  # some twice, some new
        st.permutations(range(8)).flatmap(lambda order: st.just(list(order))),  # all differ
        st.tuples(st.integers(0, 9), st.integers(1, 20)).map(lambda k: [k[0]] * k[1]),
    ),
    new_values=st.lists(st.binary(max_size=80), min_size=20, max_size=20),
    headroom=st.one_of(st.none(), st.integers(-100, 400)),
)
def test_a_set_run_answers_as_one_command_at_a_time(
    present: list[bytes],
    keys: list[int],
    new_values: list[bytes],
    headroom: Any,
) -> None:
    """SET runs written at once (one key again and again, or keys that all hold
    strings) store, count and refuse exactly as one SET at a time, near the cap."""
    fast, _, plain, _ = two_worlds(0, watch=False)
    for session in (fast, plain):
        for number, value in enumerate(present):
            session.execute([[b"SET", b"s%d" % number, value]])
        if headroom is not None:
            session.store.max_memory = max(1, session.store.used_memory + headroom)
    run = [[b"SET", b"s%d" % key, new_values[index]] for index, key in enumerate(keys)]
    pieces = [session.execute_some(run) for session in (fast, plain)]
    assert pieces[0] == pieces[1]
    assert snapshot(fast) == snapshot(plain)


def test_a_hash_run_that_shrinks_overall_still_meets_the_cap_part_way() -> None:
    # One at a time the first HSET passes the cap (OOM) although the second
    # frees more than it took: the one-call path must not net them out.
    fast, _, plain, _ = two_worlds(0, watch=False)
    for session in (fast, plain):
        session.execute([[b"HSET", b"hash", b"big", b"x" * 300]])
        session.store.max_memory = session.store.used_memory + 50
    run = [[b"HSET", b"hash", b"new", b"y" * 100], [b"HSET", b"hash", b"big", b""]]
    pieces = [session.execute_some(run) for session in (fast, plain)]
    assert pieces[0] == pieces[1]
    assert pieces[0][0].startswith(b"-OOM")
    assert snapshot(fast) == snapshot(plain)


@pytest.mark.parametrize(
    "command",
    [[b"PING"], [b"SET", b"a", b"v"], [b"GET", b"a"], [b"LPUSH", b"list", b"v"],
     [b"LPOP", b"list"], [b"HSET", b"hash", b"f", b"v"], [b"RPUSH", b"list", b"v"],
     [b"RPOP", b"list"], [b"HGET", b"hash", b"f"], [b"LLEN", b"list"]],
    ids=lambda command: command[0].decode(),
)
def test_each_run_function_stops_at_the_budget_where_the_general_loop_does(
    command: Command,
) -> None:
    fast, _, plain, _ = two_worlds(0, watch=False)
    for session in (fast, plain):  # a list long enough to pop from
        session.execute([[b"RPUSH", b"list", *[b"x%d" % i for i in range(200)]]])
    batch = [command] * 100
    pieces = [session.execute_some(batch, 0, 40) for session in (fast, plain)]
    assert pieces[0] == pieces[1]
    assert 1 <= pieces[0][1] < 100  # cut before the end
    assert snapshot(fast) == snapshot(plain)


@pytest.mark.parametrize(
    "command",
    [[b"SET", b"new", b"v" * 50], [b"SET", b"a", b"v" * 50], [b"LPUSH", b"list", b"v" * 50],
     [b"RPUSH", b"new", b"v" * 50], [b"HSET", b"hash", b"f", b"v" * 50],
     [b"HSET", b"new", b"f", b"v" * 50]],
    ids=lambda command: b" ".join(command[:2]).decode(),
)
def test_a_write_run_stops_at_the_memory_cap_where_one_at_a_time_does(
    command: Command,
) -> None:
    for key_count in (0, 1):  # (new keys too: each command a key of its own)
        fast, _, plain, _ = two_worlds(4000, watch=False)
        batch = [[command[0], command[1] + b"%d" % (i * key_count), *command[2:]]
                 for i in range(40)]
        if command[0] == b"HSET":  # a new field each time: the hash grows
            batch = [[*c[:2], b"f%d" % i, c[3]] for i, c in enumerate(batch)]
        together = fast.execute(batch)
        assert together == b"".join(plain.execute([c]) for c in batch)
        if key_count or command[0] != b"SET":  # (SET of one key over and over: no growth)
            assert together.endswith(b"-OOM command not allowed when used memory"
                                     b" > 'maxmemory'.\r\n")
        assert snapshot(fast) == snapshot(plain)
        assert fast.store.used_memory <= 4000


def test_the_benchmark_commands_have_run_functions() -> None:
    # What redis-benchmark -t ping,set,get,lpush,lpop,hset sends, in its spelling.
    for name in (b"PING", b"SET", b"GET", b"LPUSH", b"LPOP", b"HSET"):
        assert name in RUN_TABLE, name


def test_a_run_inside_multi_is_queued_not_run() -> None:
    session = open_session(ServerState())
    replies = session.execute(
        [[b"MULTI"], [b"SET", b"k", b"1"], [b"SET", b"k", b"2"], [b"GET", b"k"],
         [b"GET", b"k"], [b"EXEC"]]
    )
    assert replies == (b"+OK\r\n" + b"+QUEUED\r\n" * 4
                       + b"*4\r\n+OK\r\n+OK\r\n$1\r\n2\r\n$1\r\n2\r\n")


def test_a_run_stops_at_the_memory_cap_and_the_rest_is_refused() -> None:
    session = open_session(ServerState(max_memory=1000))
    batch = [[b"SET", b"key%d" % i, b"v" * 100] for i in range(10)]
    replies = session.execute(batch)
    assert replies.startswith(b"+OK\r\n+OK\r\n")
    assert replies.endswith(b"-OOM command not allowed when used memory > 'maxmemory'.\r\n")
    assert session.store.used_memory <= 1000


def test_a_get_run_does_not_answer_from_a_key_past_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = open_session(ServerState())
    session.execute([[b"SET", b"k", b"v"], [b"EXPIRE", b"k", b"10"]])
    import handlers.resp.store as store_module  # noqa: PLC0415

    later = time.monotonic() + 20

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return later

    monkeypatch.setattr(store_module, "time", Clock)
    assert session.execute([[b"GET", b"k"]] * 3) == b"$-1\r\n" * 3
    assert b"k" not in session.store.data


def test_a_pop_run_that_empties_a_list_removes_the_key() -> None:
    session = open_session(ServerState())
    session.execute([[b"RPUSH", b"q", b"1", b"2"]])
    assert session.execute([[b"LPOP", b"q"]] * 3) == b"$1\r\n1\r\n$1\r\n2\r\n$-1\r\n"
    assert b"q" not in session.store.data
    assert session.store.used_memory == 0


def test_a_run_on_a_key_of_another_kind_answers_wrongtype() -> None:
    session = open_session(ServerState())
    session.execute([[b"SET", b"s", b"v"], [b"LPUSH", b"l", b"x"]])
    wrong = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    assert session.execute([[b"LPUSH", b"s", b"x"]] * 2) == wrong * 2
    assert session.execute([[b"GET", b"l"], [b"GET", b"s"]]) == wrong + b"$1\r\nv\r\n"
    assert session.execute([[b"HSET", b"l", b"f", b"v"]] * 2) == wrong * 2


# -- fairness on a real server ---------------------------------------------------------


def threaded(address: Any) -> ThreadingTCPServer:
    return ThreadingTCPServer(address, RespHandler)


@pytest.mark.parametrize("make", [RespServer, threaded], ids=["multiplexed", "threaded"])
def test_a_huge_pipelined_run_does_not_starve_another_clients_ping(
    serve: Serve, make: Any
) -> None:
    server = serve(make(("127.0.0.1", 0)))
    state = server_state(server)
    count = 300_000
    command = encode_command(b"SET", b"key", b"value")

    with socket.create_connection(server.server_address[:2], timeout=30) as other, \
            socket.create_connection(server.server_address[:2], timeout=30) as flood:
        quiet = slowest_ping(other, 30)
        received = []
        reader = threading.Thread(
            target=lambda: received.append(recv_exactly(flood, 5 * count)), daemon=True
        )
        reader.start()
        before = state.commands_processed
        flood.sendall(command * count)
        loaded = slowest_ping(other, 30)
        busy = state.commands_processed - before < count  # the flood still running
        reader.join(60)
        assert not reader.is_alive()
    assert received == [b"+OK\r\n" * count]
    # Pieces of 64 KiB of replies (about 13 000 SETs) run between the PINGs.
    assert loaded < 2 * quiet + 0.25, (quiet, loaded, busy)


# -- the parser's word that a batch is a run ------------------------------------------


def encoded(command: Command, inline: bool) -> bytes:
    return b" ".join(command) + b"\r\n" if inline else encode_command(*command)


@settings_
@given(
    batch=st.lists(
        st.lists(st.sampled_from([b"PING", b"ping", b"GET", b"a", b"b1"]), min_size=1,
                 max_size=3),
        min_size=1, max_size=20,
    ),
    inline=st.booleans(),
)
def test_the_parser_says_run_only_for_one_name_and_one_width(
    batch: list[Command], inline: bool
) -> None:
    parser = CommandParser()
    parser.feed(b"".join(encoded(command, inline) for command in batch))
    commands = parser.drain()
    assert commands == batch
    same = all(c[0] == batch[0][0] and len(c) == len(batch[0]) for c in batch)
    if isinstance(commands, Run):
        assert same
    elif same and len(batch) > 1 and not inline:
        pytest.fail("a run of multi-bulk commands was not recognised")


@settings_
@given(batch=runs(), inline=st.booleans())
def test_a_parsed_run_gives_the_replies_of_one_command_at_a_time(
    batch: list[Command], inline: bool
) -> None:
    if inline:  # only words that an inline line keeps as they are
        batch = [[word for word in command if word.isalnum()] or [b"PING"]
                 for command in batch]
    fast, _, plain, _ = two_worlds(0, watch=False)
    parser = CommandParser()
    parser.feed(b"".join(encoded(command, inline) for command in batch))
    commands = parser.drain()
    assert commands == batch
    assert fast.execute(commands) == b"".join(plain.execute([c]) for c in batch)
    assert snapshot(fast) == snapshot(plain)


# The whole-run paths (one key that is there, see handlers.resp.runs) on the
# batches that reach them, beside their edges: a key set twice, a big value in
# between, new and old fields, a list popped empty, a cap met half-way.
WHOLE_RUNS = {
    "set overwrites, one key twice": [[b"SET", b"a", b"x" * 30], [b"SET", b"a", b""]] * 3,
    "set a big value in between": [[b"SET", b"a", b"2"], [b"SET", b"a", b"y" * 900],
                                   [b"SET", b"a", b"3"]],
    "get strings": [[b"GET", b"a"], [b"GET", b"ttl"], [b"GET", b"a"]],
    "lpush one list": [[b"LPUSH", b"list", b"z" * n] for n in range(8)],
    "rpush one list": [[b"RPUSH", b"list", b"z" * n] for n in range(8)],
    "lpop the list empty": [[b"LPOP", b"list"]] * 2,
    "rpop past the end": [[b"RPOP", b"list"]] * 3,
    "hset new fields": [[b"HSET", b"hash", b"g%d" % n, b"w" * n] for n in range(6)],
    "hset old and new fields": [[b"HSET", b"hash", b"f", b""], [b"HSET", b"hash", b"g", b"1"]],
    "hset one field twice": [[b"HSET", b"hash", b"f", b"long" * 50],
                             [b"HSET", b"hash", b"f", b"s"]],
    "hset a new field twice": [[b"HSET", b"hash", b"n", b"1"],
                               [b"HSET", b"hash", b"n", b"2"]],
}


@pytest.mark.parametrize("max_memory", [0, 1200, 2000, 256 * 1024 * 1024])
@pytest.mark.parametrize("name", sorted(WHOLE_RUNS))
def test_a_whole_run_path_gives_the_replies_and_store_of_one_at_a_time(
    name: str, max_memory: int
) -> None:
    batch = WHOLE_RUNS[name]
    fast, _, plain, _ = two_worlds(max_memory, watch=False)
    together = fast.execute(batch)
    one_by_one = b"".join(plain.execute([command]) for command in batch)
    assert together == one_by_one
    assert snapshot(fast) == snapshot(plain)
