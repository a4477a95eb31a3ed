"""Measuring a model the same way whatever it is: task metrics, size, latency, FLOPs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from distill.atomic import save_torch


@torch.inference_mode()
def predict(model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
    """Logits and targets of `model` over every batch, in eval mode on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, targets = [], []
    for batch in batches:
        logits.append(model(batch["x"].to(device)).float().cpu())
        targets.append(batch["y"])
    model.train(was_training)
    return torch.cat(logits), torch.cat(targets)


def classification_metrics(logits: Tensor, targets: Tensor, reference: Tensor | None = None) -> dict[str, float]:
    """Top-1 accuracy, expected calibration error (15 bins) and top-1 agreement with `reference` logits."""
    num_classes = logits.shape[-1]
    metrics = {
        "accuracy": MulticlassAccuracy(num_classes=num_classes, average="micro")(logits, targets).item(),
        "calibration_error": MulticlassCalibrationError(num_classes=num_classes, n_bins=15)(
            logits.softmax(-1), targets
        ).item(),
    }
    if reference is not None:
        agree = MulticlassAccuracy(num_classes=num_classes, average="micro")(logits, reference.argmax(-1))
        metrics["agreement"] = agree.item()
    return metrics


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def _stored(p: Tensor) -> Tensor:
    """The values a parameter stores: the integer data of a quantised tensor subclass, else itself."""
    return p.qdata if hasattr(p, "qdata") else p


def eval_on_cpu(model: nn.Module) -> nn.Module:
    """`model` in eval mode on the CPU (moved only when it is elsewhere: quantised tensors cannot be swapped)."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = model.cpu()
    return model.eval()


def count_nonzero_parameters(model: nn.Module) -> int:
    """Parameters that are not exactly zero (pruned weights drop out; quantised weights count their integers)."""
    return sum(int((_stored(p.detach()) != 0).sum()) for p in model.parameters())


def save_weights(model: nn.Module, path: Path) -> int:
    """Write the model's `state_dict` to `path` and return its size in bytes."""
    return save_torch(model.state_dict(), path)


@torch.inference_mode()
def latency_ms(model: nn.Module, example: Tensor, batch_size: int, repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of one forward pass on the CPU at `batch_size`, in milliseconds."""
    model = eval_on_cpu(model)
    x = example[:1].cpu().expand(batch_size, *example.shape[1:]).contiguous()
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def flops_per_sample(model: nn.Module, example: Tensor) -> int:
    """Floating-point operations of one forward pass on one sample (a multiply-add counts 2)."""
    model = eval_on_cpu(model)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(example[:1].cpu())
    return int(counter.get_total_flops())
