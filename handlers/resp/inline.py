"""Inline Redis commands: one line of words, as a human types them into telnet.

``split_inline(line)`` splits such a line the way Redis does (``sdssplitargs``):
words are separated by whitespace; ``"double quotes"`` allow spaces and the
escapes ``\\n \\r \\t \\b \\a \\xHH``; ``'single quotes'`` are literal but
for ``\\'``. It returns None on bad quoting, which the parser in
:mod:`handlers.resp.protocol` turns into a protocol error.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["split_inline"]

Command = list[bytes]

_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("a"): b"\a"}
_SPACE = b" \t\n\r\v\f"
_HEX = b"0123456789abcdefABCDEF"


def split_inline(line: bytes) -> Optional[Command]:
    """Split an inline command into words as Redis does, or None on bad quoting.

    Words are separated by whitespace. ``"..."`` may contain spaces and the escapes
    ``\\n \\r \\t \\b \\a \\xHH`` and ``\\<char>``; ``'...'`` is literal except for
    ``\\'``. A closing quote must be followed by whitespace or the end.
    """
    words: Command = []
    i = 0
    n = len(line)
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return words
        word = bytearray()
        while i < n and line[i] not in _SPACE:
            if line[i] in (34, 39):  # a quoted part, possibly mid-word as in Redis
                i = _quoted(line, i, word)
                if i < 0 or (i < n and line[i] not in _SPACE):
                    return None
            else:
                word.append(line[i])
                i += 1
        words.append(bytes(word))


def _quoted(line: bytes, i: int, word: bytearray) -> int:
    """Append the quoted part starting at ``line[i]``; return where it ends, or -1."""
    quote = line[i]
    i += 1
    n = len(line)
    while i < n:
        byte = line[i]
        if byte == quote:
            return i + 1
        if byte == 92 and i + 1 < n:  # backslash
            following = line[i + 1]
            if quote == 39:  # single quotes: only \' is an escape
                word += b"'" if following == 39 else b"\\"
                i += 2 if following == 39 else 1
                continue
            pair = line[i + 2 : i + 4]
            if following == 120 and len(pair) == 2 and all(c in _HEX for c in pair):
                word.append(int(pair, 16))
                i += 4
                continue
            word += _ESCAPES.get(following, line[i + 1 : i + 2])
            i += 2
            continue
        word.append(byte)
        i += 1
    return -1
