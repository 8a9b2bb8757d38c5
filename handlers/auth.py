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
costs at most that long. On failure the handler's own ``handle()`` never runs:
the connection is closed with one WARNING line on the ``pyserve.handlers`` logger
giving the reason (wrong answer, short read, timeout, reset).

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

from pyserve import BaseRequestHandler, ProtocolError

__all__ = [
    "ACCEPTED",
    "CHALLENGE_SIZE",
    "CONTEXT",
    "MAGIC",
    "REJECTED",
    "AuthenticationFailed",
    "HMACAuthMixIn",
    "answer_challenge",
    "authenticate",
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


def _check_key(key: object) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_SIZE:
        shown = f"{len(key)} bytes" if isinstance(key, (bytes, bytearray)) else repr(key)
        raise ValueError(f"auth key must be bytes of at least {MIN_KEY_SIZE} bytes, not {shown}")
    return bytes(key)


def answer_challenge(key: bytes, challenge: bytes) -> bytes:
    """The 32-byte answer to a 40-byte challenge."""
    return hmac.new(_check_key(key), CONTEXT + challenge, hashlib.sha256).digest()


class _ShortRead(Exception):
    def __init__(self, received: int, wanted: int) -> None:
        super().__init__(f"short read: the peer closed after {received} of {wanted} bytes")


def _recv_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    """Exactly ``size`` bytes before ``deadline``; _ShortRead or socket.timeout if not."""
    data = bytearray()
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out")
        sock.settimeout(remaining)
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise _ShortRead(len(data), size)
        data += chunk
    return bytes(data)


def _send_before(sock: socket.socket, data: bytes, deadline: float) -> None:
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    sock.sendall(data)


if TYPE_CHECKING:
    _Handler = BaseRequestHandler[Any]
else:
    _Handler = object


class HMACAuthMixIn(_Handler):
    """Authenticates the client before the stream handler's ``handle()`` runs.

    Class attributes that may be overridden: ``auth_key`` (bytes, at least 16;
    or override ``get_auth_key()``), ``auth_timeout`` (seconds for the whole
    handshake). Put it first in the bases: ``class H(HMACAuthMixIn, Handler)``.
    ``self.authenticated`` tells whether the handshake succeeded.
    """

    auth_key: Optional[bytes] = None
    #: Long enough for a client across the world, short enough that a silent
    #: connection cannot hold a worker for long.
    auth_timeout: float = 10.0

    def get_auth_key(self) -> bytes:
        """The shared key for this connection. May be overridden."""
        return _check_key(self.auth_key)

    def handle(self) -> None:
        self.authenticated = self._authenticate()
        if self.authenticated:
            super().handle()

    def _authenticate(self) -> bool:
        key = self.get_auth_key()  # a programmer's error raises, before any I/O
        sock: socket.socket = self.request
        previous_timeout = sock.gettimeout()
        deadline = time.monotonic() + self.auth_timeout
        challenge = MAGIC + secrets.token_bytes(NONCE_SIZE)
        expected = answer_challenge(key, challenge)
        try:
            _send_before(sock, challenge, deadline)
            answer = _recv_exactly(sock, ANSWER_SIZE, deadline)
            if not hmac.compare_digest(answer, expected):
                self._reject("wrong answer to the challenge (wrong key or a replay)")
                try:
                    _send_before(sock, REJECTED, deadline)
                except OSError:
                    pass  # a courtesy to the client; the reason is already logged
                return False
            _send_before(sock, ACCEPTED, deadline)
        except _ShortRead as exc:
            self._reject(str(exc))
            return False
        except socket.timeout:
            self._reject(f"no complete answer within {self.auth_timeout} s")
            return False
        except OSError as exc:
            self._reject(f"connection failed during the handshake: {exc!r}")
            return False
        sock.settimeout(previous_timeout)
        return True

    def _reject(self, reason: str) -> None:
        logger.warning("authentication failed for %s: %s", self.client_address, reason)


def authenticate(sock: socket.socket, key: bytes, timeout: float = 10.0) -> None:
    """Answer the server's challenge on ``sock``; return once accepted.

    Raises :class:`AuthenticationFailed` if the server rejects the answer, closes
    early or does not speak this protocol, and ``socket.timeout`` after
    ``timeout`` seconds. The socket's own timeout is restored on success.
    """
    key = _check_key(key)
    previous_timeout = sock.gettimeout()
    deadline = time.monotonic() + timeout
    try:
        challenge = _recv_exactly(sock, CHALLENGE_SIZE, deadline)
        if not challenge.startswith(MAGIC):
            raise AuthenticationFailed(f"not a {MAGIC!r} challenge: {challenge[:8]!r}")
        _send_before(sock, answer_challenge(key, challenge), deadline)
        verdict = _recv_exactly(sock, 1, deadline)
    except _ShortRead as exc:
        raise AuthenticationFailed(str(exc)) from None
    if verdict != ACCEPTED:
        raise AuthenticationFailed("the server rejected the answer (wrong key?)")
    sock.settimeout(previous_timeout)
