"""Redis glob patterns (``KEYS``, ``SCAN MATCH``, ``CONFIG GET``), matched in linear time.

Theory of operation
-------------------
A Redis pattern is a row of *tokens*: ``*`` (any run of bytes), and tokens that
each match exactly one byte: ``?`` (any byte), ``[abc]``, ``[a-z]``, ``[^a]`` (a
class), ``\\x`` (the byte x) and any other byte (itself). Redis matches them by
recursion, which backtracks: ``*a*a*a*a*a*a*a*a*b`` against a long run of ``a``
takes seconds. Here the stars cut the pattern into *segments* of one-byte tokens,
and each segment matches a fixed number of bytes. So:

* without a star, the key matches when it is as long as the segment and every
  byte matches its token;
* with stars, the first segment must match at the start, the last at the end, and
  each middle segment is searched for from left to right, taking its *leftmost*
  occurrence after the previous one. Leftmost is always right: it leaves the most
  room for what follows, and a star absorbs whatever lies between.

Each segment is found with ``bytes.find`` when it is plain bytes, else with a
regular expression made only of single-byte classes (no repetition, nothing that
can backtrack), so a match costs at most O(key length x pattern length), and
usually one C call per segment.

The parts of Redis's behaviour that follow from its code, kept here on purpose:
an unclosed ``[`` takes the rest of the pattern as its class; ``[]`` matches
nothing and ``[^]`` any byte; a backslash at the very end is a literal backslash;
a range may be written backwards (``[z-a]``); and only the empty pattern matches
the empty key (callers treat the pattern ``*`` as "everything" before asking).
Byte values are compared unsigned (Redis compares C ``char``, signed on x86, so
ranges over bytes >= 0x80 may differ there).
"""

from __future__ import annotations

import functools
import re
from typing import Callable, Optional, Union

__all__ = ["compile_glob", "glob_matches"]

#: One token that matches one byte: the set of bytes it accepts (None: any byte).
Token = Optional[frozenset[int]]
_STAR = "*"


def glob_matches(pattern: bytes, key: bytes) -> bool:
    """True if ``key`` matches the Redis glob ``pattern``."""
    return compile_glob(pattern)(key)


@functools.lru_cache(maxsize=256)
def compile_glob(pattern: bytes) -> Callable[[bytes], bool]:
    """A function telling whether a key matches ``pattern`` (cached per pattern)."""
    tokens = _tokenize(pattern)
    segments: list[list[Token]] = [[]]
    for token in tokens:
        if token == _STAR:
            segments.append([])
        else:
            assert not isinstance(token, str)
            segments[-1].append(token)
    if len(segments) == 1:
        whole = _Segment(segments[0])
        return lambda key: len(key) == whole.size and whole.matches_at(key, 0)
    first, last = _Segment(segments[0]), _Segment(segments[-1])
    middle = [_Segment(part) for part in segments[1:-1] if part]
    least = first.size + last.size + sum(part.size for part in middle)

    def matches(key: bytes) -> bool:
        end = len(key)
        if not key or end < least:
            return False  # Redis: only the empty pattern matches the empty key
        if not first.matches_at(key, 0) or not last.matches_at(key, end - last.size):
            return False
        position = first.size
        stop = end - last.size
        for part in middle:
            found = part.find(key, position, stop)
            if found < 0:
                return False
            position = found + part.size
        return True

    return matches


class _Segment:
    """A run of one-byte tokens: it matches exactly ``size`` bytes."""

    __slots__ = ("_literal", "_regex", "size")

    def __init__(self, tokens: list[Token]) -> None:
        self.size = len(tokens)
        self._literal: Optional[bytes] = None
        self._regex: Optional[re.Pattern[bytes]] = None
        if all(token is not None and len(token) == 1 for token in tokens):
            self._literal = bytes(next(iter(token)) for token in tokens if token is not None)
        else:
            self._regex = re.compile(b"".join(map(_byte_class, tokens)), re.DOTALL)

    def matches_at(self, key: bytes, start: int) -> bool:
        if self._literal is not None:
            return key.startswith(self._literal, start)
        assert self._regex is not None
        return self._regex.match(key, start) is not None

    def find(self, key: bytes, start: int, stop: int) -> int:
        """The leftmost position >= start where the segment matches before ``stop``."""
        if self._literal is not None:
            return key.find(self._literal, start, stop)
        assert self._regex is not None
        found = self._regex.search(key, start, stop)
        return -1 if found is None else found.start()


def _byte_class(token: Token) -> bytes:
    if token is None:
        return b"."
    if not token:
        return b"(?!)"  # "[]": no byte matches
    return b"[" + b"".join(b"\\x%02x" % byte for byte in sorted(token)) + b"]"


def _tokenize(pattern: bytes) -> list[Union[Token, str]]:
    """The pattern's tokens; consecutive stars are one."""
    tokens: list[Union[Token, str]] = []
    i, n = 0, len(pattern)
    while i < n:
        byte = pattern[i]
        if byte == 42:  # *
            if not tokens or tokens[-1] != _STAR:
                tokens.append(_STAR)
            i += 1
        elif byte == 63:  # ?
            tokens.append(None)
            i += 1
        elif byte == 91:  # [
            token, i = _byte_set(pattern, i + 1)
            tokens.append(token)
        else:
            if byte == 92 and i + 1 < n:  # backslash: the next byte, literally
                i += 1
            tokens.append(frozenset((pattern[i],)))
            i += 1
    return tokens


def _byte_set(pattern: bytes, i: int) -> tuple[Token, int]:
    """The class that starts at ``pattern[i]`` (after ``[``); and where it ends."""
    n = len(pattern)
    negate = i < n and pattern[i] == 94  # ^
    if negate:
        i += 1
    accepted: set[int] = set()
    while i < n:
        byte = pattern[i]
        if byte == 92 and i + 1 < n:  # an escaped byte
            accepted.add(pattern[i + 1])
            i += 2
        elif byte == 93:  # ]
            i += 1
            break
        elif i + 2 < n and pattern[i + 1] == 45:  # a range, such as a-z
            low, high = sorted((byte, pattern[i + 2]))
            accepted.update(range(low, high + 1))
            i += 3
        else:
            accepted.add(byte)
            i += 1
    if negate:
        return frozenset(set(range(256)) - accepted), i
    return frozenset(accepted), i
