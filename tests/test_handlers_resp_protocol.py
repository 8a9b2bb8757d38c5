"""The RESP2 command parser and reply encoders, without sockets."""

from __future__ import annotations

import pytest
from conftest import memory_growth
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.resp.encoding import (
    encode_array,
    encode_bulk,
    encode_command,
    encode_error,
    encode_integer,
    encode_simple,
)
from handlers.resp.inline import split_inline
from handlers.resp.protocol import NEED_DATA, CommandParser
from pyserve import ProtocolError


def parse_all(data: bytes, **limits: int) -> list[list[bytes]]:
    parser = CommandParser(**limits)
    parser.feed(data)
    return parser.drain()


def test_array_of_bulk_strings_is_one_command() -> None:
    assert parse_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n") == [
        [b"SET", b"k", b"value"]
    ]


def test_next_command_returns_need_data_until_the_command_is_complete() -> None:
    parser = CommandParser()
    parser.feed(b"*2\r\n$3\r\nGET\r\n$1\r")
    assert parser.next_command() is NEED_DATA
    parser.feed(b"\nk\r\n")
    assert parser.next_command() == [b"GET", b"k"]
    assert parser.next_command() is NEED_DATA


def test_bulk_string_may_contain_crlf_and_any_byte() -> None:
    value = b"a\r\nb\x00\xff\r\n"
    assert parse_all(encode_command(b"SET", b"k", value)) == [[b"SET", b"k", value]]


def test_pipelined_commands_are_all_returned_in_order() -> None:
    data = b"".join(encode_command(b"INCR", b"n%d" % i) for i in range(100))
    assert parse_all(data) == [[b"INCR", b"n%d" % i] for i in range(100)]


def test_inline_command_is_split_on_whitespace() -> None:
    assert parse_all(b"SET  key\tvalue\r\nPING\n") == [[b"SET", b"key", b"value"], [b"PING"]]


def test_inline_command_honours_quotes_and_escapes() -> None:
    assert parse_all(b'SET "a key" \'it\\\'s\' "\\x41\\n"\r\n') == [
        [b"SET", b"a key", b"it's", b"A\n"]
    ]


def test_blank_lines_and_empty_arrays_are_not_commands() -> None:
    assert parse_all(b"\r\n\r\n*0\r\n*-1\r\nPING\r\n") == [[b"PING"]]


def test_many_blank_lines_do_not_exhaust_the_stack() -> None:
    assert parse_all(b"\r\n" * 50_000 + b"*0\r\n" * 50_000 + b"PING\r\n") == [[b"PING"]]


