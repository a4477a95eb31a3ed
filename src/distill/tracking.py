"""What makes the W&B, TensorBoard and CSV runs of a job readable.

- Every stage of a job logs into the same run, each with its own x-axis: the stage's epoch
  (`<stage>/epoch`, logged with each epoch's metrics; W&B plots `<stage>/*` against it), where the
  trainer's step and epoch restart at every stage (`StageAxis`, and `log_history` for a teacher or
  baseline reused from the cache, whose curves were recorded when it was trained).
- A W&B run is named after what sets it apart (the experiment and the command-line overrides, or
  a sweep job's swept values: `run_name`) and tagged with the data, models, loss terms and
  compression stages (`run_tags`).
- TensorBoard's hparams are a flat dict of the chosen options and key recipe values (`run_params`),
  logged at the end with the report's real figures.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)

TAG_LENGTH = 64  # W&B refuses longer tags
NAME_LENGTH = 128

# Overrides that say where and how a run is written or measured, not what it trains: left out of run names.
NAME_SKIPS = ("paths", "logger", "hydra", "extras", "callbacks.progress_bar", "ckpt_path", "report")
SHORT_KEYS = {"temperature": "T", "learning_rate": "lr", "batch_size": "bs", "weight_decay": "wd"}
EXPERIMENT_GROUPS = ("experiment", "lm_experiment")


def axis(stage: str) -> str:
    """The metric that counts a stage's epochs (its x-axis)."""
    return f"{stage}/epoch"


# -- per-stage x-axis ---------------------------------------------------------------------------


class StageAxis(L.Callback):
    """Logs `<stage>/epoch` with each of the stage's epoch-level rows (validation and training) and
    tells W&B to plot the stage's metrics against it: all stages share one run whose step counter
    restarts at every stage. CSV gets a `<stage>/epoch` column, TensorBoard a `<stage>/epoch` scalar."""

    cache_neutral = True  # logs, never changes the weights

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._defined: set[str] = set()

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._define(trainer, ())

    def _log(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.loggers:
            return
        module.log(axis(self.stage), float(trainer.current_epoch), on_step=False, on_epoch=True, sync_dist=True)

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._log(trainer, module)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._log(trainer, module)
        if trainer.is_global_zero:
            self._define(trainer, trainer.callback_metrics)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._define(trainer, trainer.callback_metrics)

    def _define(self, trainer: L.Trainer, keys: Iterable[str]) -> None:
        new = {k for k in keys if k.startswith(f"{self.stage}/")} - self._defined
        if self._defined and not new:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                define_axis(logger.experiment, self.stage, new, axes=not self._defined)
        self._defined |= new | {axis(self.stage)}


def define_axis(run: Any, stage: str, keys: Iterable[str] = (), axes: bool = True) -> None:
    """W&B: plot `<stage>/*` (and each of `keys`, named exactly: exact names win over Lightning's `*`
    glob) against `<stage>/epoch`; with `axes`, hide the counters (they restart at every stage)."""
    if not callable(getattr(run, "define_metric", None)):
        return
    x = axis(stage)
    if axes:
        run.define_metric("epoch", hidden=True)  # Lightning's: restarts at every stage
        run.define_metric(x, hidden=True)
        run.define_metric(f"{stage}/*", step_metric=x, step_sync=True)
    for key in sorted(set(keys) - {x}):
        run.define_metric(key, step_metric=x, step_sync=True)


@rank_zero_only
def log_history(loggers: Iterable[Any], stage: str, rows: Iterable[Mapping[str, float]]) -> None:
    """Log a stage's stored history (`{"epoch": k, "train/loss": ...}` rows, e.g. a teacher reused
    from the cache) as `<stage>/...` metrics against `<stage>/epoch`, as if it had trained here.
    TensorBoard and CSV get the epoch as the step of these rows."""
    rows = [dict(r) for r in rows if "epoch" in r]
    loggers = list(loggers)
    if not rows or not loggers:
        return
    x = axis(stage)
    for logger in loggers:
        wandb = isinstance(logger, WandbLogger)
        if wandb:
            keys = {f"{stage}/{k}" for r in rows for k in r if k != "epoch"}
            define_axis(logger.experiment, stage, keys)
        for row in rows:
            epoch = int(row["epoch"])
            metrics = {f"{stage}/{k}": float(v) for k, v in row.items() if k != "epoch" and _finite(v)}
            metrics[x] = float(epoch)
            if wandb:
                logger.experiment.log(metrics)
            else:
                logger.log_metrics(metrics, step=epoch)
        logger.save()
    log.info("Logged the stored history of '%s' (%d epochs) to the loggers", stage, len(rows))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- run names and tags -------------------------------------------------------------------------


def _short_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_short_value(v) for v in value) if value else "[]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_short_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _path_like(value: str) -> bool:
    return "/" in value or "\\" in value or value.startswith("~")


