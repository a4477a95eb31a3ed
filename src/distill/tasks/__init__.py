"""Task families on the spine (`distill.spine`): what a task provides is `distill.tasks.base.Task`."""

from distill.tasks.base import (
    Batches,
    CompressionStage,
    DataModule,
    ModelSpec,
    RunContext,
    StudentSpec,
    Task,
    check_contract,
)
from distill.tasks.causal_lm import CausalLMTask
from distill.tasks.classification import ClassificationTask
from distill.tasks.text_classification import TextClassificationTask

__all__ = [
    "Batches", "CausalLMTask", "ClassificationTask", "CompressionStage", "DataModule", "ModelSpec", "RunContext",
    "StudentSpec", "Task", "TextClassificationTask", "check_contract",
]  # fmt: skip
