"""The ``pyserve`` command's exit codes, and the error that carries one.

Every mistake the command can diagnose is raised as :class:`CliError` with the
code it should exit with; :func:`pyserve.cli.command.main` prints the message as
one line on stderr and returns the code. The table in ``docs/cli.rst`` lists the
same codes (a test holds the two together).
"""

from __future__ import annotations

__all__ = [
    "EXIT_ADDRESS_IN_USE",
    "EXIT_CRASHED",
    "EXIT_FORCED",
    "EXIT_OK",
    "EXIT_PERMISSION",
    "EXIT_SOCKET",
    "EXIT_TARGET",
    "EXIT_TLS",
    "EXIT_USAGE",
    "CliError",
]

#: Stopped cleanly after SIGTERM/SIGINT.
EXIT_OK = 0
#: Stop forced: a second signal, or requests still running at the deadline.
EXIT_FORCED = 1
#: A bad command line (argparse's own choice, kept for ours).
EXIT_USAGE = 2
#: TARGET names nothing servable, or importing it failed or was interrupted.
EXIT_TARGET = 3
#: Address already in use.
EXIT_ADDRESS_IN_USE = 4
#: Permission denied (a privileged port, an unwritable socket path).
EXIT_PERMISSION = 5
#: The TLS certificate, key or CA cannot be loaded.
EXIT_TLS = 6
#: Any other socket error.
EXIT_SOCKET = 7
#: A server's loop failed unexpectedly.
EXIT_CRASHED = 8


class CliError(Exception):
    """A mistake the command reports in one line, with the exit code to return."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
