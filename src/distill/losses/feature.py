"""Feature-based terms: losses on intermediate representations captured by module path."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import DistillError
from distill.losses.base import LossTerm, StepView


def connector(student: Tensor, teacher: Tensor, where: str) -> nn.Module:
    """A learned map from the student's feature shape to the teacher's (identity when equal).

    Features are `[batch, channels, *spatial]`; channels are mapped by a linear layer or a
    1×1 convolution. Spatial sizes must already agree.
    """
    s, t = tuple(student.shape[1:]), tuple(teacher.shape[1:])
    if s == t:
        return nn.Identity()
    if len(s) != len(t) or s[1:] != t[1:] or len(s) > 3:
        raise DistillError(
            f"{where}: cannot connect student features of shape {list(s)} to teacher features of shape {list(t)}"
        )
    layer = {1: nn.Linear, 2: nn.Conv1d, 3: nn.Conv2d}[len(s)]
    return layer(s[0], t[0]) if len(s) == 1 else layer(s[0], t[0], kernel_size=1)


class FitNetLoss(LossTerm):
    """FitNets hint (Romero et al. 2015): MSE between connected student and teacher features."""

    def __init__(self, student_layer: str, teacher_layer: str, teacher: str | None = None, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.student_layers, self.teacher_layers = (student_layer,), (teacher_layer,)
        self.teacher = teacher
        self.connector: nn.Module = nn.Identity()

    def build(self, view: StepView) -> None:
        s, t = self.feature_pair(view)
        where = f"fitnet ({self.student_layers[0]} -> {self.teacher_layers[0]})"
        self.connector = connector(s, t, where)

    def forward(self, view: StepView) -> Tensor:
        s, t = self.feature_pair(view)
        return F.mse_loss(self.connector(s), t)
