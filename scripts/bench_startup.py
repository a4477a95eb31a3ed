"""How fast the command line answers: `distill-train --help` and `--cfg job`, median of N runs.

python scripts/bench_startup.py --runs 7
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    exe = shutil.which("distill-train")
    if exe is None:
        raise SystemExit("distill-train is not on PATH: pip install -e . first")
    for extra in (["--help"], ["--cfg", "job"], ["--cfg", "job", "data=digits", "teacher=[cnn,cnn_small]"]):
        times = [timed([exe, *extra]) for _ in range(args.runs)]
        print(
            f"distill-train {' '.join(extra):45s} median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f})"
        )


if __name__ == "__main__":
    main()
