"""VGG for CIFAR (Simonyan & Zisserman 2015, with BatchNorm): `VGG`, its `VGG_CONFIGS` and vgg8, vgg11, vgg13."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from distill.nets.cifar.common import Shape, _conv_bn, _global_pool, _in_channels, _init_weights

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
# constructors (Hydra targets: `_target_: distill.nets.cifar.<name>`)
# --------------------------------------------------------------------------------------------------------------


def vgg8(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> VGG:
    """VGG-8 with BN, one conv per stage (3.96M)."""
    return VGG(num_classes, input_shape, cfg=VGG_CONFIGS["vgg8"], **kw)


def vgg11(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> VGG:
    """VGG-11 with BN."""
    return VGG(num_classes, input_shape, cfg=VGG_CONFIGS["vgg11"], **kw)


def vgg13(num_classes: int = 100, input_shape: Shape = (3, 32, 32), **kw) -> VGG:
    """VGG-13 with BN, two convs per stage (9.46M)."""
    return VGG(num_classes, input_shape, cfg=VGG_CONFIGS["vgg13"], **kw)
