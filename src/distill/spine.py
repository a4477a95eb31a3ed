"""The job every task runs, in order: config → data → teachers → baseline → distilled student →
compression stages → every model measured the same way → report.

What varies between tasks (classification, causal LMs, ...) is a `distill.tasks.Task`, chosen by the
config's `task._target_`; this file knows no task. Everything that can be checked without training
is checked first: the config's fields, the data, the models against each other, a dry run of the
distillation module on one batch, the compression stages.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from distill import budget, distributed
from distill.assembly import (
    build,
    build_group,
    build_loggers,
    build_terms,
    fit_payload,
    fit_stage,
    make_trainer,
    set_resume_dir,
)
from distill.callbacks import kept_epoch
from distill.checkpoints import load_weights, read_checkpoint
from distill.compress.base import StageResult
from distill.console import announce_stage
from distill.errors import DistillError
from distill.history import StageHistory
from distill.measure import size_and_speed, trainable_parameters
from distill.model_cache import cached_history, cached_model, source_of
from distill.report import publish_report
from distill.resume import mark_continued
from distill.runtime import prepare_run
from distill.tasks.base import Batches, CompressionStage, DataModule, RunContext, Task, check_contract
from distill.tracking import StageAxis, log_history, run_params

log = logging.getLogger(__name__)


def build_task(cfg: DictConfig) -> Task:
    """The config's task (`task._target_`), checked to be a `distill.tasks.Task`."""
    node = cfg.get("task")
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise DistillError("the config has no task (task._target_: e.g. distill.tasks.ClassificationTask)")
    task = build(node, "task")
    if not isinstance(task, Task):
        raise DistillError(f"task: {node._target_} is not a distill.tasks.Task")
    return task


def build_stages(cfg: DictConfig) -> dict[str, CompressionStage]:
    """The `compress` group: stages to run after distillation, in the order listed."""
    stages = build_group(cfg, "compress", "compression stage", lambda s: True, "")
    return {name: check_contract(s, CompressionStage, f"compress.{name}") for name, s in stages.items()}


class Job:
    """One run of the spine: the task, the data, the loggers, and how each stage trains."""

    def __init__(self, cfg: DictConfig, task: Task, dm: Any, loggers: list[Any] | None = None) -> None:
        self.cfg, self.task, self.dm = cfg, task, dm
        self.loggers: list[Any] = loggers or []
        self.callbacks: list[L.Callback] = []  # added to every stage's Trainer (benchmarks time epochs this way)
        self.histories: dict[str, list[dict[str, float]]] = {}  # stage -> one row of metrics per epoch

    def train(
        self,
        model: nn.Module,
        fit: DictConfig,
        stage: str,
        role: str,
        teachers: dict[str, nn.Module] | None = None,
        terms: dict[str, Any] | None = None,
    ) -> tuple[L.Trainer, L.LightningModule]:
        """Fit `model` with the `fit` recipe: on the data alone, or distilled from `teachers` by `terms`."""
        announce_stage(self.cfg, stage, fit.epochs)  # one line instead of each Trainer's banner
        task, dm = self.task, self.dm
        # Dropout and augmentation draw from torch's global generator: seeded here, each stage trains the same
        # whether or not the stages before it ran in this process (a teacher or baseline from the cache draws
        # nothing), so a rerun rebuilds the same model.
        torch.manual_seed(int(self.cfg.seed))
        module = task.module(self.cfg, model, fit, dm, stage, teachers, terms)
        loader = check_contract(task.train_loader(dm, fit, role), Batches, f"{stage} training batches")
        task.prepare_module(module, loader)
        trainer = make_trainer(self.cfg, stage, fit.epochs, self.loggers, fit=fit, monitor=task.monitor)
        history = StageHistory(stage)
        trainer.callbacks.extend([*self.callbacks, history, StageAxis(stage)])
        fit_stage(self.cfg, trainer, module, loader, task.val_loader(dm))
        self.histories[stage] = history.rows
        return trainer, module

    def cached(self, label: str, kind: str, node: DictConfig, fit: DictConfig, model: nn.Module, role: str) -> str:
        """`model` trained once with `fit` on the data alone and cached (or filled from the cache); its source."""
        task, cfg = self.task, self.cfg
        payload = fit_payload(
            cfg, task.cache_prefix + kind, node, fit, task.data_config(cfg), dm=self.dm, **task.cache_extra(self.dm, node)
        )  # fmt: skip
        stage = label.replace("-", "_")
        path, reused = cached_model(
            Path(cfg.paths.cache_dir), task.cache_prefix + label, payload, model,
            lambda m: self.train(m, fit, stage, role)[0],
        )  # fmt: skip
        if reused and (rows := cached_history(path)) is not None:
            self.histories[stage] = rows  # how the cached model was trained, in the run that reuses it
            log_history(self.loggers, stage, rows)  # its curves, in this run's loggers
        return source_of(path, reused)

    def teacher(self, name: str, spec: Any, model: nn.Module) -> str:
        """Fill the teacher `model`: from its checkpoint, as it is, or trained once and cached; returns its source."""
        if spec.ckpt_path:
            load_weights(model, spec.ckpt_path, f"teacher '{name}'")
            log.info("Teacher '%s' loaded from %s", name, spec.ckpt_path)
            return f"checkpoint {spec.ckpt_path}"
        if not spec.trains:
            return spec.source or "used as it is"
        return self.cached(f"teacher-{name}", "teacher", spec.model, spec.fit, model, "teacher")

    def baseline(self, spec: Any, model: nn.Module) -> str:
        """Fill `model` (the student's architecture) trained on the data alone, once and cached; returns its source."""
        node = spec.model
        if spec.cut:  # the architecture is the teacher's network cut: its shapes are part of the key
            shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
            node = OmegaConf.create({**OmegaConf.to_container(spec.model, resolve=True), "cut_shapes": shapes})
        return self.cached("baseline", "baseline", node, spec.baseline, model, "baseline")

    def distill(
        self, student: nn.Module, teachers: dict[str, nn.Module], fit: DictConfig, stage: str
    ) -> tuple[L.Trainer, L.LightningModule]:
        terms = build_terms(self.cfg, self.task.terms_group)
        return self.train(student, fit, stage, "student", teachers, terms)


