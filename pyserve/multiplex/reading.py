"""How the I/O thread reads a connection: which call, and how much at a time.

The I/O loop (:mod:`pyserve.multiplex.ioloop`) reads a ready connection by
calling ``handler._recv()``, a function ``prepare()`` builds once, when the
connection opens, so the hot path does no choosing:

* a plain socket is read with ``read(2)`` on its descriptor (``os.read``): the
  same system call as ``recv()`` with no flags, without the argument tuple that
  ``socket.recv()`` builds and parses on every call (a tenth of an echo's work).
  Only the loop reads, and only for the handler that owns the descriptor now;
  ``write()`` asks the socket for its descriptor each time instead (a socket the
  handler closed itself answers -1, never another connection's number);
* any other socket (an ``ssl.SSLSocket``) is read with its own ``recv()``.

How much: a plain socket's reads ask for ``SMALL_READ`` bytes until one comes
back full. A bytes object that small comes from the interpreter's own allocator
(objects up to 512 bytes, less a bytes header of 33), where ``receive_size``
(64 KiB by default) costs a ``malloc()`` of 64 KiB and a ``realloc()`` down to
what arrived, on every read: an eighth of a small echo's round trip. A read
that fills ``SMALL_READ`` may have left more: ``read_rest()`` switches that
connection to ``receive_size`` for good and reads what waits at once, so a
larger burst still reaches ``data_received()`` in one piece and a bulk sender
reads as before. An SSL socket always reads ``receive_size``: what a short read
leaves decrypted inside it, the poller never reports.
"""

from __future__ import annotations

import functools
import os
import socket
from typing import Any

from pyserve.multiplex.connection import ConnectionHandler

__all__ = ["SMALL_READ", "prepare", "read_rest"]

#: The first reads of a plain socket, in bytes (see the module documentation).
SMALL_READ = 512 - 33

_RAW_READ = os.name == "posix"  # descriptors are what read(2) takes


def prepare(handler: ConnectionHandler[Any], request: Any, fd: int) -> None:
    """Give an opening ``handler`` its read functions, for ``request`` on ``fd``."""
    # receive_size as the handler has it once open (a class attribute, which
    # CPython 3.11 would look up slowly on every read otherwise).
    size = handler._receive_size = handler.receive_size
    if _RAW_READ and type(request) is socket.socket:
        full = functools.partial(os.read, fd, size)
        small = functools.partial(os.read, fd, SMALL_READ) if size > SMALL_READ else full
        handler._raw = request
    else:
        full = small = functools.partial(request.recv, size)
    handler._recv_full = full
    handler._recv = small


def read_rest(handler: ConnectionHandler[Any], data: bytes) -> bytes:
    """A small read came back full: read ``receive_size`` from now on, and what
    waits already, so the peer's data arrives in one piece."""
    handler._recv = handler._recv_full
    try:  # (only a plain socket reads small: its descriptor is read directly)
        return data + os.read(handler._fd, handler._receive_size - len(data))
    except OSError:  # nothing more yet; an error stays, the next read reports it
        return data
