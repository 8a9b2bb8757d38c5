"""Real peers for the tests, and the one rule for when one is missing.

A peer is software the tests talk to or run: a client or server we did not write
(haproxy, nginx, redis-server, redis-cli, redis-benchmark, openssl, socat, nc,
rdate, systemd-socket-activate, chromium), a build tool (make, cc) or a Python
package from an extra (redis-py, matplotlib, docutils). The project's rule:

* locally a missing peer *skips* its test with a reason naming the Debian package
  or the extra that provides it, so a contributor without it can still run the
  rest;
* under ``CI=true`` a missing peer *fails* the test: CI installs every peer
  (.ci/run, tox.ini), so a missing one there means the job lost a test silently.

Every such check goes through :func:`missing_peer`, by way of
:func:`require_binary`, :func:`needs_binary`, :func:`require_module` or
:func:`require_file`. Skips for other reasons (no ``fork()`` on this platform, no
IPv6 loopback, a docs-only environment) are not about peers and stay plain skips.

The rest of the module drives the TLS and PROXY protocol peers:

* :func:`make_certificates` runs Debian's ``openssl`` CLI to make a throw-away CA
  and a server certificate for 127.0.0.1/localhost in a temporary directory (no
  private key is ever committed).
* :class:`ProxyProcess` starts ``haproxy`` or ``nginx`` in the foreground with a
  generated configuration. Its listening socket is bound by the test (port 0) and
  *inherited* by the proxy (HAProxy's ``fd@N``, nginx's ``NGINX`` variable), so no
  port is guessed and the socket queues connections before the proxy has even
  started: readiness by construction. ``stop()`` ends that process by its PID.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, NoReturn, Optional, TypeVar

import pytest

NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


# Debian installs daemons (haproxy, nginx) in sbin, which a user's PATH may lack.
_SBIN = ("/usr/sbin", "/sbin")

Test = TypeVar("Test", bound=Callable[..., Any])


def in_ci() -> bool:
    """Whether this run is CI's (``CI=true``, the variable CI services set)."""
    return os.environ.get("CI") == "true"


def missing_peer(reason: str) -> NoReturn:
    """Skip the current test for ``reason``; under ``CI=true`` fail it instead."""
    if in_ci():
        pytest.fail(f"{reason}; under CI=true a missing peer is a failure "
                    "(.ci/run and tox.ini must install it)", pytrace=False)  # fmt: skip
    # allow_module_level: a test module may require a peer when it is imported.
    pytest.skip(reason, allow_module_level=True)


def require_binary(name: str, package: str) -> str:
    """The path of the program ``name`` (from Debian's ``package``)."""
    path = shutil.which(name)
    if path is None:
        path = next((p for p in (os.path.join(d, name) for d in _SBIN)
                     if os.access(p, os.X_OK)), None)  # fmt: skip
    if path is None:
        missing_peer(f"{name} is not installed (Debian package: {package})")
    return path


def needs_binary(name: str, package: str) -> Callable[[Test], Test]:
    """Decorate a test that runs ``name``: :func:`require_binary` before it runs."""

    def decorate(test: Test) -> Test:
        @functools.wraps(test)  # keeps the signature, so fixtures still arrive
        def checked(*args: Any, **kwargs: Any) -> Any:
            require_binary(name, package)
            return test(*args, **kwargs)

        return checked  # type: ignore[return-value]

    return decorate


