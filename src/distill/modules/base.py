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

    Small students take well under a millisecond per step, so per-step bookkeeping is kept
    out of the hot path: values are summed on the device and logged once per epoch (calling
    `self.log` every step costs more than the step), and the optimiser is stepped in
    `training_step` (Lightning's manual optimisation) rather than through the closure machinery
    of automatic optimisation. Gradient clipping is therefore set here (`gradient_clip_val`),
    not on the Trainer.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        num_classes: int,
        scheduler: SchedulerFactory | None = None,
        prefix: str = "model",
        gradient_clip_val: float | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.prefix = prefix
        self.gradient_clip_val = gradient_clip_val
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self._names: list[str] = []
        self._sums: Tensor | None = None
        self._steps = 0

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def accumulate(self, values: dict[str, Tensor]) -> None:
        """Add this step's values (the same names every step) to the running epoch sums."""
        stacked = torch.stack([v.detach() for v in values.values()])
        if self._sums is None:
            self._names, self._sums = list(values), stacked
        else:
            self._sums += stacked
        self._steps += 1

    def optimize(self, loss: Tensor) -> None:
        """One optimiser step on `loss` (backward, optional clipping, step)."""
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
        optimizer.step()

    def on_fit_start(self) -> None:
        # A net built or loaded in eval mode (as from_pretrained gives them) would train with dropout
        # off and BatchNorm statistics frozen, and Lightning leaves modes as they are: train mode for
        # training (teachers stay in eval mode, see DistillationModule.train).
        self.train()

    def on_train_epoch_start(self) -> None:
        # Shuffle by epoch number, not by how many epochs this process has run: a resumed run sees the same batches.
        loader = self.trainer.train_dataloader
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        if self._sums is not None:
            for name, total in zip(self._names, self._sums / self._steps, strict=True):
                self.log(f"{self.prefix}/train/{name}", total, prog_bar=name == "loss", sync_dist=True)
        self._sums, self._steps = None, 0

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.val_acc(self(batch["x"]), batch["y"])
        self.log(f"{self.prefix}/val/acc", self.val_acc, prog_bar=True)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer), "interval": "epoch"},
        }