def test_unbalanced_quote_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unbalanced"):
        parse_all(b'SET "key value\r\n')


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"*x\r\n", "multibulk length"),
        (b"*1\r\n$-1\r\n", "bulk length"),
        (b"*1\r\n$+1\r\na\r\n", "bulk length"),
        (b"*1\r\n:1\r\n", "expected '\\$'"),
        (b"*1\r\n$1\r\nabc\r\n", "CRLF"),
    ],
)
def test_malformed_frame_is_a_protocol_error(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        parse_all(data)


def test_parser_stays_failed_after_an_error() -> None:
    parser = CommandParser()
    parser.feed(b"*1\r\n$x\r\n")
    with pytest.raises(ProtocolError):
        parser.drain()
    parser.feed(b"PING\r\n")
    with pytest.raises(ProtocolError):
        parser.next_command()


def test_commands_before_an_error_are_returned_first() -> None:
    parser = CommandParser()
    parser.feed(b"PING\r\n*1\r\n$x\r\n")
    assert parser.drain() == [[b"PING"]]
    with pytest.raises(ProtocolError):
        parser.drain()


def test_bulk_over_the_limit_is_refused_before_it_arrives() -> None:
    parser = CommandParser(max_bulk_length=10)
    parser.feed(b"*2\r\n$3\r\nGET\r\n$11\r\n")
    with pytest.raises(ProtocolError, match="limit 10"):
        parser.drain()


def test_array_over_the_limit_is_refused() -> None:
    with pytest.raises(ProtocolError, match="limit 4"):
        parse_all(b"*5\r\n", max_array_length=4)


def test_command_over_the_total_size_limit_is_refused() -> None:
    # Each argument counts 48 bytes beside its own (ARGUMENT_OVERHEAD): 2 x 148 fit.
    parser = CommandParser(max_bulk_length=100, max_command_size=350)
    parser.feed(b"*4\r\n" + encode_bulk(b"a" * 100) + encode_bulk(b"b" * 100))
    assert parser.drain() == []
    parser.feed(b"$100\r\n")
    with pytest.raises(ProtocolError, match="larger than 350"):
        parser.drain()


def test_tiny_arguments_count_what_they_cost_in_memory() -> None:
    # 7 MB on the wire is a million Python objects (49 MB and more): the default
    # limit (32 MiB of counted size) refuses the command.
    parser = CommandParser()
    parser.feed(b"*1000000\r\n" + b"$1\r\na\r\n" * 1_000_000)
    with pytest.raises(ProtocolError, match="larger than"):
        parser.drain()


def _parse_peak(parser: CommandParser, data: bytes) -> int:
    """The most memory parsing ``data`` (fed at once) took, up to the refusal."""
    with memory_growth() as grown:
        parser.feed(data)
        with pytest.raises(ProtocolError):
            parser.drain()
        return grown()


def test_a_huge_command_in_one_feed_is_parsed_in_bounded_memory() -> None:
    # The fast path once split the whole buffer at every CRLF first: 7 MB of tiny
    # arguments became 2 million pieces (231 MB) before any limit was checked.
    data = b"*1000000\r\n" + b"$1\r\na\r\n" * 1_000_000
    peak = _parse_peak(CommandParser(max_command_size=4 * 1024 * 1024), data)
    assert peak < len(data) + 8 * 1024 * 1024, peak


def test_endless_header_line_is_refused() -> None:
    parser = CommandParser(max_inline_length=100)
    parser.feed(b"*" + b"1" * 101)
    with pytest.raises(ProtocolError, match="too big"):
        parser.drain()


def test_endless_inline_line_is_refused() -> None:
    parser = CommandParser(max_inline_length=100)
    parser.feed(b"A" * 101)
    with pytest.raises(ProtocolError, match="too big inline"):
        parser.drain()


def test_large_bulk_fed_in_pieces_is_reassembled() -> None:
    value = bytes(range(256)) * 4096  # 1 MiB
    data = encode_command(b"SET", b"k", value)
    parser = CommandParser()
    for start in range(0, len(data), 65536):
        parser.feed(data[start : start + 65536])
        if start + 65536 < len(data):
            assert parser.drain() == []
    assert parser.drain() == [[b"SET", b"k", value]]


@pytest.mark.parametrize("limit", [0, -1, True, "10"])
def test_bad_limit_argument_names_the_value(limit: object) -> None:
    with pytest.raises(ValueError, match="max_bulk_length"):
        CommandParser(max_bulk_length=limit)  # type: ignore[arg-type]


def test_encoders_produce_resp2() -> None:
    assert encode_simple("OK") == b"+OK\r\n"
    assert encode_error("ERR bad\r\nthing") == b"-ERR bad  thing\r\n"
    assert encode_integer(5) == b":5\r\n"
    assert encode_integer(-70000) == b":-70000\r\n"
    assert encode_bulk(b"hi") == b"$2\r\nhi\r\n"
    assert encode_bulk(None) == b"$-1\r\n"
    assert encode_array([encode_integer(1), encode_bulk(None)]) == b"*2\r\n:1\r\n$-1\r\n"
    assert encode_array(None) == b"*-1\r\n"


def test_simple_string_with_newline_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="CR or LF"):
        encode_simple("a\nb")


