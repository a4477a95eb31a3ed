"""ShuffleNet V1 (Zhang et al. 2018) and V2 (Ma et al. 2018): their units, `ShuffleNetV1`, `ShuffleNetV2` and
the constructors shufflenetv1 and shufflenetv2."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.nets.cifar.common import (
    Shape,
    _channel_shuffle,
    _conv_bn,
    _conv_bn_relu,
    _global_pool,
    _in_channels,
    _init_weights,
)

# --------------------------------------------------------------------------------------------------------------
# ShuffleNet V1 (Zhang et al. 2018)
# --------------------------------------------------------------------------------------------------------------


class ShuffleV1Block(nn.Module):
    """ShuffleNet unit: 1×1 group conv–BN–ReLU, channel shuffle, 3×3 depthwise–BN–ReLU, 1×1 group conv–BN.

    Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices",
    CVPR 2018. Stride 1 adds the input; stride 2 concatenates a 3×3 average-pooled input, so `out_ch` counts
    only the new channels. The first 1×1 conv of the network's first unit is not grouped (its input is thin).
    The KD zoo's CIFAR variant also applies ReLU after the depthwise conv, kept here.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, group_first: bool = True) -> None:
        super().__init__()
        mid = out_ch // 4
        first_groups = groups if group_first else 1
        self.stride, self.first_groups = stride, first_groups
        self.conv1 = nn.Sequential(*_conv_bn(in_ch, mid, 1, groups=first_groups), nn.ReLU())
        self.conv2 = _conv_bn_relu(mid, mid, 3, stride, groups=mid)
        self.conv3 = nn.Sequential(*_conv_bn(mid, out_ch, 1, groups=groups))
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv3(self.conv2(_channel_shuffle(self.conv1(x), self.first_groups)))
        res = self.shortcut(x)
        return self.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


_SHUFFLEV1_WIDTHS = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}


class ShuffleNetV1(nn.Module):
    """ShuffleNet V1 for CIFAR (Zhang et al., CVPR 2018), the "ShuffleNetV1" student of the CRD/DKD tables.

    KD-zoo CIFAR variant: a 1×1 conv–BN–ReLU stem to 24 channels at full resolution (no max pooling), three
    stages of 4, 8, 4 `ShuffleV1Block`s (each opening with a stride-2 unit) with the widths of the paper's
    table 1 for `groups` (240, 480, 960 for g = 3), global average pooling, linear classifier — about 0.95M
    parameters for 100 classes.

    Module paths for feature taps (CRD `feat` index in brackets):

    * `stem` [0] — 24 channels, H;
    * `layer1` [1] (H/2), `layer2` [2] (H/4, the CRD FitNet hint layer), `layer3` [3] (H/8) — stage outputs;
      `layer1`–`layer3` are the attention-transfer maps;
    * `pool` [-1] — `[N, 960]` embedding (g = 3); `fc` — logits.
    """

    def __init__(
        self,
        num_classes: int = 100,
        input_shape: Sequence[int] = (3, 32, 32),
        *,
        groups: int = 3,
        num_blocks: Sequence[int] = (4, 8, 4),
        stem_width: int = 24,
    ) -> None:
        super().__init__()
        in_ch = _in_channels(input_shape, type(self).__name__)
        if groups not in _SHUFFLEV1_WIDTHS:
            raise ValueError(f"ShuffleNetV1 groups must be one of {sorted(_SHUFFLEV1_WIDTHS)}, got {groups}")
        self.stem = _conv_bn_relu(in_ch, stem_width, 1)
        width = stem_width
        stages = []
        for i, (out_ch, n) in enumerate(zip(_SHUFFLEV1_WIDTHS[groups], num_blocks, strict=True)):
            blocks = [ShuffleV1Block(width, out_ch - width, 2, groups, group_first=i > 0)]
            blocks += [ShuffleV1Block(out_ch, out_ch, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            width = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = _global_pool()
        self.fc = nn.Linear(width, num_classes)
        self.embedding_dim = width
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x))


# --------------------------------------------------------------------------------------------------------------
# ShuffleNet V2 (Ma et al. 2018)
# --------------------------------------------------------------------------------------------------------------


