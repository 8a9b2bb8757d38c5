"""Prefork: N worker processes serving one port, kept alive by a small supervisor.

* :mod:`pyserve.prefork.supervisor`: :class:`~pyserve.prefork.supervisor.Prefork`, the
  parent: signals, the worker table, restarts and rolling replacement;
* :mod:`pyserve.prefork.worker`: what a child does after the fork;
* :mod:`pyserve.prefork.sockets`: the listening sockets the parent owns and hands on;
* :mod:`pyserve.prefork.backoff`: when to restart a worker that keeps crashing.
"""

from pyserve.prefork.supervisor import Prefork

__all__ = ["Prefork"]
