"""Measurements: task metrics against hand counts, parameter counts, FLOPs, latency, file size."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from distill.measure import (
    classification_metrics,
    count_parameters,
    flops_per_sample,
    latency_ms,
    predict,
    save_weights,
)
from distill.nets import MLP

# Five samples, three classes. Predictions (argmax): 0, 1, 2, 0, 1.
LOGITS = torch.tensor(
    [
        [3.0, 0.0, 0.0],
        [0.0, 2.0, 1.0],
        [0.5, 0.0, 1.0],
        [1.0, 0.9, 0.0],
        [0.0, 4.0, 0.0],
    ]
)
TARGETS = torch.tensor([0, 1, 1, 2, 1])  # right, right, wrong, wrong, right: accuracy 3/5
# Reference (teacher) predictions: 0, 2, 2, 0, 0 -> agreement with the predictions above: 3/5
REFERENCE = torch.tensor(
    [
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 2.0],
        [0.0, 0.0, 1.0],
        [2.0, 1.0, 1.0],
        [5.0, 1.0, 0.0],
    ]
)


def ece_by_hand(logits: Tensor, targets: Tensor, bins: int = 15) -> float:
    """Σ_bins (n_b / N) · |accuracy_b − mean confidence_b|, confidence = top softmax probability."""
    groups: dict[int, list[tuple[float, bool]]] = {}
    for row, target in zip(logits.tolist(), targets.tolist(), strict=True):
        exps = [math.exp(z) for z in row]
        probs = [e / sum(exps) for e in exps]
        confidence = max(probs)
        groups.setdefault(math.ceil(confidence * bins) - 1, []).append((confidence, probs.index(confidence) == target))
    total = 0.0
    for members in groups.values():
        accuracy = sum(ok for _, ok in members) / len(members)
        confidence = sum(c for c, _ in members) / len(members)
        total += len(members) / len(targets) * abs(accuracy - confidence)
    return total


def test_classification_metrics_against_hand_counts() -> None:
    metrics = classification_metrics(LOGITS, TARGETS, REFERENCE)
    assert set(metrics) == {"accuracy", "calibration_error", "agreement"}
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["agreement"] == pytest.approx(3 / 5)
    assert metrics["calibration_error"] == pytest.approx(ece_by_hand(LOGITS, TARGETS), abs=1e-5)
    assert all(isinstance(v, float) for v in metrics.values())


def test_classification_metrics_without_reference_has_no_agreement() -> None:
    metrics = classification_metrics(LOGITS, TARGETS)
    assert set(metrics) == {"accuracy", "calibration_error"}


def test_perfect_and_self_agreement() -> None:
    metrics = classification_metrics(LOGITS, LOGITS.argmax(-1), LOGITS * 2)
    assert metrics["accuracy"] == 1.0
    assert metrics["agreement"] == 1.0
    wrong = classification_metrics(LOGITS, (LOGITS.argmax(-1) + 1) % 3, -LOGITS)
    assert wrong["accuracy"] == 0.0


def test_ece_of_a_single_confident_sample() -> None:
    # one sample, softmax([ln 3, 0]) = [0.75, 0.25], correct: |1 − 0.75| = 0.25
    logits = torch.tensor([[math.log(3.0), 0.0]])
    assert classification_metrics(logits, torch.tensor([0]))["calibration_error"] == pytest.approx(0.25, abs=1e-6)
    assert classification_metrics(logits, torch.tensor([1]))["calibration_error"] == pytest.approx(0.75, abs=1e-6)


def test_count_parameters() -> None:
    assert count_parameters(nn.Linear(3, 2)) == 8
    assert count_parameters(nn.Linear(3, 2, bias=False)) == 6
    assert count_parameters(nn.BatchNorm1d(4)) == 8  # running statistics are buffers, not counted
    assert count_parameters(MLP(input_shape=(4,), num_classes=3, hidden=(5,))) == 4 * 5 + 5 + 5 * 3 + 3
    shared = nn.Linear(3, 3)
    assert count_parameters(nn.Sequential(shared, shared)) == 12  # a shared layer counts once


@pytest.mark.parametrize("bias", [True, False])
def test_flops_of_linear(bias: bool) -> None:
    example = torch.randn(7, 10)  # only one sample is measured, whatever the batch
    assert flops_per_sample(nn.Linear(10, 5, bias=bias), example) == 2 * 10 * 5


def test_flops_of_mlp() -> None:
    model = MLP(input_shape=(2, 3), num_classes=4, hidden=(8,))
    assert flops_per_sample(model, torch.randn(1, 2, 3)) == 2 * (6 * 8 + 8 * 4)


def test_flops_of_conv1d() -> None:
    # each of 4 output channels × 8 positions is a 3-tap dot product over 2 input channels
    model = nn.Conv1d(2, 4, kernel_size=3, padding=1, bias=False)
    assert flops_per_sample(model, torch.randn(3, 2, 8)) == 2 * 4 * 8 * 2 * 3


class CountingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(6, 2)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.shapes.append(tuple(x.shape))
        return self.layer(x)


def test_latency_is_a_positive_number_of_milliseconds() -> None:
    model = CountingNet()
    value = latency_ms(model, torch.randn(3, 6), batch_size=4, repeats=5, warmup=2)
    assert isinstance(value, float)
    assert math.isfinite(value) and 0 < value < 1000
    assert model.shapes == [(4, 6)] * 7  # warmup + repeats forward passes at the requested batch size


def test_save_weights_returns_the_file_size(tmp_path: Path) -> None:
    model = MLP(input_shape=(4,), num_classes=3, hidden=(5,))
    path = tmp_path / "weights" / "mlp.pt"
    size = save_weights(model, path)
    assert size == path.stat().st_size
    assert size > 43 * 4  # at least the float32 parameters
    state = torch.load(path, weights_only=True)
    assert state.keys() == model.state_dict().keys()
    bigger = save_weights(MLP(input_shape=(4,), num_classes=3, hidden=(500,)), tmp_path / "big.pt")
    assert bigger > size + (500 * 4 + 500 * 3) * 4 * 0.9


def test_predict_restores_training_mode_and_concatenates() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5))
    model.train()
    x = torch.randn(5, 2)
    batches = [{"x": x[:3], "y": torch.tensor([0, 1, 2])}, {"x": x[3:], "y": torch.tensor([1, 0])}]
    logits, targets = predict(model, batches)
    assert model.training
    assert targets.tolist() == [0, 1, 2, 1, 0]
    torch.testing.assert_close(logits, model[0](x).detach())  # eval mode: dropout off
