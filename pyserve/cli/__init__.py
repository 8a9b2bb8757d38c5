"""The ``pyserve`` command.

* :mod:`pyserve.cli.command`: the argument parser and :func:`~pyserve.cli.command.main`;
* :mod:`pyserve.cli.target`: TARGET imported and checked (handler classes or a factory);
* :mod:`pyserve.cli.build`: binds turned into server classes and sockets;
* :mod:`pyserve.cli.features`: the per-option mix-ins (TLS, PROXY, access log, ...);
* :mod:`pyserve.cli.run`: serving until a signal, draining;
* :mod:`pyserve.cli.exits`: the exit codes and the error that carries one.
"""

from pyserve.cli.command import main

__all__ = ["main"]
