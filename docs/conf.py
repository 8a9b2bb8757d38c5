"""Sphinx configuration for pyserve's documentation.

The docs are built by ``tox -e docs`` with ``-W -n``: every warning, including
every unresolvable cross-reference, fails the build.  autodoc imports the
*installed* pyserve (tox installs it into the docs environment), so what is
documented is what users get.
"""

from __future__ import annotations

import builtins
import re
import sys
from importlib.metadata import version as _installed_version

project = "pyserve"
author = "pyserve developers"
copyright = "pyserve developers"
release = _installed_version("pyserve")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    # intersphinx is left out on purpose for now: it fetches Python's objects.inv
    # over the network, and our build machines only reach package registries.
    # When a local or cached inventory is available, add "sphinx.ext.intersphinx"
    # with intersphinx_mapping = {"python": ("https://docs.python.org/3", None)}
    # and delete the stdlib part of nitpick_ignore_regex below.
]

exclude_patterns = ["_build"]

# Without intersphinx, references to the standard library (socket.socket,
# typing.Optional, int, ...) cannot resolve.  Nitpicky mode stays on for
# everything else, so a broken reference to pyserve's own names still fails.
_stdlib_modules: set[str] = set(getattr(sys, "stdlib_module_names", ()))
_external_roots = sorted(
    _stdlib_modules | {"typing_extensions", "pytest", "_pytest"} | set(dir(builtins)),
)
_external_pattern = "|".join(map(re.escape, _external_roots))
nitpick_ignore_regex = [
    (r"py:.*", rf"(?:{_external_pattern})(?:\..+)?"),
    # Private helper classes show up as bases ("Bases: _UnixSocketFile"); they are
    # documented in their module's source, not in the reference.
    (r"py:class", r"pyserve\.\w+\._\w+"),
]

autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}

html_theme = "alabaster"
html_title = f"pyserve {release}"

# Doctests in the docs run against the installed package.
doctest_global_setup = "import pyserve"
