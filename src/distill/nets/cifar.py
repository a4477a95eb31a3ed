"""The CIFAR knowledge-distillation model zoo: the teachers and students of the CIFAR-100 KD tables.

These are the architectures benchmarked by

* Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020 (the CRD benchmark), and
* Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022 (DKD),

written here as plain `torch.nn` modules from the architecture descriptions of the original papers and the
configurations those benchmarks use (stage widths, depths, width multipliers), so that their parameter counts
match the published tables (0.28M for resnet20, 7.43M for resnet32x4, ...).

Every model:

* is built as `Model(num_classes=100, input_shape=(3, 32, 32), **kw)`; `input_shape` must be `(C, H, W)`
  and `C` sets the stem's input channels, so `(1, 28, 28)` builds an MNIST-sized network;
* returns logits from `forward(x)`;
* exposes its stages as named submodules so that features can be tapped by module path with forward hooks
  (`distill.taps.FeatureTaps`): `layer1` … `layerK` are the stage outputs (4-D maps), `pool` is global average
  pooling plus flatten (its output is the penultimate embedding, `[N, embedding_dim]`) and `fc` is the classifier.
  Each class docstring lists the usual taps (FitNet hint layer, attention-transfer maps) and how they line up
  with the `feat` lists of the CRD code base (`feat[0]` … `feat[-1]`, where `feat[-1]` is the pooled embedding);
* uses no in-place operations, so a tensor seen by a hook is never altered by a later layer.

Use `build(name, num_classes, input_shape)` or the constructor functions (`resnet8x4`, `wrn_40_2`, ...) — the
latter are Hydra targets, e.g. `_target_: distill.nets.cifar.resnet8x4`. `ZOO` maps every name to its constructor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "ZOO",
    "ResNet",
    "WideResNet",
    "VGG",
    "MobileNetV2",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "BasicBlock",
    "WideBasicBlock",
    "InvertedResidual",
    "ShuffleV1Block",
    "ShuffleV2Block",
    "ShuffleV2DownBlock",
    "build",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg11",
    "vgg13",
    "mobilenetv2",
    "shufflenetv1",
    "shufflenetv2",
]


# --------------------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# ResNet for CIFAR (He et al. 2016)
# --------------------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3×3 conv–BN layers with a residual connection, then ReLU (He et al., CVPR 2016).

    The shortcut is the identity, or a 1×1 conv + BN projection when the stride or width changes (the KD zoo's
    choice, instead of the zero-padding "option A" of the original CIFAR ResNets).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_ch != out_ch:
            self.shortcut: nn.Module = nn.Sequential(*_conv_bn(in_ch, out_ch, 1, stride))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet of depth `6n + 2` (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

    Stem 3×3 conv–BN–ReLU (`stem_width` channels, default `widths[0]`), three stages of `n` `BasicBlock`s with
    `widths` channels (strides 1, 2, 2), global average pooling, linear classifier. `widths=(16, 32, 64)` gives
    resnet20/32/56/110; the "×4" models of the CRD benchmark (resnet8x4, resnet32x4) use a 32-channel stem and
    `widths=(64, 128, 256)`.

    Module paths for feature taps (CRD `feat` index in brackets):

    * `stem` [0] — full-resolution map, `stem_width` channels;
    * `layer1` [1], `layer2` [2], `layer3` [3] — stage outputs at H, H/2, H/4 (after the block's final ReLU);
      `layer2` is the usual FitNet hint layer, `layer1`–`layer3` the attention-transfer maps;
    * `pool` [-1] — `[N, widths[-1]]` embedding (CRD, RKD, PKT, ...);
    * `fc` — logits. Single blocks are `layerS.B` (e.g. `layer3.0`).
    """

    def __init__(
        self,
        num_classes: int = 100,
        input_shape: Sequence[int] = (3, 32, 32),
        *,
        depth: int = 20,
        widths: Sequence[int] = (16, 32, 64),
        stem_width: int | None = None,
    ) -> None:
        super().__init__()
        in_ch = _in_channels(input_shape, type(self).__name__)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
        if len(widths) != 3:
            raise ValueError(f"CIFAR ResNet has three stages, got widths {tuple(widths)}")
        n = (depth - 2) // 6
        width = stem_width if stem_width is not None else widths[0]
        self.depth = depth
        self.stem = _conv_bn_relu(in_ch, width, 3)
        stages = []
        for i, out_ch in enumerate(widths):
            blocks = [
                BasicBlock(width if b == 0 else out_ch, out_ch, (1 if i == 0 else 2) if b == 0 else 1) for b in range(n)
            ]
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
# Wide ResNet (Zagoruyko & Komodakis 2016)
# --------------------------------------------------------------------------------------------------------------


