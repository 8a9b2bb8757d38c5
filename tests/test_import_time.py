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
import logging
import os
import pickle
import socketserver
import subprocess
import sys
from pathlib import Path
from typing import Any

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


# Heavy stdlib modules a bare `import pyserve` must not load (socketserver loads
# none of them): together they made a fresh interpreter start 1.8x slower.
HEAVY_STDLIB = ["typing", "typing_extensions", "logging", "traceback", "tempfile", "re",
                "shutil", "random", "importlib", "signal", "contextlib", "struct",
                "fcntl"]  # fmt: skip


def _new_modules_in_a_clean_interpreter(module: str) -> set[str]:
    """What ``import module`` adds to sys.modules in ``python -S -I`` (no site, no .pth).

    Site and .pth files may load typing & co. before any import of ours, which
    would hide a regression; -S -I starts bare, and the difference before/after
    counts only what the import itself loads.
    """
    probe = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); before = set(sys.modules)\n"
        f"import {module}\n"
        "loaded = sorted(set(sys.modules) - before)\n"
        "import json; print(json.dumps(loaded))"  # json loads re: counted after
    )
    result = subprocess.run(
        [sys.executable, "-S", "-I", "-c", probe],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def test_import_pyserve_loads_no_heavy_stdlib_module() -> None:
    loaded = _new_modules_in_a_clean_interpreter("pyserve")
    assert "pyserve.base" in loaded
    # PyPy's threading loads traceback (and re) for socketserver too: not ours to save.
    theirs = _new_modules_in_a_clean_interpreter("socketserver")
    assert sorted(loaded & set(HEAVY_STDLIB) - theirs) == []


def test_import_pyserve_loads_nothing_from_the_stdlib_beyond_what_socketserver_loads() -> None:
    ours = {name for name in _new_modules_in_a_clean_interpreter("pyserve")
            if name != "pyserve" and not name.startswith("pyserve.")}  # fmt: skip
    theirs = _new_modules_in_a_clean_interpreter("socketserver")
    # __future__: `from __future__ import annotations` imports it (a few lines).
    assert sorted(ours - theirs - {"__future__"}) == []


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


def test_the_records_are_named_tuples_with_typed_fields_and_defaults() -> None:
    # Built by pyserve._typing_free at run time, not by typing.NamedTuple.
    stats = pyserve.Stats(active=1)
    assert stats == (1, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert stats._replace(peak=3).peak == 3
    assert pyserve.Stats._fields[:3] == ("active", "queued", "peak")
    assert pyserve.Stats._field_defaults["drained"] == 0
    assert pyserve.Stats.__annotations__["active"] == "int"
    assert "snapshot" in str(pyserve.Stats.__doc__)
    assert pickle.loads(pickle.dumps(stats)) == stats
    assert pyserve.Stats.__module__ == "pyserve.lifecycle.events"
    report = pyserve.DrainReport(completed=1, forced=0, stragglers=(), elapsed=0.5)
    assert report._asdict() == {"completed": 1, "forced": 0, "stragglers": (), "elapsed": 0.5}
    with pytest.raises(TypeError):
        pyserve.DrainReport(1)  # type: ignore[call-arg]  # fields without defaults


def test_a_handler_class_is_subscriptable_and_its_alias_subclassable() -> None:
    class Handler(pyserve.StreamRequestHandler["pyserve.TCPServer"]):
        pass

    alias: Any = pyserve.BaseRequestHandler[pyserve.TCPServer]
    assert alias.__origin__ is pyserve.BaseRequestHandler
    assert issubclass(Handler, pyserve.StreamRequestHandler)
    assert issubclass(Handler, socketserver.BaseRequestHandler) is False  # our own base


def test_the_deferred_loggers_are_the_named_loggers(caplog: pytest.LogCaptureFixture) -> None:
    from pyserve import base, explain  # noqa: PLC0415 - the modules under test

    with caplog.at_level(logging.DEBUG, logger="pyserve"):
        base.logger.debug("through the deferred logger %d", 7)
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("pyserve", "through the deferred logger 7")
    ]
    assert caplog.records[0].filename == "test_import_time.py"  # the caller, not logs.py
    assert base.logger.name == "pyserve"
    assert base.logger.getEffectiveLevel() == logging.getLogger("pyserve").getEffectiveLevel()
    assert explain.logger.name == "pyserve.explain"
