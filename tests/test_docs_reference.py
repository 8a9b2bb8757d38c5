"""Every public name is in the API reference (docs/reference.rst).

autodoc documents, for each ``.. automodule:: M`` with ``:members:``, the names in
``M.__all__``. So a public name is in the reference when some module listed there
with ``:members:`` exports it, and a public module is in it when it is listed.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import types
from pathlib import Path

import pytest

import handlers
import pyserve

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference.rst"
_DIRECTIVE = re.compile(r"^\.\. automodule:: (\S+)\n((?:   :.*\n)*)", re.MULTILINE)


def automodules() -> dict[str, bool]:
    """Module name -> whether its members are documented."""
    text = REFERENCE.read_text()
    return {match[1]: ":members:" in match[2] for match in _DIRECTIVE.finditer(text)}


def public_modules() -> list[str]:
    found = []
    for package in (pyserve, handlers):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                found.append(info.name)
    return sorted(found)


@pytest.mark.parametrize("module", public_modules())
def test_every_public_module_is_in_the_reference(module: str) -> None:
    assert module in automodules(), f"docs/reference.rst lacks '.. automodule:: {module}'"


@pytest.mark.parametrize("name", sorted(pyserve.__all__))
def test_every_public_name_is_documented_by_a_module_in_the_reference(name: str) -> None:
    exported = getattr(pyserve, name)
    if isinstance(exported, types.ModuleType):  # a submodule exported by name
        assert exported.__name__ in automodules()
        return
    exporters = [
        module
        for module, with_members in automodules().items()
        if with_members and module != "pyserve"
        and name in getattr(importlib.import_module(module), "__all__", ())
    ]
    assert exporters, f"pyserve.{name} is in no module documented with :members:"


def test_every_documented_module_exists() -> None:
    for module in automodules():
        importlib.import_module(module)