def _parse(override: str) -> tuple[str, str, Any, bool] | None:
    """(prefix, key, value, swept) of one override; prefix: '' or '~' (a deletion)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    try:
        (parsed,) = OverridesParser.create().parse_overrides([override])
    except Exception:  # noqa: BLE001 - an override Hydra cannot read back: split it by hand
        key, _, value = override.lstrip("+~").partition("=")
        return ("~" if override.startswith("~") else "", key, value, False)
    prefix = "~" if parsed.type == OverrideType.DEL else ""
    if parsed.is_sweep_override():
        return (prefix, parsed.key_or_group, None, True)
    return (prefix, parsed.key_or_group, parsed.value(), False)


def _skipped(key: str, value: Any) -> bool:
    group = key.replace("/", ".")
    if any(group == s or group.startswith(s + ".") for s in NAME_SKIPS):
        return True
    return isinstance(value, str) and _path_like(value)


def _unique_suffixes(keys: list[str]) -> list[str]:
    """Each dotted key by its shortest last components that no other key ends with."""
    parts = [k.split(".") for k in keys]
    size = [1] * len(keys)
    while True:
        short = [".".join(p[-n:]) for p, n in zip(parts, size, strict=True)]
        clash = {s for s in short if sum(t == s for t in short) > 1}
        grow = [i for i, s in enumerate(short) if s in clash and size[i] < len(parts[i])]
        if not grow:
            return short
        for i in grow:
            size[i] += 1


def run_name(overrides: Iterable[str], fallback: str, swept: set[str] | None = None, limit: int = NAME_LENGTH) -> str:
    """A run's name from what sets it apart: its experiment, then its command-line overrides (only the
    `swept` keys' in a sweep job, when known), shortened (`distill.kd.temperature=8` → `T=8`, lists
    without brackets, 4 significant digits), without paths and where-to-write settings; else `fallback`.

    >>> run_name(["experiment=mnist1d_kd", "distill.kd.temperature=8", "student=resnet8", "paths.log_dir=/x"], "train")
    'mnist1d_kd T=8 student=resnet8'
    """
    experiments: list[str] = []
    entries: list[tuple[str, str, str]] = []  # (prefix, key, value)
    for override in overrides:
        parsed = _parse(str(override))
        if parsed is None:
            continue
        prefix, key, value, is_sweep = parsed
        if is_sweep or _skipped(key, value):
            continue
        if key in EXPERIMENT_GROUPS and not prefix:
            experiments.append(_short_value(value))
            continue
        if swept is not None and key not in swept:
            continue
        if key.endswith("._target_") and isinstance(value, str):  # net._target_=distill.nets.MLP → net=MLP
            key, value = key[: -len("._target_")], value.rsplit(".", 1)[-1]
        entries.append((prefix, key, _short_value(value)))
    final = {key: i for i, (_, key, _) in enumerate(entries)}  # a key set twice: the later value holds
    entries = [e for i, e in enumerate(entries) if final[e[1]] == i]
    shorts = _unique_suffixes([k for _, k, _ in entries])
    words = [*experiments]
    for (prefix, _key, value), short in zip(entries, shorts, strict=True):
        last = short.rsplit(".", 1)
        short = ".".join([*last[:-1], SHORT_KEYS.get(last[-1], last[-1])])
        words.append(f"{prefix}{short}" if prefix else f"{short}={value}")
    name = " ".join(w for w in words if w)
    if len(name) > limit:
        name = name[: limit - 1].rstrip() + "…"
    return name or fallback


def swept_keys() -> set[str] | None:
    """The keys a multirun sweeps (its comma lists and sweep functions, the sweeper's `params`), or
    None outside a sweep or when they cannot be told."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    keys = {str(k) for k in (hc.sweeper.get("params") or {})}
    multirun = Path(hc.sweep.dir) / "multirun.yaml"  # the sweep's own command line (the basic sweeper)
    if multirun.is_file():
        try:
            task = OmegaConf.load(multirun).hydra.overrides.task
        except Exception:  # noqa: BLE001 - unreadable: the sweeper's params alone
            task = []
        for override in task:
            parsed = _parse(str(override))
            if parsed and parsed[3]:
                keys.add(parsed[1])
    return keys or None


def _choices() -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return dict(HydraConfig.get().runtime.choices)


def _class_name(node: Any, suffix: str = "", lower: bool = True) -> str | None:
    target = node.get("_target_") if isinstance(node, (DictConfig, dict)) else None
    if not target:
        return None
    name = str(target).rsplit(".", 1)[-1]
    name = name[: -len(suffix)] if suffix and name.endswith(suffix) else name
    return name.lower() if lower else name


def _names(node: Any) -> list[str]:
    if isinstance(node, (DictConfig, dict)):
        return [str(k) for k, v in node.items() if v is not None]
    if isinstance(node, (ListConfig, list)):
        return [str(v) for v in node]
    return []


def selection(cfg: DictConfig) -> dict[str, Any]:
    """The job's chosen options: data, teachers, student, loss terms, teacher combination, compression
    stages, experiment (from Hydra's group choices where there are any, else from the config)."""
    choices = _choices()
    data = (
        choices.get("data")
        or choices.get("lm_data")
        or _class_name(cfg.get("data") or cfg.get("lm_data"), "DataModule")
    )
    teachers = _names(cfg.get("teacher"))
    if not teachers and cfg.get("lm_teacher") is not None:
        teachers = [str(cfg.lm_teacher.get("name") or choices.get("lm_teacher") or "teacher")]
    student = choices.get("student") or choices.get("lm_student")
    if not student:
        node = cfg.get("student") or cfg.get("lm_student") or {}
        student = _class_name(node.get("net") or node.get("model") or {})
    picked: dict[str, Any] = {
        "experiment": choices.get("experiment") or choices.get("lm_experiment"),
        "data": data,
        "teacher": teachers,
        "student": student,
        "distill": _names(cfg.get("distill") if cfg.get("distill") is not None else cfg.get("lm_distill")),
        "compress": _names(cfg.get("compress")),
    }
    if len(teachers) > 1:
        picked["multi_teacher"] = choices.get("multi_teacher") or _class_name(cfg.get("multi_teacher"))
    generations = (cfg.get("born_again") or {}).get("generations") or 0
    if generations:
        picked["born_again"] = generations
    if choices.get("debug"):
        picked["debug"] = choices["debug"]
    return picked


def run_tags(cfg: DictConfig) -> list[str]:
    """W&B tags of the job: `data:digits`, `teacher:cnn`, `student:mlp`, `distill:kd`, `compress:int8`, ..."""
    tags = []
    for group, value in selection(cfg).items():
        for item in value if isinstance(value, list) else [value]:
            if item not in (None, ""):
                tags.append(f"{group}:{item}"[:TAG_LENGTH])
    return list(dict.fromkeys(tags))


def _recipe(fit: Any) -> dict[str, Any]:
    if not isinstance(fit, DictConfig):
        return {}
    out: dict[str, Any] = {k: fit.get(k) for k in ("epochs", "batch_size") if fit.get(k) is not None}
    optimizer = fit.get("optimizer") or {}
    if isinstance(optimizer, DictConfig):
        out["optimizer"] = _class_name(optimizer, lower=False)
        out.update({k: optimizer.get(k) for k in ("lr", "weight_decay", "momentum") if optimizer.get(k) is not None})
    scheduler = fit.get("scheduler")
    out["scheduler"] = _class_name(scheduler, lower=False) if isinstance(scheduler, DictConfig) else None
    return out


def run_params(cfg: DictConfig) -> dict[str, Any]:
    """A flat, readable record of the job for TensorBoard's hparams: the chosen options and the key
    recipe values (the whole config goes to W&B's config and TensorBoard's hparams.yaml)."""
    params: dict[str, Any] = {"task": cfg.get("task_name"), "seed": cfg.get("seed")}
    for group, value in selection(cfg).items():
        params[group] = ",".join(map(str, value)) if isinstance(value, list) else value
    terms = cfg.get("distill") if cfg.get("distill") is not None else cfg.get("lm_distill")
    for term, node in (terms or {}).items():
        if isinstance(node, DictConfig):
            for key, value in node.items():
                if key != "_target_" and isinstance(value, (int, float, str, bool)):
                    params[f"distill.{term}.{key}"] = value
    student = cfg.get("student") or cfg.get("lm_student") or {}
    for label, fit in (("student", student.get("fit")), ("baseline", student.get("baseline"))):
        params.update({f"{label}.{k}": v for k, v in _recipe(fit).items()})
    for name, node in (cfg.get("teacher") or {}).items():
        if isinstance(node, DictConfig) and node.get("fit") is not None:
            params[f"teacher.{name}.epochs"] = node.fit.get("epochs")
    return {k: ("none" if v in (None, "") else v) for k, v in params.items()}
