"""RESP2 encoding: the replies a Redis server sends, and the requests clients send.

Each function returns complete wire bytes. Replies the server sends again and again
are ready-made constants (``OK``, ``PONG``, ``NULL_BULK``, ...), and small integers
are encoded once, at import: a reply on the hot path is a lookup, not a format.
The parser for the other direction is :mod:`handlers.resp.protocol`.
"""

from __future__ import annotations

from typing import Optional, Union

__all__ = [
    "EMPTY_ARRAY",
    "NULL_ARRAY",
    "NULL_BULK",
    "OK",
    "PONG",
    "encode_array",
    "encode_bulk",
    "encode_command",
    "encode_error",
    "encode_integer",
    "encode_simple",
]

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NULL_BULK = b"$-1\r\n"
NULL_ARRAY = b"*-1\r\n"
EMPTY_ARRAY = b"*0\r\n"

# Small integers are the most common replies (DEL, EXISTS, INCR on fresh counters):
# encode them once.
_SMALL_INTEGERS = [b":%d\r\n" % n for n in range(1024)]


def encode_simple(text: Union[str, bytes]) -> bytes:
    """``+text``: a status reply. ``text`` must not contain CR or LF."""
    data = text.encode() if isinstance(text, str) else text
    if b"\r" in data or b"\n" in data:
        raise ValueError(f"a simple string cannot contain CR or LF: {data!r}")
    return b"+" + data + b"\r\n"


def encode_error(message: str) -> bytes:
    """``-message``: an error reply; by convention it starts with a code (``ERR``)."""
    # A peer's bytes may end up in messages (unknown command names): make them safe.
    message = message.replace("\r", " ").replace("\n", " ")
    return b"-" + message.encode("utf-8", "replace") + b"\r\n"


def encode_integer(number: int) -> bytes:
    """``:number``."""
    if 0 <= number < 1024:
        return _SMALL_INTEGERS[number]
    return b":%d\r\n" % number


def encode_bulk(value: Optional[bytes]) -> bytes:
    """``$length`` and the bytes, or the null bulk string for None."""
    if value is None:
        return NULL_BULK
    return b"$%d\r\n%b\r\n" % (len(value), value)


def encode_array(items: Optional[list[bytes]]) -> bytes:
    """An array of already-encoded replies, or the null array for None."""
    if items is None:
        return NULL_ARRAY
    return b"*%d\r\n" % len(items) + b"".join(items)


def encode_command(*args: Union[bytes, str, int]) -> bytes:
    """A request as clients send it: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = arg
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)
