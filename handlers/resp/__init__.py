"""A Redis-compatible key-value server: redis-cli, redis-py and redis-benchmark work.

Theory of operation
-------------------
Three modules cooperate, each readable on its own:

* :mod:`handlers.resp.protocol` turns bytes into commands (sans-IO), and
  :mod:`handlers.resp.encoding` encodes replies;
* :mod:`handlers.resp.store` holds the strings, their expiry and the memory cap;
* :mod:`handlers.resp.session` runs batches of commands for one connection, with
  the command table of :mod:`handlers.resp.commands` (data commands) and
  :mod:`handlers.resp.connection_commands` (connection and server commands).

This module is the thin part that touches the network, in two forms that share
everything else:

* :class:`~handlers.resp.server.RespServer` serves every connection from one I/O thread
  (:class:`~pyserve.servers.MultiplexingTCPServer`) with
  :class:`~handlers.resp.server.RespConnection`: each time bytes arrive, feed them to the
  parser, take *every* complete command (a pipelining client sends many per packet), run
  them as one batch and send all the replies with one ``send()``. One system call per batch,
  not per command, and no thread switch between connections, is what lets ``redis-benchmark
  -P 16`` go fast: a thread per connection costs about 1 us per batch in switches alone, as
  much as running the 16 commands (measured: 0.42x redis-server with threads, 0.55-0.65x
  multiplexed).
* :class:`~handlers.resp.server.RespHandler` is the same loop as a blocking stream handler,
  for any threaded, pooled or forking server (the CLI's ``resp`` builds one).

All connections of one server share one :class:`~handlers.resp.session.ServerState` (the
store and the counters). :class:`~handlers.resp.server.RespServer` creates it in its
constructor, sized by its ``max_memory`` argument; a plain server
(``ThreadingTCPServer(addr, RespHandler)``, as the CLI builds one) gets one on its first
connection, sized by the handler's ``max_memory`` class attribute. The state is kept beside
the server, in a weak mapping, so the server object is never modified.

Error handling
--------------
Bad input from a peer (a malformed frame, or one over the parser's limits) is
answered with ``-ERR Protocol error: ...`` as Redis does, logged once on the
``pyserve.resp`` logger, and the connection is closed. Other clients are not
affected. ``QUIT`` is answered with ``+OK`` and then the connection is closed.
"""

from handlers.resp.server import RespConnection, RespHandler, RespServer, server_state

__all__ = ["RespConnection", "RespHandler", "RespServer", "server_state"]
