"""What one chat member may send to the others: how fast, and which characters.

Two small pieces that :mod:`handlers.chat` applies to every member, kept apart
because each is a policy with its own reasons, testable without a socket:

* :class:`RateLimit` is a token bucket. ``wait()`` takes one token for a line and
  says how long the member must wait before it is relayed. The chat handler
  waits *instead of reading*, so the flooder's own TCP window closes and its
  sender slows; nobody else waits.
* :func:`clean_text` makes a line inert on a terminal: control characters
  (C0 such as ESC, BEL, CR, backspace; DEL; C1) and the bidirectional overrides
  and isolates are shown as ``\\x1b``-style escapes, so a member cannot retitle,
  clear, recolour or write to the clipboard of another's terminal (OSC 0/52, CSI
  sequences) or make a line display something other than what it says. TAB is
  kept: it only moves the cursor right on the same line, and pasted code and
  tables rely on it. Everything else printable, any script included, is kept
  as is (so is the ideographic space U+3000 of Chinese text).
"""

from __future__ import annotations

import time
import unicodedata
from typing import Callable

__all__ = ["RateLimit", "clean_text"]

#: Bidirectional embeddings, overrides and isolates: they reorder what a terminal
#: shows after them, so a line could display something other than what it says.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _visible(char: str) -> str:
    if char == "\t":
        return char
    if unicodedata.category(char) == "Cc" or char in _BIDI_CONTROLS:
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


def clean_text(text: str) -> str:
    """``text`` with control characters (all but TAB) shown as ``\\x1b``-style escapes."""
    if text.isprintable():  # the common case, in C: nothing to escape
        return text
    return "".join(_visible(char) for char in text)


class RateLimit:
    """A token bucket: ``rate`` lines a second on average, ``burst`` at once.

    ``wait()`` takes one token and returns how long the caller must wait first
    (0.0 when within budget); the debt is the caller's, so a member that keeps
    sending keeps waiting, and one that pauses earns its burst back.
    """

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not rate > 0 or not burst >= 1:
            raise ValueError(f"rate {rate!r} must be > 0 and burst {burst!r} >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._updated = clock()

    def wait(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
