"""The bounded thread pool: reused workers, accept backpressure, and workers that accept.

* :mod:`pyserve.pool.workers`: :class:`~pyserve.pool.workers.ThreadPoolMixIn`, the pool
  itself: at most ``max_workers`` threads, a bounded queue, and the hold on the listener
  when both are full;
* :mod:`pyserve.pool.accept`: the optional mode in which idle workers wait on the listener
  themselves and run the whole request path.
"""

from pyserve.pool.workers import ThreadPoolMixIn

__all__ = ["ThreadPoolMixIn"]
