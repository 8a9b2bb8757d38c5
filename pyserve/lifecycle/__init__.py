"""What a server knows about its requests over time: objects the server owns.

* :mod:`pyserve.lifecycle.registry`: the requests in flight (one lock), and the
  counters fed by their start and end;
* :mod:`pyserve.lifecycle.drain`: stop accepting, let requests finish, then force;
* :mod:`pyserve.lifecycle.limits`: per-connection limits (idle timeout, request
  deadline, line length, connections per client);
* :mod:`pyserve.lifecycle.events`: lifecycle events, observers and statistics.
"""