class ShuffleV2Block(nn.Module):
    """Stride-1 ShuffleNet V2 unit: channel split; one half goes through 1×1–BN–ReLU, 3×3 depthwise–BN,
    1×1–BN–ReLU and is concatenated back to the untouched half, then a 2-group channel shuffle (Ma et al. 2018).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.split = channels - half
        self.branch = nn.Sequential(
            _conv_bn_relu(half, half, 1),
            *_conv_bn(half, half, 3, groups=half),
            _conv_bn_relu(half, half, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        kept, x2 = x[:, : self.split], x[:, self.split :]
        return _channel_shuffle(torch.cat([kept, self.branch(x2)], 1), 2)


class ShuffleV2DownBlock(nn.Module):
    """Stride-2 ShuffleNet V2 unit: both branches see the whole input (3×3 depthwise stride 2–BN, 1×1–BN–ReLU;
    and 1×1–BN–ReLU, 3×3 depthwise stride 2–BN, 1×1–BN–ReLU), each giving half of `out_ch`; concat, shuffle.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.left = nn.Sequential(*_conv_bn(in_ch, in_ch, 3, 2, groups=in_ch), _conv_bn_relu(in_ch, mid, 1))
        self.right = nn.Sequential(
            _conv_bn_relu(in_ch, mid, 1),
            *_conv_bn(mid, mid, 3, 2, groups=mid),
            _conv_bn_relu(mid, mid, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return _channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


_SHUFFLEV2_WIDTHS = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (224, 488, 976, 2048),
}


class ShuffleNetV2(nn.Module):
    """ShuffleNet V2 for CIFAR (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
    Design", ECCV 2018), the "ShuffleNetV2" student of the CRD/DKD tables.

    KD-zoo CIFAR variant: 3×3 conv–BN–ReLU stem to 24 channels at full resolution (no max pooling), three stages
    each of one `ShuffleV2DownBlock` followed by 3, 7, 3 `ShuffleV2Block`s with the paper's widths for
    `net_size` (116, 232, 464 for 1×), a 1×1 conv–BN–ReLU to 1024 channels (`head`), global average pooling,
    linear classifier — about 1.36M parameters for 100 classes.

    Module paths for feature taps (CRD `feat` index in brackets):

    * `stem` [0] — 24 channels, H;
    * `layer1` [1] (H/2), `layer2` [2] (H/4, the CRD FitNet hint layer), `layer3` [3] (H/8) — stage outputs;
      `layer1`–`layer3` are the attention-transfer maps;
    * `head` — 1024-channel map; `pool` [-1] — `[N, 1024]` embedding; `fc` — logits.
    """

    def __init__(
        self,
        num_classes: int = 100,
        input_shape: Sequence[int] = (3, 32, 32),
        *,
        net_size: float = 1.0,
        num_blocks: Sequence[int] = (3, 7, 3),
        stem_width: int = 24,
    ) -> None:
        super().__init__()
        in_ch = _in_channels(input_shape, type(self).__name__)
        if float(net_size) not in _SHUFFLEV2_WIDTHS:
            raise ValueError(f"ShuffleNetV2 net_size must be one of {sorted(_SHUFFLEV2_WIDTHS)}, got {net_size}")
        *widths, last = _SHUFFLEV2_WIDTHS[float(net_size)]
        self.stem = _conv_bn_relu(in_ch, stem_width, 3)
        width = stem_width
        stages = []
        for out_ch, n in zip(widths, num_blocks, strict=True):
            stages.append(nn.Sequential(ShuffleV2DownBlock(width, out_ch), *[ShuffleV2Block(out_ch) for _ in range(n)]))
            width = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.head = _conv_bn_relu(width, last, 1)
        self.pool = _global_pool()
        self.fc = nn.Linear(last, num_classes)
        self.embedding_dim = last
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(self.head(x)))


# --------------------------------------------------------------------------------------------------------------
# constructors (Hydra targets: `_target_: distill.nets.cifar.<name>`)
# --------------------------------------------------------------------------------------------------------------


def shufflenetv1(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> ShuffleNetV1:
    """ShuffleNet V1, 3 groups — the tables' "ShuffleNetV1" (0.95M)."""
    return ShuffleNetV1(num_classes, input_shape, **kw)


def shufflenetv2(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> ShuffleNetV2:
    """ShuffleNet V2, 1× — the tables' "ShuffleNetV2" (1.36M)."""
    return ShuffleNetV2(num_classes, input_shape, **kw)
