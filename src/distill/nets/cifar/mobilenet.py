"""MobileNetV2 (Sandler et al. 2018): `InvertedResidual`, `MobileNetV2` and the constructor mobilenetv2."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from distill.nets.cifar.common import Shape, _conv_bn, _conv_bn_relu, _global_pool, _in_channels, _init_weights


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
# constructors (Hydra targets: `_target_: distill.nets.cifar.<name>`)
# --------------------------------------------------------------------------------------------------------------


def mobilenetv2(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> MobileNetV2:
    """MobileNetV2, width 0.5, expansion 6 — the tables' "MobileNetV2" (0.81M)."""
    return MobileNetV2(num_classes, input_shape, **kw)
