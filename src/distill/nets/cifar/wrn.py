"""Wide ResNet (Zagoruyko & Komodakis 2016): `WideBasicBlock`, `WideResNet` and the constructors wrn_16_1 … wrn_40_2."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from distill.nets.cifar.common import Shape, _global_pool, _in_channels, _init_weights


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
# constructors (Hydra targets: `_target_: distill.nets.cifar.<name>`)
# --------------------------------------------------------------------------------------------------------------


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
