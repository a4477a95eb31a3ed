"""Low-rank factorisation: replace each weight matrix W by its truncated SVD, W ≈ U_r S_r V_rᵀ, as two layers."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from distill.compress.base import StageContext, StageResult
from distill.errors import DistillError
from distill.measure import count_parameters

_CONVS = (nn.Conv1d, nn.Conv2d)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class LowRank:
    """SVD factorisation of nn.Linear (and Conv1d/Conv2d) layers.

    Linear(in, out) becomes Sequential(Linear(in, r, bias=False), Linear(r, out)); a convolution becomes a k×k
    convolution to r channels followed by a 1×1 convolution to the original outputs (with the original bias).
    A convolution's weight is viewed as the matrix [out_channels, in_channels · kernel size].
    The rank is ceil(rank_ratio · min(rows, cols)), or the smallest r keeping `energy` of Σ s².
    A layer is skipped when min(rows, cols) < min_features, when factorising would not reduce its parameter
    count (r · (rows + cols) >= rows · cols), or when it is a grouped convolution.
    """

    def __init__(self, rank_ratio: float | None = 0.5, energy: float | None = None, min_features: int = 8) -> None:
        if (rank_ratio is None) == (energy is None):
            raise DistillError(
                f"LowRank needs exactly one of rank_ratio or energy, got rank_ratio={rank_ratio!r}, energy={energy!r}"
            )
        if rank_ratio is not None and not (_number(rank_ratio) and 0.0 < rank_ratio <= 1.0):
            raise DistillError(f"LowRank rank_ratio must be in (0, 1], got {rank_ratio!r}")
        if energy is not None and not (_number(energy) and 0.0 < energy <= 1.0):
            raise DistillError(f"LowRank energy must be in (0, 1], got {energy!r}")
        if isinstance(min_features, bool) or not isinstance(min_features, int) or min_features < 1:
            raise DistillError(f"LowRank min_features must be a positive integer, got {min_features!r}")
        self.rank_ratio = None if rank_ratio is None else float(rank_ratio)
        self.energy = None if energy is None else float(energy)
        self.min_features = min_features

    def choose_rank(self, singular_values: Tensor, rows: int, cols: int) -> int:
        """The rank for a weight of shape [rows, cols] with these singular values (descending)."""
        full = min(rows, cols)
        if self.rank_ratio is not None:
            return max(1, min(full, math.ceil(self.rank_ratio * full - 1e-9)))
        squared = singular_values.double() ** 2
        total = float(squared.sum())
        if total == 0.0:
            return 1
        kept = torch.cumsum(squared, 0) / total
        reached = (kept >= self.energy - 1e-12).nonzero()
        return int(reached[0]) + 1 if len(reached) else full

    def apply(self, model: nn.Module, ctx: StageContext) -> StageResult:
        model = copy.deepcopy(model)
        before = count_parameters(model)
        candidates = [
            (name, module)
            for name, module in model.named_modules()
            if name and isinstance(module, (nn.Linear, *_CONVS))
        ]
        layers: dict[str, dict[str, float | int]] = {}
        skipped: list[dict[str, str]] = []
        for name, module in candidates:
            if isinstance(module, _CONVS) and module.groups != 1:
                skipped.append({"layer": name, "reason": f"grouped convolution (groups={module.groups})"})
                continue
            weight = module.weight.detach()
            rows = weight.shape[0]
            cols = weight[0].numel()
            if min(rows, cols) < self.min_features:
                skipped.append({"layer": name, "reason": f"min({rows}, {cols}) < min_features={self.min_features}"})
                continue
            matrix = weight.reshape(rows, cols).double()
            u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
            rank = self.choose_rank(s, rows, cols)
            if rank * (rows + cols) >= rows * cols:
                skipped.append(
                    {
                        "layer": name,
                        "reason": f"rank {rank} would not reduce parameters ({rank * (rows + cols)} >= {rows * cols})",
                    }
                )
                continue
            root = s[:rank].sqrt()
            first = root[:, None] * vh[:rank]  # [r, cols]
            second = u[:, :rank] * root[None, :]  # [rows, r]
            factored = self._factorise(module, first, second, rank)
            with torch.no_grad():
                w_first = factored[0].weight.double().reshape(rank, cols)
                w_second = factored[1].weight.double().reshape(rows, rank)
                error = torch.linalg.norm(matrix - w_second @ w_first) / torch.linalg.norm(matrix).clamp_min(1e-30)
            _replace(model, name, factored)
            layers[name] = {"rank": rank, "relative_error": float(error)}
        if not layers:
            reasons = "; ".join(f"{item['layer']}: {item['reason']}" for item in skipped) or "no Linear/Conv1d/Conv2d"
            raise DistillError(f"LowRank found no layer to factorise in {type(model).__name__} ({reasons})")
        return StageResult(
            model=model,
            info={
                "layers": layers,
                "skipped": skipped,
                "parameters_before": before,
                "parameters_after": count_parameters(model),
            },
        )

    @staticmethod
    def _factorise(module: nn.Module, first: Tensor, second: Tensor, rank: int) -> nn.Sequential:
        weight = module.weight
        kwargs = {"device": weight.device, "dtype": weight.dtype}
        has_bias = module.bias is not None
        if isinstance(module, nn.Linear):
            a = nn.Linear(module.in_features, rank, bias=False, **kwargs)
            b = nn.Linear(rank, module.out_features, bias=has_bias, **kwargs)
        else:
            conv = type(module)
            a = conv(
                module.in_channels,
                rank,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                bias=False,
                padding_mode=module.padding_mode,
                **kwargs,
            )
            b = conv(rank, module.out_channels, 1, bias=has_bias, **kwargs)
        with torch.no_grad():
            a.weight.copy_(first.reshape(a.weight.shape))
            b.weight.copy_(second.reshape(b.weight.shape))
            if has_bias:
                b.bias.copy_(module.bias)
        a.train(module.training)
        b.train(module.training)
        return nn.Sequential(a, b).train(module.training)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
