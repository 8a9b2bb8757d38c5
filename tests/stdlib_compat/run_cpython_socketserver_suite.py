"""Run CPython's own ``test.test_socketserver`` with pyserve as ``socketserver``.

pyserve promises to be a drop-in for the stdlib module, so the strongest contract
we can hold it to is the stdlib's own test suite, unchanged, from the running
interpreter. This script installs pyserve as ``sys.modules["socketserver"]``
*before* the test module is imported, so every ``socketserver.X`` the suite
touches is pyserve's.

It runs in its own process (tests/test_stdlib_contract.py starts it) so the
module swap can never leak into the pytest process.

Exit status: 0 when the suite passes, 1 when it fails, 77 (after printing a
``SKIP:`` line) when this interpreter ships no ``test.test_socketserver``
(Debian's pypy3, for one).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import unittest
from pathlib import Path

import pyserve

EXIT_SKIP = 77


def find_suite() -> bool:
    """Whether this interpreter ships ``test.test_socketserver`` at all."""
    try:
        return importlib.util.find_spec("test.test_socketserver") is not None
    except ImportError:  # no ``test`` package at all
        return False


def main() -> int:
    if not find_suite():
        print(f"SKIP: {sys.implementation.name} {sys.version.split()[0]} "
              "ships no test.test_socketserver")
        return EXIT_SKIP

    sys.modules["socketserver"] = pyserve  # the swap: before the suite imports it
    suite = importlib.import_module("test.test_socketserver")

    # Prove the swap happened: the suite's global ``socketserver`` is pyserve.
    assert suite.socketserver is pyserve, (
        f"test.test_socketserver imported {suite.socketserver!r}, not pyserve"
    )
    print(f"socketserver under test: pyserve from {Path(pyserve.__file__).resolve()}")

    # MiscTestCase.test_all collects every object whose ``__module__`` equals
    # the literal string "socketserver" and compares that list with
    # ``socketserver.__all__``. pyserve's classes live in ``pyserve.*`` modules
    # (we do not fake ``__module__``), so under any other module name that list
    # is empty and the test cannot pass. tests/test_stdlib_contract.py checks
    # the same property of pyserve's ``__all__`` in its own terms instead.
    # Only a development stand-in that re-exports the stdlib's own classes
    # (``__module__ == "socketserver"``) would pass it; then it is left alone so
    # that no "unexpected success" hides the real result.
    if getattr(pyserve.TCPServer, "__module__", None) != "socketserver":
        misc = suite.MiscTestCase
        misc.test_all = unittest.expectedFailure(misc.test_all)

    tests = unittest.defaultTestLoader.loadTestsFromModule(suite)
    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=2)
    result = runner.run(tests)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