def test_split_inline_rejects_text_glued_to_a_closing_quote() -> None:
    assert split_inline(b'"a"b') is None
    assert split_inline(b"'a'b") is None


# -- properties --------------------------------------------------------------------


def parse_in_pieces(commands: list[list[bytes]], cuts: list[int]) -> list[list[bytes]]:
    """Encode ``commands``, feed them cut at ``cuts`` (modulo the length), parse back."""
    data = b"".join(encode_command(*command) for command in commands)
    parser = CommandParser()
    found: list[list[bytes]] = []
    start = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        parser.feed(data[start:cut])
        start = cut
        found += parser.drain()
    return found


commands = st.lists(
    st.lists(st.binary(max_size=40), min_size=1, max_size=6), min_size=1, max_size=8
)


@settings(max_examples=200, deadline=None)
@given(commands=commands, cuts=st.lists(st.integers(min_value=0, max_value=2000)))
def test_any_commands_cut_anywhere_parse_back(commands: list[list[bytes]], cuts: list[int]) -> None:
    assert parse_in_pieces(commands, cuts) == commands


@settings(max_examples=50, deadline=None)
@given(commands=commands)
def test_commands_fed_one_byte_at_a_time_parse_back(commands: list[list[bytes]]) -> None:
    data = b"".join(encode_command(*command) for command in commands)
    parser = CommandParser()
    found: list[list[bytes]] = []
    for index in range(len(data)):
        parser.feed(data[index : index + 1])
        result = parser.next_command()
        while result is not NEED_DATA:
            assert isinstance(result, list)
            found.append(result)
            result = parser.next_command()
    assert found == commands


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_yield_commands_or_a_protocol_error(data: bytes) -> None:
    parser = CommandParser(max_bulk_length=64, max_array_length=16, max_inline_length=128)
    parser.feed(data)
    try:
        found = parser.drain()
    except ProtocolError:
        return
    for command in found:
        assert command
        assert all(isinstance(arg, bytes) for arg in command)


# -- runs of same-shaped commands (the pipelining fast path) ------------------------


def test_a_run_of_same_shaped_commands_parses_back_with_its_tail() -> None:
    run = [[b"SET", b"key:%d" % n, b"v" * n] for n in range(20)]
    data = b"".join(encode_command(*command) for command in run)
    parser = CommandParser()
    parser.feed(data + b"*3\r\n$3\r\nSET\r\n$1\r\nk")  # and half a command more
    assert parser.drain() == run
    parser.feed(b"\r\n$1\r\nv\r\n")
    assert parser.drain() == [[b"SET", b"k", b"v"]]


@pytest.mark.parametrize(
    "odd_one",
    [
        [b"SET", b"k", b"line one\r\nline two"],  # CRLF inside: the pieces shift
        [b"SET", b"k", b"\r\n$1\r\nx"],  # CRLF that mimics a header
        [b"SET", b"k", b"x" * 5000],  # a long argument
        [b"SET", b"k"],  # another shape
        [b"SET", b"k", b""],  # an empty argument
    ],
)
def test_a_run_with_an_odd_command_still_parses_exactly(odd_one: list[bytes]) -> None:
    run = [[b"SET", b"key:%d" % n, b"value"] for n in range(6)]
    commands = [*run[:3], odd_one, *run[3:]]
    data = b"".join(encode_command(*command) for command in commands)
    assert parse_all(data) == commands


def test_a_run_of_single_word_commands() -> None:
    assert parse_all(encode_command(b"PING") * 5) == [[b"PING"]] * 5


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (b"PING\r\nGET a\r\n\r\nPING\r\n", [[b"PING"], [b"GET", b"a"], [b"PING"]]),
        (b"PING\r\nSET a \"b c\"\r\n", [[b"PING"], [b"SET", b"a", b"b c"]]),
        (b"PING\r\nPING\nPING\r\n", [[b"PING"], [b"PING"], [b"PING"]]),
        (b"PING\r\nGET a*b\r\n", [[b"PING"], [b"GET", b"a*b"]]),
    ],
)
def test_runs_of_inline_commands_parse_exactly(lines: bytes, expected: list) -> None:
    assert parse_all(lines) == expected


