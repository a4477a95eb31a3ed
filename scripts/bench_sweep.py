"""A four-job sweep through the SLURM launcher vs. Hydra's basic launcher, side by side.

Runs `distill-train -m <sweep>` twice from a fresh cache each time, once per launcher, and
reports the wall time from the command to the last job's report and how many times the shared
teacher was trained (1 is right: one job trains it under the cache lock, the others reuse it).
Needs a SLURM cluster (scripts/slurm_cluster.sh start).

    python scripts/bench_sweep.py                       # the default job, kd temperature 1,2,4,8
    python scripts/bench_sweep.py --sweep seed=1,2,3,4 data=digits teacher=[mlp_large]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_sweep(launcher: str, sweep: list[str], root: Path) -> dict:
    args = [sys.executable, "-m", "distill.train", "-m", *sweep, f"paths.root_dir={root}",
            "callbacks.progress_bar.refresh_rate=0"]  # fmt: skip
    if launcher != "basic":
        args.insert(4, f"hydra/launcher={launcher}")
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, cwd=root)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{launcher} sweep failed:\n{result.stderr[-3000:]}")
    (sweep_dir,) = (root / "logs" / "train" / "multiruns").iterdir()
    logs = [p.read_text() for p in sweep_dir.glob("*/train.log")]
    reports = [json.loads(p.read_text()) for p in sweep_dir.glob("*/report.json")]
    return {
        "launcher": launcher,
        "seconds": seconds,
        "jobs": len(reports),
        "teacher_trainings": sum(log.count("Training teacher-") for log in logs),
        "student_accuracy": sorted(
            next(m["accuracy"] for m in r["models"] if m["model"] == "student") for r in reports
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", nargs="*", default=["distill.kd.temperature=1,2,4,8"], help="sweep overrides")
    parser.add_argument("--launcher", default="slurm", help="hydra/launcher option to compare with basic")
    args = parser.parse_args()
    rows = []
    for launcher in ("basic", args.launcher):
        with tempfile.TemporaryDirectory(prefix=f"sweep-{launcher}-") as tmp:
            rows.append(run_sweep(launcher, args.sweep, Path(tmp)))
            r = rows[-1]
            print(f"{launcher:8s} {r['jobs']} jobs in {r['seconds']:.1f} s, teacher trained {r['teacher_trainings']}x, "
                  f"student accuracies {r['student_accuracy']}", flush=True)  # fmt: skip
    basic, other = rows
    print(f"\n{other['launcher']} / basic wall time: {other['seconds'] / basic['seconds']:.2f}")


if __name__ == "__main__":
    main()
