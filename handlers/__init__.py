"""Ready-made protocol handlers for pyserve servers.

Everything in this package is built only on pyserve's public API -- the same
names any user can import -- so each handler doubles as a worked example of
writing one. The modules, from the bottom up:

* :mod:`handlers.framing`: message boundaries on a byte stream (length-prefixed
  frames, netstrings) as sans-IO decoders, and the ``send_message`` /
  ``recv_message`` client helpers;
* :mod:`handlers.messages`: the :class:`~handlers.messages.MessageHandler` base
  that runs a decoder over a connection, and the message-echo services;
* :mod:`handlers.lines`: text line protocols on the same machinery
  (``LineHandler``), with tutorials 000 and 001's servers (welcome, upper case);
* :mod:`handlers.simple`: the RFC 862-868 services (echo, discard, chargen,
  qotd, daytime, time) over TCP and UDP;
* :mod:`handlers.auth`: an HMAC-SHA256 challenge-response mix-in for any stream
  handler, and its client helper; :mod:`handlers.auth_classic`: tutorial 004's
  classic exchange, with the same lock-outs (both use ``handlers._handshake``);
* :mod:`handlers.chat`: a chat room where neither a client that stops reading
  nor one that floods can hold up the others (:mod:`handlers.chat_limits`);
* :mod:`handlers.resp` (with ``resp.protocol``, ``resp.encoding``, ``resp.store``,
  ``resp.session``, ``resp.commands``, ``resp.connection_commands``):
  a Redis-compatible key-value server for redis-cli, redis-py and redis-benchmark;
* :mod:`handlers.files`: downloads, and uploads when enabled, under a root
  directory, confined to it, with client helpers (:mod:`handlers.files_storage`
  writes atomically, under a quota);
* :mod:`handlers.registry`: short names (``echo``, ``daytime``, ``uppercase``...)
  for all of the above, so a command line can serve them by name.

Parsers never touch a socket: they take bytes and return a message, the
``NEED_DATA`` sentinel, or raise ``pyserve.ProtocolError``. A peer that breaks
a protocol loses its connection with one WARNING line on the ``pyserve.handlers``
logger, at most one per reason per minute per server (``handlers._ratelimit``),
with peer bytes escaped; the server and its other clients carry on.

Nothing is imported eagerly here: ``import handlers.lines`` pays only for lines.
"""

__all__: list[str] = []