def born_again(job: Job, spec: Any, baseline: nn.Module) -> tuple[dict[str, nn.Module], nn.Module, list[str], Any]:
    """Born-Again Networks (Furlanello et al. 2018): self-distillation over generations.

    Generation k is the student architecture distilled from generation k-1; generation 0 is
    the baseline, trained on the labels. With `born_again.ensemble`, the final student learns
    from all generations at once (their combination set by `multi_teacher`). Returns the
    generations, the final student, the names of its teachers and its fit's (trainer, module).
    """
    cfg, task = job.cfg, job.task
    generations = cfg.born_again.generations
    models = {"baseline": baseline}
    previous = "baseline"
    fitted: Any = None
    for k in range(1, generations + 1):
        net = task.build_model(spec.model, "student", cfg.seed + k, job.dm, trains=True)  # each generation afresh
        fitted = job.distill(net, {previous: models[previous]}, spec.fit, f"gen{k}")
        models[f"gen{k}"] = net
        previous = f"gen{k}"
    if cfg.born_again.get("ensemble"):
        student = task.build_model(spec.model, "student", cfg.seed + generations + 1, job.dm, trains=True)
        fitted = job.distill(student, dict(models), spec.fit, "student")
        return models, student, list(models), fitted
    student = models.pop(previous)
    return models, student, [f"gen{generations - 1}" if generations > 1 else "baseline"], fitted


def compress(
    job: Job, student: nn.Module, teachers: dict[str, nn.Module], fit: DictConfig, stages: dict[str, Any], out: Path
) -> tuple[dict[str, nn.Module | Path], dict[str, dict], dict[str, str] | None]:
    """Run the stages in order on the distilled student.

    Returns the model (or artifact) after each stage, what each stage reported, and the first
    failure (`{"stage", "error"}`), after which no later stage runs; earlier results are kept.
    """
    current_stage = ""

    def redistill(model: nn.Module, epochs: int, lr: float) -> None:
        short = copy.deepcopy(fit)
        short.epochs, short.optimizer.lr = epochs, lr
        job.distill(model, teachers, short, f"compress_{current_stage}")

    # Ranks other than 0 repeat every stage (so that training stages run on all of them) into a scratch folder.
    out_dir = out / "compressed" if distributed.is_global_zero() else Path(tempfile.mkdtemp(prefix="distill-rank"))
    ctx = job.task.stage_context(job.dm, out_dir, redistill if teachers else None)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    current: nn.Module | Path = job.task.stage_input(student)
    results: dict[str, nn.Module | Path] = {}
    infos: dict[str, dict] = {}
    for name, stage in stages.items():
        log.info("Compression stage '%s'", name)
        current_stage = name
        try:
            result = stage.apply(current, ctx)
        except DistillError as err:
            log.error("compression stage '%s' failed: %s", name, err)
            return results, infos, {"stage": name, "error": str(err)}
        if not isinstance(result, StageResult):
            raise DistillError(f"compress.{name}: apply() returned {type(result).__name__}, not a StageResult")
        current = result.model if result.model is not None else result.artifact
        results[f"compress:{name}"] = current
        infos[f"compress:{name}"] = result.info
    return results, infos, None


