"""What every compression stage takes and gives back."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn


@dataclass
class StageContext:
    """What a stage may use besides the model: example inputs, calibration data, a folder."""

    example_input: Tensor  # a few real inputs, [n, *input_shape]
    calibration: Iterable[Tensor]  # batches of training inputs (for static quantisation, statistics)
    out_dir: Path  # where the stage writes artifacts (ONNX files)
    num_classes: int
    # Distil `model` again from the run's teachers for `epochs` epochs at learning rate `lr`
    # (in place); set by the pipeline, used by the `recover` stage.
    redistill: Callable[[nn.Module, int, float], None] | None = None


@dataclass
class StageResult:
    """A stage's output: a PyTorch model, or an exported artifact, plus what it measured about itself."""

    model: nn.Module | None = None  # the compressed PyTorch model, when the stage produces one
    artifact: Path | None = None  # an exported file (.onnx), when the stage produces one
    info: dict[str, Any] = field(default_factory=dict)  # e.g. {"sparsity": 0.8}, {"max_abs_diff": 1e-6}
