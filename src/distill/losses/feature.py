"""Feature-based terms: losses on intermediate representations captured by module path."""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def _layer_list(layers: str | Sequence[str], what: str) -> tuple[str, ...]:
    listed = (layers,) if isinstance(layers, str) else tuple(layers)
    if not listed or not all(isinstance(p, str) and p for p in listed):
        raise DistillError(f"at: {what} must be a module path or a non-empty list of them, got {layers!r}")
    return listed


def attention_map(features: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention of `[batch, channels, *spatial]` features: mean over channels of |f|^p,
    flattened over positions and L2-normalised per sample (`[batch, positions]`)."""
    return F.normalize(features.abs().pow(p).mean(1).flatten(1), dim=1)


class ATLoss(LossTerm):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017), activation-based.

    For each (student layer, teacher layer) pair, the squared difference of the two attention
    maps (see `attention_map`) averaged over the batch and positions, summed over pairs, as in
    the authors' code (github.com/szagoruyko/attention-transfer, `at_loss`). Channel counts may
    differ, but the spatial sizes of each pair must agree: a mismatch is an error (no pooling or
    interpolation), as are features without a spatial axis (e.g. a linear layer's `[batch, dim]`).
    The authors weigh the sum by β/2 with β = 1000; RepDistiller (Tian et al. 2020) uses 1000,
    which configs/distill/at.yaml follows.
    """

    def __init__(
        self,
        student_layers: str | Sequence[str],
        teacher_layers: str | Sequence[str],
        teacher: str | None = None,
        weight: float = 1.0,
        p: float = 2.0,
    ) -> None:
        super().__init__(weight)
        self.student_layers = _layer_list(student_layers, "student_layers")
        self.teacher_layers = _layer_list(teacher_layers, "teacher_layers")
        if len(self.student_layers) != len(self.teacher_layers):
            raise DistillError(
                f"at: student_layers and teacher_layers must pair up, got {len(self.student_layers)} student "
                f"and {len(self.teacher_layers)} teacher layers"
            )
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p <= 0:
            raise DistillError(f"at: p must be a finite number > 0, got {p!r}")
        self.teacher = teacher
        self.p = float(p)

    def _pair(self, view: StepView, i: int) -> tuple[Tensor, Tensor]:
        s, t = self.feature_pair(view, i)
        where = f"at ({self.student_layers[i]} -> {self.teacher_layers[i]})"
        for who, f in (("student", s), ("teacher", t)):
            if f.ndim < 3:
                raise DistillError(
                    f"{where}: attention transfer needs [batch, channels, *spatial] features, but the {who} layer "
                    f"gives shape {list(f.shape)} with no spatial axis (use a convolutional layer)"
                )
        if s.shape[2:] != t.shape[2:]:
            raise DistillError(
                f"{where}: spatial sizes must match, got student features of shape {list(s.shape)} and teacher "
                f"features of shape {list(t.shape)}"
            )
        return s, t

    def build(self, view: StepView) -> None:
        for i in range(len(self.student_layers)):
            self._pair(view, i)

    def forward(self, view: StepView) -> Tensor:
        total = None
        for i in range(len(self.student_layers)):
            s, t = self._pair(view, i)
            value = (attention_map(s, self.p) - attention_map(t, self.p)).pow(2).mean()
            total = value if total is None else total + value
        return total
