"""Every public name is in the API reference (docs/reference/*.rst, one page per package).

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

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference"
_DIRECTIVE = re.compile(r"^\.\. automodule:: (\S+)\n((?:   :.*\n)*)", re.MULTILINE)
_TOCTREE_ENTRY = re.compile(r"^   (\w+)$", re.MULTILINE)


def pages() -> list[Path]:
    """The reference's pages: its index and every page the index's toctree lists."""
    index = REFERENCE / "index.rst"
    listed = _TOCTREE_ENTRY.findall(index.read_text())
    return [index] + [REFERENCE / f"{name}.rst" for name in listed]


def automodules() -> dict[str, bool]:
    """Module name -> whether its members are documented (on any reference page)."""
    found: dict[str, bool] = {}
    for page in pages():
        for match in _DIRECTIVE.finditer(page.read_text()):
            found[match[1]] = found.get(match[1], False) or ":members:" in match[2]
    return found


def public_modules() -> list[str]:
    found = []
    for package in (pyserve, handlers):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                found.append(info.name)
    return sorted(found)


@pytest.mark.parametrize("module", public_modules())
def test_every_public_module_is_in_the_reference(module: str) -> None:
    assert module in automodules(), f"no docs/reference page has '.. automodule:: {module}'"


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


def test_every_reference_page_is_in_the_index() -> None:
    listed = set(pages())
    on_disk = set(REFERENCE.glob("*.rst"))
    assert on_disk == listed, f"not in docs/reference/index.rst's toctree: {on_disk - listed}"


def test_each_module_is_documented_on_one_page_only() -> None:
    seen: dict[str, str] = {}
    for page in pages():
        for match in _DIRECTIVE.finditer(page.read_text()):
            assert match[1] not in seen, f"{match[1]} on {seen.get(match[1])} and {page.name}"
            seen[match[1]] = page.name
