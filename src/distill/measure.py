"""Measuring a model the same way whatever it is: task metrics, size, latency, FLOPs."""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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


def per_class_accuracy(logits: Tensor, targets: Tensor, class_names: list[str] | None = None) -> dict[str, Any]:
    """Accuracy on each class's test samples (classes without a test sample left out), and the worst class:
    `{"per_class_accuracy": {name: accuracy}, "worst_class": name, "worst_class_accuracy": accuracy}`.

    Rare behaviour is what distillation is known to lose first; a mean accuracy hides it."""
    names = list(class_names) if class_names else [str(i) for i in range(logits.shape[-1])]
    predicted = logits.argmax(-1)
    accuracy = {}
    for c, name in enumerate(names):
        members = targets == c
        if members.any():
            accuracy[name] = float((predicted[members] == c).float().mean())
    if not accuracy:
        return {}
    worst = min(accuracy, key=lambda n: (accuracy[n], names.index(n)))
    return {"per_class_accuracy": accuracy, "worst_class": worst, "worst_class_accuracy": accuracy[worst]}


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


def trainable_parameters(model: nn.Module) -> int:
    """Parameters that train (`requires_grad`): a LoRA model's adapters, a frozen teacher's none."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def weights_bytes(model: nn.Module) -> int:
    """Size of the model's `state_dict` as `torch.save` writes it, counted in memory."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def size_and_speed(
    model: nn.Module | Path,
    runner: nn.Module | Path,
    example: Tensor,
    report: Any,
    weights_path: Path | None = None,
    flops: bool = True,
) -> dict[str, Any]:
    """Parameters, non-zero parameters, bytes on disk, CPU latency at each `report.latency_batch_sizes` (median
    of `report.latency_repeats`) and FLOPs per sample, the same way for every model and task.

    `model` is a PyTorch module (its `state_dict` is written to `weights_path`, or counted in memory) or an
    ONNX file (run with ONNX Runtime; no FLOPs counted). `runner` is the module that takes `example`.
    """
    row: dict[str, Any]
    if isinstance(model, nn.Module):
        row = {
            "parameters": count_parameters(model),
            "nonzero_parameters": count_nonzero_parameters(model),
            "bytes": save_weights(model, weights_path) if weights_path else weights_bytes(model),
        }
        for batch in report.latency_batch_sizes:
            row[f"latency_ms_batch_{batch}"] = latency_ms(runner, example, batch, repeats=report.latency_repeats)
        if flops:
            row["flops"] = flops_per_sample(runner, example)
        return row
    from distill.compress import deploy

    session = deploy.onnx_session(model)
    row = {
        "parameters": deploy.onnx_parameters(model),
        "nonzero_parameters": deploy.onnx_nonzero_parameters(model),
        "bytes": Path(model).stat().st_size,
    }
    for batch in report.latency_batch_sizes:
        row[f"latency_ms_batch_{batch}"] = deploy.onnx_latency_ms(
            session, example, batch, repeats=report.latency_repeats
        )
    if flops:
        row["flops"] = None
    row["artifact"] = str(model)
    return row
