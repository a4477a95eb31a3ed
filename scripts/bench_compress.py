"""Compression on the default job: each stage alone and chained, against the teacher, side by side.

Trains (or reuses from the cache) the default teacher, distils the default student once, then
runs every listed stage combination on that student. For each result it measures, in this
process and right next to the teacher: test accuracy, bytes on disk and CPU latency at batch 1.
Prints how much smaller and faster than the teacher each result is and how much accuracy it
lost against the uncompressed student.

    python scripts/bench_compress.py
    python scripts/bench_compress.py --chains "onnx,int8" "prune_structured,recover,onnx,int8"

A chain may carry its own overrides after `|`: "qat,onnx,int8|compress.qat.convert=float".
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from hydra import compose, initialize_config_dir

from distill.cli import CONFIG_DIR
from distill.extras import QUIET
from distill.runtime import flush_denormals, tune_cpu_allocator
from distill.spine import Job, build_stages, compress, measure
from distill.tasks import ClassificationTask

CHAINS = [
    "prune",
    "prune_structured",
    "lowrank",
    "onnx",
    "int8",
    "int8_static",
    "prune,recover",
    "prune_structured,recover",
    "onnx,int8",
    "onnx,int8_static",
    "prune_structured,recover,onnx,int8",
    "qat",
    "qat,onnx,int8|compress.qat.convert=float",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chains", nargs="*", default=CHAINS, help="comma-separated stage lists")
    parser.add_argument("--out", default="logs/bench/compress")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of configs/train.yaml")
    args = parser.parse_args()
    for pattern in QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    tune_cpu_allocator()
    flush_denormals()
    out = Path(args.out)
    stage_overrides = [o for o in args.overrides if o.startswith("compress.")]  # applied once a chain is chosen
    common = [
        f"paths.output_dir={out}/run",
        "logger={}",
        "callbacks=none",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_checkpointing=false",
        *(o for o in args.overrides if o not in stage_overrides),
    ]

    def config(extra: list[str]):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("train", overrides=common + extra)

    cfg = config([])
    task = ClassificationTask()
    dm = task.build_data(cfg)
    job = Job(cfg, task, dm)
    teachers = {}
    for name, spec in task.teachers(cfg).items():
        teachers[name] = task.build_model(spec.model, f"teacher '{name}'", cfg.seed, dm, trains=True)
        job.teacher(name, spec, teachers[name])
    student = task.build_model(cfg.student.net, "student", cfg.seed, dm, trains=True)
    job.distill(student, teachers, cfg.student.fit, "student")
    teacher_name = f"teacher:{next(iter(teachers))}"

    results = []
    for spec in args.chains:
        chain, *own = spec.split("|")
        chain_cfg = config(
            [f"compress=[{chain}]", *(o for o in stage_overrides if o.split(".")[1] in chain.split(",")), *own]
        )
        stages = build_stages(chain_cfg)
        chain_job = Job(chain_cfg, task, dm)
        compressed, _, failure = compress(chain_job, student, teachers, chain_cfg.student.fit, stages,
                                          out / chain.replace(",", "+"))  # fmt: skip
        final = list(compressed.values())[-1] if compressed else None
        models = {teacher_name: next(iter(teachers.values())), "student": student}
        if final is not None:
            models["final"] = final
        roles = {teacher_name: "teacher", "student": "student", "final": "compressed"}
        rows = {r["model"]: r for r in measure(task, models, roles, dm, cfg, out, teacher_names=[teacher_name])}
        t, s = rows[teacher_name], rows["student"]
        f = rows.get("final", s)
        results.append(
            {
                "chain": spec,
                "accuracy": f["accuracy"],
                "accuracy_loss_vs_student": s["accuracy"] - f["accuracy"],
                "smaller_than_teacher": t["bytes"] / f["bytes"],
                "faster_than_teacher_batch1": t["latency_ms_batch_1"] / f["latency_ms_batch_1"],
                "bytes": f["bytes"],
                "latency_ms_batch_1": f["latency_ms_batch_1"],
                "failed": failure,
            }
        )
        r = results[-1]
        print(
            f"{spec:40s} acc {r['accuracy']:.4f} ({-r['accuracy_loss_vs_student']:+.4f})  {r['smaller_than_teacher']:.1f}x smaller  {r['faster_than_teacher_batch1']:.1f}x faster",
            flush=True,
        )

    lines = [
        f"teacher {teacher_name}: accuracy {t['accuracy']:.4f}, {t['bytes']:,} bytes; distilled student: accuracy {s['accuracy']:.4f}",
        "",
        "| stages | test acc | vs. student | smaller than teacher | faster than teacher (batch 1) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        note = f" (failed: {r['failed']['stage']})" if r["failed"] else ""
        lines.append(
            f"| {r['chain'].replace('|', ' ')}{note} | {r['accuracy']:.4f} | {-r['accuracy_loss_vs_student']:+.4f} | "
            f"{r['smaller_than_teacher']:.1f}× | {r['faster_than_teacher_batch1']:.1f}× |"
        )
    text = "\n".join(lines)
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compress.md").write_text(text + "\n")
    (out / "compress.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
