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

One module per family: `resnet` (ResNet), `wrn` (WideResNet), `vgg` (VGG), `mobilenet` (MobileNetV2) and
`shufflenet` (ShuffleNetV1/V2), each with its blocks and constructors; `common` holds the layers and checks
they share. Every public name is re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from distill.nets.cifar.common import Shape
from distill.nets.cifar.mobilenet import InvertedResidual, MobileNetV2, mobilenetv2
from distill.nets.cifar.resnet import (
    BasicBlock,
    ResNet,
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
    resnet44,
    resnet56,
    resnet110,
)
from distill.nets.cifar.shufflenet import (
    ShuffleNetV1,
    ShuffleNetV2,
    ShuffleV1Block,
    ShuffleV2Block,
    ShuffleV2DownBlock,
    shufflenetv1,
    shufflenetv2,
)
from distill.nets.cifar.vgg import VGG, vgg8, vgg11, vgg13
from distill.nets.cifar.vgg import VGG_CONFIGS as VGG_CONFIGS
from distill.nets.cifar.wrn import WideBasicBlock, WideResNet, wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2

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
