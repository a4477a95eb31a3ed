"""Architectures no library provides. Every constructor takes `input_shape` and `num_classes`."""

from distill.nets.conv1d import ConvNet1d
from distill.nets.mlp import MLP

__all__ = ["MLP", "ConvNet1d"]
