"""The method zoo on MNIST-1D: teacher, student from scratch, and the student under every method.

For each method and seed the student (same architecture, same initialisation per seed) is
distilled with the default recipe, then evaluated on the test set. Prints mean ± std over seeds,
the share of the teacher–baseline gap each method closes, and the median epoch time of each
method relative to plain KD's, all measured in this one process. Writes the table as Markdown
and JSON under logs/bench/methods/.

    python scripts/bench_methods.py            # 3 seeds, full recipe (about 20-30 min on 2 cores)
    python scripts/bench_methods.py --quick    # 1 seed, shorter training, smaller transfer set
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from bench_overhead import EpochTimer  # the sibling script
from distill.cli import CONFIG_DIR
from distill.extras import QUIET
from distill.measure import classification_metrics, predict
from distill.runtime import flush_denormals, tune_cpu_allocator
from distill.spine import Job, born_again
from distill.tasks import ClassificationTask

# name: (overrides, teachers the method uses)
METHODS: dict[str, list[str]] = {
    "kd": ["distill=[hard,kd]"],
    "kd (standardized logits)": ["distill=[hard,kd]", "distill.kd.standardize=true"],
    "dkd": ["distill=[hard,dkd]"],
    "dist": ["distill=[hard,dist]"],
    "kd + fitnet": ["distill=[hard,kd,fitnet]"],
    "kd + rkd": ["distill=[hard,kd,rkd]"],
    "kd + sp": ["distill=[hard,kd,sp]"],
    "kd + pkt": ["distill=[hard,kd,pkt]"],
    "kd + cc": ["distill=[hard,kd,cc]"],
    "kd + crd": ["distill=[hard,kd,crd]"],
    "kd, 2 teachers (mean logits)": ["distill=[hard,kd]", "teacher=[cnn,cnn_small]", "multi_teacher=mean_logits"],
    "kd, 2 teachers (CA-MKD)": ["distill=[hard,kd]", "teacher=[cnn,cnn_small]", "multi_teacher=ca_mkd"],
    "self: byot (no teacher)": ["distill=[hard,byot]", "teacher=[]", "distill.hard.weight=1.0"],
    "self: born-again, 2 generations": ["distill=[hard,kd]", "teacher=[]", "born_again.generations=2"],
}


def config(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def accuracy(model: torch.nn.Module, dm) -> float:
    logits, targets = predict(model, dm.test_dataloader())
    return classification_metrics(logits, targets)["accuracy"]


def run_method(cfg, dm, teachers: dict, baseline) -> tuple[float, list[float]]:
    """Distil a fresh student; returns its test accuracy and its epoch times."""
    task = ClassificationTask()
    job = Job(cfg, task, dm)
    if cfg.born_again.generations:
        _, student, _, _ = born_again(job, task.student(cfg), baseline)
        return accuracy(student, dm), []  # epoch times of born-again are not compared
    student = task.build_model(cfg.student.net, "student", cfg.seed, dm, trains=True)
    timer = EpochTimer()
    job.callbacks.append(timer)
    job.distill(student, teachers, cfg.student.fit, "student")
    return accuracy(student, dm), timer.times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 30 epochs, 10k transfer samples")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), help="a subset of the method names")
    parser.add_argument("--out", default="logs/bench/methods")
    args = parser.parse_args()
    for pattern in QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    tune_cpu_allocator()
    flush_denormals()
    out = Path(args.out)
    seeds = [42] if args.quick else [42 + i for i in range(args.seeds)]
    common = [
        f"paths.output_dir={out}/run",
        "logger={}",
        "callbacks=none",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_checkpointing=false",
    ]
    if args.quick:
        common += ["data.num_transfer=10000", "student.fit.epochs=30", "student.fit.batch_size=1024"]

    base = config(common)
    task = ClassificationTask()
    dm = task.build_data(base)
    two = config(common + ["teacher=[cnn,cnn_small]"])
    job = Job(two, task, dm)
    teachers = {}
    for name, spec in task.teachers(two).items():  # trained once, cached like in distill-train
        teachers[name] = task.build_model(spec.model, f"teacher '{name}'", two.seed, dm, trains=True)
        job.teacher(name, spec, teachers[name])
    teacher_acc = accuracy(teachers["cnn"], dm)

    results: dict[str, dict] = {}
    baselines = {}
    for seed in seeds:
        seeded = config(common + [f"seed={seed}"])
        baselines[seed] = task.build_model(seeded.student.net, "student", seed, dm, trains=True)
        Job(seeded, task, dm).baseline(task.student(seeded), baselines[seed])
    results["student from scratch"] = {"acc": [accuracy(baselines[s], dm) for s in seeds], "epoch_s": []}

    for name in args.methods:
        accs, epochs = [], []
        for seed in seeds:
            cfg = config(common + METHODS[name] + [f"seed={seed}"])
            used = {n: teachers[n] for n in (cfg.get("teacher") or {})}
            acc, times = run_method(cfg, dm, used, baselines[seed])
            accs.append(acc)
            epochs += times
        results[name] = {"acc": accs, "epoch_s": epochs}
        print(f"{name:34s} {statistics.mean(accs):.4f} ± {statistics.pstdev(accs):.4f}", flush=True)

    base_acc = statistics.mean(results["student from scratch"]["acc"])
    kd_epoch = statistics.median(results["kd"]["epoch_s"]) if results.get("kd", {}).get("epoch_s") else None
    lines = [
        f"teacher (cnn): {teacher_acc:.4f}; seeds {seeds}",
        "",
        "| method | test accuracy (mean ± std) | gap closed | epoch time / KD's |",
        "|---|---|---|---|",
        f"| teacher (cnn) | {teacher_acc:.4f} | — | — |",
    ]
    table = []
    for name, r in results.items():
        mean, std = statistics.mean(r["acc"]), statistics.pstdev(r["acc"])
        closed = (mean - base_acc) / (teacher_acc - base_acc)
        ratio = statistics.median(r["epoch_s"]) / kd_epoch if r["epoch_s"] and kd_epoch else None
        table.append(
            {"method": name, "mean": mean, "std": std, "gap_closed": closed, "epoch_ratio": ratio, "acc": r["acc"]}
        )
        gap = "—" if name == "student from scratch" else f"{closed:.0%}"
        lines.append(f"| {name} | {mean:.4f} ± {std:.4f} | {gap} | {f'{ratio:.2f}×' if ratio else '—'} |")
    text = "\n".join(lines)
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "quick" if args.quick else "full"
    (out / f"methods_{suffix}.md").write_text(text + "\n")
    (out / f"methods_{suffix}.json").write_text(
        json.dumps({"teacher": teacher_acc, "seeds": seeds, "methods": table}, indent=2)
    )


if __name__ == "__main__":
    main()
