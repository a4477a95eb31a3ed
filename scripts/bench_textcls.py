"""Encoder text classification on the CPU default (`distill-train task=text_classification`): the teacher,
the student alone, the student distilled with logit KD, with KD + TinyBERT hidden states + attention, and
a student initialised from the teacher's layers (DistilBERT) then distilled with KD.

One teacher (the default recipe, trained once and cached as distill-train does); every student is
trained with each seed. Prints test accuracy and macro-F1 (mean ± std over the seeds), the share of the
gap between the teacher and the default student alone each closes (the initialised student is
the teacher's width, so its own student alone is shown too), and the training throughput of each distillation relative to the
student alone (texts per second, median epoch times measured in this one process). Writes the table as
Markdown and JSON under logs/bench/textcls/.

    python scripts/bench_textcls.py            # 3 seeds (about 20 min on 2 cores)
    python scripts/bench_textcls.py --seeds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path

from hydra import compose, initialize_config_dir

from bench_overhead import EpochTimer  # the sibling script
from distill.cli import CONFIG_DIR
from distill.extras import QUIET
from distill.runtime import flush_denormals, tune_cpu_allocator
from distill.spine import Job
from distill.tasks import TextClassificationTask

WIDE = ["student.net.hidden_size=128", "student.net.intermediate_size=512"]  # the teacher's width, 2 of its 4 layers
# name: (overrides, the student alone it is compared with)
VARIANTS: dict[str, tuple[list[str], str]] = {
    "KD": (["distill=[hard,kd]"], "student alone"),
    "KD + hidden states + attention (TinyBERT)": (
        ["distill=[hard,kd,tinybert_hidden,tinybert_attention]"], "student alone"),
    "KD, student initialised from the teacher (DistilBERT)": (
        ["distill=[hard,kd]", *WIDE, "student.init_from_teacher={every: 2}"], "wide student alone"),
}  # fmt: skip
ALONE = {"student alone": [], "wide student alone": WIDE}


def config(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["task=text_classification", *overrides])


def scores(task: TextClassificationTask, model, dm) -> dict[str, float]:
    metrics = task.evaluate({"m": model}, dm, [])["m"]
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="logs/bench/textcls")
    args = parser.parse_args()
    for pattern in QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    tune_cpu_allocator()
    flush_denormals()
    out = Path(args.out)
    seeds = [42 + i for i in range(args.seeds)]
    common = [f"paths.output_dir={out}/run", "logger={}", "callbacks=none", "+trainer.enable_progress_bar=false",
              "+trainer.enable_checkpointing=false"]  # fmt: skip

    task = TextClassificationTask()
    base = config(common)
    task.check_config(base)
    dm = task.build_data(base)
    ((name, spec),) = task.teachers(base).items()
    teacher = task.build_model(spec.model, f"teacher '{name}'", base.seed, dm, trains=True)
    Job(base, task, dm).teacher(name, spec, teacher)  # trained once and cached, as in distill-train
    teacher_scores = scores(task, teacher, dm)
    print(f"teacher: {teacher_scores}", flush=True)

    results: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        for alone, overrides in ALONE.items():
            cfg = config(common + overrides + [f"seed={seed}"])
            student = task.build_model(cfg.student.net, "student", seed, dm, trains=True)
            timer = EpochTimer()
            job = Job(cfg, task, dm)
            job.callbacks.append(timer)
            job.baseline(task.student(cfg), student)  # cached: a rerun reuses it (then no epoch times)
            got = results.setdefault(alone, {"accuracy": [], "macro_f1": [], "epoch_s": []})
            for key, value in scores(task, student, dm).items():
                got[key].append(value)
            got["epoch_s"] += timer.times[1:]
        for variant, (overrides, _) in VARIANTS.items():
            cfg = config(common + overrides + [f"seed={seed}"])
            student = task.build_model(cfg.student.net, "student", seed, dm, trains=True)
            task.check_models(cfg, dm, student, {name: teacher})  # the terms' settings, read from the models
            timer = EpochTimer()
            job = Job(cfg, task, dm)
            job.callbacks.append(timer)
            job.distill(student, {name: teacher}, cfg.student.fit, "student")
            got = results.setdefault(variant, {"accuracy": [], "macro_f1": [], "epoch_s": []})
            for key, value in scores(task, student, dm).items():
                got[key].append(value)
            got["epoch_s"] += timer.times[1:]
            print(f"seed {seed} {variant}: {got['accuracy'][-1]:.4f}", flush=True)

    t_acc = teacher_scores["accuracy"]
    lines = [
        f"Test set of the CPU default ({dm.describe()}); seeds {seeds}.",
        "",
        "| model | test accuracy | macro-F1 | gap closed | training texts/s vs the same student alone |",
        "|---|---|---|---|---|",
        f"| teacher ({name}) | {t_acc:.4f} | {teacher_scores['macro_f1']:.4f} | | |",
    ]
    table = []
    for label, r in results.items():
        mean, std = statistics.mean(r["accuracy"]), statistics.pstdev(r["accuracy"])
        f1, f1_std = statistics.mean(r["macro_f1"]), statistics.pstdev(r["macro_f1"])
        reference = VARIANTS[label][1] if label in VARIANTS else None
        closed = ratio = None
        if label != "student alone":  # every row against the default student alone
            base_acc = statistics.mean(results["student alone"]["accuracy"])
            closed = (mean - base_acc) / (t_acc - base_acc) if t_acc > base_acc else None
        if reference:  # throughput against the same architecture alone
            base_epochs, epochs = results[reference]["epoch_s"], r["epoch_s"]
            if base_epochs and epochs:
                ratio = statistics.median(base_epochs) / statistics.median(epochs)
        table.append({"model": label, "accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "gap_closed": closed,
                      "throughput_ratio": ratio, "compared_with": reference})  # fmt: skip
        lines.append(
            f"| {label} | {mean:.4f} ± {std:.4f} | {f1:.4f} ± {f1_std:.4f} | "
            f"{'' if closed is None else f'{closed:.0%}'} | {'' if ratio is None else f'{ratio:.2f}'} |"
        )
    text = "\n".join(lines)
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "textcls.md").write_text(text + "\n")
    (out / "textcls.json").write_text(json.dumps({"teacher": teacher_scores, "seeds": seeds, "rows": table}, indent=2))


if __name__ == "__main__":
    main()
