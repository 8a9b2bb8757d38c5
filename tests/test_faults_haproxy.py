"""A backend drained under load behind HAProxy loses no request.

Two ``pyserve echo`` processes sit behind HAProxy (TCP mode, health checks,
``retries`` and ``option redispatch``). Clients send requests through HAProxy in
a bounded loop while one backend is stopped with SIGTERM mid-load. A graceful
drain closes the listener first (DESIGN: "stop accepting — close the listener,
so the kernel completes no handshake that nobody will serve and a load balancer
retries elsewhere"), so HAProxy's next connect() to that backend is refused and
it redispatches the request to the other one: not one request may fail. A long
request on the stopped backend keeps its drain going while the load goes on. A
backend whose listener stayed open during its drain would let the kernel accept
connections it then drops, which HAProxy in TCP mode cannot retry.

It runs twice: with this file's own minimal configuration, and with the
cookbook's ``haproxy.cfg`` recipe exactly as docs/cookbook.rst shows it (only the
listening and backend addresses replaced, and the backends started with
``--proxy-protocol v2``, as the recipe's ``send-proxy-v2`` needs), so the recipe
a user copies is the one that survives a drain.

HAProxy is Debian's ``haproxy``: skipped locally without it, a failure under
``CI=true`` (CI installs it, see .ci/run).
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from faults import HOST, TIMEOUT, peer_process_has_read, wait_until
from peers import ProxyProcess, listening_socket, require_binary
from test_cli import Command, host_port
from test_docs_cookbook import config_files

from pyserve.cli import command as cli

CLIENTS = 3
REQUESTS_BEFORE_STOP = 60  # per client, before the backend is stopped
REQUESTS_AFTER_STOP = 120  # per client, while and after it drains
LOAD_DEADLINE = 60.0  # seconds for the whole load, a bound not an expectation


# A PROXY protocol v2 header with the LOCAL command: "no client address, the
# proxy itself speaks" (what HAProxy's own health checks send).
PROXY_V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n" + b"\x20\x00\x00\x00"


def _cookbook_config(listener: socket.socket, backends: list[tuple[str, int]]) -> str:
    """The cookbook's haproxy.cfg, listening on ``listener``, serving ``backends``."""
    recipe = config_files()["haproxy.cfg"]
    config, bound = re.subn(r"^(\s*bind )\S+", rf"\g<1>fd@{listener.fileno()}", recipe, flags=re.M)
    assert bound == 1, recipe
    recipe_backends = re.findall(r"^\s*server \S+ (\S+)", config, flags=re.M)
    assert len(recipe_backends) == len(backends), recipe
    for written, (host, port) in zip(recipe_backends, backends):
        config = config.replace(f" {written} ", f" {host}:{port} ", 1)
    return config


def _start_haproxy(
    tmp_path: Path, backends: list[tuple[str, int]], recipe: bool = False
) -> ProxyProcess:
    haproxy = require_binary("haproxy", "haproxy")
    listener = listening_socket()
    if recipe:
        config = tmp_path / "haproxy.cfg"
        config.write_text(_cookbook_config(listener, backends))
        return ProxyProcess(
            [haproxy, "-db", "-f", str(config)], listener, {}, tmp_path / "haproxy.log"
        )
    servers = "\n".join(
        f"    server s{index} {host}:{port} check inter 200ms fall 1 rise 2"
        for index, (host, port) in enumerate(backends)
    )
    config = tmp_path / "haproxy.cfg"
    # retries + redispatch: a refused connect is retried on the other server.
    config.write_text(
        f"""\
global
    maxconn 200
defaults
    mode tcp
    retries 3
    option redispatch
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend front
    bind fd@{listener.fileno()}
    default_backend back
backend back
    balance roundrobin
{servers}
"""
    )
    return ProxyProcess(
        [haproxy, "-db", "-f", str(config)], listener, {}, tmp_path / "haproxy.log"
    )


