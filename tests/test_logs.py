"""pyserve.logs: peer values are escaped, peer faults are rate-limited per reason."""

from __future__ import annotations

import logging

import pytest
from conftest import LogCatcher

from pyserve.logs import MAX_ESCAPED, RateLimitedLog, escape


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/tmp/a\nFAKE LINE", "'/tmp/a\\nFAKE LINE'"),
        (b"\x1b[2J\r\n", "'\\x1b[2J\\r\\n'"),
        ("\u202eevil", "'\\u202eevil'"),
        (("10.0.0.1", 5), "('10.0.0.1', 5)"),
        (None, "None"),
    ],
)
def test_escape_renders_peer_values_on_one_safe_line(value: object, expected: str) -> None:
    assert escape(value) == expected
    assert "\n" not in escape(value)
    assert "\x1b" not in escape(value)


def test_escape_cuts_a_long_value_and_says_how_much() -> None:
    text = escape(b"x" * 10_000)
    assert text.startswith("'xxx")
    assert text.endswith(f"({10_002 - MAX_ESCAPED} more characters)")
    assert len(text) < MAX_ESCAPED + 40


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def caught() -> LogCatcher:
    logger = logging.getLogger("pyserve.test_logs")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    catcher = LogCatcher()
    logger.handlers[:] = [catcher]
    return catcher


def test_one_line_per_reason_per_interval_with_the_suppressed_count(caught: LogCatcher) -> None:
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("pyserve.test_logs"), 60.0, clock)
    assert log.report(logging.WARNING, "bad", "refused %s", "a") is True
    for _ in range(5):
        clock.now += 1
        assert log.report(logging.WARNING, "bad", "refused %s", "b") is False
    assert log.report(logging.WARNING, "other", "other %s", "c") is True  # its own line
    clock.now += 60
    assert log.report(logging.WARNING, "bad", "refused %s", "d") is True
    assert [r.getMessage() for r in caught.records] == [
        "refused a",
        "other c",
        "refused d (5 more like this since the last such line)",
    ]


def test_a_bad_interval_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="-1"):
        RateLimitedLog(logging.getLogger("pyserve.test_logs"), -1)
