"""The bounded thread pool: reused workers, accept backpressure, and workers that accept.

* :mod:`pyserve.pool.workers`: :class:`~pyserve.pool.workers.ThreadPoolMixIn`, the pool
  itself: at most ``max_workers`` threads, a bounded queue, and the hold on the listener
  when both are full;
* :mod:`pyserve.pool.accept`: the mode (the default on Linux) in which idle workers wait
  on the listener themselves and run the whole request path;
* :mod:`pyserve.pool.hooks`: which accept-path hooks let workers accept, and how they
  take turns, so that they run one connection at a time as in the stdlib.
"""

from pyserve.pool.workers import ThreadPoolMixIn

__all__ = ["ThreadPoolMixIn"]
