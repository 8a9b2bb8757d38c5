"""A Redis-compatible key-value server: redis-cli, redis-py and redis-benchmark work.

Theory of operation
-------------------
The package is cut by concept, each module readable on its own:

* bytes to commands and back: :mod:`handlers.resp.protocol` (the sans-IO parser,
  with ``inline`` for telnet-style lines) and :mod:`handlers.resp.encoding`;
* the data: :mod:`handlers.resp.store` (expiry, the memory cap, watched keys) on
  ``keyspace`` (the key table that makes SCAN O(COUNT)), ``values`` (the five
  kinds of value and what each costs) and ``glob`` (patterns matched without
  backtracking);
* running commands: :mod:`handlers.resp.session` runs a client's commands in
  pieces under the store lock, from the table :mod:`handlers.resp.commands`
  builds out of one module per kind: strings and keys (``commands``), lists,
  sets, hashes and sorted sets (``list_commands``, ``set_commands``,
  ``hash_commands``, ``zset_commands``), ``transactions`` (MULTI/EXEC/WATCH) and
  :mod:`handlers.resp.connection_commands`; a pipelined run of one command
  (sixteen SETs) is answered by its fast path in :mod:`handlers.resp.runs`;
* the network: ``server`` (below) and ``faults`` (the escaped, rate-limited log
  of peers' faults).

The server comes in two forms that share everything else:

* :class:`~handlers.resp.server.RespServer` serves every connection from one I/O
  thread (:class:`~pyserve.servers.MultiplexingTCPServer`) with
  :class:`~handlers.resp.server.RespConnection`: each time bytes arrive, feed them
  to the parser, take *every* complete command (a pipelining client sends many
  per packet), run them and send the replies with one ``send()``. One system call
  per batch, not per command, and no thread switch between connections, is what
  lets ``redis-benchmark -P 16`` go fast. ``pyserve resp`` runs this form.
* :class:`~handlers.resp.server.RespHandler` is the same loop as a blocking stream
  handler, for any threaded, pooled or forking server.

A long pipeline is answered in pieces of ``reply_chunk`` bytes of replies, with
the store lock released and other clients served in between, and a client's
commands wait while its unsent replies pass ``max_write_buffer``: a client that
never reads costs bounded memory and delays no one (see
:mod:`handlers.resp.server`).

All connections of one server share one :class:`~handlers.resp.session.ServerState`
(the store, the counters, the fault log). :class:`~handlers.resp.server.RespServer`
creates it in its constructor, sized by its ``max_memory`` argument (default 256
MiB); a plain server (``ThreadingTCPServer(addr, RespHandler)``) gets one on its
first connection, sized by the handler's ``max_memory`` class attribute. The
state is kept beside the server, in a weak mapping, so the server object is never
modified.

Error handling
--------------
Bad input from a peer (a malformed frame, or one over the parser's limits) is
answered with ``-ERR Protocol error: ...`` as Redis does and the connection is
closed; a reply past ``max_output_buffer`` and silence past ``idle_timeout`` close
it too. Each is logged on the ``pyserve.resp`` logger with the peer's bytes
escaped, at most once a minute per kind of fault. Other clients are not affected.
``QUIT`` is answered with ``+OK`` and then the connection is closed.
"""

from handlers.resp.server import RespConnection, RespHandler, RespServer, server_state

__all__ = ["RespConnection", "RespHandler", "RespServer", "server_state"]
