"""One I/O thread for many connections, and the callback handlers it drives.

* :mod:`pyserve.multiplex.connection`:
  :class:`~pyserve.multiplex.connection.ConnectionHandler`, the handler a user writes
  (callbacks that never block, ``write()`` and ``close()``), and
  :class:`~pyserve.multiplex.connection.Transport`, what it needs from the loop;
* :mod:`pyserve.multiplex.server`: :class:`~pyserve.multiplex.server.MultiplexingMixIn`, the
  server side: the I/O thread accepts while ``serve_forever()`` runs (the serve
  loop holds the listener for it), else the loop hands each connection over;
* :mod:`pyserve.multiplex.ioloop`: :class:`~pyserve.multiplex.ioloop.IOLoop`, that thread,
  which reads, writes and times out every connection with one poller.
"""

from pyserve.multiplex.connection import ConnectionHandler, Transport
from pyserve.multiplex.server import MultiplexingMixIn, finish_request_overriders

__all__ = ["ConnectionHandler", "MultiplexingMixIn", "Transport", "finish_request_overriders"]
