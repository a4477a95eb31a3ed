"""A 1-D convolutional network for sequences such as MNIST-1D: the default teacher."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from distill.errors import DistillError
from distill.nets.mlp import check_widths


class ConvNet1d(nn.Module):
    """Stacked Conv1d → BatchNorm → ReLU blocks (stride 2 after the first), then a linear head.

    `input_shape` is `(length,)` or `(channels, length)`; a missing channel axis is added.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 32, 32),
        kernel_size: int = 5,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_widths("channels", channels)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
            raise DistillError(f"ConvNet1d kernel_size must be an integer >= 1, got {kernel_size}")
        shape = tuple(input_shape)
        if len(shape) not in (1, 2):
            raise ValueError(f"ConvNet1d takes inputs of shape (length,) or (channels, length), got {shape}")
        self.add_channel = len(shape) == 1
        in_ch, length = (1, shape[0]) if self.add_channel else shape
        blocks: list[nn.Module] = []
        for i, out_ch in enumerate(channels):
            stride = 1 if i == 0 else 2
            blocks.append(
                nn.Sequential(
                    nn.Conv1d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2),
                    nn.BatchNorm1d(out_ch),
                    nn.ReLU(),
                )
            )
            in_ch = out_ch
            length = math.floor((length + 2 * (kernel_size // 2) - kernel_size) / stride) + 1
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_ch * length, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        if self.add_channel:
            x = x.unsqueeze(1)
        return self.head(self.blocks(x))
