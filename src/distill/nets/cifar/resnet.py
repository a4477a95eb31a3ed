"""ResNet for CIFAR (He et al. 2016): `BasicBlock`, `ResNet` and the constructors resnet8 … resnet32x4."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from distill.nets.cifar.common import Shape, _conv_bn, _conv_bn_relu, _global_pool, _in_channels, _init_weights


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
# constructors (Hydra targets: `_target_: distill.nets.cifar.<name>`)
# --------------------------------------------------------------------------------------------------------------


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
