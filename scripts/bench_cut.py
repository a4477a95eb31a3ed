"""A student cut from its teacher against a hand-picked student, at an equal budget, distilled the same way.

1. vision (`distill-train`, the default job): the CNN teacher cut to the default MLP student's bytes on disk
   (`student=pruned budget.max_bytes=<the MLP's bytes>`) and distilled, against the default MLP distilled:
   test accuracy, parameters, bytes, FLOPs and batch-1 latency of each.
2. lm (`distill-lm`, the CPU default): the teacher cut to the sizes of `lm_student=tiny_llama_small`
   (`lm_student=pruned`) and distilled, against tiny_llama_small initialised at random and distilled on the
   same tokens: test perplexity (and each one's student alone).

Teachers are trained once per run of this script and shared (one cache); each run is a subprocess.

    python scripts/bench_cut.py                 # both
    python scripts/bench_cut.py --only vision   # or lm
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(module: str, name: str, root: Path, overrides: list[str]) -> tuple[dict, float]:
    out = root / "runs" / name
    cmd = [sys.executable, "-m", module, f"paths.root_dir={root}", f"paths.output_dir={out}",
           "callbacks.progress_bar.refresh_rate=0", *overrides]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads((out / "report.json").read_text()), time.perf_counter() - start


def vision(root: Path) -> None:
    mlp, seconds = run("distill.train", "mlp", root, [])
    rows = {r["model"]: r for r in mlp["models"]}
    budget = rows["student"]["bytes"]
    print(f"default MLP distilled ({seconds:.0f} s); cutting the teacher to its {budget:,} bytes", flush=True)
    cut, seconds = run("distill.train", "cut", root, ["student=pruned", f"budget.max_bytes={budget}"])
    print(f"teacher cut and distilled ({seconds:.0f} s): {cut['cut']['what']}\n", flush=True)
    cut_rows = {r["model"]: r for r in cut["models"]}
    print("| model | test accuracy | parameters | bytes | FLOPs/sample | latency ms (batch 1) |")
    print("|---|---|---|---|---|---|")
    for label, row in (
        ("teacher (CNN)", rows["teacher:cnn"]),
        ("MLP alone", rows["baseline"]),
        ("MLP distilled (the default)", rows["student"]),
        ("teacher cut to the MLP's bytes, alone", cut_rows["baseline"]),
        ("teacher cut to the MLP's bytes, distilled", cut_rows["student"]),
    ):
        print(f"| {label} | {row['accuracy']:.4f} | {row['parameters']:,} | {row['bytes']:,} | {row['flops']:,} "
              f"| {row['latency_ms_batch_1']:.3f} |")  # fmt: skip


def lm(root: Path) -> None:
    common = ["samples.count=0"]
    small, seconds = run("distill.llm.train", "lm_small", root, common)
    print(f"tiny_llama_small distilled ({seconds:.0f} s)", flush=True)
    cut, seconds = run("distill.llm.train", "lm_cut", root, [*common, "lm_student=pruned"])
    print(f"teacher cut to tiny_llama_small's sizes and distilled ({seconds:.0f} s): {cut['cut']['what']}\n")
    a, b = ({r["model"]: r for r in rep["models"]} for rep in (small, cut))
    teacher = next(r for name, r in a.items() if name.startswith("teacher:"))
    print("| model | parameters | test perplexity | rare-token perplexity |")
    print("|---|---|---|---|")
    for label, row in (
        ("teacher (tiny_llama)", teacher),
        ("tiny_llama_small alone (random init)", a["baseline"]),
        ("tiny_llama_small distilled (random init)", a["student"]),
        ("cut architecture alone (random init)", b["baseline"]),
        ("teacher cut to tiny_llama_small's sizes, distilled", b["student"]),
    ):
        print(f"| {label} | {row['parameters']:,} | {row['perplexity']:.3f} | {row['rare_perplexity']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["vision", "lm"], default=None)
    parser.add_argument("--root", type=Path, default=None, help="folder for runs and the cache (default: a temp dir)")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="bench_cut_"))
    start = time.perf_counter()
    if args.only in (None, "vision"):
        vision(root)
    if args.only in (None, "lm"):
        print()
        lm(root)
    print(f"\n{time.perf_counter() - start:.0f} s in all; runs in {root}")


if __name__ == "__main__":
    main()
