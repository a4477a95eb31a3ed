"""How fast the command line answers: `--help` of every entry point and `--cfg job`, median of N runs.

python scripts/bench_startup.py --runs 7

The commands run one after another, round by round, so that a load on the machine weighs on all
of them alike: compare `--help` with `--cfg job` of the same run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time

COMMANDS = [
    ("distill-train", ["--help"]),
    ("distill-lm", ["--help"]),
    ("distill-eval", ["--help"]),
    ("distill-train", ["--cfg", "job"]),
    ("distill-train", ["--cfg", "job", "data=digits", "teacher=[cnn,cnn_small]"]),
]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    exes = {name: shutil.which(name) for name, _ in COMMANDS}
    missing = sorted(name for name, exe in exes.items() if exe is None)
    if missing:
        raise SystemExit(f"{', '.join(missing)} not on PATH: pip install -e . first")
    times: list[list[float]] = [[] for _ in COMMANDS]
    for _ in range(args.runs):
        for i, (name, extra) in enumerate(COMMANDS):
            times[i].append(timed([exes[name], *extra]))
    for (name, extra), runs in zip(COMMANDS, times, strict=True):
        label = f"{name} {' '.join(extra)}"
        print(f"{label:60s} median {statistics.median(runs):.3f} s (min {min(runs):.3f}, max {max(runs):.3f})")


if __name__ == "__main__":
    main()