class WideBasicBlock(nn.Module):
    """Pre-activation block BN–ReLU–conv3×3–BN–ReLU–(dropout)–conv3×3 plus shortcut (Zagoruyko & Komodakis 2016).

    When the width or stride changes the shortcut is a 1×1 convolution of the pre-activated input; otherwise
    the input itself.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.projects = stride != 1 or in_ch != out_ch
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False) if self.projects else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(pre)))))
        return out + self.shortcut(pre if self.projects else x)


class WideResNet(nn.Module):
    """WRN-`depth`-`widen_factor` (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

    Stem 3×3 conv to 16 channels, three stages of `(depth - 4) / 6` pre-activation `WideBasicBlock`s with
    16k, 32k, 64k channels (strides 1, 2, 2), final BN–ReLU (`head`), global average pooling, linear classifier.
    The CRD benchmark uses WRN-40-2 (teacher), WRN-16-2 and WRN-40-1 (students), dropout 0.

    Module paths for feature taps (CRD `feat` index in brackets):

    * `stem` [0] — 16-channel map;
    * `layer1` [1], `layer2` [2], `layer3` [3] — stage outputs (pre-activation sums, as in CRD);
      `layer2` is the usual FitNet hint layer, `layer1`–`layer3` the attention-transfer maps;
    * `head` — `layer3` after the final BN–ReLU;
    * `pool` [-1] — `[N, 64k]` embedding;
    * `fc` — logits.
    """

    def __init__(
        self,
        num_classes: int = 100,
        input_shape: Sequence[int] = (3, 32, 32),
        *,
        depth: int = 40,
        widen_factor: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_ch = _in_channels(input_shape, type(self).__name__)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth, self.widen_factor = depth, widen_factor
        self.stem = nn.Conv2d(in_ch, 16, 3, padding=1, bias=False)
        width = 16
        stages = []
        for i, out_ch in enumerate(widths):
            blocks = [
                WideBasicBlock(width if b == 0 else out_ch, out_ch, (1 if i == 0 else 2) if b == 0 else 1, dropout)
                for b in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            width = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.head = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU())
        self.pool = _global_pool()
        self.fc = nn.Linear(width, num_classes)
        self.embedding_dim = width
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(self.head(x)))


# --------------------------------------------------------------------------------------------------------------
# VGG for CIFAR (Simonyan & Zisserman 2015, with BatchNorm)
# --------------------------------------------------------------------------------------------------------------

VGG_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class VGG(nn.Module):
    """VGG with BatchNorm for 32×32 inputs (Simonyan & Zisserman, ICLR 2015), as in the CRD benchmark.

    Five stages of 3×3 conv–BN–ReLU layers (`cfg` gives the widths per stage; vgg8 has one conv per stage, vgg13
    two); 2×2 max pooling opens stages 2–4 (and stage 5 for inputs of 64 pixels or more), so a 32×32 input ends
    at 4×4. Global average pooling and a single linear classifier replace VGG's fully connected head.

    Module paths for feature taps (CRD `feat` index in brackets):

    * `layer1` [0] (H), `layer2` [1] (H/2), `layer3` [2] (H/4), `layer4` [3] (H/8), `layer5` [4] (H/8) —
      stage outputs after ReLU; `layer3` is the CRD FitNet hint layer (`hint_layer=2`), `layer2`–`layer5` the
      attention-transfer maps;
    * `pool` [-1] — `[N, 512]` embedding;
    * `fc` — logits.
    """

    def __init__(
        self,
        num_classes: int = 100,
        input_shape: Sequence[int] = (3, 32, 32),
        *,
        cfg: Sequence[Sequence[int]] = VGG_CONFIGS["vgg13"],
    ) -> None:
        super().__init__()
        in_ch = _in_channels(input_shape, type(self).__name__)
        if len(cfg) != 5 or not all(len(stage) > 0 for stage in cfg):
            raise ValueError(f"VGG takes five non-empty stages of conv widths, got {cfg}")
        pool_last = min(int(input_shape[1]), int(input_shape[2])) >= 64
        stages = []
        for i, stage in enumerate(cfg):
            layers: list[nn.Module] = []
            if i in (1, 2, 3) or (i == 4 and pool_last):
                layers.append(nn.MaxPool2d(2, 2))
            for out_ch in stage:
                layers += [*_conv_bn(in_ch, out_ch, 3), nn.ReLU()]
                in_ch = out_ch
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4, self.layer5 = stages
        self.pool = _global_pool()
        self.fc = nn.Linear(in_ch, num_classes)
        self.embedding_dim = in_ch
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer5(self.layer4(self.layer3(self.layer2(self.layer1(x)))))
        return self.fc(self.pool(x))


# --------------------------------------------------------------------------------------------------------------
# MobileNetV2 (Sandler et al. 2018)
# --------------------------------------------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    """1×1 expansion–BN–ReLU, 3×3 depthwise–BN–ReLU, 1×1 linear projection–BN; residual when shapes match.

    Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018. As in the KD zoo the
    expansion convolution is kept even for expansion 1 and the activation is ReLU.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            _conv_bn_relu(in_ch, hidden, 1),
            _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            *_conv_bn(hidden, out_ch, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


# (expansion or None for the default, channels, repeats, stride) per bottleneck group, Sandler et al. table 2
_MBV2_SETTING = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]
# the seven bottleneck groups gathered into four stages by output resolution (CRD feat[1..4])
_MBV2_STAGES = [(0, 1), (2,), (3, 4), (5, 6)]


class MobileNetV2(nn.Module):
    """MobileNetV2 for CIFAR (Sandler et al., CVPR 2018), the "MobileNetV2" student of the CRD/DKD tables.

    Defaults are the KD zoo's: width multiplier 0.5, expansion 6, a stride-2 3×3 stem (so 32×32 inputs end at
    2×2), bottleneck widths 16·w, 24·w, 32·w, 64·w, 96·w, 160·w, 320·w, a 1×1 conv–BN–ReLU to 1280 channels
    (`head`), global average pooling and a linear classifier — about 0.81M parameters for 100 classes.

    The seven bottleneck groups are gathered into four stages by resolution. Module paths for feature taps
    (CRD `feat` index in brackets):

    * `stem` [0] — H/2, 32·w channels;
    * `layer1` [1] — groups 1–2, H/2, 24·w channels; `layer2` [2] — group 3, H/4, 32·w (the CRD FitNet hint
      layer); `layer3` [3] — groups 4–5, H/8, 96·w; `layer4` [4] — groups 6–7, H/16, 320·w; `layer1`–`layer4`
      are the attention-transfer maps;
    * `head` — 1280-channel map; `pool` [-1] — `[N, 1280]` embedding; `fc` — logits.
    """

    def __init__(
        self,
        num_classes: int = 100,
        input_shape: Sequence[int] = (3, 32, 32),
        *,
        width_mult: float = 0.5,
        expansion: int = 6,
        last_channels: int = 1280,
    ) -> None:
        super().__init__()
        in_ch = _in_channels(input_shape, type(self).__name__)
        width = int(32 * width_mult)
        self.stem = _conv_bn_relu(in_ch, width, 3, stride=2)
        groups: list[list[nn.Module]] = []
        for t, c, n, s in _MBV2_SETTING:
            out_ch = int(c * width_mult)
            blocks: list[nn.Module] = []
            for b in range(n):
                blocks.append(InvertedResidual(width, out_ch, s if b == 0 else 1, expansion if t is None else t))
                width = out_ch
            groups.append(blocks)
        stages = [nn.Sequential(*[block for g in stage for block in groups[g]]) for stage in _MBV2_STAGES]
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        # the zoo widens the last layer only for multipliers above 1
        last = int(last_channels * width_mult) if width_mult > 1.0 else last_channels
        self.head = _conv_bn_relu(width, last, 1)
        self.pool = _global_pool()
        self.fc = nn.Linear(last, num_classes)
        self.embedding_dim = last
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.pool(self.head(x)))


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
# constructors (Hydra targets) and the zoo
# --------------------------------------------------------------------------------------------------------------

