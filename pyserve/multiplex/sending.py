"""How the I/O thread sends a connection's output: gathered per turn, then when writable.

A handler's ``write()`` (:mod:`pyserve.multiplex.connection`) in a turn of the
I/O loop (:mod:`pyserve.multiplex.ioloop`) only buffers the bytes and puts the
connection in the loop's *gathered* list; at the end of the turn
``send_gathered()`` sends each connection's buffer with one system call. Why at
the end: a client that waits on many connections at once (``redis-benchmark``,
a proxy, a connection pool) sleeps between the replies it gets, and a send that
must wake a sleeping peer costs several times one that finds it running (in a
virtual machine, an interrupt to another processor and a trip through the
hypervisor). Replies sent one after another wake it once; replies sent as each
request is served, with the next request's work in between, wake it every time.
Redis gathers its replies the same way, before its event loop sleeps again.

What the kernel does not take stays buffered, and the poller watches the socket
for room (``watch()``); ``flush()`` sends it when the socket is writable. Either
way, once a buffer is empty the handler hears ``write_buffer_drained()``: a
handler that stops producing while output waits resumes there. A send that fails
(the peer reset the connection) ends that connection as ``write()`` would have.
"""

from __future__ import annotations

import collections
import os
import select
from typing import TYPE_CHECKING, Any

from pyserve.multiplex.connection import ConnectionHandler

if TYPE_CHECKING:
    from pyserve.multiplex.ioloop import IOLoop

__all__ = ["flush", "send_gathered"]

_write = os.write
_READ = select.POLLIN

#: Buffers of a turn up to this size are joined and sent with one system call;
#: a larger one goes piece by piece (copying megabytes to save a call is a loss).
JOIN_LIMIT = 256 * 1024


def send_gathered(loop: IOLoop) -> None:
    """Send what every connection was given in this turn (see the module's text).

    A callback run from here (``write_buffer_drained()``) that writes again is
    gathered for the next turn, which the loop then starts without waiting.
    """
    gathered = loop.gathered
    handlers = gathered.copy()
    gathered.clear()
    for handler in handlers:
        handler._later = False
        if handler._closed:
            continue
        output = handler._output
        if not output:  # a flush for writability sent it already, this turn
            loop.watch(handler)
            continue
        data = output[0] if len(output) == 1 else _joined(output)
        try:
            raw = handler._raw
            sent = handler._send(data) if raw is None else _write(raw.fileno(), data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:  # the peer is gone: end it, as write() would have
            loop.finish(handler, exc)
            continue
        handler._output_size -= sent
        if sent < len(data):
            output[0] = data[sent:]
            loop.watch(handler)  # the rest waits for room
            continue
        output.popleft()
        if output:
            loop.watch(handler)
            continue
        if handler._closing:
            loop.finish(handler, None)
            continue
        try:
            handler.write_buffer_drained()
        except Exception as exc:  # as any callback's error: logged, and it ends
            loop.failed(handler, exc)
            continue
        if loop.closing_idle:
            loop.shut_if_idle(handler)
        # Watched for reading only, as it was (the usual case): nothing to change.
        if handler._events != _READ or handler._eof:
            loop.watch(handler)


def _joined(output: collections.deque[bytes]) -> bytes:
    """The buffers of ``output`` as one, if that is small enough (and then the
    deque holds just it); else its first buffer."""
    if sum(map(len, output)) > JOIN_LIMIT:
        return output[0]
    data = b"".join(output)
    output.clear()
    output.append(data)
    return data


def flush(loop: IOLoop, handler: ConnectionHandler[Any]) -> None:
    """The socket is writable: send what waits, as far as the kernel takes it."""
    output = handler._output
    while output:
        data = output[0]
        try:
            sent = handler._send(data)
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:
            loop.call(handler, _raise, exc)
            return
        handler._output_size -= sent
        if sent < len(data):
            output[0] = data[sent:]
            break
        output.popleft()
    if not output and handler._closing:
        loop.finish(handler, None)
        return
    if not output:
        loop.call(handler, handler.write_buffer_drained)
        if loop.closing_idle:
            loop.shut_if_idle(handler)
    loop.watch(handler)


def _raise(exc: BaseException) -> None:
    raise exc
