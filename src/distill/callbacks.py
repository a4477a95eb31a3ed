"""What a training recipe asks of every stage besides its epochs: keep the best validation epoch
(`fit.restore_best`) and stop on a plateau (`fit.early_stopping`).

Both are Lightning callbacks made from the recipe, for every training stage of every task (teachers
trained here, the baseline, the distilled student), watching the stage's validation metric (the
task's: accuracy for classification, perplexity for language models). Both are part of the recipe,
so of the cached model's key; a training stopped by `early_stopping` is the recipe's full result and
is cached, unlike one cut by `trainer.max_time`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from omegaconf import DictConfig

from distill.errors import DistillError

log = logging.getLogger(__name__)


class BestWeights(L.Callback):
    """Keep the trainable weights of the epoch with the best `monitor` value and put them back when fit ends.

    The kept weights live on the CPU and in the stage's checkpoints (this callback's state), so a
    resumed run keeps them. Ties keep the earlier epoch. The test split is never looked at.
    """

    def __init__(self, monitor: str, mode: str = "min", stage: str = "") -> None:
        if mode not in ("min", "max"):
            raise DistillError(f"restore_best: mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode, self.stage = monitor, mode, stage
        self.best: dict[str, Any] = {"epoch": -1, "value": math.inf if mode == "min" else -math.inf, "weights": {}}

    @property
    def state_key(self) -> str:
        return f"BestWeights[{self.monitor}]"

    @property
    def best_epoch(self) -> int:
        return int(self.best["epoch"])

    def _better(self, value: float) -> bool:
        return value < self.best["value"] if self.mode == "min" else value > self.best["value"]

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if math.isfinite(value) and self._better(value):
            weights = {n: p.detach().cpu().clone() for n, p in module.net.named_parameters() if p.requires_grad}
            self.best = {"epoch": trainer.current_epoch, "value": value, "weights": weights}

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not self.best["weights"]:
            return
        params = dict(module.net.named_parameters())
        with torch.no_grad():
            for name, value in self.best["weights"].items():
                params[name].copy_(value)
        log.info(
            "%s: weights of epoch %d restored (best %s, %.4g)", self.stage or "stage", self.best["epoch"],
            self.monitor, self.best["value"],
        )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return dict(self.best)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = dict(state)


def recipe_callbacks(fit: DictConfig, monitor: str, mode: str, stage: str) -> list[L.Callback]:
    """The callbacks a fit recipe asks for: `restore_best: true`, `early_stopping: {patience, min_delta}`."""
    callbacks: list[L.Callback] = []
    if fit.get("restore_best"):
        callbacks.append(BestWeights(monitor, mode, stage))
    stopping = fit.get("early_stopping")
    if stopping:
        callbacks.append(
            EarlyStopping(
                monitor=monitor, mode=mode, patience=int(stopping.get("patience", 5)),
                min_delta=float(stopping.get("min_delta", 0.0)), check_on_train_epoch_end=False, strict=False,
            )
        )  # fmt: skip
    return callbacks


def kept_epoch(trainer: L.Trainer) -> int:
    """The epoch whose weights the model ends with: the best one kept by `BestWeights`, else the last one run."""
    for callback in trainer.callbacks:
        if isinstance(callback, BestWeights) and callback.best_epoch >= 0:
            return callback.best_epoch
    return max(trainer.current_epoch - 1, 0)