Shape = Sequence[int]


def resnet8(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> ResNet:
    """ResNet-8, widths 16/32/64 (0.08M parameters at 100 classes)."""
    return ResNet(num_classes, input_shape, depth=8, **kw)


def resnet14(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> ResNet:
    """ResNet-14, widths 16/32/64."""
    return ResNet(num_classes, input_shape, depth=14, **kw)


def resnet20(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> ResNet:
    """ResNet-20, widths 16/32/64 (0.28M)."""
    return ResNet(num_classes, input_shape, depth=20, **kw)


def resnet32(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> ResNet:
    """ResNet-32, widths 16/32/64 (0.47M)."""
    return ResNet(num_classes, input_shape, depth=32, **kw)


def resnet44(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> ResNet:
    """ResNet-44, widths 16/32/64."""
    return ResNet(num_classes, input_shape, depth=44, **kw)


def resnet56(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> ResNet:
    """ResNet-56, widths 16/32/64 (0.86M)."""
    return ResNet(num_classes, input_shape, depth=56, **kw)


def resnet110(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> ResNet:
    """ResNet-110, widths 16/32/64 (1.73M)."""
    return ResNet(num_classes, input_shape, depth=110, **kw)


def resnet8x4(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> ResNet:
    """ResNet-8×4: 32-channel stem, widths 64/128/256 (1.23M)."""
    return ResNet(num_classes, input_shape, depth=8, widths=(64, 128, 256), stem_width=32, **kw)


def resnet32x4(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> ResNet:
    """ResNet-32×4: 32-channel stem, widths 64/128/256 (7.43M)."""
    return ResNet(num_classes, input_shape, depth=32, widths=(64, 128, 256), stem_width=32, **kw)


def wrn_16_1(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> WideResNet:
    """WRN-16-1."""
    return WideResNet(num_classes, input_shape, depth=16, widen_factor=1, **kw)


def wrn_16_2(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> WideResNet:
    """WRN-16-2 (0.70M)."""
    return WideResNet(num_classes, input_shape, depth=16, widen_factor=2, **kw)


def wrn_40_1(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> WideResNet:
    """WRN-40-1 (0.57M)."""
    return WideResNet(num_classes, input_shape, depth=40, widen_factor=1, **kw)


def wrn_40_2(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> WideResNet:
    """WRN-40-2 (2.26M)."""
    return WideResNet(num_classes, input_shape, depth=40, widen_factor=2, **kw)


def vgg8(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> VGG:
    """VGG-8 with BN, one conv per stage (3.96M)."""
    return VGG(num_classes, input_shape, cfg=VGG_CONFIGS["vgg8"], **kw)


def vgg11(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> VGG:
    """VGG-11 with BN."""
    return VGG(num_classes, input_shape, cfg=VGG_CONFIGS["vgg11"], **kw)


def vgg13(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> VGG:
    """VGG-13 with BN, two convs per stage (9.46M)."""
    return VGG(num_classes, input_shape, cfg=VGG_CONFIGS["vgg13"], **kw)


def mobilenetv2(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> MobileNetV2:
    """MobileNetV2, width 0.5, expansion 6 — the tables' "MobileNetV2" (0.81M)."""
    return MobileNetV2(num_classes, input_shape, **kw)


def shufflenetv1(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> ShuffleNetV1:
    """ShuffleNet V1, 3 groups — the tables' "ShuffleNetV1" (0.95M)."""
    return ShuffleNetV1(num_classes, input_shape, **kw)


def shufflenetv2(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> ShuffleNetV2:
    """ShuffleNet V2, 1× — the tables' "ShuffleNetV2" (1.36M)."""
    return ShuffleNetV2(num_classes, input_shape, **kw)


ZOO: dict[str, Callable[..., nn.Module]] = {
    "resnet8": resnet8,
    "resnet14": resnet14,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "wrn_16_1": wrn_16_1,
    "wrn_16_2": wrn_16_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
    "vgg8": vgg8,
    "vgg11": vgg11,
    "vgg13": vgg13,
    "mobilenetv2": mobilenetv2,
    "shufflenetv1": shufflenetv1,
    "shufflenetv2": shufflenetv2,
}


def build(name: str, num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> nn.Module:
    """The zoo model `name` (case-insensitive, e.g. "resnet32x4" or "MobileNetV2"); `ValueError` if unknown."""
    key = str(name).lower()
    if key not in ZOO:
        raise ValueError(f"unknown CIFAR model '{name}'; valid names: {', '.join(ZOO)}")
    return ZOO[key](num_classes=num_classes, input_shape=input_shape, **kw)
