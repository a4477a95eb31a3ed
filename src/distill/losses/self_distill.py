"""Self-distillation without a teacher: the student's deepest classifier teaches shallower ones."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from distill.data.base import UNLABELLED
from distill.errors import DistillError
from distill.losses.base import LossTerm, StepView
from distill.losses.response import kd_loss
from distill.validate import number


class AuxiliaryHeadsLoss(LossTerm):
    """Be Your Own Teacher (Zhang et al. 2019, ICCV): auxiliary classifiers on shallow layers.

    Each chosen layer gets a bottleneck (to the deepest feature's width) and a classifier. Per
    head: (1 - alpha) · CE to the label + alpha · T² · KL(final softmax ‖ head softmax) +
    feature_weight · ‖bottleneck(F_i) − F_deep‖². The final prediction and deepest feature are
    the targets (no gradient through them); the heads train the shared layers and are dropped
    from the exported student. Unlabelled samples contribute only the KL and feature parts.
    """

    needs_teacher = False

    def __init__(
        self,
        layers: list[str],
        deepest_layer: str,
        weight: float = 1.0,
        alpha: float = 0.3,
        temperature: float = 3.0,
        feature_weight: float = 0.03,
    ) -> None:
        super().__init__(weight)
        if not layers:
            raise DistillError("self-distillation needs at least one shallow layer for an auxiliary head")
        number(alpha, "self-distillation alpha", low=0, high=1)
        number(temperature, "self-distillation temperature", low=0, low_open=True)
        self.student_layers = (*layers, deepest_layer)
        self.alpha, self.temperature, self.feature_weight = alpha, float(temperature), feature_weight
        self.bottlenecks = nn.ModuleList()
        self.heads = nn.ModuleList()

    def build(self, view: StepView) -> None:
        deep = view.student_features[self.student_layers[-1]].flatten(1).shape[1]
        classes = view.student_logits.shape[-1]
        for layer in self.student_layers[:-1]:
            width = view.student_features[layer].flatten(1).shape[1]
            self.bottlenecks.append(nn.Sequential(nn.Linear(width, deep), nn.ReLU()))
            self.heads.append(nn.Linear(deep, classes))

    def forward(self, view: StepView) -> Tensor:
        final = view.student_logits.detach()
        deep = view.student_features[self.student_layers[-1]].flatten(1).detach()
        labelled = view.targets != UNLABELLED
        count = labelled.sum().clamp(min=1)
        total = view.student_logits.new_zeros(())
        for layer, bottleneck, head in zip(self.student_layers[:-1], self.bottlenecks, self.heads, strict=True):
            feature = bottleneck(view.student_features[layer].flatten(1))
            logits = head(feature)
            ce = F.cross_entropy(logits, view.targets, ignore_index=UNLABELLED, reduction="sum") / count
            kl = kd_loss(logits, final, self.temperature)
            total = total + (1 - self.alpha) * ce + self.alpha * kl + self.feature_weight * F.mse_loss(feature, deep)
        return total