def test_an_overlong_inline_line_in_a_run_is_refused_after_the_lines_before_it() -> None:
    parser = CommandParser(max_inline_length=100)
    parser.feed(b"PING\r\n" + b"x" * 200 + b"\r\nPING\r\n")
    assert parser.drain() == [[b"PING"]]
    with pytest.raises(ProtocolError, match="too big inline"):
        parser.drain()


same_shaped = st.integers(min_value=1, max_value=5).flatmap(
    lambda arity: st.lists(
        st.lists(st.binary(max_size=20), min_size=arity, max_size=arity), min_size=1, max_size=12
    )
)


@settings(max_examples=200, deadline=None)
@given(commands=same_shaped, cuts=st.lists(st.integers(min_value=0, max_value=2000)))
def test_same_shaped_commands_cut_anywhere_parse_back(
    commands: list[list[bytes]], cuts: list[int]
) -> None:
    assert parse_in_pieces(commands, cuts) == commands


# -- runs cut from a template (handlers.resp.pipelines) ----------------------------


def parse_exactly(data: bytes) -> list[list[bytes]]:
    """One command at a time through the exact parser (no fast path)."""
    parser = CommandParser()
    parser.feed(data)
    found = []
    while True:
        command = parser.next_command()
        if command is NEED_DATA:
            return found
        found.append(command)


_WORD = st.binary(max_size=12) | st.sampled_from([b"\r\n", b"$3\r\n", b"*2\r\n$3\r\nGET\r\n"])


@settings(max_examples=300, deadline=None)
@given(
    template=st.lists(_WORD, max_size=3),
    place=st.integers(min_value=1, max_value=3),
    varying=st.lists(_WORD, min_size=1, max_size=20),
    cut=st.integers(min_value=0, max_value=40),
)
def test_a_run_cut_from_a_template_parses_as_one_command_at_a_time(
    template: list[bytes], place: int, varying: list[bytes], cut: int
) -> None:
    words = [b"GET", *template]
    place = min(place, len(words) - 1)
    commands = [[*words[:place], word, *words[place + 1 :]] for word in varying]
    # ... and the first bytes of one more command (the rest is still on its way).
    tail = encode_command(*words)[:cut]
    data = b"".join(encode_command(*command) for command in commands) + tail
    assert parse_all(data) == parse_exactly(data)


@pytest.mark.parametrize(
    "varying",
    [
        [b"key:%04d" % n for n in range(16)],  # one width: the template's fast path
        [b"k", b"key", b"k", b"key"],  # widths that differ
        [b"abcd", b"ab\r\n", b"\r\n$4", b"abcd"],  # CRLF and headers inside words
        [b"x\r\n*2\r\n$3\r\nGET\r\n$4\r\n" * 2, b"y" * 40],  # a word holding the separator
    ],
)
def test_a_varying_word_is_cut_exactly(varying: list[bytes]) -> None:
    commands = [[b"GET", word] for word in varying]
    data = b"".join(encode_command(*command) for command in commands)
    assert parse_all(data) == commands


def test_a_template_run_is_a_run_and_an_odd_name_is_not_taken_with_it() -> None:
    run = [[b"HSET", b"h", b"field:%03d" % n, b"v"] for n in range(8)]
    data = b"".join(encode_command(*command) for command in run)
    parser = CommandParser()
    parser.feed(data)
    found = parser.drain()
    assert found == run
    assert type(found).__name__ == "Run"
    mixed = [*run[:4], [b"hset", b"h", b"field:004", b"v"], *run[5:]]  # another spelling
    data = b"".join(encode_command(*command) for command in mixed)
    assert parse_all(data) == mixed
    parser = CommandParser()
    parser.feed(data)
    assert type(parser.drain()).__name__ != "Run"


