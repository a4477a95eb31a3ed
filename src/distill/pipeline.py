"""The main job, in order: data → teachers → baseline student → distilled student → report."""

from __future__ import annotations

import copy
import importlib
import itertools
import logging
import os
import re
import sys
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import CheckpointIO
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from distill import distributed
from distill.checkpoints import AtomicCheckpointIO, save_model
from distill.compress.base import StageContext
from distill.data.base import ArrayDataModule, attach_standardization, has_standardization
from distill.errors import DistillError
from distill.losses.base import LossTerm
from distill.measure import classification_metrics, predict
from distill.model_cache import cached_model, source_of
from distill.modules import DistillationModule, SupervisedModule
from distill.report import measure_models, publish_report
from distill.resume import check_compatible, find_resume_dir, mark_continued, stage_checkpoint
from distill.runtime import prepare_run
from distill.secrets import command_line_has_secret, redact
from distill.teachers import acquire_teacher, check_teacher_config
from distill.validate import check_train_config

log = logging.getLogger(__name__)

# Trainer settings that cannot change the trained weights; every other Trainer setting (max_time,
# precision, limits, accumulation, sync_batchnorm, ...) is part of a cached model's key.
TRAINER_KEYS_NOT_IN_CACHE_KEY = (
    "_target_", "accelerator", "devices", "num_nodes", "strategy", "plugins", "logger", "callbacks",
    "enable_progress_bar", "enable_model_summary", "enable_checkpointing", "default_root_dir", "profiler",
    "log_every_n_steps", "num_sanity_val_steps", "barebones", "detect_anomaly", "inference_mode",
    "use_distributed_sampler",
)  # fmt: skip
# Data settings that say where the data are or how they are evaluated, not what a model learns from:
# the content itself is in the key (the data module's fingerprint).
DATA_KEYS_NOT_IN_CACHE_KEY = (
    "data_dir", "cache_dir", "eval_batch_size", "path", "paths", "root", "download", "verify", "device",
    "channels_last", "num_workers", "pin_memory",
)  # fmt: skip
# Callbacks that watch or save a training without changing it; any other callback is part of the key.
CALLBACKS_NOT_IN_CACHE_KEY = (
    "lightning.pytorch.callbacks.ModelCheckpoint", "lightning.pytorch.callbacks.TQDMProgressBar",
    "lightning.pytorch.callbacks.RichProgressBar", "lightning.pytorch.callbacks.LearningRateMonitor",
    "lightning.pytorch.callbacks.ModelSummary", "lightning.pytorch.callbacks.RichModelSummary",
    "lightning.pytorch.callbacks.DeviceStatsMonitor",
)  # fmt: skip


def instantiation_message(err: BaseException) -> str:
    """What went wrong in `hydra.utils.instantiate`, in one line: the cause's own words, without Hydra's advice."""
    cause = err.__cause__ or err.__context__
    text = f"{type(cause).__name__}: {cause}" if cause is not None and str(cause) else str(err)
    text = re.sub(r",? ?set env var HYDRA_FULL_ERROR=1 to see chained exception\.?", "", text)
    text = re.sub(r"\s*full_key: \S+", "", text)
    return " ".join(text.split())


