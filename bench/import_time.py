"""How long a process that imports pyserve takes to start, against socketserver.

Runs ``python -c "import socketserver"`` and ``python -c "import pyserve"``
alternately (interleaved, so a busy moment of the machine hits both alike),
``--runs`` times each, and prints the median wall time of each and their ratio.
Wall time of a whole process is what a user of a command-line tool feels;
``python -X importtime -c "import pyserve"`` shows where the time goes.

    python bench/import_time.py --venv           # the figure to quote: 20 runs each
    python bench/import_time.py --venv --runs 50 --python pypy3

The figure must come from a clean interpreter: one whose startup loads what a
fresh virtual environment's does and no more. A system or development
interpreter often loads typing, re, logging... at startup already (site's .pth
files, sitecustomize), which hides exactly what ``import pyserve`` would cost a
user. ``--venv`` makes a temporary virtual environment of ``--python`` (without
pip, no network), copies this checkout's ``pyserve`` package into its
site-packages, as installing it would, and times that environment's
interpreter. Without ``--venv`` the checkout is put on ``PYTHONPATH`` of
``--python`` as it is (quick, for comparing two versions of the code on one
interpreter, not for the figure).

The target (see docs/cli.rst) is a ratio of at most 1.3.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_venv(python: str, where: Path) -> str:
    """A fresh virtual environment of ``python`` with this checkout's pyserve in it.

    Returns its interpreter. No pip, no network: the package is copied into
    site-packages, which is what installing it amounts to (pyserve needs no
    other package at run time).
    """
    subprocess.run([python, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    venv_python = str(where / "bin" / "python")
    site_packages = subprocess.run(
        [venv_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "pyserve", Path(site_packages) / "pyserve", ignore=ignore)
    return venv_python


def time_import(
    python: str, module: str, cache: str, *, checkout_on_path: bool
) -> tuple[float, float]:
    """Wall and CPU seconds for one fresh interpreter to import ``module`` and exit.

    CPU time (user + system, of the child) varies less than wall time on a busy
    machine, where other processes steal the CPU in the middle of a run.
    """
    # Bytecode is cached (in a private directory), as it is for an installed
    # package: without the cache every run would time the compiler instead.
    env = dict(os.environ, PYTHONPYCACHEPREFIX=cache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPATH", None)
    if checkout_on_path:
        env["PYTHONPATH"] = str(ROOT)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([python, "-c", f"import {module}"], check=True, env=env, timeout=60)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each (default 20)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to time")
    parser.add_argument(
        "--venv",
        action="store_true",
        help="time a fresh virtual environment of --python with pyserve copied in (the figure)",
    )
    args = parser.parse_args()
    times: dict[str, list[float]] = {"socketserver": [], "pyserve": []}
    cpu_times: dict[str, list[float]] = {"socketserver": [], "pyserve": []}
    with tempfile.TemporaryDirectory(prefix="pyserve-import-time-") as scratch:
        cache = os.path.join(scratch, "pycache")
        python = make_venv(args.python, Path(scratch) / "venv") if args.venv else args.python
        on_path = not args.venv
        for module in times:  # warm the file cache and the bytecode cache first
            time_import(python, module, cache, checkout_on_path=on_path)
        for _ in range(args.runs):
            for module, samples in times.items():
                wall, cpu = time_import(python, module, cache, checkout_on_path=on_path)
                samples.append(wall)
                cpu_times[module].append(cpu)
    medians = {module: statistics.median(samples) for module, samples in times.items()}
    cpu_medians = {module: statistics.median(samples) for module, samples in cpu_times.items()}
    for module, median in medians.items():
        print(
            f"import {module:<12} median {median * 1000:7.1f} ms wall,"
            f" {cpu_medians[module] * 1000:7.1f} ms CPU, over {args.runs} runs"
        )
    where = "a fresh venv" if args.venv else "PYTHONPATH (not a clean interpreter)"
    print(f"interpreter: {args.python} ({where})")
    ratio = medians["pyserve"] / medians["socketserver"]
    print(f"ratio pyserve/socketserver: {ratio:.2f} (target <= 1.30)")
    cpu_ratio = cpu_medians["pyserve"] / cpu_medians["socketserver"]
    print(f"ratio of CPU time: {cpu_ratio:.2f} (steadier than wall time on a busy machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
