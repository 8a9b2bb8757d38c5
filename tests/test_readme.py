"""The README, read as a newcomer would: its install lines, its example, its commands.

Each test reads README.md itself (and the docs' install lines), so the file
cannot drift from what works: the example is extracted from its code block,
saved as ``myapp.py`` and served by the command exactly as the README shows.
"""

from __future__ import annotations

import configparser
import re
import shlex
import signal
import socket
from pathlib import Path

import pytest
from test_cli import DEADLINE, Command, host_port

ROOT = Path(__file__).resolve().parent.parent  # the checkout: README, docs, setup.cfg
README = ROOT / "README.md"


def _readme() -> str:
    if not README.exists():
        pytest.skip("README.md is not installed with the package (source checkout only)")
    return README.read_text()


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def _distribution_name() -> str:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config["metadata"]["name"]


def test_the_distribution_is_not_the_unrelated_pyserve_on_pypi() -> None:
    # "pyserve" on PyPI is another project (2013, "Serve local dirs").
    _readme()
    assert _distribution_name() not in ("pyserve", "pyserve3", "pyserver")


def test_every_install_line_names_this_distribution() -> None:
    name = _distribution_name()
    pages = [README, *sorted((ROOT / "docs").glob("*.rst"))]
    lines = [
        line
        for page in pages
        if page.exists()
        for line in page.read_text().splitlines()
        if "pip install" in line
    ]
    assert lines
    for line in lines:
        for words in re.findall(r"pip install ([^`&#\n]+)", line):
            for word in shlex.split(words):
                if word.startswith("-"):
                    continue
                base = re.split(r"[\[<>=]", word)[0]
                # Our package (by name or a checkout), or a named optional contender.
                assert base in (name, ".", "") or base in ("uvloop", "gevent"), line


def test_the_example_runs_under_the_command_as_written(tmp_path: Path) -> None:
    [example] = [block for block in _blocks(_readme(), "python") if "class Echo" in block]
    (tmp_path / "myapp.py").write_text(example)
    command = Command("myapp:Echo", "--bind", "127.0.0.1:0", cwd=tmp_path)
    try:
        [address] = command.addresses()  # not the example's own server on 9999
        with socket.create_connection(host_port(address), timeout=DEADLINE) as client:
            client.sendall(b"hello\n")
            with client.makefile("rb") as reader:  # closed now, not when collected (PyPy)
                assert reader.readline() == b"hello\n"
        command.process.send_signal(signal.SIGINT)
        code, _, err = command.finish()
        assert code == 0, err
        assert "Traceback" not in err
    finally:
        if command.process.poll() is None:
            command.process.kill()
        command.finish()


def test_the_readme_commands_run(tmp_path: Path) -> None:
    """Each command in the README's console blocks parses and starts (port 0)."""
    [example] = [block for block in _blocks(_readme(), "python") if "class Echo" in block]
    (tmp_path / "myapp.py").write_text(example)
    commands = [
        line.split("#")[0].strip()
        for block in _blocks(_readme(), "console")
        for line in block.splitlines()
        if line.startswith("pyserve ")
    ]
    assert commands
    for line in commands:
        words = shlex.split(line)[1:]
        if "--tls-cert" in words:
            continue  # needs certificate files (test_cli covers TLS)
        words = [_port_zero(word, tmp_path) for word in words]
        command = Command(*words, cwd=tmp_path)
        try:
            addresses = command.addresses(words.count("--bind"))
            assert all(not address.endswith(":0") for address in addresses)
            assert command.stop() == 0, command.stderr
        finally:
            if command.process.poll() is None:
                command.process.kill()
            command.finish()


def _port_zero(word: str, tmp_path: Path) -> str:
    if word.startswith("unix:"):
        return f"unix:{tmp_path / 'readme.sock'}"
    return re.sub(r":\d+$", ":0", word) if re.search(r"[\]\d]:\d+$", word) else word
