"""The cookbook's configuration files pass their own tools' checks.

Each file in docs/cookbook.rst is a ``code-block`` whose ``:caption:`` is the
file's name. This test extracts them and runs the tool that will read them in
production: ``haproxy -c`` (with ``-dW``, so a warning such as "missing
timeouts" fails too), ``nginx -t`` and ``systemd-analyze verify``. A missing
tool skips locally and fails under ``CI=true`` (.ci/run installs haproxy, nginx,
libnginx-mod-stream and systemd).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from peers import require_binary, require_file

COOKBOOK = Path(__file__).resolve().parent.parent / "docs" / "cookbook.rst"
_BLOCK = re.compile(
    r"^\.\. code-block:: \S+\n   :caption: (?P<name>\S+)\n\n(?P<body>(?:(?:   .*)?\n)+)",
    re.MULTILINE,
)
TIMEOUT = 60


def config_files() -> dict[str, str]:
    """Caption (the file's name) -> the file's text, for every captioned block."""
    files = {}
    for match in _BLOCK.finditer(COOKBOOK.read_text()):
        lines = match["body"].splitlines()
        files[match["name"]] = "\n".join(line[3:] for line in lines).strip() + "\n"
    return files


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def test_the_cookbook_has_the_three_recipes() -> None:
    assert set(config_files()) == {
        "haproxy.cfg",
        "nginx.conf",
        "/etc/systemd/system/echo.socket",
        "/etc/systemd/system/echo.service",
    }


def test_haproxy_config_is_valid_without_warnings(tmp_path: Path) -> None:
    haproxy = require_binary("haproxy", "haproxy")
    config = tmp_path / "haproxy.cfg"
    config.write_text(config_files()["haproxy.cfg"])
    done = run([haproxy, "-c", "-dW", "-f", str(config)])
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "WARNING" not in output
    assert "ALERT" not in output


def test_haproxy_config_is_the_one_a_drain_can_use() -> None:
    """Checks take a draining backend out; redispatch and retries send the
    connection to the other backend; every server line sends the PROXY header."""
    config = config_files()["haproxy.cfg"]
    servers = [line.split() for line in config.splitlines() if line.strip().startswith("server ")]
    assert len(servers) >= 2
    for server in servers:
        assert "check" in server
        assert "send-proxy-v2" in server
    assert re.search(r"^\s*option redispatch\b", config, re.MULTILINE)
    assert re.search(r"^\s*retries \d+", config, re.MULTILINE)
    for timeout in ("connect", "client", "server"):
        assert re.search(rf"^\s*timeout {timeout} \S+", config, re.MULTILINE)


def test_nginx_config_is_valid(tmp_path: Path) -> None:
    nginx = require_binary("nginx", "nginx")
    module = re.search(r"^load_module (\S+);", config_files()["nginx.conf"], re.MULTILINE)
    assert module is not None, "a standalone nginx.conf must load the stream module"
    require_file(module[1], "libnginx-mod-stream")
    config = tmp_path / "nginx.conf"
    config.write_text(config_files()["nginx.conf"])
    # Everything nginx writes goes to the temporary directory, never /var or /run.
    done = run([nginx, "-t", "-c", str(config), "-p", str(tmp_path),
                "-g", f"pid {tmp_path}/nginx.pid; error_log stderr;"])
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "test is successful" in output
    assert "[warn]" not in output
    assert "[emerg]" not in output


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze", "systemd")
    files = config_files()
    # ExecStart must name an executable that exists: a stand-in for pyserve's
    # script at a path of this test's own.
    stand_in = tmp_path / "bin" / "pyserve"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    service = files["/etc/systemd/system/echo.service"]
    exec_start = re.search(r"^ExecStart=(\S+)", service, re.MULTILINE)
    assert exec_start is not None
    assert exec_start[1].startswith("/"), "systemd needs an absolute path"
    (tmp_path / "echo.service").write_text(service.replace(exec_start[1], str(stand_in)))
    (tmp_path / "echo.socket").write_text(files["/etc/systemd/system/echo.socket"])
    done = run([analyze, "verify", str(tmp_path / "echo.socket"), str(tmp_path / "echo.service")])
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "echo.s" not in output, output  # no complaint about either unit


def test_systemd_verify_rejects_an_execstart_that_does_not_exist(tmp_path: Path) -> None:
    """The check above can fail: the old recipe's /usr/bin/pyserve is refused."""
    analyze = require_binary("systemd-analyze", "systemd")
    files = config_files()
    service = re.sub(r"^ExecStart=\S+", f"ExecStart={tmp_path}/missing/pyserve",
                     files["/etc/systemd/system/echo.service"], flags=re.MULTILINE)
    (tmp_path / "echo.service").write_text(service)
    (tmp_path / "echo.socket").write_text(files["/etc/systemd/system/echo.socket"])
    done = run([analyze, "verify", str(tmp_path / "echo.socket"), str(tmp_path / "echo.service")])
    assert done.returncode != 0
    assert "not executable" in done.stdout + done.stderr
