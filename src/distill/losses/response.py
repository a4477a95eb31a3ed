"""Response-based terms: losses on the output logits."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from distill.data.base import UNLABELLED
from distill.errors import DistillError
from distill.losses.base import LossTerm, StepView


class HardLabelLoss(LossTerm):
    """Cross-entropy to the ground-truth labels, averaged over the labelled samples of the batch."""

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(weight)
        self.label_smoothing = label_smoothing

    def forward(self, view: StepView) -> Tensor:
        # A sum over labelled rows divided by their count (not reduction="mean", which is NaN for
        # a batch drawn only from the transfer set); no boolean indexing, no host sync.
        total = F.cross_entropy(
            view.student_logits,
            view.targets,
            ignore_index=UNLABELLED,
            reduction="sum",
            label_smoothing=self.label_smoothing,
        )
        return total / (view.targets != UNLABELLED).sum().clamp(min=1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al. 2015: T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch.

    The T² factor keeps the gradient scale independent of T, so the weight balancing it
    against the hard loss need not change when T does.
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


class KDLoss(LossTerm):
    """Hinton knowledge distillation on softened logits (Hinton et al. 2015), with T² scaling."""

    def __init__(self, weight: float = 1.0, temperature: float = 4.0) -> None:
        super().__init__(weight)
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise DistillError(f"KD temperature must be a positive number, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, view: StepView) -> Tensor:
        return kd_loss(view.student_logits, view.teacher_logits, self.temperature)
