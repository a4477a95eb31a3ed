"""Getting each teacher: load its checkpoint, or train it once and reuse it from the cache."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from distill.checkpoints import load_weights, read_checkpoint
from distill.model_cache import cached_model, source_of

log = logging.getLogger(__name__)


def check_teacher_config(name: str, tcfg: DictConfig) -> None:
    """Fail before any training when a teacher's checkpoint is missing or unreadable."""
    if tcfg.get("ckpt_path"):
        read_checkpoint(tcfg.ckpt_path)


def acquire_teacher(
    name: str,
    tcfg: DictConfig,
    net: nn.Module,
    train: Callable[[nn.Module], Any],
    cache_dir: Path,
    payload: dict[str, Any],
) -> str:
    """Fill `net` with the teacher's weights; returns where they came from.

    `ckpt_path` wins; otherwise the teacher is trained with `train` and cached under a key
    derived from `payload` (its own config, the data config, the seed and the trainer limits).
    """
    if tcfg.get("ckpt_path"):
        load_weights(net, tcfg.ckpt_path, f"teacher '{name}'")
        log.info("Teacher '%s' loaded from %s", name, tcfg.ckpt_path)
        return f"checkpoint {tcfg.ckpt_path}"
    path, reused = cached_model(cache_dir, f"teacher-{name}", payload, net, train)
    return source_of(path, reused)