_LINE_ECHO = """
import pyserve


class LineEcho(pyserve.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
"""


def _line_echo_backends(tmp_path: Path, recipe: bool) -> list[Command]:
    """Two ``pyserve`` commands serving a line echo (behind PROXY v2 for the recipe).

    A line protocol: half a line is a request in progress, which a drain waits
    for (pyserve's echo answers every byte at once, so it is never mid-request).
    """
    proxy_options = ["--proxy-protocol", "v2", "--trusted-proxy", HOST] if recipe else []
    (tmp_path / "lineecho.py").write_text(_LINE_ECHO)
    return [
        Command(
            "lineecho:LineEcho",
            "--bind",
            f"{HOST}:0",
            "--drain-timeout",
            "30",
            *proxy_options,
            cwd=tmp_path,
        )
        for _ in range(2)
    ]


def _request(address: tuple[str, int], payload: bytes) -> bytes:
    with socket.create_connection(address, timeout=TIMEOUT) as client:
        client.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = client.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


@pytest.mark.parametrize("recipe", [False, True], ids=["minimal-config", "cookbook-recipe"])
def test_backend_drained_under_load_behind_haproxy_loses_no_request(
    tmp_path: Path, recipe: bool
) -> None:
    require_binary("haproxy", "haproxy")  # before the backends start
    backends = _line_echo_backends(tmp_path, recipe)
    try:
        addresses = [host_port(backend.addresses()[0]) for backend in backends]
        with _start_haproxy(tmp_path, addresses, recipe) as proxy:
            failures: list[str] = []
            done = [0] * CLIENTS
            stop_now = threading.Event()
            deadline = time.monotonic() + LOAD_DEADLINE

            def load(index: int) -> None:
                for number in range(REQUESTS_BEFORE_STOP + REQUESTS_AFTER_STOP):
                    if time.monotonic() > deadline:
                        failures.append(f"client {index}: load deadline passed")
                        return
                    payload = b"client %d request %d\n" % (index, number)
                    try:
                        answer = _request(proxy.address, payload)
                    except OSError as exc:
                        answer = repr(exc).encode()
                    if answer != payload:
                        failures.append(f"client {index} request {number}: {answer!r}")
                    done[index] += 1
                    if min(done) >= REQUESTS_BEFORE_STOP:
                        stop_now.set()

            clients = [
                threading.Thread(target=load, args=(i,), daemon=True) for i in range(CLIENTS)
            ]
            for thread in clients:
                thread.start()
            assert stop_now.wait(LOAD_DEADLINE), f"no load through HAProxy: {failures[:5]}"
            # A long request on the stopped backend keeps its drain going while
            # the load goes on; it finishes after the load. (Half a line the
            # backend has read: a request in progress, which a drain waits for,
            # where an answered, idle connection is closed at once.)
            with socket.create_connection(addresses[0], timeout=TIMEOUT) as slow:
                slow.sendall((PROXY_V2_LOCAL if recipe else b"") + b"slow\n")
                assert slow.recv(100) == b"slow\n"
                slow.sendall(b"still ")
                wait_until(lambda: peer_process_has_read(slow), what="the backend read it")
                backends[0].process.send_signal(signal.SIGTERM)  # drain it mid-load
                for thread in clients:
                    thread.join(LOAD_DEADLINE)
                assert not any(thread.is_alive() for thread in clients)
                slow.sendall(b"last\n")
                try:
                    slow_answer = slow.recv(100)
                except OSError as exc:
                    slow_answer = repr(exc).encode()
            stopped_status = backends[0].finish()[0]
            assert failures == [], f"{len(failures)} failed requests, first: {failures[:5]}"
            assert slow_answer == b"still last\n", "the drain cut the long request"
            assert stopped_status == cli.EXIT_OK
            assert sum(done) == CLIENTS * (REQUESTS_BEFORE_STOP + REQUESTS_AFTER_STOP)
    finally:
        for backend in backends:
            if backend.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    backend.process.kill()
            backend.finish()
