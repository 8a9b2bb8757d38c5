"""Shared-key authentication for stream handlers: HMAC challenge-response.

The classic tutorial version of this handshake uses MD5, compares digests with
``==`` and reads the answer with an unbounded ``recv``. This one does each step
the careful way:

1. the server sends a fixed 40-byte challenge: the 8-byte ``MAGIC`` (protocol and
   version) and a fresh 32-byte nonce from :mod:`secrets`, new for every
   connection, so an answer recorded on one connection is useless on the next
   (no replay);
2. the client answers with exactly 32 bytes: HMAC-SHA256 over ``CONTEXT`` plus the
   challenge, keyed with the shared key (the context string keeps the answer
   from being valid for any other protocol that might use the same key);
3. the server compares with :func:`hmac.compare_digest` (time independent of
   where the bytes differ), and answers one byte, ``ACCEPTED`` or ``REJECTED``.

Every read has a fixed size and the whole exchange one deadline
(``auth_timeout``), so a client that sends slowly, too little or nothing at all
costs at most that long. On failure the handler's own ``handle()`` never runs
and the connection is closed.

Guessing is slowed and the log kept quiet (shared by every mix-in built on
:class:`ChallengeAuthMixIn`, including :mod:`handlers.auth_classic`):

* each failure locks the client's host out for ``auth_failure_delay`` seconds
  (1 s), doubling with each further failure up to ``auth_max_failure_delay``
  (60 s); a connection from a locked-out host is closed before any challenge.
  The per-host table holds at most ``auth_max_hosts`` entries (10,000, oldest
  dropped first); a success clears the host's record;
* failures are logged on the ``pyserve.handlers`` logger at most once per reason
  per minute per server, with a count of those not logged in between.

A key is checked when the class is defined: a class whose ``auth_key`` is not
bytes of at least ``auth_min_key_size`` (16) bytes raises ``ValueError`` there,
naming the problem, instead of failing every connection.

Use the mix-in before any stream handler class::

    from handlers.auth import HMACAuthMixIn
    from handlers.lines import UpperCaseHandler

    class SecretUpper(HMACAuthMixIn, UpperCaseHandler):
        auth_key = b"a shared key of 16 bytes or more"

and :func:`authenticate` in the client, before its own protocol starts::

    with socket.create_connection(("127.0.0.1", 7002), timeout=5) as sock:
        authenticate(sock, b"a shared key of 16 bytes or more")
        sock.sendall(b"now trusted\\n")

The mix-in reads the handshake straight from the socket, byte-exact, so nothing
the client sends after its answer is consumed: the handler's ``rfile`` sees it.
The handshake authenticates the client to the server; it neither encrypts nor
protects later traffic (use TLS for that) and does not prove the server's
identity to the client.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any, Optional

from handlers._handshake import (
    FailureThrottle,
    ShortRead,
    host_of,
    recv_exactly,
    send_before,
    throttle_of,
)
from handlers._ratelimit import fault_log
from pyserve import BaseRequestHandler, ProtocolError
from pyserve.logs import escape

__all__ = [
    "ACCEPTED",
    "CHALLENGE_SIZE",
    "CONTEXT",
    "MAGIC",
    "MIN_KEY_SIZE",
    "REJECTED",
    "AuthenticationFailed",
    "ChallengeAuthMixIn",
    "HMACAuthMixIn",
    "answer_challenge",
    "authenticate",
    "check_key",
]

logger = logging.getLogger("pyserve.handlers")

#: Starts every challenge: names the protocol and its version.
MAGIC = b"PYSAUTH1"
#: 256 bits of nonce: guessing or repeating one is out of reach.
NONCE_SIZE = 32
CHALLENGE_SIZE = len(MAGIC) + NONCE_SIZE
#: What the client's HMAC covers besides the challenge (domain separation).
CONTEXT = b"pyserve handlers.auth v1 client answer\x00"
ANSWER_SIZE = hashlib.sha256().digest_size
ACCEPTED = b"\x01"
REJECTED = b"\x00"
#: Shorter keys are refused: a shared secret under 128 bits can be brute-forced
#: from one recorded handshake.
MIN_KEY_SIZE = 16


class AuthenticationFailed(ProtocolError):
    """The handshake failed (client side): rejected, cut short, or malformed."""


def check_key(key: object, min_size: int = MIN_KEY_SIZE) -> bytes:
    """``key`` as bytes, or ValueError naming what is wrong with it."""
    if not isinstance(key, (bytes, bytearray)) or len(key) < min_size:
        shown = f"{len(key)} bytes" if isinstance(key, (bytes, bytearray)) else repr(key)
        raise ValueError(f"auth key must be bytes of at least {min_size} bytes, not {shown}")
    return bytes(key)


def answer_challenge(key: bytes, challenge: bytes) -> bytes:
    """The 32-byte answer to a 40-byte challenge."""
    return hmac.new(check_key(key), CONTEXT + challenge, hashlib.sha256).digest()


if TYPE_CHECKING:
    _Handler = BaseRequestHandler[Any]
else:
    _Handler = object


class ChallengeAuthMixIn(_Handler):
    """The frame of a shared-key handshake: throttle, deadline, logging.

    Subclasses implement ``exchange(sock, key, deadline)``: run the handshake on
    ``sock`` and return None on success or the reason for a failure (a fixed
    phrase: it is the log's rate-limiting key). Short reads, timeouts and socket
    errors raised inside it are turned into failures here.

    Class attributes that may be overridden: ``auth_key`` (or override
    ``get_auth_key()``), ``auth_min_key_size``, ``auth_timeout`` (seconds for the
    whole handshake), ``auth_failure_delay`` / ``auth_max_failure_delay`` (the
    host's lock-out after its first failure, and its cap; 0 disables it) and
    ``auth_max_hosts``. ``self.authenticated`` tells whether the handshake succeeded.
    """

    auth_key: Optional[bytes] = None
    auth_min_key_size: int = MIN_KEY_SIZE
    #: Long enough for a client across the world, short enough that a silent
    #: connection cannot hold a worker for long.
    auth_timeout: float = 10.0
    #: One second after a first mistake is nothing to a person; doubled per failure
    #: it holds a guesser to a few dozen tries an hour (the cap is reached at the 7th).
    auth_failure_delay: float = 1.0
    auth_max_failure_delay: float = 60.0
    #: Records of failing hosts kept at most (about 100 bytes each).
    auth_max_hosts: int = 10_000

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A bad key is the programmer's error: say so once, when the class is
        # defined, not in a traceback for every connection.
        key = cls.__dict__.get("auth_key")
        if key is not None:
            try:
                check_key(key, cls.auth_min_key_size)
            except ValueError as exc:
                raise ValueError(f"{cls.__name__}: {exc}") from None

    def get_auth_key(self) -> bytes:
        """The shared key for this connection. May be overridden."""
        return check_key(self.auth_key, self.auth_min_key_size)

    def exchange(self, sock: socket.socket, key: bytes, deadline: float) -> Optional[str]:
        """Run the handshake: None when the client proved the key, else why not."""
        raise NotImplementedError

    def handle(self) -> None:
        self.authenticated = self._authenticate()
        if self.authenticated:
            super().handle()

    def _authenticate(self) -> bool:
        key = self.get_auth_key()  # a programmer's error raises, before any I/O
        sock: socket.socket = self.request
        host = host_of(self.client_address)
        throttle = throttle_of(self.server, "shared-key auth", self._make_throttle)
        wait = throttle.locked_for(host)
        if wait > 0:
            self._fault("locked out", f"host locked out for {wait:.1f} s more after failures")
            return False
        previous_timeout = sock.gettimeout()
        deadline = time.monotonic() + self.auth_timeout
        try:
            reason = self.exchange(sock, key, deadline)
        except ShortRead as exc:
            reason, detail = "short read", str(exc)
        except socket.timeout:
            reason, detail = "timeout", f"no complete answer within {self.auth_timeout} s"
        except OSError as exc:
            reason, detail = "connection failed", f"connection failed during the handshake: {exc!r}"
        else:
            detail = reason or ""
        if reason is None:
            throttle.succeeded(host)
            sock.settimeout(previous_timeout)
            return True
        delay = throttle.failed(host)
        self._fault(reason, f"{detail}; host locked out for {delay:g} s")
        return False

    def _make_throttle(self) -> FailureThrottle:
        return FailureThrottle(
            self.auth_failure_delay, self.auth_max_failure_delay, max_hosts=self.auth_max_hosts
        )

    def _fault(self, reason: str, detail: str) -> None:
        log = fault_log(self.server, "shared-key auth", logger)
        log.report(
            logging.WARNING,
            reason,
            "authentication failed for %s: %s",
            escape(self.client_address),
            detail,
        )


class HMACAuthMixIn(ChallengeAuthMixIn):
    """Authenticates the client before the stream handler's ``handle()`` runs.

    The ``PYSAUTH1`` exchange described above. Put it first in the bases:
    ``class H(HMACAuthMixIn, Handler)``; set ``auth_key`` (bytes, at least 16).
    """

    def exchange(self, sock: socket.socket, key: bytes, deadline: float) -> Optional[str]:
        challenge = MAGIC + secrets.token_bytes(NONCE_SIZE)
        expected = answer_challenge(key, challenge)
        send_before(sock, challenge, deadline)
        answer = recv_exactly(sock, ANSWER_SIZE, deadline)
        if not hmac.compare_digest(answer, expected):
            try:
                send_before(sock, REJECTED, deadline)
            except OSError:
                pass  # a courtesy to the client; the failure is reported anyway
            return "wrong answer to the challenge (wrong key or a replay)"
        send_before(sock, ACCEPTED, deadline)
        return None


def authenticate(sock: socket.socket, key: bytes, timeout: float = 10.0) -> None:
    """Answer the server's challenge on ``sock``; return once accepted.

    Raises :class:`AuthenticationFailed` if the server rejects the answer, closes
    early (as it does at once while this host is locked out after failures) or
    does not speak this protocol, and ``socket.timeout`` after ``timeout``
    seconds. The socket's own timeout is restored on success.
    """
    key = check_key(key)
    previous_timeout = sock.gettimeout()
    deadline = time.monotonic() + timeout
    try:
        challenge = recv_exactly(sock, CHALLENGE_SIZE, deadline)
        if not challenge.startswith(MAGIC):
            raise AuthenticationFailed(f"not a {MAGIC!r} challenge: {challenge[:8]!r}")
        send_before(sock, answer_challenge(key, challenge), deadline)
        verdict = recv_exactly(sock, 1, deadline)
    except ShortRead as exc:
        raise AuthenticationFailed(str(exc)) from None
    if verdict != ACCEPTED:
        raise AuthenticationFailed("the server rejected the answer (wrong key?)")
    sock.settimeout(previous_timeout)
