"""Every training stage's history: one row of epoch-level metrics per epoch, kept with the run (for
`curves.png` and the loggers) and with a cached model (so a run that reuses a teacher from the cache
still shows how it was trained)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L

Rows = list[dict[str, float]]


class StageHistory(L.Callback):
    """Records, after every epoch, the stage's epoch-level metrics (`<stage>/train/*`, `<stage>/val/*`).

    A row is `{"epoch": k, "train/loss": ..., "val/acc": ...}` (the stage prefix dropped). The module
    logs its training means in its own `on_train_epoch_end`, which runs after the callbacks' hook, so
    an epoch's row is taken when the next epoch starts, or when fit ends.
    """

    cache_neutral = True

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.rows: Rows = []
        self._pending: int | None = None

    @property
    def state_key(self) -> str:
        return f"StageHistory[{self.stage}]"

    def _take(self, trainer: L.Trainer) -> None:
        if self._pending is None:
            return
        prefix = f"{self.stage}/"
        row: dict[str, float] = {"epoch": self._pending}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(prefix) and key != f"{prefix}epoch":  # the stage's x-axis (distill.tracking)
                number = float(value)
                if math.isfinite(number):
                    row[key[len(prefix) :]] = number
        self.rows = [r for r in self.rows if r["epoch"] != self._pending] + [row]
        self._pending = None

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._pending = trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._take(trainer)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._take(trainer)

    def state_dict(self) -> dict[str, Any]:  # a resumed stage keeps the epochs it ran before
        return {"rows": list(self.rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = list(state.get("rows", []))


def history_of(trainer: Any) -> Rows | None:
    """The rows of the `StageHistory` callback of a finished fit, if it had one."""
    for callback in getattr(trainer, "callbacks", []) or []:
        if isinstance(callback, StageHistory):
            return list(callback.rows)
    return None
