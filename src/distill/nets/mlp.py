"""A multilayer perceptron over flattened inputs: the default student."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from distill.errors import DistillError


def check_widths(name: str, widths: Sequence[int]) -> None:
    """Layer widths must be a list of integers >= 1 (a zero-width layer trains nothing)."""
    if isinstance(widths, str | int) or not all(isinstance(w, int) and not isinstance(w, bool) for w in widths):
        raise DistillError(f"{name} must be a list of integer layer widths, got {widths}")
    bad = [w for w in widths if w < 1]
    if bad:
        raise DistillError(f"{name} must be layer widths >= 1, got {list(widths)}")


class MLP(nn.Module):
    """Flatten → [Linear → ReLU (→ Dropout)] × len(hidden) → Linear to `num_classes` logits."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (100, 100),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_widths("hidden", hidden)
        if not 0 <= dropout < 1:
            raise DistillError(f"MLP dropout must be in [0, 1), got {dropout}")
        in_features = math.prod(input_shape)
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_features = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
