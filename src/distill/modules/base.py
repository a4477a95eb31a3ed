"""What every LightningModule of the project shares.

`TeacherStudentModule` is the base of every task's modules: the model being trained (`net`), frozen
teachers kept outside the registered children (not in the optimiser, not in checkpoints, not wrapped
by DDP, yet following the module across devices and staying in eval mode), train mode at the start
of fit, shuffling by epoch number, and the optimiser and scheduler built from config partials.
`ClassifierModule` adds what the classification modules share: manual optimisation, epoch-mean
logging and validation accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a teacher's weights and BatchNorm statistics never move."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class TeacherStudentModule(L.LightningModule):
    """Trains `net`, optionally from frozen `teachers` (a plain dict: not submodules)."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        teachers: Mapping[str, nn.Module] | None = None,
        prefix: str = "model",
    ) -> None:
        super().__init__()
        self.net = net
        self.teachers = {name: freeze(t) for name, t in (teachers or {}).items()}
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.prefix = prefix

    # -- teachers follow the module but stay frozen ------------------------------------------
    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> TeacherStudentModule:
        super()._apply(fn, *args, **kwargs)
        for teacher in self.teachers.values():
            teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True) -> TeacherStudentModule:
        super().train(mode)
        for teacher in self.teachers.values():
            teacher.eval()
        return self

    def on_fit_start(self) -> None:
        # A net built or loaded in eval mode (as from_pretrained gives them) would train with dropout
        # off and BatchNorm statistics frozen, and Lightning leaves modes as they are: train mode for
        # training (teachers stay in eval mode, see `train`).
        self.train()

    def on_train_epoch_start(self) -> None:
        # Shuffle by epoch number, not by how many epochs this process has run: a resumed run sees the same batches.
        loader = self.trainer.train_dataloader
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.current_epoch)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]  # the net, and the terms' own (connectors)
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
        }


class ClassifierModule(TeacherStudentModule):
    """Classification: logs epoch means of the step values, and validation accuracy.

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
        teachers: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, teachers, prefix)
        self.automatic_optimization = False
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
