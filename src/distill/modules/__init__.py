"""LightningModules: the shared base (teachers, optimiser, modes), supervised training and distillation."""

from distill.modules.base import ClassifierModule, TeacherStudentModule, freeze
from distill.modules.distillation import DistillationModule
from distill.modules.supervised import SupervisedModule

__all__ = ["ClassifierModule", "DistillationModule", "SupervisedModule", "TeacherStudentModule", "freeze"]
