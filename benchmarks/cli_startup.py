"""Start-up of the `cmkd` command: wall time of `cmkd --help` (and of a few `cmkd STAGE
--help`) and the import time of `cmkd_cli.cli` (`python -X importtime`), best and median of
N runs, for this checkout and optionally another one (e.g. main before a change), the runs
of both interleaved so a load on the machine weighs on both alike.

    .venv/bin/python benchmarks/cli_startup.py [--runs 15] [--against /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["distill", "--help"], ["eval", "--help"], ["prepare", "--help"])


def wall(tree: Path, argv: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), COLUMNS="100")
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cmkd_cli", *argv], cwd=tree, env=env, capture_output=True
    )
    return time.perf_counter() - start


def import_ms(tree: Path) -> float:
    """Cumulative import time of cmkd_cli.cli in ms (`-X importtime`)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import cmkd_cli.cli"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    ).stderr
    line = next(x for x in out.splitlines() if re.search(r"\|\s*cmkd_cli\.cli$", x))
    return int(line.split("|")[1]) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--against", type=Path, help="another checkout to compare with")
    args = parser.parse_args()
    trees = [HERE, *([args.against.resolve()] if args.against else [])]
    results: dict[tuple[Path, str], list[float]] = {}
    for _ in range(args.runs):
        for tree in trees:
            for argv in COMMANDS:
                results.setdefault((tree, " ".join(argv)), []).append(wall(tree, argv))
            results.setdefault((tree, "import cmkd_cli.cli"), []).append(import_ms(tree) / 1000)
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs, {args.runs} runs")
    print(f"{'what':28} {'checkout':40} {'best s':>8} {'median s':>9}")
    for (tree, what), times in results.items():
        print(f"{what:28} {str(tree)[-40:]:40} {min(times):8.3f} {statistics.median(times):9.3f}")
    if args.against:
        for what in dict.fromkeys(w for _, w in results):
            ratio = min(results[(HERE, what)]) / min(results[(trees[1], what)])
            print(f"{what}: this checkout / other = {ratio:.2f} (best of {args.runs})")


if __name__ == "__main__":
    main()
