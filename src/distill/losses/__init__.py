"""Distillation loss terms, one family per file; each is chosen in config by `_target_`."""

from distill.losses.base import LossTerm, StepView
from distill.losses.feature import FitNetLoss
from distill.losses.response import DISTLoss, DKDLoss, HardLabelLoss, KDLoss, kd_loss, standardize

__all__ = [
    "DISTLoss",
    "DKDLoss",
    "FitNetLoss",
    "HardLabelLoss",
    "KDLoss",
    "LossTerm",
    "StepView",
    "kd_loss",
    "standardize",
]
