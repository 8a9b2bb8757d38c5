"""How long a process that imports pyserve takes to start, against socketserver.

Runs ``python -c "import socketserver"`` and ``python -c "import pyserve"``
alternately (interleaved, so a busy moment of the machine hits both alike),
``--runs`` times each, and prints the median wall time of each and their ratio.
Wall time of a whole process is what a user of a command-line tool feels;
``python -X importtime -c "import pyserve"`` shows where the time goes.

    python bench/import_time.py            # 20 runs each
    python bench/import_time.py --runs 50 --python pypy3

The target (see docs/cli.rst) is a ratio of at most 1.3.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def time_import(python: str, module: str, cache: str) -> float:
    """Seconds for one fresh interpreter to import ``module`` and exit."""
    # Bytecode is cached (in a private directory), as it is for an installed
    # package: without the cache every run would time the compiler instead.
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONPYCACHEPREFIX=cache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    started = time.perf_counter()
    subprocess.run([python, "-c", f"import {module}"], check=True, env=env, timeout=60)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each (default 20)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to time")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"socketserver": [], "pyserve": []}
    with tempfile.TemporaryDirectory(prefix="pyserve-import-time-") as cache:
        for module in times:  # warm the file cache and the bytecode cache first
            time_import(args.python, module, cache)
        for _ in range(args.runs):
            for module, samples in times.items():
                samples.append(time_import(args.python, module, cache))
    medians = {module: statistics.median(samples) for module, samples in times.items()}
    for module, median in medians.items():
        print(f"import {module:<12} median {median * 1000:7.1f} ms over {args.runs} runs")
    ratio = medians["pyserve"] / medians["socketserver"]
    print(f"ratio pyserve/socketserver: {ratio:.2f} (target <= 1.30)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
