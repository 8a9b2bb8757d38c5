"""``import pyserve`` loads the core only; the extras load on first use (PEP 562).

A process that imports pyserve should start about as fast as one that imports
socketserver (bench/import_time.py measures the ratio; timing lives in bench/,
not in tests). These tests pin what makes that possible: which modules a bare
``import pyserve`` loads, and that every public name still resolves, appears in
``dir()`` and ``__all__``, and is the very object its home module defines.
"""

from __future__ import annotations

import importlib
import json
import os
import socketserver
import subprocess
import sys
from pathlib import Path

import pytest

import pyserve

ROOT = Path(pyserve.__file__).resolve().parent.parent

# Modules a bare `import pyserve` must not load: each is paid for by its users only.
EXTRAS = [
    "ssl",
    "ipaddress",
    "pyserve.net.tls",
    "pyserve.net.proxy",
    "pyserve.net.proxy_header",
    "pyserve.net.multicast",
    "pyserve.prefork",
    "pyserve.pool",
    "pyserve.multiplex",
    "pyserve.servers",
    "pyserve.cli",
    "handlers",
]


def _modules_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", probe],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def test_import_pyserve_loads_no_extras() -> None:
    # What the interpreter loads by itself (site, .pth files) does not count.
    baseline = set(_modules_after("pass"))
    loaded = set(_modules_after("import pyserve")) - baseline
    assert "pyserve.base" in loaded
    assert [name for name in EXTRAS if name in loaded] == []


def test_an_extra_loads_on_first_use_only() -> None:
    loaded = _modules_after("import pyserve\npyserve.ThreadPoolTCPServer")
    assert "pyserve.pool.workers" in loaded
    assert "pyserve.prefork" not in loaded
    assert "pyserve.net.tls" not in loaded


@pytest.mark.parametrize("name", pyserve.__all__)
def test_every_public_name_resolves_to_its_home_object(name: str) -> None:
    module = importlib.import_module("pyserve")
    value = getattr(module, name)
    assert value is not None
    assert name in dir(pyserve)
    home = getattr(value, "__module__", None)
    if home is not None and home.startswith("pyserve"):
        assert getattr(importlib.import_module(home), name, value) is value


def test_from_import_of_a_lazy_name_in_a_fresh_process() -> None:
    loaded = _modules_after("from pyserve import TLSMixIn, Prefork, sockopts, ProxyHeader")
    assert "pyserve.net.tls" in loaded
    assert "pyserve.net.sockopts" in loaded


def test_every_stdlib_name_is_there_under_import_pyserve_as_socketserver() -> None:
    stdlib = set(socketserver.__all__)
    assert stdlib <= set(pyserve.__all__)
    assert stdlib <= set(dir(pyserve))
    for name in stdlib:
        assert isinstance(getattr(pyserve, name), type)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NoSuchServer'"):
        pyserve.NoSuchServer  # noqa: B018
