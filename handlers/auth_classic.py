"""The classic HMAC challenge-response of the socket tutorials, done carefully.

Tutorial 004 authenticates a client this way, and its client code is what our
users have written:

1. the server sends 32 random bytes;
2. the client answers ``hmac.new(key, challenge, digest).hexdigest()``, encoded as
   ASCII (32 characters for MD5, 64 for SHA-256);
3. the server compares with its own HMAC and, if they match, the conversation
   simply goes on: there is no verdict byte (the tutorial's client sends its
   next message, ``b'upload'``, right after its answer without reading any).

:class:`ClassicHMACAuthMixIn` speaks exactly that, byte for byte, on top of
:class:`handlers.auth.ChallengeAuthMixIn`, so it gets the same care as
``PYSAUTH1``: a fresh nonce from :mod:`secrets` for every connection, an answer
read to its exact length (the bytes after it stay for the handler's ``rfile``),
one deadline for the exchange, :func:`hmac.compare_digest`, per-host lock-outs
that double with each failure, and rate-limited logging.

What the classic protocol cannot fix, and why ``PYSAUTH1`` exists: the answer
covers only the nonce (no protocol context), a wrong key is told only by the
closed connection, and the tutorial's choices -- MD5, an 8-byte key -- are weak.
The defaults here are therefore SHA-256 and keys of 16 bytes or more; the
tutorial's client needs both relaxed explicitly, which the name says::

    class TutorialAuth(ClassicHMACAuthMixIn, MyHandler):
        auth_key = b"wangwang"
        auth_digest = "md5"         # tutorial 004's (Python 2's default digest)
        auth_min_key_size = 8       # accepts its 8-byte key

Both are checked when the class is defined: an unknown digest, a key too short
for ``auth_min_key_size``, or ``auth_min_key_size`` below 8 raise ``ValueError``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socket
import time
from typing import Any, Optional

from handlers._handshake import ShortRead, recv_exactly, send_before
from handlers.auth import AuthenticationFailed, ChallengeAuthMixIn, check_key

__all__ = ["CHALLENGE_SIZE", "ClassicHMACAuthMixIn", "answer_classic_challenge", "authenticate"]

#: The tutorial's challenge: 32 random bytes, nothing else.
CHALLENGE_SIZE = 32
#: No key may be shorter than this, whatever a class asks: the tutorial's own key
#: (8 bytes) is the weakest one accepted.
FLOOR_KEY_SIZE = 8


def _digest_size(name: str) -> int:
    try:
        return hashlib.new(name).digest_size
    except (ValueError, TypeError):
        raise ValueError(
            f"auth_digest {name!r} is not a hashlib digest (try 'sha256' or 'md5')"
        ) from None


def answer_classic_challenge(key: bytes, challenge: bytes, digest: str = "sha256") -> bytes:
    """The client's answer: the HMAC's hex digest as ASCII bytes."""
    return hmac.new(key, challenge, digest).hexdigest().encode("ascii")


class ClassicHMACAuthMixIn(ChallengeAuthMixIn):
    """Tutorial 004's challenge-response before the stream handler's ``handle()``.

    Class attributes, besides :class:`~handlers.auth.ChallengeAuthMixIn`'s:
    ``auth_digest`` (``"sha256"``; ``"md5"`` for the tutorial's client).
    """

    auth_digest: str = "sha256"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        if cls.auth_min_key_size < FLOOR_KEY_SIZE:
            raise ValueError(
                f"{cls.__name__}.auth_min_key_size {cls.auth_min_key_size!r} is below "
                f"{FLOOR_KEY_SIZE}: a key that short is guessed offline from one handshake"
            )
        _digest_size(cls.auth_digest)
        super().__init_subclass__(**kwargs)

    def exchange(self, sock: socket.socket, key: bytes, deadline: float) -> Optional[str]:
        challenge = secrets.token_bytes(CHALLENGE_SIZE)
        expected = answer_classic_challenge(key, challenge, self.auth_digest)
        send_before(sock, challenge, deadline)
        answer = recv_exactly(sock, len(expected), deadline)
        if not hmac.compare_digest(answer, expected):
            return "wrong answer to the challenge (wrong key or digest)"
        return None


def authenticate(
    sock: socket.socket, key: bytes, digest: str = "sha256", timeout: float = 10.0
) -> None:
    """Answer a classic challenge on ``sock`` (the tutorial's client, with a deadline).

    The protocol has no verdict: a wrong key shows only as the server closing
    the connection when the client next reads. Raises
    :class:`~handlers.auth.AuthenticationFailed` if the server closes before its
    challenge is complete, ``socket.timeout`` after ``timeout`` seconds.
    """
    key = check_key(key, FLOOR_KEY_SIZE)
    _digest_size(digest)
    previous_timeout = sock.gettimeout()
    deadline = time.monotonic() + timeout
    try:
        challenge = recv_exactly(sock, CHALLENGE_SIZE, deadline)
    except ShortRead as exc:
        raise AuthenticationFailed(str(exc)) from None
    send_before(sock, answer_classic_challenge(key, challenge, digest), deadline)
    sock.settimeout(previous_timeout)