_SEPARATOR = b"\r\n*2\r\n$3\r\nGET\r\n$30\r\n"  # between two GETs of 30-byte keys


@pytest.mark.parametrize(
    "commands",
    [
        # The last command differs after its varying word: only its tail tells.
        [[b"SET", b"k1", b"v"], [b"SET", b"k2", b"v"], [b"SET", b"k3", b"X"]],
        # A key holding the separator: one piece too many.
        [[b"GET", key] for key in (b"a" * 30, b"c" * 5 + _SEPARATOR + b"d" * 5, b"e" * 30)],
        # As many pieces as commands and the first one's length in all, but one key
        # a byte longer and one a byte shorter, each hiding a separator.
        [
            [b"GET", key]
            for key in (
                b"a" * 30,
                b"c" * 5 + _SEPARATOR + b"d" * 5,
                _SEPARATOR + b"y" * (31 - len(_SEPARATOR)),
                b"z" * 29,
            )
        ],
    ],
    ids=["tail", "extra-separator", "longer-and-shorter-keys"],
)
def test_a_run_that_only_looks_like_its_template_parses_exactly(
    commands: list[list[bytes]],
) -> None:
    data = b"".join(encode_command(*command) for command in commands)
    assert parse_all(data) == commands == parse_exactly(data)


@settings(max_examples=300, deadline=None)
@given(
    template=st.lists(_WORD, max_size=3),
    place=st.integers(min_value=1, max_value=3),
    size=st.integers(min_value=0, max_value=12),
    data=st.data(),
)
def test_a_remembered_template_takes_only_the_batches_it_fits(
    template: list[bytes], place: int, size: int, data: st.DataObject
) -> None:
    """The parser remembers the template of its last run: a later batch of the
    same shape is cut from it, and one that differs anywhere (another word in
    one command, a varying word of another length or holding the separator,
    half a command at the end) is parsed exactly."""
    words = [b"GET", *template]
    place = min(place, len(words) - 1)
    # Varying words of one length (a run; the second batch's mostly the first's).
    batches = []
    for least in (2, 1):
        word = st.binary(min_size=size, max_size=size)
        varying = data.draw(st.lists(word, min_size=least, max_size=8))
        batches.append([[*words[:place], item, *words[place + 1 :]] for item in varying])
        size = data.draw(st.sampled_from([size, size, size + 1]))
    change = data.draw(st.none() | st.tuples(st.integers(0, 7), st.integers(0, 3), _WORD))
    if change is not None:
        command, position, other = change
        changed = batches[1][command % len(batches[1])]
        changed[position % len(changed)] = other
    sent = [b"".join(encode_command(*command) for command in batch) for batch in batches]
    sent[1] += encode_command(*words)[: data.draw(st.integers(0, 40))]
    parser = CommandParser()
    found = []
    for batch in sent:
        parser.feed(batch)
        found += parser.drain()
    assert found == parse_exactly(b"".join(sent))


def test_a_repeated_command_of_one_word_is_a_run_and_another_word_breaks_it() -> None:
    ping = encode_command(b"PING")
    parser = CommandParser()
    parser.feed(ping * 16)
    found = parser.drain()
    assert found == [[b"PING"]] * 16
    assert type(found).__name__ == "Run"
    parser.feed(ping * 7 + encode_command(b"PINT") + ping * 8)  # as long, another name
    found = parser.drain()
    assert found == [[b"PING"]] * 7 + [[b"PINT"]] + [[b"PING"]] * 8
    assert type(found).__name__ != "Run"


def test_a_batch_of_the_remembered_shape_is_cut_as_a_run() -> None:
    parser = CommandParser()
    for first in (0, 16, 32):
        batch = [[b"SET", b"key:%06d" % n, b"value"] for n in range(first, first + 16)]
        parser.feed(b"".join(encode_command(*command) for command in batch))
        found = parser.drain()
        assert found == batch
        assert type(found).__name__ == "Run"
