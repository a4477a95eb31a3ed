"""LM distillation on the CPU default: every token-level loss against the student trained alone, and
the speed of distillation against plain student training, side by side.

1. Quality: runs `distill-lm` once per loss (the teacher and the baseline student are trained once
   and cached; every student gets the same recipe and tokens) and prints the test perplexity of the
   teacher, of the student trained alone and of the student under each loss, and the share of the
   perplexity gap each loss closes.
2. Speed: training tokens per second of the distillation module (forward KL), with the teacher run at
   every step and with its outputs read from the cache (`cache_teacher_outputs`, computed at the first
   round, which is not timed), against the same student module without a teacher, on the job's transfer
   set, alternating rounds in one process, medians.

    python scripts/bench_lm.py                                   # the CPU default
    python scripts/bench_lm.py --losses forward_kl reverse_kl -- lm_data.max_chars=200000
    python scripts/bench_lm.py --losses forward_kl --skip-speed -- lm_student.fit.train_fraction=null
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LOSSES = ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tv"]


def quality(losses: list[str], overrides: list[str], root: Path) -> list[dict]:
    rows = []
    for loss in losses:
        out = root / "runs" / loss
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "distill.llm.train", f"lm_distill=[{loss}]", f"paths.root_dir={root}",
               f"paths.output_dir={out}", "callbacks.progress_bar.refresh_rate=0", "samples.count=0", *overrides]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{loss} failed:\n{result.stderr[-3000:]}")
        report = json.loads((out / "report.json").read_text())
        ppl = {m["model"]: m["perplexity"] for m in report["models"]}
        teacher = next(v for k, v in ppl.items() if k.startswith("teacher:"))
        rows.append({"loss": loss, "teacher": teacher, "baseline": ppl["baseline"], "student": ppl["student"],
                     "gap_closed": (ppl["baseline"] - ppl["student"]) / (ppl["baseline"] - teacher),
                     "seconds": time.perf_counter() - start})  # fmt: skip
        r = rows[-1]
        print(f"{loss:16s} student ppl {r['student']:.3f}  (teacher {r['teacher']:.3f}, alone {r['baseline']:.3f}) "
              f"gap closed {r['gap_closed']:.1%}  [{r['seconds']:.0f} s]", flush=True)  # fmt: skip
    return rows


def speed(overrides: list[str], rounds: int, steps: int, root: Path) -> dict[str, float]:
    import lightning as L
    from hydra import compose, initialize_config_dir

    from bench_overhead import EpochTimer  # the sibling script
    from distill.assembly import build_terms
    from distill.cli import CONFIG_DIR
    from distill.tasks import CausalLMTask
    from distill.tasks.causal_lm import build_lm

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("lm", overrides=[f"paths.root_dir={root}", "lm_distill=[forward_kl]", *overrides])
    task = CausalLMTask()
    dm = task.build_data(cfg)
    teacher = build_lm(cfg.lm_teacher.model, "teacher", dm.vocab_size, cfg.seed)
    fit = cfg.lm_student.fit

    def student():
        return build_lm(cfg.lm_student.model, "s", dm.vocab_size, 0)

    def distiller(name: str) -> Any:
        return task.module(cfg, student(), fit, dm, name, {"t": teacher}, build_terms(cfg, "lm_distill"))

    uncached = distiller("b")
    uncached.teacher_cache = None
    arms = {"student alone": task.module(cfg, student(), fit, dm, "a"), "teacher every step": uncached,
            "cached teacher": distiller("c")}  # fmt: skip
    timers = {name: EpochTimer() for name in arms}
    loader = dm.train_dataloader(fit.batch_size, fit.get("train_fraction"))  # the transfer set the job trains on
    steps = min(steps, len(loader))
    tokens = fit.batch_size * steps * dm.tensors["train"]["input_ids"].shape[1]
    for _ in range(rounds):
        for name, module in arms.items():
            trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=steps, limit_val_batches=0,
                                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, callbacks=[timers[name]])  # fmt: skip
            trainer.fit(module, loader)
    rates = {name: statistics.median(tokens / t for t in timer.times[1:]) for name, timer in timers.items()}
    for name, rate in rates.items():
        print(f"{name:18s} {rate:9.0f} training tokens/s  ({rate / rates['student alone']:.3f} of the student alone)")
    entry = arms["cached teacher"].teacher_cache_entries["t"]
    print(f"teacher outputs: top {entry['top_k']} of {dm.vocab_size} tokens, {entry['file']}, "
          f"{'read' if entry['reused'] else 'computed'} in {entry['seconds']:.1f} s at the first round")  # fmt: skip
    return {**rates, "first_round_cache_seconds": entry["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", nargs="*", default=LOSSES)
    parser.add_argument("--root", default="logs/bench/lm")
    parser.add_argument("--rounds", type=int, default=4, help="speed: rounds per arm (the first is not timed)")
    parser.add_argument("--steps", type=int, default=10, help="speed: training steps per round")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("overrides", nargs="*", help="distill-lm overrides (after --)")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    rows = quality(args.losses, args.overrides, root) if args.losses else []
    rates = {} if args.skip_speed else speed(args.overrides, args.rounds, args.steps, root)
    if rows:
        lines = ["| loss | student test ppl | gap closed |", "|---|---|---|"]
        lines += [f"| {r['loss']} | {r['student']:.3f} | {r['gap_closed']:.1%} |" for r in rows]
        head = f"teacher {rows[0]['teacher']:.3f}, student trained alone {rows[0]['baseline']:.3f}"
        text = head + "\n\n" + "\n".join(lines)
        print("\n" + text)
        root.mkdir(parents=True, exist_ok=True)
        (root / "lm.md").write_text(text + "\n")
        (root / "lm.json").write_text(json.dumps({"losses": rows, "speed": rates}, indent=2))


if __name__ == "__main__":
    main()
