"""The machine side of the benchmark: CPUs, processes, /proc sampling, facts.

Every server runs in its own session, pinned with ``taskset`` to the *server
CPU*; the load generator and this runner are pinned to the *client CPU*, so a
Python server never competes with its own load. ``start_server`` waits (with a
deadline) until the port is in LISTEN state in /proc/net/tcp; ``stop_server``
sends SIGTERM to the server's process group and SIGKILL after a deadline: only
processes this runner started are ever signalled. ``sample`` snapshots the
server's process tree (CPU seconds, RSS, PSS, threads) so run.py can attribute
CPU and memory to the server during the measured window.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import IO, Any, Optional, Union

CLK_TCK = os.sysconf("SC_CLK_TCK")


def read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def pick_cpus() -> tuple[Optional[int], Optional[int]]:
    """(server CPU, client CPU) from this process's allowed CPUs; None if < 2."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return None, None
    return cpus[0], cpus[1]


def all_cpus() -> Optional[str]:
    """This process's allowed CPUs as a taskset list ("0,1"); None if unknown."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    return ",".join(map(str, cpus)) if shutil.which("taskset") else None


def pinned(argv: list[str], cpu: Union[int, str, None]) -> list[str]:
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def facts(python: str) -> dict[str, Any]:
    """What a reader needs to judge the numbers: CPU, cores, kernel, Pythons."""
    cpu = "unknown"
    for line in (read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    try:
        server_py = subprocess.run(
            [python, "-c", "import sys; print(sys.version.split()[0], sys.implementation.name)"],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        server_py = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python_servers": f"{server_py} ({python})",
        "python_runner": sys.version.split()[0],
        "loadavg_before": (read("/proc/loadavg") or "").strip(),
        "somaxconn": (read("/proc/sys/net/core/somaxconn") or "").strip(),
        "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    # Only for child servers that need a port number on their command line; a
    # clash with another process shows up as "did not listen" and fails one run.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_listening(port: int) -> bool:
    want = f":{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in (read(path) or "").splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[1].endswith(want) and fields[3] == "0A":
                return True
    return False


def start_server(
    argv: list[str], port: int, cpu: Union[int, str, None], log: IO[bytes], env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Optional[str]]:
    proc = subprocess.Popen(
        pinned(argv, cpu), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        start_new_session=True, env=env,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return proc, f"server exited with status {proc.returncode} before listening"
        if is_listening(port):
            return proc, None
        time.sleep(0.02)  # polling /proc: the server has no other way to tell us
    return proc, "server did not listen within 20 s"


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's own process group, SIGKILL after 3 s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(3)
            return
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group is ours: start_new_session
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(5)


def _stat(pid: int) -> Optional[tuple[int, int]]:
    """(ppid, CPU ticks including reaped children) of one process."""
    text = read(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), sum(int(v) for v in fields[11:15])


def _tree(root: int) -> dict[int, int]:
    """pid -> CPU ticks for root and its descendants (forking servers)."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st:
                stats[int(name)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out[pid] = stats[pid][1]
            todo.extend(children.get(pid, []))
    return out


def sample(root: int) -> dict[str, Any]:
    tree = _tree(root)
    rss = pss = threads = 0
    for pid in tree:
        for line in (read(f"/proc/{pid}/status") or "").splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
            elif line.startswith("Threads:"):
                threads += int(line.split()[1])
        for line in (read(f"/proc/{pid}/smaps_rollup") or "").splitlines():
            if line.startswith("Pss:"):
                pss += int(line.split()[1])
    return {
        "t": time.monotonic(), "cpu_s": sum(tree.values()) / CLK_TCK, "rss_kib": rss,
        "pss_kib": pss, "threads": threads, "procs": len(tree),
    }
