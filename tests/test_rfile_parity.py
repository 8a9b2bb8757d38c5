"""``StreamRequestHandler.rfile`` offers what the stdlib's ``socket.makefile('rb')`` does.

The stdlib's ``rfile`` is a ``BufferedReader`` over ``socket.SocketIO``. pyserve
reads faster through a raw layer of its own (see :mod:`pyserve.request`), but
code that inspects ``rfile`` (``rfile.name``, ``rfile.mode``, ``rfile.raw``...)
must find the same attributes with the same meaning. The list of names is not
written out here: it is read from the running interpreter's own makefile object.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
from conftest import TIMEOUT

import pyserve
from pyserve.testing import serving


def public_names(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def stdlib_rfile_facts() -> dict[str, Any]:
    """What the stdlib's rfile says about itself, on a socket of its own."""
    left, right = socket.socketpair()
    with left, right, left.makefile("rb") as rfile:
        return {
            "names": public_names(rfile),
            "raw_names": public_names(rfile.raw),
            "mode": rfile.mode,
            "raw_mode": rfile.raw.mode,
            "name_is_fileno": rfile.name == left.fileno(),
            "answers": (rfile.readable(), rfile.writable(), rfile.seekable(), rfile.isatty()),
        }


SETTINGS = [
    pytest.param({}, id="defaults"),
    pytest.param({"max_line_length": 100}, id="max_line_length"),
    pytest.param({"idle_timeout": 30.0}, id="idle_timeout"),
    pytest.param({"request_deadline": 30.0}, id="request_deadline"),
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_rfile_has_every_attribute_of_the_stdlib_rfile(settings: dict[str, Any]) -> None:
    facts: dict[str, Any] = {}
    done = threading.Event()

    class Inspect(pyserve.StreamRequestHandler):
        def handle(self) -> None:
            try:
                self.inspect()
            finally:
                done.set()

        def inspect(self) -> None:
            rfile: Any = self.rfile
            facts["names"] = public_names(rfile)
            facts["raw_names"] = public_names(rfile.raw)
            facts["mode"] = rfile.mode
            facts["raw_mode"] = rfile.raw.mode
            facts["name_is_fileno"] = rfile.name == self.connection.fileno()
            facts["answers"] = (
                rfile.readable(), rfile.writable(), rfile.seekable(), rfile.isatty()
            )

    handler = type("Inspect", (Inspect,), dict(settings))
    server = pyserve.TCPServer(("127.0.0.1", 0), handler)
    with serving(server), socket.create_connection(server.server_address, timeout=TIMEOUT):
        assert done.wait(TIMEOUT)
    expected = stdlib_rfile_facts()
    assert expected["names"] - facts["names"] == set()
    assert expected["raw_names"] - facts["raw_names"] == set()
    for key in ("mode", "raw_mode", "name_is_fileno", "answers"):
        assert facts[key] == expected[key], key
