"""Chat-model distillation on the CPU chat task: the teacher, the student alone, and the student
distilled with forward KL, reverse KL, GKD (generalised JSD with on-policy batches) and MiniLLM,
scored by generation (exact match and ROUGE-L of greedy answers to the test questions).

Runs `distill-lm lm_experiment=arithmetic_chat` once per method. The teacher and the student alone
are trained by the first run and cached; every distilled student gets the same recipe, the same
transfer set and the same number of training steps. Prints one table and writes it, with the raw
figures, to <root>/chat.md and <root>/chat.json.

    python scripts/bench_chat.py                                # every method
    python scripts/bench_chat.py --methods forward_kl minillm
    python scripts/bench_chat.py -- lm_student.fit.epochs=4     # overrides for every run (after --)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

METHODS = {
    "forward_kl": ["lm_distill=[forward_kl]"],
    "reverse_kl": ["lm_distill=[reverse_kl]"],
    "gkd": ["lm_distill=[jsd]", "on_policy_fraction=0.5"],  # GKD: JSD(beta=0.5), half the batches on-policy
    "minillm": ["lm_distill=[minillm]"],
}
LABELS = {
    "forward_kl": "forward KL",
    "reverse_kl": "reverse KL",
    "gkd": "GKD (JSD β = 0.5, half the batches on-policy)",
    "minillm": "MiniLLM (sequence-level reverse KL)",
}


def run(method: str, overrides: list[str], root: Path) -> dict:
    out = root / "runs" / method
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "distill.llm.train", "lm_experiment=arithmetic_chat", *METHODS[method],
           f"paths.root_dir={root}", f"paths.output_dir={out}", "callbacks.progress_bar.refresh_rate=0",
           *overrides]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{method} failed:\n{result.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    rows = {m["model"].split(":")[0]: m for m in report["models"]}
    return {"method": method, "seconds": time.perf_counter() - start, "rows": rows}


def gap(row: dict, key: str) -> float | None:
    t, b, s = (row["rows"][name][key] for name in ("teacher", "baseline", "student"))
    return (s - b) / (t - b) if t > b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--root", default="logs/bench/chat")
    parser.add_argument("overrides", nargs="*", help="distill-lm overrides for every run (after --)")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    results = []
    for method in args.methods:
        r = run(method, args.overrides, root)
        results.append(r)
        s = r["rows"]["student"]
        print(f"{method:11s} exact match {s['exact_match']:.3f}  ROUGE-L {s['rouge_l']:.3f}  "
              f"test ppl {s['perplexity']:.3f}  [{r['seconds']:.0f} s]", flush=True)  # fmt: skip
    first = results[0]["rows"]
    lines = ["| model | exact match | ROUGE-L | test perplexity | exact-match gap closed |", "|---|---|---|---|---|"]
    for name, label in (("teacher", "teacher"), ("baseline", "student trained alone")):
        m = first[name]
        lines.append(f"| {label} | {m['exact_match']:.3f} | {m['rouge_l']:.3f} | {m['perplexity']:.3f} | |")
    for r in results:
        m, closed = r["rows"]["student"], gap(r, "exact_match")
        share = "" if closed is None else f"{closed:.1%}"
        lines.append(f"| student, {LABELS[r['method']]} | {m['exact_match']:.3f} | {m['rouge_l']:.3f} | "
                     f"{m['perplexity']:.3f} | {share} |")  # fmt: skip
    text = "\n".join(lines)
    print("\n" + text)
    root.mkdir(parents=True, exist_ok=True)
    (root / "chat.md").write_text(text + "\n")
    (root / "chat.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
