"""MULTI, EXEC, DISCARD, WATCH and UNWATCH: Redis transactions with optimistic locking.

Theory of operation
-------------------
``MULTI`` opens a queue on the session (``session.queued``); from then on
:meth:`~handlers.resp.session.Session.execute_some` answers each command with
``+QUEUED`` instead of running it, except the functions listed in
:data:`~handlers.resp.session.TRANSACTION_CONTROL` (the ones here, and QUIT).
A command that cannot be queued (unknown, wrong arity) is answered with its
error and marks the queue failed, so ``EXEC`` answers ``-EXECABORT`` and runs
nothing, as Redis does. ``EXEC`` runs the queue under the store lock it already
holds, so no other client's command comes between the queued ones.

``WATCH key...`` records the session in ``store.watchers[key]``; the store calls
:meth:`~handlers.resp.session.Session.key_changed` on any change to such a key
(by anyone, this session included, as in Redis). ``EXEC`` then answers the null
array and runs nothing, which redis-py reports as ``WatchError``. ``EXEC``,
``DISCARD``, ``UNWATCH`` and the end of the connection forget the watched keys.
"""

from __future__ import annotations

from handlers.resp.encoding import NULL_ARRAY, OK, encode_array
from handlers.resp.session import TRANSACTION_CONTROL, CommandTable, Session

__all__ = ["TRANSACTION_COMMANDS"]


def multi(session: Session, args: list[bytes]) -> bytes:
    if session.queued is not None:
        return b"-ERR MULTI calls can not be nested\r\n"
    session.queued = []
    session.queue_failed = False
    return OK


def exec_(session: Session, args: list[bytes]) -> bytes:
    queued = session.queued
    if queued is None:
        return b"-ERR EXEC without MULTI\r\n"
    failed, changed = session.queue_failed, session.watched_changed
    session.queued = None
    session.queue_failed = False
    session.unwatch()
    if failed:
        return b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    if changed:
        return NULL_ARRAY
    return encode_array([session.call(args) for args in queued])


def discard(session: Session, args: list[bytes]) -> bytes:
    if session.queued is None:
        return b"-ERR DISCARD without MULTI\r\n"
    session.queued = None
    session.queue_failed = False
    session.unwatch()
    return OK


def watch(session: Session, args: list[bytes]) -> bytes:
    if session.queued is not None:
        return b"-ERR WATCH inside MULTI is not allowed\r\n"
    watchers = session.store.watchers
    for key in args[1:]:
        session.store.value(key)  # an expired key goes now, not as a later "change"
        watchers.setdefault(key, set()).add(session)
        session.watched.add(key)
    return OK


def unwatch(session: Session, args: list[bytes]) -> bytes:
    session.unwatch()
    return OK


#: Name (lower case) -> (function, arity).
TRANSACTION_COMMANDS: CommandTable = {
    b"multi": (multi, 1), b"exec": (exec_, 1), b"discard": (discard, 1),
    b"watch": (watch, -2), b"unwatch": (unwatch, 1),
}
TRANSACTION_CONTROL.update({multi, exec_, discard, watch})
