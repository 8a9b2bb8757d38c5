"""Small drop-in gaps in pyserve's API surface, each compared with the stdlib.

The broad walk over every class, method signature and class attribute of the
running interpreter's ``socketserver`` lives in tests/test_stdlib_contract.py;
these are the specific gaps it found, one behaviour per test.
"""

from __future__ import annotations

import inspect
import os
import socketserver

import pytest

import pyserve
from pyserve.net import sockopts

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def test_base_server_defines_server_activate() -> None:
    assert "server_activate" in vars(pyserve.BaseServer)
    server = pyserve.BaseServer(("127.0.0.1", 0), pyserve.BaseRequestHandler)
    assert server.server_activate() is None


def shape(function: object) -> list[tuple[str, object, object]]:
    """A signature without its annotations: names, kinds and defaults."""
    parameters = inspect.signature(function).parameters.values()  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in parameters]


def test_exit_takes_any_arguments_like_the_stdlib() -> None:
    theirs = shape(socketserver.BaseServer.__exit__)
    assert shape(pyserve.BaseServer.__exit__) == theirs
    assert [name for name, _, _ in theirs] == ["self", "args"]


@needs_fork
@pytest.mark.parametrize("name", ["ForkingMixIn", "ForkingTCPServer", "ForkingUDPServer"])
def test_forking_class_attributes_match_the_stdlib(name: str) -> None:
    ours, theirs = getattr(pyserve, name), getattr(socketserver, name)
    for attribute in ("timeout", "active_children", "max_children", "block_on_close"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute


def test_star_import_binds_no_module() -> None:
    namespace: dict[str, object] = {}
    exec("from pyserve import *", namespace)
    modules = [
        name
        for name, value in namespace.items()
        if inspect.ismodule(value) and name != "__builtins__"  # exec() adds it (PyPy: a module)
    ]
    assert modules == []


def test_sockopts_stays_reachable_as_an_attribute() -> None:
    assert pyserve.sockopts is sockopts
