"""What every shared-key handshake in ``handlers`` needs: exact reads and a failure throttle.

Theory of operation
-------------------
Both challenge-response mix-ins (:mod:`handlers.auth`, :mod:`handlers.auth_classic`)
read fixed-size answers under one deadline (:func:`recv_exactly`,
:func:`send_before`), so a client that trickles or stays silent costs at most
the handshake's timeout, and they never read a byte past the answer.

A shared key can be guessed only by trying, so trying must be slow. A
:class:`FailureThrottle` remembers, per client *host* (the address without its
port, since a new connection gets a new port), how many handshakes failed in a
row and until when that host is locked out. Each failure doubles the lock-out
(``base_delay``, 2x, 4x... capped at ``max_delay``); while it lasts, a new
connection from that host is closed before a challenge is even sent, which
costs the server next to nothing. A success clears the host's record, and a
record with no failure for ``forget_after`` seconds is dropped.

Memory is bounded: at most ``max_hosts`` records; when full, the record whose
last failure is oldest goes first (an ordered dict kept in last-failure order
makes that O(1)). A flood of connections from many spoofed-looking hosts thus
cannot grow the table, only churn it. One throttle per server
(:func:`throttle_of`, a weak mapping like the chat room's), shared by every
connection of that server.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
import weakref
from typing import Any, Callable, NamedTuple

__all__ = [
    "FailureThrottle",
    "ShortRead",
    "host_of",
    "recv_exactly",
    "send_before",
    "throttle_of",
]


class ShortRead(Exception):
    """The peer closed before sending the whole fixed-size answer."""

    def __init__(self, received: int, wanted: int) -> None:
        super().__init__(f"short read: the peer closed after {received} of {wanted} bytes")


def recv_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    """Exactly ``size`` bytes before ``deadline``; ShortRead or socket.timeout if not."""
    data = bytearray()
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out")
        sock.settimeout(remaining)
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ShortRead(len(data), size)
        data += chunk
    return bytes(data)


def send_before(sock: socket.socket, data: bytes, deadline: float) -> None:
    """Send all of ``data``, giving up (socket.timeout) at ``deadline``."""
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    sock.sendall(data)


class _Record(NamedTuple):
    failures: int
    locked_until: float
    last_failure: float


class FailureThrottle:
    """Per-host lock-outs that double with each failed handshake (thread-safe)."""

    def __init__(
        self,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        *,
        forget_after: float = 600.0,
        max_hosts: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= base_delay <= max_delay:
            raise ValueError(
                f"base_delay {base_delay!r} and max_delay {max_delay!r} must satisfy "
                "0 <= base_delay <= max_delay"
            )
        if not isinstance(max_hosts, int) or max_hosts < 1:
            raise ValueError(f"max_hosts {max_hosts!r} must be a positive int")
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_hosts = max_hosts
        self._clock = clock
        self._lock = threading.Lock()
        self._hosts: collections.OrderedDict[Any, _Record] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._hosts)

    def locked_for(self, host: Any) -> float:
        """Seconds ``host`` must still wait before its next try (0.0: it may try now)."""
        now = self._clock()
        with self._lock:
            record = self._hosts.get(host)
            if record is None:
                return 0.0
            if now - record.last_failure > self.forget_after:
                del self._hosts[host]
                return 0.0
            return max(0.0, record.locked_until - now)

    def failed(self, host: Any) -> float:
        """Record a failed handshake from ``host``; return its new lock-out in seconds."""
        now = self._clock()
        with self._lock:
            record = self._hosts.pop(host, None)
            failures = 1 if record is None else record.failures + 1
            # 2 ** (failures - 1) grows without bound; cap the exponent first.
            delay = min(self.max_delay, self.base_delay * float(2 ** min(failures - 1, 32)))
            self._hosts[host] = _Record(failures, now + delay, now)  # now the newest
            while len(self._hosts) > self.max_hosts:
                self._hosts.popitem(last=False)  # the oldest last failure
            return delay

    def succeeded(self, host: Any) -> None:
        """Clear ``host``'s record: a right answer ends its lock-out history."""
        with self._lock:
            self._hosts.pop(host, None)


_throttles_lock = threading.Lock()
_throttles: weakref.WeakKeyDictionary[Any, dict[str, FailureThrottle]] = (
    weakref.WeakKeyDictionary()
)
_shared: dict[str, FailureThrottle] = {}


def throttle_of(
    server: Any, name: str, make: Callable[[], FailureThrottle]
) -> FailureThrottle:
    """The throttle ``name`` of ``server``, made by ``make()`` on first use."""
    with _throttles_lock:
        try:
            throttles = _throttles.setdefault(server, {})
        except TypeError:  # a server that cannot be weakly referenced
            throttles = _shared
        throttle = throttles.get(name)
        if throttle is None:
            throttle = throttles[name] = make()
        return throttle


def host_of(address: Any) -> Any:
    """The part of a client address that names its machine (the IP, without port)."""
    if isinstance(address, tuple) and address:
        return address[0]
    return address  # a Unix socket's address: all its clients share one record