def build(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, with a user error surfaced as one line naming `what`."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, DistillError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise DistillError(f"cannot build {what}: {instantiation_message(err)}") from None


# The data module `build_data` built for a run's config, by the config's id (dropped with the config).
_DATA_OF_CONFIG: dict[int, Any] = {}


def build_net(node: DictConfig, what: str, seed: int, dm: Any = None) -> nn.Module:
    """A network from its config, initialised from `seed` so that equal configs start equal.

    On data whose networks standardise their input (`dm.input_stats`: `data=file`), the network gets
    that step (`distill.data.base.attach_standardization`). `dm` defaults to the data that
    `build_data` built for the config `node` belongs to, so that every network of a run (teachers,
    baseline, born-again generations, student) takes the same raw features.
    """
    torch.manual_seed(seed)
    net = build(node, what)
    if not isinstance(net, nn.Module):
        raise DistillError(f"{what}: _target_ {node.get('_target_')} did not give an nn.Module")
    if dm is None and hasattr(node, "_get_root"):
        dm = _DATA_OF_CONFIG.get(id(node._get_root()))
    stats = getattr(dm, "input_stats", None)
    if stats is not None:
        attach_standardization(net, *stats)
    return net


def build_data(cfg: DictConfig) -> ArrayDataModule:
    """Instantiate and set up the data; write its class count and input shape into `cfg.data`.

    The data module is also remembered for `cfg`: `build_net` gives the networks built from `cfg`
    the data's input step.
    """
    dm = build(cfg.data, "data")
    dm.prepare_data()
    dm.setup("fit")
    with open_dict(cfg):
        cfg.data.num_classes = dm.num_classes
        cfg.data.input_shape = list(dm.input_shape)
    _DATA_OF_CONFIG[id(cfg)] = dm
    weakref.finalize(cfg, _DATA_OF_CONFIG.pop, id(cfg), None)
    log.info("Data: %s", dm.describe())
    return dm


def build_group(cfg: DictConfig, group: str, what: str, check: Callable[[Any], bool], expected: str) -> dict[str, Any]:
    """Instantiate every selected option of a multi-select group, in the order listed."""
    built = {}
    for name, node in (cfg.get(group) or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise DistillError(f"{group}.{name} is not a {what} config (it needs a _target_)")
        obj = build(node, f"{group}.{name}")
        if not check(obj):
            raise DistillError(f"{group}.{name}: {node._target_} {expected}")
        built[name] = obj
    return built


def build_terms(cfg: DictConfig) -> dict[str, LossTerm]:
    """The `distill` group: one weighted loss term per selected option."""
    return build_group(
        cfg, "distill", "loss term", lambda t: isinstance(t, LossTerm), "is not a distill.losses.LossTerm"
    )


def build_loggers(cfg: DictConfig) -> list[Any]:
    """Loggers of the `logger` group; W&B goes offline when no API key is configured."""
    nodes = [n for n in (cfg.get("logger") or {}).values() if isinstance(n, DictConfig) and "_target_" in n]
    if any("Wandb" in n._target_ for n in nodes) and not _wandb_key_available():
        os.environ.setdefault("WANDB_MODE", "offline")
        log.info("W&B: no API key found, logging offline (sync later with `wandb sync`)")
    group = sweep_name()

    def extra(node: DictConfig) -> dict[str, Any]:
        if "Wandb" not in node._target_:
            return {}
        kwargs: dict[str, Any] = {}
        if group and not node.get("group"):
            kwargs["group"] = group
            log.info("W&B group: %s (the jobs of this sweep)", group)
        if command_line_has_secret(sys.argv[1:]):  # W&B records the command line in its run metadata
            import wandb

            log.warning("A credential is on the command line: W&B will not record the run's metadata")
            kwargs["settings"] = wandb.Settings(x_disable_meta=True)
        return kwargs

    loggers = [build(n, f"logger {n._target_}", **extra(n)) for n in nodes]
    config = redact(OmegaConf.to_container(cfg, resolve=True))
    for logger in loggers:
        logger.log_hyperparams(config)
    return loggers


def sweep_name() -> str | None:
    """The multirun's folder name inside a `-m` sweep (so that W&B groups its jobs), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir).name


def _wandb_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return bool(os.environ.get("WANDB_API_KEY"))
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def make_trainer(cfg: DictConfig, stage: str, epochs: int, loggers: list[Any]) -> L.Trainer:
    """A fresh Trainer for one training stage, with its own callbacks and checkpoint folder."""
    callbacks = [
        build(n, f"callback {n._target_}") for n in (cfg.get("callbacks") or {}).values() if n and "_target_" in n
    ]
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            cb.dirpath = os.path.join(cb.dirpath, stage)
    # Lightning writes its SLURM pre-emption checkpoint (hpc_ckpt_<n>.ckpt) into default_root_dir.
    root = os.path.join(cfg.paths.output_dir, "checkpoints", stage)
    plugins = [build(n, f"trainer plugin {n.get('_target_')}") for n in (cfg.trainer.get("plugins") or [])]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())  # a full disk leaves the previous last.ckpt, not half a new one
    return build(
        cfg.trainer, "trainer", max_epochs=epochs, logger=loggers or False, callbacks=callbacks,
        default_root_dir=root, plugins=plugins,
    )  # fmt: skip


def command_overrides() -> list[str] | None:
    """This run's command-line overrides, as Hydra saved them (credentials redacted), or None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    from distill.resume import saved_overrides

    saved = saved_overrides(Path(HydraConfig.get().runtime.output_dir))
    return saved if saved is not None else list(HydraConfig.get().overrides.task)


def set_resume_dir(cfg: DictConfig, out: Path) -> None:
    """Record in `cfg.resume_dir` the interrupted run this one continues (`ckpt_path`, or a SLURM requeue), if any."""
    resume_dir = find_resume_dir(cfg.get("ckpt_path"), out, command_overrides())
    with open_dict(cfg):
        cfg.resume_dir = str(resume_dir) if resume_dir else None
    if resume_dir:
        log.info("Continuing the interrupted run in %s", resume_dir)


def fit_stage(
    cfg: DictConfig, trainer: L.Trainer, module: L.LightningModule, train_loader: Any, val_loader: Any
) -> None:
    """`trainer.fit`, resumed from the stage's checkpoint in the run being continued, if there is one."""
    stage = Path(trainer.default_root_dir).name
    ckpt = stage_checkpoint(cfg.get("resume_dir"), stage)
    if ckpt is not None:
        check_compatible(ckpt, module)
        log.info("Resuming stage '%s' from %s", stage, ckpt)
    for loader in (train_loader, val_loader):
        if hasattr(loader, "sharded"):
            loader.sharded = trainer.world_size > 1
    nets = [module.net, *getattr(module, "teachers", {}).values()]
    if (cfg.get("data") or {}).get("channels_last"):  # inputs come channels-last: so should conv weights
        for net in nets:
            net.to(memory_format=torch.channels_last)
    if cfg.get("compile"):
        for net in nets:
            net.compile()  # in place: parameter names (checkpoints, cache) stay as they are
    try:
        # weights_only: a checkpoint file cannot run code when it is loaded.
        trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt, weights_only=True)
    finally:
        for net in nets:
            net._compiled_call_impl = None  # measured, exported and compressed as the plain module


def _neutral_callback(node: Any) -> bool:
    """A callback that cannot change the trained weights: listed above, or its class says `cache_neutral = True`."""
    target = str(node.get("_target_", "")) if isinstance(node, dict) else ""
    if target in CALLBACKS_NOT_IN_CACHE_KEY:
        return True
    module, _, name = target.rpartition(".")
    try:
        return bool(getattr(getattr(importlib.import_module(module), name), "cache_neutral", False))
    except Exception:  # noqa: BLE001 - a class that cannot be located is kept in the key
        return False


def data_fingerprint(dm: Any) -> str | None:
    """The data module's digest of what it holds (computed once), or None when it has no `fingerprint()`."""
    if dm is None or not callable(getattr(dm, "fingerprint", None)):
        return None
    if getattr(dm, "_cache_fingerprint", None) is None:
        dm._cache_fingerprint = dm.fingerprint()
    return dm._cache_fingerprint


def fit_payload(
    cfg: DictConfig,
    kind: str,
    net: DictConfig,
    fit: DictConfig,
    data: DictConfig | None = None,
    dm: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    """Everything that determines a trained model's weights: the cache key's content.

    The whole recipe, the network, the seed, every Trainer setting but those named in
    TRAINER_KEYS_NOT_IN_CACHE_KEY, the callbacks that may change training, the number of processes,
    and the data: their config (less where the files are) and, given the data module `dm` (or a
    `data_fingerprint` entry in `extra`), a digest of their content. `data` is the data config node
    (`cfg.data` unless given); `extra` adds entries (e.g. the vocabulary size).
    """
    data_items = OmegaConf.to_container(cfg.data if data is None else data, resolve=True)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    fingerprint = extra.pop("data_fingerprint", None) or data_fingerprint(dm)
    if fingerprint is None:  # no digest of the content: at least the paths stay in the key
        kept = ("path", "paths", "root")
        data_part = {k: v for k, v in data_items.items() if k in kept or k not in DATA_KEYS_NOT_IN_CACHE_KEY}
    else:
        data_part = {k: v for k, v in data_items.items() if k not in DATA_KEYS_NOT_IN_CACHE_KEY}
    callbacks = OmegaConf.to_container(cfg.get("callbacks") or {}, resolve=True)
    return {
        "kind": kind,
        "net": OmegaConf.to_container(net, resolve=True),
        "fit": OmegaConf.to_container(fit, resolve=True),
        "data": data_part,
        "data_fingerprint": fingerprint,
        "seed": cfg.seed,
        "trainer": {k: v for k, v in trainer.items() if k not in TRAINER_KEYS_NOT_IN_CACHE_KEY},
        "callbacks": {k: v for k, v in sorted(callbacks.items()) if v and not _neutral_callback(v)},
        "processes": distributed.world_size(),
        **extra,
    }


def train_supervised(cfg: DictConfig, stage: str, fit: DictConfig, dm: ArrayDataModule, loggers: list[Any]):
    """A `train(net)` function fitting `net` on the labelled training set with the `fit` recipe."""

    def train(net: nn.Module) -> None:
        optimizer = build(fit.optimizer, f"{stage} optimizer")
        scheduler = build(fit.scheduler, f"{stage} scheduler") if fit.get("scheduler") else None
        module = SupervisedModule(net, optimizer, dm.num_classes, scheduler, stage, fit.get("gradient_clip_val"))
        trainer = make_trainer(cfg, stage, fit.epochs, loggers)
        fit_stage(cfg, trainer, module, dm.train_dataloader(fit.get("batch_size")), dm.val_dataloader())
        return trainer

    return train


def acquire_teachers(
    cfg: DictConfig, teacher_cfgs: DictConfig, teachers: dict[str, nn.Module], dm: ArrayDataModule, loggers: list[Any]
) -> dict[str, str]:
    """Fill each teacher net from its checkpoint, or train it once and cache it; returns where each came from."""
    sources = {}
    for name, tcfg in teacher_cfgs.items():
        payload = fit_payload(cfg, "teacher", tcfg.net, tcfg.fit, dm=dm)
        train = train_supervised(cfg, f"teacher_{name}", tcfg.fit, dm, loggers)
        sources[f"teacher:{name}"] = acquire_teacher(
            name, tcfg, teachers[name], train, Path(cfg.paths.cache_dir), payload
        )
    return sources


def acquire_baseline(cfg: DictConfig, dm: ArrayDataModule, loggers: list[Any]) -> tuple[nn.Module, str]:
    """The student architecture trained on the labels alone (cached); returns it and where it came from."""
    baseline = build_net(cfg.student.net, "student", cfg.seed)
    payload = fit_payload(cfg, "baseline", cfg.student.net, cfg.student.baseline, dm=dm)
    train = train_supervised(cfg, "baseline", cfg.student.baseline, dm, loggers)
    path, reused = cached_model(Path(cfg.paths.cache_dir), "baseline", payload, baseline, train)
    return baseline, source_of(path, reused)


def distillation_module(
    cfg: DictConfig, student: nn.Module, teachers: dict[str, nn.Module], dm: ArrayDataModule, prefix: str = "student"
) -> DistillationModule:
    """The distillation LightningModule of the run's config."""
    fit = cfg.student.fit
    return DistillationModule(
        student,
        teachers,
        build_terms(cfg),
        optimizer=build(fit.optimizer, "student optimizer"),
        scheduler=build(fit.scheduler, "student scheduler") if fit.get("scheduler") else None,
        num_classes=dm.num_classes,
        example_input=dm.model_inputs("train", 2),
        cache_teacher_outputs=cfg.get("cache_teacher_outputs", True),
        num_samples=dm.num_train + dm.num_transfer,
        multi_teacher=cfg.get("multi_teacher", "mean_logits"),
        prefix=prefix,
        gradient_clip_val=fit.get("gradient_clip_val"),
    )


def distill(
    cfg: DictConfig,
    dm: ArrayDataModule,
    student: nn.Module,
    teachers: dict[str, nn.Module],
    loggers: list[Any],
    stage: str,
) -> L.Trainer:
    """Train `student` from `teachers` with the `distill` terms and the student's fit recipe."""
    module = distillation_module(cfg, student, teachers, dm, prefix=stage)
    trainer = make_trainer(cfg, stage, cfg.student.fit.epochs, loggers)
    fit_stage(cfg, trainer, module, dm.distill_dataloader(cfg.student.fit.get("batch_size")), dm.val_dataloader())
    return trainer


def born_again(
    cfg: DictConfig, dm: ArrayDataModule, baseline: nn.Module, loggers: list[Any]
) -> tuple[dict[str, nn.Module], nn.Module, list[str]]:
    """Born-Again Networks (Furlanello et al. 2018): self-distillation over generations.

    Generation k is the student architecture distilled from generation k-1; generation 0 is
    the baseline, trained on the labels. With `born_again.ensemble`, the final student learns
    from all generations at once (their combination set by `multi_teacher`). Returns the
    generations, the final student and the names of its teachers.
    """
    generations = cfg.born_again.generations
    models = {"baseline": baseline}
    previous = "baseline"
    for k in range(1, generations + 1):
        net = build_net(cfg.student.net, "student", cfg.seed + k)  # each generation starts afresh
        distill(cfg, dm, net, {previous: models[previous]}, loggers, stage=f"gen{k}")
        models[f"gen{k}"] = net
        previous = f"gen{k}"
    if cfg.born_again.get("ensemble"):
        student = build_net(cfg.student.net, "student", cfg.seed + generations + 1)
        distill(cfg, dm, student, dict(models), loggers, stage="student")
        return models, student, list(models)
    student = models.pop(previous)
    return models, student, [f"gen{generations - 1}" if generations > 1 else "baseline"]


def build_stages(cfg: DictConfig) -> dict[str, Any]:
    """The `compress` group: stages to run after distillation, in the order listed."""
    return build_group(
        cfg,
        "compress",
        "compression stage",
        lambda s: callable(getattr(s, "apply", None)),
        "has no apply(model, ctx) method",
    )


def compress(
    cfg: DictConfig,
    dm: ArrayDataModule,
    student: nn.Module,
    teachers: dict[str, nn.Module],
    stages: dict[str, Any],
    loggers: list[Any],
    out: Path,
) -> tuple[dict[str, nn.Module | Path], dict[str, dict], dict[str, str] | None]:
    """Run the stages in order on the distilled student.

    Returns the model (or artifact) after each stage, what each stage reported, and the first
    failure (`{"stage", "error"}`), after which no later stage runs; earlier results are kept.
    """

    def redistill(model: nn.Module, epochs: int, lr: float) -> None:
        short = copy.deepcopy(cfg)
        short.student.fit.epochs, short.student.fit.optimizer.lr = epochs, lr
        distill(short, dm, model, teachers, loggers, stage=f"compress_{current_stage}")

    calibration = [batch["x"].cpu() for batch in itertools.islice(dm.train_dataloader(256), 16)]
    # Ranks other than 0 repeat every stage (so that training stages run on all of them) into a scratch folder.
    out_dir = out / "compressed" if distributed.is_global_zero() else Path(tempfile.mkdtemp(prefix="distill-rank"))
    ctx = StageContext(
        dm.model_inputs("val", 64), calibration, out_dir, dm.num_classes, redistill if teachers else None
    )
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    current: nn.Module | Path = student
    results: dict[str, nn.Module | Path] = {}
    infos: dict[str, dict] = {}
    current_stage = ""
    for name, stage in stages.items():
        log.info("Compression stage '%s'", name)
        current_stage = name
        try:
            result = stage.apply(current, ctx)
        except DistillError as err:
            log.error("compression stage '%s' failed: %s", name, err)
            return results, infos, {"stage": name, "error": str(err)}
        current = result.model if result.model is not None else result.artifact
        results[f"compress:{name}"] = current
        infos[f"compress:{name}"] = result.info
    return results, infos, None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the whole job; returns the report."""
    out = Path(cfg.paths.output_dir)
    check_train_config(cfg)  # every recipe and data field, before anything is read or trained
    prepare_run(cfg.seed, out / ".hydra")
    teacher_cfgs = cfg.get("teacher") or {}
    generations = (cfg.get("born_again") or {}).get("generations", 0)
    if generations and teacher_cfgs:
        raise DistillError("born_again trains its own teachers (the student's generations): run it with teacher=[]")

    # 1. Everything that can be checked without training is checked first.
    dm = build_data(cfg)
    teachers = {name: build_net(t.net, f"teacher '{name}'", cfg.seed) for name, t in teacher_cfgs.items()}
    for name, tcfg in teacher_cfgs.items():
        check_teacher_config(name, tcfg)
    student = build_net(cfg.student.net, "student", cfg.seed)
    dry_teachers = {"baseline": copy.deepcopy(student)} if generations else copy.deepcopy(teachers)
    distillation_module(cfg, copy.deepcopy(student), dry_teachers, dm)  # dry run: shapes, layers, classes
    stages = build_stages(cfg)
    set_resume_dir(cfg, out)
    distributed.start(cfg.trainer)  # a multi-process trainer: its processes start here, not at the first fit
    loggers = build_loggers(cfg)

    # 2. Teachers: checkpoint, or trained once and cached.
    sources = acquire_teachers(cfg, teacher_cfgs, teachers, dm, loggers)

    # 3. Baseline: the same student architecture trained on the labels alone.
    baseline, sources["baseline"] = acquire_baseline(cfg, dm, loggers)

    # 4. Distillation (from the teachers, or from the student's own earlier generations).
    if generations:
        models, student, teacher_names = born_again(cfg, dm, baseline, loggers)
        sources.update({name: "born-again generation" for name in models if name != "baseline"})
    else:
        distill(cfg, dm, student, teachers, loggers, stage="student")
        models = {**{f"teacher:{n}": t for n, t in teachers.items()}, "baseline": baseline}
        teacher_names = [f"teacher:{n}" for n in teachers]
    sources["student"] = "distilled in this run"
    meta = {
        "net": OmegaConf.to_container(cfg.student.net, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "num_classes": dm.num_classes,
        "class_names": getattr(dm, "class_names", None),  # label i is class_names[i]
        "input_transform": "standardize" if has_standardization(student) else None,  # statistics: in the weights
    }
    if distributed.is_global_zero():
        save_model(out / "student.ckpt", student, **meta)

    # 5. Compression stages, in the order listed (on every rank: recovery stages train together).
    compressed, infos, failure = (
        compress(cfg, dm, student, teachers, stages, loggers, out) if stages else ({}, {}, None)
    )
    if not distributed.is_global_zero():
        return {}

    # 6. Every model measured the same way.
    measured = {**models, "student": student, **compressed}
    rows = measure_models(measured, dm, out / "models", cfg.report, teacher_names=teacher_names)
    for row in rows:
        row["source"] = sources.get(row["model"], "")
        if row["model"] in infos:
            row["stage"] = infos[row["model"]]
    # The distilled student's validation accuracy: what a sweeper may optimise without seeing the test set.
    val_logits, val_targets = predict(student, dm.val_dataloader())
    extra = {"student_val_accuracy": classification_metrics(val_logits, val_targets)["accuracy"]}
    if getattr(dm, "class_names", None):
        extra["class_names"] = dm.class_names
    title = f"{cfg.task_name}: {', '.join(teacher_names) or 'no teacher'} → student"
    report = publish_report(rows, out, loggers, title=title, failure=failure, extra=extra)
    mark_continued(cfg.get("resume_dir"), out)
    return report
