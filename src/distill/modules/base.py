"""What the supervised and the distillation modules share: optimisers, epoch-mean logging, validation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class ClassifierModule(L.LightningModule):
    """Holds `self.net`, builds its optimiser from config partials and logs epoch means.

    Per-step values are summed on the device and logged once per epoch: calling `self.log`
    every step costs more than the whole step of a small student.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        num_classes: int,
        scheduler: SchedulerFactory | None = None,
        prefix: str = "model",
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.prefix = prefix
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self._sums: dict[str, Tensor] = {}
        self._steps = 0

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def accumulate(self, values: dict[str, Tensor]) -> None:
        """Add this step's detached values to the running epoch sums."""
        for name, value in values.items():
            value = value.detach()
            self._sums[name] = self._sums[name] + value if name in self._sums else value.clone()
        self._steps += 1

    def on_train_epoch_end(self) -> None:
        if self._steps:
            for name, total in self._sums.items():
                self.log(f"{self.prefix}/train/{name}", total / self._steps, prog_bar=name == "loss", sync_dist=True)
        self._sums, self._steps = {}, 0

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.val_acc(self(batch["x"]), batch["y"])
        self.log(f"{self.prefix}/val/acc", self.val_acc, prog_bar=True)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer), "interval": "epoch"}}
