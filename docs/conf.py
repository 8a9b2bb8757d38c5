"""Sphinx configuration for pyserve's documentation.

The docs are built by ``tox -e docs`` with ``-W -n``: every warning, including
every unresolvable cross-reference, fails the build.  autodoc imports the
*installed* pyserve (tox installs it into the docs environment), so what is
documented is what users get.
"""

from __future__ import annotations

import builtins
import os
import re
import sys
from importlib.metadata import version as _installed_version
from typing import Any, Generic

project = "pyserve"
author = "pyserve developers"
copyright = "pyserve developers"
# The distribution is pyserve-socketserver ("pyserve" on PyPI is another project).
release = _installed_version("pyserve-socketserver")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.graphviz",
    "sphinx.ext.inheritance_diagram",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build"]

# intersphinx without network: the build machines reach only package registries,
# so Python's inventory comes from Debian's python3-doc package (installed by
# .ci/run), which links to docs.python.org.  Without it, references to the
# standard library cannot resolve and are ignored below instead.
_PYTHON_INVENTORY = "/usr/share/doc/python3/html/objects.inv"
_have_python_inventory = os.path.exists(_PYTHON_INVENTORY)
intersphinx_mapping = (
    {"python": ("https://docs.python.org/3", _PYTHON_INVENTORY)}
    if _have_python_inventory
    else {}
)
intersphinx_disabled_reftypes = []

# Third-party names have no inventory here (typing_extensions, pytest); with no
# Python inventory either, every stdlib name joins them.  Nitpicky mode stays on
# for everything else, so a broken reference to pyserve's own names still fails.
_external_roots = {"typing_extensions", "pytest", "_pytest"}
if not _have_python_inventory:
    _external_roots |= set(getattr(sys, "stdlib_module_names", ())) | set(dir(builtins))
_external_pattern = "|".join(map(re.escape, sorted(_external_roots)))
nitpick_ignore_regex = [
    (r"py:.*", rf"(?:{_external_pattern})(?:\..+)?"),
    # Private helper classes show up as bases ("Bases: _UnixSocketFile"); they are
    # documented in their module's source, not in the reference.
    (r"py:class", r"(?:pyserve|handlers)(?:\.\w+)+\._\w+"),
    # Standard-library names that Python's own inventory does not list.
    (r"py:class", r"re\.Pattern"),
    # pyserve's core imports typing names for the type checker only (import time:
    # see pyserve/_typing_free.py), so autodoc reads its annotations as text; these
    # aliases and type variables exist for the checker alone and cannot be linked.
    (r"py:class", r"SocketOption|_ServerT"),
    # ... and the run-time stand-ins for typing's Generic and TypeVar.
    (r"py:class", r"pyserve\._typing_free\.\w+"),
]


def _typing_bases(app: Any, name: str, obj: Any, options: Any, bases: list[Any]) -> None:
    """Show typing's Generic where pyserve's run-time stand-in for it is a base."""
    for index, base in enumerate(bases):
        origin = getattr(base, "__origin__", base)
        if getattr(origin, "__module__", None) == "pyserve._typing_free":
            bases[index] = Generic


def setup(app: Any) -> None:
    app.connect("autodoc-process-bases", _typing_bases)

# Signatures show the annotations; "description" moves them into the parameter
# list, which keeps long signatures readable.
autodoc_typehints = "description"

# Diagrams are rendered by Graphviz's `dot` (Debian package graphviz), offline.
graphviz_output_format = "svg"
inheritance_graph_attrs = {"rankdir": "TB", "size": '"8.0, 12.0"'}

autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}

# furo: a wide, responsive column, so code blocks and the ASCII diagrams of the
# tutorial and internals (up to about 100 characters) fit without scrolling
# sideways; alabaster's fixed 940 px column hid everything past ~70 characters.
html_theme = "furo"
html_title = f"pyserve {release}"
# A wider article on wide screens (the reason is in the file).
html_static_path = ["_static"]
html_css_files = ["pyserve.css"]

# Doctests in the docs run against the installed package.
doctest_global_setup = "import pyserve"