def require_module(name: str, provider: str) -> ModuleType:
    """The imported module ``name``; ``provider`` says what installs it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing_peer(f"Python module {name} is not installed ({provider})")


def require_matplotlib() -> ModuleType:
    """matplotlib, the bench extra: tox installs it on GIL CPython only (tox.ini)."""
    if sys.implementation.name != "cpython" or sysconfig.get_config_var("Py_GIL_DISABLED"):
        # Not a missing peer: there is no wheel for PyPy, and the py313t
        # environment installs pure-Python packages only.
        pytest.skip("matplotlib is not installed on PyPy or free-threaded CPython (tox.ini)")
    return require_module("matplotlib", "the bench extra")


def require_file(path: str, package: str) -> str:
    """``path``, a file some peer needs (a plug-in module, say)."""
    if not os.path.exists(path):
        missing_peer(f"{path} is missing (Debian package: {package})")
    return path


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA certificate clients trust
    cert: Path  # the server's certificate chain
    key: Path  # the server's private key


def make_certificates(directory: Path) -> Certificates:
    """A CA and a server certificate valid for 127.0.0.1 and localhost."""
    openssl = require_binary("openssl", "openssl")
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    # Extensions that Python 3.13's VERIFY_X509_STRICT insists on.
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [openssl, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=pyserve test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
         "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext],
    ]  # fmt: skip
    for command in commands:
        subprocess.run(
            [str(part) for part in command], check=True, capture_output=True, timeout=30
        )
    return Certificates(ca=ca, cert=cert, key=key)


def listening_socket() -> socket.socket:
    """A loopback listener on a port the kernel picked, to hand to a proxy."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


class ProxyProcess:
    """A foreground HAProxy or nginx on an inherited loopback listener."""

    def __init__(self, argv: list[str], listener: socket.socket, env: dict[str, str],
                 log: Path) -> None:  # fmt: skip
        self.address: tuple[str, int] = listener.getsockname()
        self.log = log
        self._log_file = log.open("wb")
        try:
            self.process: Optional[subprocess.Popen[bytes]] = subprocess.Popen(
                argv,
                pass_fds=[listener.fileno()],
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
            )
        finally:
            # The proxy holds its own copy; ours must go, or a dead proxy would
            # leave connections queued forever instead of refused.
            listener.close()

    def output(self) -> str:
        """What the proxy wrote so far (for assertion messages)."""
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # both stop at once on TERM
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self._log_file.close()

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_haproxy(tmp_path: Path, backends: list[tuple[str, int]], server_options: str
                  ) -> ProxyProcess:  # fmt: skip
    """HAProxy in TCP mode, round-robin over ``backends`` with ``server_options``."""
    haproxy = require_binary("haproxy", "haproxy")
    listener = listening_socket()
    servers = "\n".join(
        f"    server s{index} {host}:{port} {server_options}"
        for index, (host, port) in enumerate(backends)
    )
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        f"""\
global
    maxconn 100
defaults
    mode tcp
    timeout connect 10s
    timeout client 30s
    timeout server 30s
frontend front
    bind fd@{listener.fileno()}
    unique-id-format pyserve-%ci-%cp
    default_backend back
backend back
    balance roundrobin
{servers}
"""
    )
    return ProxyProcess(
        [haproxy, "-db", "-f", str(config)], listener, {}, tmp_path / "haproxy.log"
    )


def start_nginx(tmp_path: Path, backend: tuple[str, int]) -> ProxyProcess:
    """nginx's stream module forwarding to ``backend`` with ``proxy_protocol on``."""
    nginx = require_binary("nginx", "nginx")
    require_file(NGINX_STREAM_MODULE, "libnginx-mod-stream")
    listener = listening_socket()
    host, port = listener.getsockname()
    config = tmp_path / "nginx.conf"
    config.write_text(
        f"""\
load_module {NGINX_STREAM_MODULE};
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log stderr info;
events {{ worker_connections 64; }}
stream {{
    server {{
        listen {host}:{port};
        proxy_pass {backend[0]}:{backend[1]};
        proxy_protocol on;
    }}
}}
"""
    )
    # nginx takes over listeners named in NGINX ("fd;fd;") that match a listen
    # directive's address: its binary-upgrade mechanism, used here to inherit ours.
    return ProxyProcess(
        [nginx, "-e", "stderr", "-p", str(tmp_path), "-c", str(config), "-g", "daemon off;"],
        listener,
        {"NGINX": f"{listener.fileno()};"},
        tmp_path / "nginx.log",
    )
