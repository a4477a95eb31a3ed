"""Architectures no library provides. Every constructor takes `input_shape` and `num_classes`.

`distill.nets.cifar` holds the CIFAR knowledge-distillation zoo (ResNet, WRN, VGG, MobileNetV2,
ShuffleNetV1/V2) of the published CIFAR-100 tables: `_target_: distill.nets.cifar.resnet8x4`.
"""

from distill.nets import cifar
from distill.nets.cifar import VGG, MobileNetV2, ResNet, ShuffleNetV1, ShuffleNetV2, WideResNet
from distill.nets.cifar import ZOO as CIFAR_ZOO
from distill.nets.cifar import build as build_cifar
from distill.nets.conv1d import ConvNet1d
from distill.nets.mlp import MLP

__all__ = [
    "CIFAR_ZOO", "MLP", "VGG", "ConvNet1d", "MobileNetV2", "ResNet", "ShuffleNetV1", "ShuffleNetV2", "WideResNet",
    "build_cifar", "cifar",
]  # fmt: skip
