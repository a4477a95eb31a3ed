"""Quantisation-aware training with torchao: fake-quantised distillation, then conversion to int8."""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from distill.compress.base import StageContext, StageResult
from distill.errors import DistillError

CONVERSIONS = ("torchao", "float")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide torchao's notices about optional GPU kernels and torch's about its enum registrations."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _torchao():
    with _quiet():
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerAxis, PerGroup, quantize_
        from torchao.quantization.qat import FakeQuantizedLinear, QATConfig
    return Int8DynamicActivationIntxWeightConfig, PerAxis, PerGroup, quantize_, FakeQuantizedLinear, QATConfig


class Qat:
    """Quantisation-aware training (torchao): int8 weights and dynamic int8 activations, fake-quantised.

    Every `nn.Linear` gets fake quantisers (symmetric int8 weights per output channel, or per group
    of `group_size` input features; asymmetric int8 activations per token, computed on the fly),
    then the model is distilled from the run's teachers for `epochs` epochs so that it learns to
    live with the rounding. `convert` decides what comes out:

    - `torchao`: torchao's conversion, int8 weights stored as int8 (about 4x smaller on disk);
      torchao runs these with its own kernels, which on a CPU without them are slower than fp32.
    - `float`: the fake quantisers are removed and the float weights, trained to survive int8
      rounding, are kept, for `compress=[qat,onnx,int8]`: ONNX Runtime's int8 kernels then run a
      model that was trained for them.
    """

    def __init__(self, epochs: int = 10, lr: float = 0.003, group_size: int | None = None, convert: str = "torchao"):
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise DistillError(f"qat: epochs must be a positive integer, got {epochs!r}")
        if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and lr > 0):
            raise DistillError(f"qat: lr must be a positive number, got {lr!r}")
        if group_size is not None and (
            isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1
        ):
            raise DistillError(f"qat: group_size must be a positive integer or null (per channel), got {group_size!r}")
        if convert not in CONVERSIONS:
            raise DistillError(f"qat: convert must be one of {', '.join(CONVERSIONS)}, got {convert!r}")
        self.epochs, self.lr, self.group_size, self.convert = epochs, float(lr), group_size, convert

    def _base_config(self):
        config_cls, per_axis, per_group, *_ = _torchao()
        granularity = per_axis(0) if self.group_size is None else per_group(self.group_size)
        return config_cls(weight_dtype=torch.int8, weight_granularity=granularity)

    def apply(self, model: object, ctx: StageContext) -> StageResult:
        if not isinstance(model, nn.Module):
            raise DistillError("qat trains a PyTorch model: list it before onnx/int8 in compress=[...]")
        if ctx.redistill is None:
            raise DistillError("qat needs the run's teachers to distil from")
        linears = {name: m for name, m in model.named_modules() if type(m) is nn.Linear}
        if not linears:
            raise DistillError(
                f"qat: {type(model).__name__} has no nn.Linear layer to quantise (torchao's QAT swaps Linear layers only)"
            )
        if self.group_size is not None:
            for name, layer in linears.items():
                if layer.in_features % self.group_size:
                    raise DistillError(
                        f"qat: layer '{name}' has {layer.in_features} input features, "
                        f"not a multiple of group_size={self.group_size}"
                    )
        *_, quantize_, fake_linear, qat_config = _torchao()
        base = self._base_config()
        model = copy.deepcopy(model)
        with _quiet():
            quantize_(model, qat_config(base, step="prepare"))
        ctx.redistill(model, self.epochs, self.lr)
        model.eval()
        with torch.no_grad():
            fake_quantised = model(ctx.example_input)
        if self.convert == "torchao":
            with _quiet():
                quantize_(model, qat_config(base, step="convert"))
        else:
            _remove_fake_quantisers(model, fake_linear)
        with torch.no_grad():
            converted = model(ctx.example_input)
        return StageResult(
            model=model,
            info={
                "epochs": self.epochs,
                "lr": self.lr,
                "layers_quantised": len(linears),
                "convert": self.convert,
                # How far the converted model is from the fake-quantised one it was trained as.
                "max_abs_diff_vs_fake_quant": float((converted - fake_quantised).abs().max()),
            },
        )


def _remove_fake_quantisers(model: nn.Module, fake_linear: type) -> None:
    for name, child in model.named_children():
        if isinstance(child, fake_linear):
            setattr(model, name, child.to_linear())
        else:
            _remove_fake_quantisers(child, fake_linear)
