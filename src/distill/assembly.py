"""Assembling a run from its config: the pieces every task, entry point and script shares.

Instantiation with one-line errors (`build`, `build_net`, `build_group`), loggers, one Trainer per
training stage (`make_trainer`) and its fit, resumed where an interrupted run left off
(`fit_stage`, `set_resume_dir`), and the content of a cached model's key (`fit_payload`).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
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
from distill.callbacks import recipe_callbacks
from distill.checkpoints import AtomicCheckpointIO
from distill.data.base import attach_standardization
from distill.errors import DistillError
from distill.resume import check_compatible, find_resume_dir, stage_checkpoint
from distill.secrets import command_line_has_secret, redact

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
        message = instantiation_message(err)
        raise DistillError(f"cannot build {what}: {message}{build_hint(node, message)}") from None


def build_hint(node: Any, message: str) -> str:
    """What to do about a failed instantiation, where the message alone leaves it to guesswork."""
    from distill.cli import import_hint

    target = str(node.get("_target_", "")) if isinstance(node, DictConfig) else ""
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", message)
    if unexpected and isinstance(node, DictConfig):
        key = unexpected.group(1)
        path = node._get_full_key(key) if node._get_parent() is not None else key
        return (
            f"; the config key '{path}' is not an argument of {target}: a key inherited from the config this "
            f"one extends? Drop it with '~{path}' on the command line, or spell the whole node in your own file"
        )
    if target and ("Error loading" in message or "Error locating target" in message):
        hint = import_hint(target)
        return f"; {hint}" if hint else ""
    return ""


def build_net(node: DictConfig, what: str, seed: int, dm: Any = None) -> nn.Module:
    """A network from its config, initialised from `seed` so that equal configs start equal.

    On data whose networks standardise their input (`dm.input_stats`: `data=file`), the network gets
    that step (`distill.data.base.attach_standardization`), so that every network of a run takes
    the same raw features.
    """
    torch.manual_seed(seed)
    net = build(node, what)
    if not isinstance(net, nn.Module):
        raise DistillError(f"{what}: _target_ {node.get('_target_')} did not give an nn.Module")
    stats = getattr(dm, "input_stats", None)
    if stats is not None:
        attach_standardization(net, *stats)
    return net


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


def build_terms(cfg: DictConfig, group: str = "distill") -> dict[str, Any]:
    """The loss terms of `group`: one weighted `distill.losses.LossTerm` per selected option."""
    from distill.losses.base import LossTerm

    return build_group(cfg, group, "loss term", lambda t: isinstance(t, LossTerm), "is not a distill.losses.LossTerm")


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
        import wandb

        from distill import tracking

        kwargs: dict[str, Any] = {}
        if group and not node.get("group"):
            kwargs["group"] = group
            log.info("W&B group: %s (the jobs of this sweep)", group)
        if not node.get("name"):  # named after what sets this run apart; a name set by the user wins
            from distill.secrets import REDACTED, redact_override

            overrides = [o for o in command_overrides() or [] if REDACTED not in redact_override(o)]
            kwargs["name"] = tracking.run_name(overrides, str(cfg.task_name), tracking.swept_keys())
        kwargs["tags"] = list(dict.fromkeys([*(node.get("tags") or []), *tracking.run_tags(cfg)]))
        # W&B's own console output (a banner, a history summary, a sync hint) stays off: the report says
        # where the run is (distill.report), and train.log has the console.
        settings: dict[str, Any] = {"silent": True, "console": "off"}
        if command_line_has_secret(sys.argv[1:]):  # W&B records the command line in its run metadata
            log.warning("A credential is on the command line: W&B will not record the run's metadata")
            settings["x_disable_meta"] = True
        if node.get("settings") is None or settings.get("x_disable_meta"):
            kwargs["settings"] = wandb.Settings(**settings)
        return kwargs

    loggers = [build(n, f"logger {n._target_}", **extra(n)) for n in nodes]
    config = redact(OmegaConf.to_container(cfg, resolve=True))
    for logger in loggers:
        init = getattr(logger, "_wandb_init", None)
        if isinstance(init, dict) and not init.get("anonymous"):
            init.pop("anonymous", None)  # Lightning passes anonymous=None: W&B warns that it is deprecated
        if isinstance(init, dict):
            log.info("W&B run '%s', tags: %s", init.get("name"), ", ".join(init.get("tags") or []))
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


def make_trainer(
    cfg: DictConfig,
    stage: str,
    epochs: int,
    loggers: list[Any],
    fit: DictConfig | None = None,
    monitor: tuple[str, str] | None = None,
) -> L.Trainer:
    """A fresh Trainer for one training stage, with its own callbacks and checkpoint folder.

    Given the stage's `fit` recipe and the validation metric to `monitor` (`(name, "min" | "max")`),
    the recipe's `restore_best` and `early_stopping` become callbacks (`distill.callbacks`).
    """
    callbacks = [
        build(n, f"callback {n._target_}") for n in (cfg.get("callbacks") or {}).values() if n and "_target_" in n
    ]
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            cb.dirpath = os.path.join(cb.dirpath, stage)
    if fit is not None and monitor is not None:
        callbacks += recipe_callbacks(fit, f"{stage}/{monitor[0]}", monitor[1], stage)
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
    if getattr(train_loader, "channels_last", False):  # inputs come channels-last: so should conv weights
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


# Model options that change how training runs, never the weights it gives: gradient checkpointing recomputes
# activations in the backward pass and gives the same gradients (tests/test_llm_memory.py).
NET_KEYS_NOT_IN_CACHE_KEY = frozenset({"gradient_checkpointing"})


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
    node = cfg.get("callbacks")  # an empty node (callbacks=none) is falsy: not `or {}`, which gives a dict
    callbacks = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}
    return {
        "kind": kind,
        "net": {
            k: v for k, v in OmegaConf.to_container(net, resolve=True).items() if k not in NET_KEYS_NOT_IN_CACHE_KEY
        },
        "fit": OmegaConf.to_container(fit, resolve=True),
        "data": data_part,
        "data_fingerprint": fingerprint,
        "seed": cfg.seed,
        "trainer": {k: v for k, v in trainer.items() if k not in TRAINER_KEYS_NOT_IN_CACHE_KEY},
        "callbacks": {k: v for k, v in sorted(callbacks.items()) if v and not _neutral_callback(v)},
        "processes": distributed.world_size(),
        **extra,
    }