def measure(
    task: Task, models: dict[str, nn.Module | Path], roles: dict[str, str], dm: Any, cfg: DictConfig, out: Path,
    teacher_names: list[str],
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per model: the task's metrics (on `report.split`), then size and speed measured the same way for
    every task."""
    metrics = task.evaluate(models, dm, teacher_names, split=report_split(task, cfg))
    example = task.example_input(dm)
    rows = []
    for name, model in models.items():
        row: dict[str, Any] = {"model": name, "role": roles[name], **metrics[name]}
        weights = out / task.weights_folder / f"{name.replace(':', '_')}.pt" if task.weights_folder else None
        runner = task.runner(model) if isinstance(model, nn.Module) else model
        row.update(size_and_speed(model, runner, example, cfg.report, weights, flops=task.count_flops))
        rows.append(row)
    return rows


def report_split(task: Task, cfg: DictConfig) -> str:
    """The split the report's figures are measured on: `report.split` (test unless a search sets val)."""
    split = str((cfg.get("report") or {}).get("split") or "test")
    if split not in task.report_splits:
        raise DistillError(f"report.split: this task reports on {' or '.join(task.report_splits)}, not {split!r}")
    return split


def search_entry(
    task: Task, models: dict[str, nn.Module | Path], rows: list[dict[str, Any]], dm: Any, out: Path
) -> dict[str, Any]:
    """What a search optimises (report.json's `search`): the run's last model (the last compression stage that
    ran, else the student), its validation figure (the test set stays out), bytes and batch-1 latency."""
    row = next(r for r in reversed(rows) if r["model"] == "student" or r["model"].startswith("compress:"))
    name = row["model"]
    entry: dict[str, Any] = {"model": name, "split": "val", **task.validation_figure(name, models[name], row, dm)}
    entry.update({k: row.get(k) for k in ("bytes", "latency_ms_batch_1", "parameters")})
    entry["latency_ms"] = entry.pop("latency_ms_batch_1")
    entry["within_budget"] = row.get("meets_budget")
    if row.get("artifact"):
        entry["file"] = row["artifact"]
    elif name == "student":
        entry["file"] = str(out / "student.ckpt")
    elif task.weights_folder:
        entry["file"] = str(out / task.weights_folder / f"{name.replace(':', '_')}.pt")
    return entry


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the whole job for the config's task; returns the report."""
    task = build_task(cfg)
    out = Path(cfg.paths.output_dir)
    task.check_config(cfg)  # every recipe and data field, before anything is read or trained
    report_split(task, cfg)
    prepare_run(cfg.seed, out / ".hydra")

    # 1. Everything that can be checked without training is checked first.
    dm = check_contract(task.build_data(cfg), DataModule, "data")
    job = Job(cfg, task, dm)
    specs = task.teachers(cfg)
    spec = task.student(cfg)
    generations = (cfg.get("born_again") or {}).get("generations", 0)
    if generations and specs:
        raise DistillError("born_again trains its own teachers (the student's generations): run it with teacher=[]")
    if generations and spec.baseline is None:
        raise DistillError("born_again starts from the baseline (generation 0): student.baseline cannot be null")
    for tspec in specs.values():
        if tspec.ckpt_path:
            read_checkpoint(tspec.ckpt_path)  # missing or unreadable: now, not after hours of training
    teachers = {n: task.build_model(s.model, f"teacher '{n}'", cfg.seed, dm, trains=s.trains) for n, s in specs.items()}
    if spec.cut:  # cut from the teacher as it is now, for the checks and the dry run; again once it is trained
        student, _ = task.cut_student(cfg, spec.cut, teachers[spec.cut_from], dm)
    else:
        student = task.build_model(spec.model, "student", cfg.seed, dm, trains=True)
    # What trains in this run, counted before teachers are frozen: a teacher used as it is trains nothing.
    trained = {f"teacher:{n}": trainable_parameters(t) if specs[n].trains else 0 for n, t in teachers.items()}
    trained["student"] = trainable_parameters(student)
    task.check_models(cfg, dm, student, teachers)
    limits = budget.limits_of(cfg.get("budget"))
    if limits:  # a budget the teacher already meets, or that no model of the run can meet: before training
        if "max_flops" in limits and not task.count_flops:
            raise DistillError(
                "budget.max_flops: this task's report counts no FLOPs; limit parameters, bytes or latency"
            )
        example, repeats = task.example_input(dm), cfg.report.latency_repeats
        figures = {n: budget.size_figures(t, task.runner(t), example, limits, repeats) for n, t in teachers.items()}
        budget.check_teacher_outside(limits, figures)
        mine = budget.size_figures(student, task.runner(student), example, limits, repeats)
        budget.check_reachable(limits, mine, list(cfg.get("compress") or {}))
    if generations:
        dry_teachers: dict[str, nn.Module] = {"baseline": copy.deepcopy(student)}
    else:  # copies of the teachers that will train (the dry run freezes what it is given)
        copies = task.probe_copies_teachers
        dry_teachers = {n: copy.deepcopy(t) if copies or specs[n].trains else t for n, t in teachers.items()}
    dry = task.module(cfg, copy.deepcopy(student), spec.fit, dm, "student", dry_teachers,
                      build_terms(cfg, task.terms_group))  # fmt: skip
    task.prepare_module(dry, task.train_loader(dm, spec.fit, "student"))  # a dry run: shapes, layers, classes
    del dry, dry_teachers
    stages = build_stages(cfg)
    set_resume_dir(cfg, out)
    distributed.start(cfg.trainer)  # a multi-process trainer: its processes start here, not at the first fit
    job.loggers = build_loggers(cfg)

    # 2. Teachers: a checkpoint, used as they are, or trained once and cached.
    sources = {f"teacher:{name}": job.teacher(name, tspec, teachers[name]) for name, tspec in specs.items()}

    cut_info: dict[str, Any] = {}
    if spec.cut:  # the student: the trained teacher's network, cut
        student, cut_info = task.cut_student(cfg, spec.cut, teachers[spec.cut_from], dm)
        trained["student"] = trainable_parameters(student)

    # 3. Baseline: the student's architecture trained on the data alone (none with `baseline: null`).
    baseline: nn.Module | None = None
    if spec.cut and spec.baseline is not None:  # the cut architecture, initialised afresh
        baseline = task.reinitialised(student, cfg.seed)
    elif spec.baseline is not None:
        baseline = task.build_model(spec.model, "student", cfg.seed, dm, trains=True)
    if baseline is not None:
        trained["baseline"] = trainable_parameters(baseline)
        sources["baseline"] = job.baseline(spec, baseline)

    # 4. Distillation (from the teachers, or from the student's own earlier generations).
    start = time.perf_counter()
    if generations:
        generated, student, teacher_names, (trainer, module) = born_again(job, spec, baseline)
        models = dict(generated)
        sources.update({name: "born-again generation" for name in generated if name != "baseline"})
    else:
        trainer, module = job.distill(student, teachers, spec.fit, "student")
        models = {f"teacher:{n}": t for n, t in teachers.items()}
        if baseline is not None:
            models["baseline"] = baseline
        teacher_names = [f"teacher:{n}" for n in teachers]
    seconds = time.perf_counter() - start
    sources["student"] = "distilled in this run"
    if spec.cut:
        sources["student"] = f"cut from teacher '{spec.cut_from}' ({cut_info['what']}), distilled in this run"
        if baseline is not None:
            sources["baseline"] += " (the cut architecture, initialised afresh)"
    if distributed.is_global_zero():
        task.save_student(out / "student.ckpt", student, cfg, dm)

    # 5. Compression stages, in the order listed (on every rank: recovery stages train together).
    compressed, infos, failure = compress(job, student, teachers, spec.fit, stages, out) if stages else ({}, {}, None)
    if not distributed.is_global_zero():
        return {}

    # 6. Every model measured the same way.
    models["student"] = student
    roles = {n: "teacher" if n.startswith("teacher:") else "generation" if n.startswith("gen") else n for n in models}
    roles.update({n: "compressed" for n in compressed})
    rows = measure(task, {**models, **compressed}, roles, dm, cfg, out, teacher_names)
    for row in rows:
        row["source"] = sources.get(row["model"], "")
        if task.report_trainable and row["model"] in trained:
            row["trainable_parameters"] = trained[row["model"]]
        if row["model"] in infos:
            row["stage"] = infos[row["model"]]
    context = RunContext(cfg, dm, models, rows, module, trainer, seconds, out, job.loggers, job.histories)
    extra = {"distill_seconds": seconds, "student_epoch_kept": kept_epoch(trainer), **task.report_extra(context)}
    if cut_info:
        extra["cut"] = {"teacher": spec.cut_from, **cut_info}
    if limits:
        extra["budget"] = budget.judge(rows, limits)
    extra["search"] = search_entry(task, {**models, **compressed}, rows, dm, out)
    title = f"{cfg.task_name}: {', '.join(teacher_names) or 'no teacher'} → student"
    report = publish_report(rows, out, job.loggers, title=title, failure=failure, extra=extra,
                            summary=task.summary(rows), histories=job.histories,
                            params=run_params(cfg))  # fmt: skip
    mark_continued(cfg.get("resume_dir"), out)
    return report
