"""Layers and checks shared by the families of the CIFAR zoo (`distill.nets.cifar`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

Shape = Sequence[int]


def _in_channels(input_shape: Sequence[int], model: str) -> int:
    """The channel count of a `(C, H, W)` input shape; anything else is a `ValueError`."""
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError as err:
        raise ValueError(f"{model} takes input_shape (channels, height, width), got {input_shape!r}") from err
    if len(shape) != 3:
        raise ValueError(
            f"{model} is a 2-D image network and takes input_shape (channels, height, width), got {shape} "
            f"({len(shape)}-D); for flat or 1-D inputs use distill.nets.MLP or distill.nets.ConvNet1d"
        )
    if min(shape) < 1:
        raise ValueError(f"{model} takes a positive input_shape (channels, height, width), got {shape}")
    return shape[0]


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """Conv (no bias, 'same' padding) → BatchNorm."""
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(*_conv_bn(in_ch, out_ch, kernel, stride, groups), nn.ReLU())


def _global_pool() -> nn.Sequential:
    """Global average pooling → flatten; its output is the penultimate embedding."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions (fan-out, ReLU gain), BatchNorm weight 1 and bias 0, zero linear biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def _channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of `groups` groups (Zhang et al. 2018); returns a new tensor."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
