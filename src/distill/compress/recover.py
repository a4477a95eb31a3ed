"""Recovery: a short distillation from the same teachers after a destructive stage."""

from __future__ import annotations

import copy

import torch
from torch import nn

from distill.compress.base import StageContext, StageResult
from distill.errors import DistillError
from distill.validate import integer, number


class Recover:
    """Distil the compressed model again for a few epochs; pruned (zero) weights stay zero.

    Gradients of weights that are exactly zero are masked, so AdamW leaves them at zero and the
    sparsity reached by unstructured pruning survives recovery.
    """

    def __init__(self, epochs: int = 30, lr: float = 0.01) -> None:
        integer(epochs, "recover: epochs", minimum=1)
        number(lr, "recover: lr", low=0, low_open=True)
        self.epochs, self.lr = epochs, float(lr)

    def apply(self, model: object, ctx: StageContext) -> StageResult:
        if not isinstance(model, nn.Module):
            raise DistillError("recover trains a PyTorch model: list it before onnx/int8 in compress=[...]")
        if ctx.redistill is None:
            raise DistillError("recover needs the run's teachers to distil from")
        model = copy.deepcopy(model)
        hooks = []
        for p in model.parameters():
            mask = p.detach() != 0
            if p.dim() > 1 and not mask.all():
                hooks.append(p.register_hook(lambda g, m=mask: g * m))
        zeros_before = sum(int((p == 0).sum()) for p in model.parameters())
        try:
            ctx.redistill(model, self.epochs, self.lr)
        finally:
            for h in hooks:
                h.remove()
        zeros_after = sum(int((p == 0).sum()) for p in model.parameters())
        with torch.no_grad():
            return StageResult(
                model=model,
                info={"epochs": self.epochs, "lr": self.lr, "zeros_before": zeros_before, "zeros_after": zeros_after},
            )
