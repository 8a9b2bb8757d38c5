"""Message handlers: a stream handler that receives and answers whole messages.

:class:`MessageHandler` is the bridge between a sans-IO decoder of
:mod:`handlers.framing` and a socket. Its ``handle()`` is a thin loop: read what
the socket has (``read1``: one system call, never waiting for more), feed the
decoder, and for each complete message call ``handle_message(payload)`` and send
the reply it returns, framed. A subclass chooses the wire format with the
``framing`` class attribute (or ``byte_order``, for the common 4-byte length
prefix) and writes only ``handle_message``; :mod:`handlers.lines` and
:mod:`handlers.files` are built this way.

Ready services: :class:`EchoMessageHandler` (network byte order, as
:func:`handlers.framing.send_message` frames) and :class:`NativeOrderEchoHandler`
(the registry's ``message-echo``: the machine's own byte order, as the socket
tutorials' ``struct.pack('I', n)`` clients frame).

Error handling: a peer's bad frame (``pyserve.ProtocolError`` from the decoder
or ``handle_message``) ends that connection with a WARNING on the
``pyserve.handlers`` logger, at most one line per reason per minute per server
and handler class, with a count of the others (``handlers._ratelimit``).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from handlers._ratelimit import fault_log
from handlers.framing import DEFAULT_FRAMING, NEED_DATA, Decoder, Framing, LengthPrefixed
from pyserve import ProtocolError, StreamRequestHandler
from pyserve.logs import escape

__all__ = ["BYTE_ORDERS", "EchoMessageHandler", "MessageHandler", "NativeOrderEchoHandler"]

logger = logging.getLogger("pyserve.handlers")

#: ``byte_order`` names and the ``struct`` prefix of each. "native" is the order of
#: the machine the *server* runs on: right for a client on the same machine (or
#: the same architecture) that packs with ``struct.pack('I', n)``, as the socket
#: tutorials' clients do; "network" (big-endian) is right between any machines.
BYTE_ORDERS = {"network": "!", "big": ">", "little": "<", "native": "="}


class MessageHandler(StreamRequestHandler[Any]):
    """A stream handler that receives and answers whole messages.

    Override ``handle_message(payload)``: return the reply's payload (framed and
    sent for you) or None for no reply; call ``close()`` to end the connection
    after this message. ``connection_made()`` runs first (send a greeting there).

    Class attributes that may be overridden: ``framing`` (default: 4-byte
    length prefix, 1 MiB), ``read_size`` (bytes asked of the socket per read),
    plus ``pyserve.StreamRequestHandler``'s (``timeout``...).

    May be overridden: ``make_decoder()`` and ``encode(payload)`` (to derive the
    framing from per-instance state), ``protocol_error(exc)`` (the logging).
    """

    framing: Framing = DEFAULT_FRAMING
    #: Set in a subclass to one of :data:`BYTE_ORDERS` for a 4-byte length prefix in
    #: that byte order (1 MiB max): shorthand for ``framing = LengthPrefixed("=I")``
    #: and the like, checked when the class is defined.
    byte_order: Optional[str] = None
    #: Bytes requested per read: large enough that a burst of small messages costs
    #: one system call, small enough to bound the memory one connection holds.
    read_size: int = 65536

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        order = cls.__dict__.get("byte_order")
        if order is not None:
            if order not in BYTE_ORDERS:
                raise ValueError(
                    f"{cls.__name__}.byte_order {order!r} must be one of {sorted(BYTE_ORDERS)}"
                )
            cls.framing = LengthPrefixed(BYTE_ORDERS[order] + "I")

    def setup(self) -> None:
        super().setup()
        #: True once ``close()`` was called: the loop stops after the current message.
        self.close_requested = False

    def make_decoder(self) -> Decoder:
        """A decoder for this connection. May be overridden."""
        return self.framing.decoder()

    def encode(self, payload: bytes) -> bytes:
        """Frame one outgoing payload. May be overridden."""
        return self.framing.encode(payload)

    def connection_made(self) -> None:
        """Called before the first message is read. May be overridden."""

    def handle_message(self, payload: bytes) -> Optional[bytes]:
        """Answer one message: the reply's payload, or None. Override this."""
        raise NotImplementedError

    def send_message(self, payload: bytes) -> None:
        """Frame ``payload`` and send it now."""
        self.wfile.write(self.encode(payload))

    def close(self) -> None:
        """End the connection once the current message has been answered."""
        self.close_requested = True

    def protocol_error(self, exc: ProtocolError) -> None:
        """The peer broke the protocol: log one line. May be overridden.

        At most one line per reason per minute per server and handler class (with
        a count of the others): the reason is the message without its numbers.
        """
        text = str(exc)
        reason = "".join(c for c in text if not c.isdigit())[:60]
        log = fault_log(self.server, type(self).__qualname__, logger)
        log.report(
            logging.WARNING,
            reason,
            "closing connection from %s: %s",
            escape(self.client_address),
            text,
        )

    def handle(self) -> None:
        decoder = self.make_decoder()
        read = getattr(self.rfile, "read1", self.rfile.read)
        try:
            self.connection_made()
            while not self.close_requested:
                message = decoder.next_message()
                if message is NEED_DATA:
                    chunk = read(self.read_size)
                    if not chunk:
                        last = decoder.end_of_input()
                        if last is not None:
                            self._answer(last)
                        return
                    decoder.feed(chunk)
                    continue
                assert isinstance(message, bytes)
                self._answer(message)
        except ProtocolError as exc:
            self.protocol_error(exc)

    def _answer(self, message: bytes) -> None:
        reply = self.handle_message(message)
        if reply is not None:
            self.send_message(reply)


class EchoMessageHandler(MessageHandler):
    """Sends every message back unchanged (a ready service and a test peer).

    Its length prefix is in network order, as
    :func:`handlers.framing.send_message` sends it.
    """

    def handle_message(self, payload: bytes) -> Optional[bytes]:
        return payload


class NativeOrderEchoHandler(EchoMessageHandler):
    """:class:`EchoMessageHandler` with the length in the server machine's byte order.

    The registry's ``message-echo``: the socket tutorials' clients frame their
    ``struct`` messages with ``struct.pack('I', len(data))``, native order, which
    a network-order server would read as a length of megabytes.
    """

    byte_order = "native"
