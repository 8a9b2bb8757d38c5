"""No shell session, log line, table or diagram in the docs is highlighted as Python.

A literal block written with ``::`` is highlighted in the language in effect:
the last ``.. highlight::`` directive above it on the page, else Sphinx's
default, Python. Pygments then colours a table of figures or a log line as if it
were code (a quote in "pyserve's" opens a string, ``=`` and numbers light up),
which a reader takes for code. So every such block under the Python default must
be Python (or a ``>>>`` session); anything else says what it is, with
``.. highlight:: text`` for the page or a ``.. code-block:: console``/``text``.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PYTHON = {"python", "python3", "py", "default"}
PAGES = sorted(
    path
    for path in [*DOCS.rglob("*.rst"), *DOCS.rglob("*.inc")]
    if "_build" not in path.relative_to(DOCS).parts
)


def python_literal_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, dedented text) of each ``::`` block highlighted as Python."""
    lines = text.splitlines()
    language = "python"
    found: list[tuple[int, str]] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        directive = re.match(r"\s*\.\. highlight:: (\S+)", line)
        if directive:
            language = directive[1]
        if line.rstrip().endswith("::") and not re.match(r"\s*\.\. ", line):
            indent = len(line) - len(line.lstrip())
            end = index + 1
            while end < len(lines) and (
                not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
            ):
                end += 1
            block = textwrap.dedent("\n".join(lines[index + 1 : end])).strip("\n")
            if language in PYTHON and block:
                found.append((index + 1, block))
            index = end
            continue
        index += 1
    return found


def test_the_scan_finds_python_blocks_and_skips_text_pages() -> None:
    sample = "Run it::\n\n    print(1)\n\n.. highlight:: text\n\nA table::\n\n    a  1\n"
    assert python_literal_blocks(sample) == [(1, "print(1)")]


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(DOCS)))
def test_blocks_highlighted_as_python_are_python(page: Path) -> None:
    not_python = []
    for number, block in python_literal_blocks(page.read_text()):
        if block.lstrip().startswith(">>>"):
            continue  # a doctest session
        try:
            ast.parse(block)
        except SyntaxError:
            not_python.append(f"line {number}: {block.splitlines()[0][:60]}")
    assert not_python == []
