"""The small exception hierarchy and the error classification pyserve uses.

Two kinds of failure meet a server, and they must never be confused:

* a **programmer's mistake** (a bad argument, a bad class attribute) raises at once,
  with a message naming the bad value;
* a **peer's behaviour** (a reset, a vanished client, a malformed frame) ends *that*
  connection with one logged line and never disturbs the rest of the server.

This module names both, plus the sets of ``errno`` values the accept loop sorts its
failures into (see :mod:`pyserve.base`).
"""

from __future__ import annotations

import errno
import socket

__all__ = [
    "LineTooLong",
    "PeerFault",
    "PeerGone",
    "ProtocolError",
    "PyserveError",
    "RequestDropped",
    "RequestTimedOut",
]


class PyserveError(Exception):
    """Base class of every exception pyserve defines."""


class ProtocolError(PyserveError, ValueError):
    """A peer sent something the protocol does not allow.

    Raised by sans-IO parsers; the handler closes that connection and logs the reason.
    """


class LineTooLong(ProtocolError):
    """A peer sent a line longer than the handler's ``max_line_length``."""


class RequestTimedOut(PyserveError, TimeoutError):
    """A connection missed its idle timeout or its whole-request deadline."""


class RequestDropped(PyserveError, OSError):
    """``get_request()`` received something that must not reach a handler.

    The server has already logged and counted it (an over-long datagram, for
    example); the loop silently moves on. It derives from :class:`OSError` so code
    written for the stdlib, which treats any ``OSError`` from ``get_request()`` as
    "no request this time", keeps working.
    """


#: Exceptions that mean "the peer went away", not "the server is broken". They are
#: logged in one line at DEBUG level: a client must not be able to flood the log by
#: hanging up rudely.
PeerGone: tuple[type[BaseException], ...] = (
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    socket.timeout,  # an alias of TimeoutError from 3.10 on; distinct on 3.9
    TimeoutError,
)

#: Misbehaviour pyserve detects in a peer: the connection is closed and the reason
#: logged in one WARNING line (no traceback: the server is not at fault).
PeerFault: tuple[type[BaseException], ...] = (ProtocolError, RequestTimedOut)

# -- accept() failures, sorted (pyserve.base uses these sets) ---------------------


def _errnos(*names: str) -> frozenset[int]:
    """The codes of those ``errno`` names this platform has (not every one has all)."""
    return frozenset(getattr(errno, name) for name in names if hasattr(errno, name))


#: The connection died between the kernel queueing it and our accept(), or a signal
#: interrupted the call, or another process sharing the socket took the connection:
#: nothing is wrong, try again on the next loop turn.
ACCEPT_TRANSIENT = _errnos(
    "ECONNABORTED",
    "EPROTO",
    "EINTR",
    "EAGAIN",
    "EWOULDBLOCK",
    # Linux hands network errors of the pending connection to accept().
    "ENETDOWN",
    "EHOSTUNREACH",
    "ENETUNREACH",
)

#: The process or the system is out of a resource. Retrying at once spins at 100 %
#: CPU (the stdlib's behaviour); instead the loop stops watching the listener and
#: backs off while connections already accepted finish and give resources back.
ACCEPT_CAPACITY = _errnos("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")

#: The listening socket itself is gone (closed, or never was a socket). Serving
#: cannot continue; the error propagates out of serve_forever().
ACCEPT_FATAL = _errnos(
    "EBADF",
    "ENOTSOCK",
    "EINVAL",  # not listening (shut down under us)
)
