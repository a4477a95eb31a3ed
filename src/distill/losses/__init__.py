"""Distillation loss terms, one family per file; each is chosen in config by `_target_`."""

from distill.losses.base import LossTerm, StepView
from distill.losses.feature import FitNetLoss
from distill.losses.response import HardLabelLoss, KDLoss, kd_loss

__all__ = ["FitNetLoss", "HardLabelLoss", "KDLoss", "LossTerm", "StepView", "kd_loss"]
