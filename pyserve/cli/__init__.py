"""The ``pyserve`` command.

* :mod:`pyserve.cli.command`: the argument parser and :func:`~pyserve.cli.command.main`;
* :mod:`pyserve.cli.build`: targets and binds turned into server classes and sockets;
* :mod:`pyserve.cli.features`: the per-option mix-ins (TLS, PROXY, access log, ...);
* :mod:`pyserve.cli.run`: serving until a signal, draining, exit codes.
"""

from pyserve.cli.command import main

__all__ = ["main"]
