"""pytest fixtures for testing pyserve servers and handlers (registered automatically).

Installing pyserve registers this plugin through the ``pytest11`` entry point, so
these fixtures are available in any test suite:

``serve``
    ``serve(server)`` runs the server (see :func:`pyserve.testing.serving`) until the
    test ends, returns it, and fails the test if a thread or socket leaked::

        def test_echo(serve):
            server = serve(ThreadingTCPServer(("127.0.0.1", 0), Echo))
            with socket.create_connection(server.server_address, timeout=5) as c:
                ...

``handler_harness``
    The :class:`pyserve.testing.StreamHarness` class, for driving one handler over
    a socket pair with no port bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any, Callable, TypeVar

import pytest

from pyserve.base import BaseServer
from pyserve.testing import StreamHarness, serving

ServerT = TypeVar("ServerT", bound=BaseServer)


@pytest.fixture
def serve() -> Iterator[Callable[..., Any]]:
    """Start servers for this test; each is shut down and leak-checked at teardown."""
    with ExitStack() as stack:

        def start(server: ServerT, **options: Any) -> ServerT:
            return stack.enter_context(serving(server, **options))

        yield start


@pytest.fixture
def handler_harness() -> type[StreamHarness]:
    """The :class:`~pyserve.testing.StreamHarness` class."""
    return StreamHarness
