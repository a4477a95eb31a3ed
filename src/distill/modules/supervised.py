"""Plain supervised training: teachers trained here, and the baseline student (no teacher)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.modules.base import ClassifierModule


class SupervisedModule(ClassifierModule):
    """Cross-entropy on the labels; logs `<prefix>/train/loss` and `<prefix>/val/acc`."""

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch["x"]), batch["y"])
        self.optimize(loss)
        self.accumulate({"loss": loss})
        return loss
