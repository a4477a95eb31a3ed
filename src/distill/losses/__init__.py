"""Distillation loss terms, one family per file; each is chosen in config by `_target_`."""

from distill.losses.base import LossTerm, StepView
from distill.losses.contrastive import CRDLoss
from distill.losses.feature import ATLoss, FitNetLoss
from distill.losses.relation import CCLoss, PKTLoss, RKDLoss, SPLoss
from distill.losses.response import DISTLoss, DKDLoss, HardLabelLoss, KDLoss, kd_loss, standardize
from distill.losses.self_distill import AuxiliaryHeadsLoss

__all__ = [
    "ATLoss",
    "AuxiliaryHeadsLoss",
    "CCLoss",
    "CRDLoss",
    "DISTLoss",
    "DKDLoss",
    "FitNetLoss",
    "HardLabelLoss",
    "KDLoss",
    "LossTerm",
    "PKTLoss",
    "RKDLoss",
    "SPLoss",
    "StepView",
    "kd_loss",
    "standardize",
]
