"""LightningModules: supervised training (teachers, baseline) and distillation."""

from distill.modules.distillation import DistillationModule, freeze
from distill.modules.supervised import SupervisedModule

__all__ = ["DistillationModule", "SupervisedModule", "freeze"]
