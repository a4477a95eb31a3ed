"""A student cut from its teacher: the teacher with channels and neurons removed (torch-pruning), sized to a
target, then distilled from the intact teacher (`student=pruned`).

Starting the student from the teacher's own weights is what the strongest compressed models of recent years do:
DistilBERT (Sanh et al. 2019) initialises its layers from BERT's, Minitron (Muralidharan et al. 2024) prunes
Llama-3.1-8B in width or depth and distils it back, Sheared-LLaMA (Xia et al. 2024) prunes to a target shape
first. Here every prunable layer group loses the same share of its channels (the classifier keeps its
outputs); which channels go is decided by their importance on training batches: first-order Taylor
(|weight × gradient| of the cross-entropy, Molchanov et al. 2019) or the weights' L2 norm. The share is found
by bisection so that the cut network is the largest that meets every target (parameters, FLOPs, bytes on
disk, batch-1 CPU latency), each measured the way the report measures it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill import budget
from distill.compress.prune import find_classifier, first_line
from distill.errors import DistillError
from distill.validate import number

log = logging.getLogger(__name__)

#: target keyword -> the budget key it mirrors
TARGETS = {"params": "max_params", "flops": "max_flops", "bytes": "max_bytes", "latency_ms": "max_latency_ms"}
IMPORTANCE = ("taylor", "magnitude")


class ChannelCut:
    """Cut a student from a teacher network with torch-pruning: `ratio` given, or the largest network that meets
    the targets (`params`, `flops`, `bytes`, `latency_ms`; null entries set none)."""

    def __init__(
        self,
        teacher: str | None = None,
        params: float | None = None,
        flops: float | None = None,
        bytes: float | None = None,  # noqa: A002 - the budget's name for it
        latency_ms: float | None = None,
        ratio: float | None = None,
        importance: str = "taylor",
        batches: int = 8,
        steps: int = 14,
    ) -> None:
        self.teacher = teacher
        given = {"params": params, "flops": flops, "bytes": bytes, "latency_ms": latency_ms}
        self.limits = budget.limits_of({TARGETS[k]: v for k, v in given.items()})
        self.ratio = None if ratio is None else number(ratio, "student.cut.ratio", low=0, high=1, high_open=True)
        if self.ratio is None and not self.limits:
            raise DistillError(
                "student.cut needs a size: a target (params, flops, bytes, latency_ms; by default the budget's) "
                "or a ratio of channels to remove"
            )
        if importance not in IMPORTANCE:
            raise DistillError(f"student.cut.importance must be one of {', '.join(IMPORTANCE)}, got {importance!r}")
        self.importance = importance
        self.batches = int(number(batches, "student.cut.batches", low=1))
        self.steps = int(number(steps, "student.cut.steps", low=1))

    def cut(
        self, teacher: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], example: Tensor, num_classes: int,
        repeats: int = 30, runner: Callable[[nn.Module], nn.Module] = lambda m: m,
    ) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
        """The cut network and what was done (`ratio`, sizes before and after, importance)."""
        scored = scored_copy(teacher, batches, self.importance)
        classifier = find_classifier(scored, num_classes)
        if classifier is None:
            raise DistillError(
                f"student.cut found no final classifier in {type(teacher).__name__}: "
                f"no nn.Linear with out_features == {num_classes}"
            )
        figures = lambda m: budget.size_figures(m, runner(m), example, self.limits, repeats)  # noqa: E731
        before = figures(teacher)
        if self.ratio is not None:
            ratio, model = self.ratio, prune(scored, self.ratio, example, num_classes, self.importance)
            after = figures(model)
        else:
            check_smaller(self.limits, before)
            ratio, model, after = self.search(scored, example, num_classes, figures)
        info = {"ratio": round(ratio, 4), "importance": self.importance, "before": before, "after": after}
        info["parameters"] = {"teacher": count(teacher), "student": count(model)}
        info["what"] = f"{100 * ratio:.1f}% of channels removed"
        log.info("Student cut from the teacher: %.1f%% of the channels removed, %s -> %s parameters",
                 100 * ratio, f"{count(teacher):,}", f"{count(model):,}")  # fmt: skip
        return model, info

    def search(
        self, scored: nn.Module, example: Tensor, num_classes: int, figures: Callable[[nn.Module], dict[str, float]]
    ) -> tuple[float, nn.Module, dict[str, float]]:
        """The smallest share of channels removed (bisection) whose network meets every target, that network
        and its measured figures."""
        most = largest_ratio(scored, num_classes)
        smallest = prune(scored, most, example, num_classes, self.importance)
        measured = figures(smallest)
        if excess := over(self.limits, measured):
            shown = ", ".join(f"{budget.SIZE_KEYS[k][1]} {v:,.4g}" for k, v in excess.items())
            raise DistillError(
                f"student.cut: even the smallest cut of the teacher (one channel left in its narrowest layer) "
                f"exceeds the target by {shown}; choose a larger target or a smaller architecture"
            )
        low, high, best = 0.0, most, (smallest, measured)
        for _ in range(self.steps):
            middle = (low + high) / 2
            model = prune(scored, middle, example, num_classes, self.importance)
            if not over(self.limits, sizes := figures(model)):
                high, best = middle, (model, sizes)
            else:
                low = middle
        return high, *best


def largest_ratio(model: nn.Module, num_classes: int) -> float:
    """The largest share of channels every layer can lose while its narrowest layer keeps one (torch-pruning
    keeps int(channels x (1 - ratio)) and leaves a layer that would keep none unpruned)."""
    classifier = find_classifier(model, num_classes)
    widths = [
        m.out_features if isinstance(m, nn.Linear) else m.out_channels
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d) and m is not classifier
    ]
    return 1 - 1.0001 / min(widths) if widths else 0.0


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def over(limits: dict[str, float], figures: dict[str, float]) -> dict[str, float]:
    """By how much `figures` exceed each size limit (empty: within)."""
    return {
        key: figures[budget.SIZE_KEYS[key][0]] - limit
        for key, limit in limits.items()
        if figures[budget.SIZE_KEYS[key][0]] > limit
    }


def check_smaller(limits: dict[str, float], teacher: dict[str, float]) -> None:
    """Refuse a target the teacher already meets: there is nothing to cut."""
    met = [k for k, v in limits.items() if teacher[budget.SIZE_KEYS[k][0]] <= v]
    if len(met) == len(limits):
        shown = ", ".join(
            f"{budget.SIZE_KEYS[k][1]} {limits[k]:,.4g} >= the teacher's {teacher[budget.SIZE_KEYS[k][0]]:,.4g}"
            for k in met
        )
        raise DistillError(f"pruning target larger than the teacher: {shown}; lower the target")


def scored_copy(teacher: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], importance: str) -> nn.Module:
    """A copy of the teacher in eval mode, trainable, with the gradients Taylor importance reads (summed over
    `batches` of the cross-entropy on the labels); the teacher itself is untouched."""
    model = copy.deepcopy(teacher).eval().requires_grad_(True)
    if importance == "taylor":
        if not batches:
            raise DistillError("student.cut: Taylor importance needs training batches, and the data gave none")
        device = next(model.parameters()).device
        model.zero_grad()
        for x, y in batches:
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()
    return model


def prune(scored: nn.Module, ratio: float, example: Tensor, num_classes: int, importance: str) -> nn.Module:
    """A copy of `scored` with `ratio` of every prunable layer group's channels removed (the least important)."""
    import torch_pruning as tp

    model = copy.deepcopy(scored)
    if ratio == 0:
        return model
    for mine, theirs in zip(model.parameters(), scored.parameters(), strict=True):  # deepcopy leaves gradients
        mine.grad = None if theirs.grad is None else theirs.grad.clone()
    scorer = (
        tp.importance.GroupTaylorImportance() if importance == "taylor" else tp.importance.GroupMagnitudeImportance(p=2)
    )
    device = next(model.parameters()).device
    try:
        pruner = tp.pruner.MetaPruner(
            model, example_inputs=example[:1].to(device), importance=scorer, pruning_ratio=ratio,
            ignored_layers=[find_classifier(model, num_classes)],
        )  # fmt: skip
        pruner.step()
    except Exception as exc:  # torch-pruning's tracer raises anything
        raise DistillError(f"torch-pruning could not cut {type(scored).__name__}: {first_line(exc)}") from exc
    model.zero_grad(set_to_none=True)
    return model


def reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A copy of `model` with fresh weights (every layer's own initialisation, from `seed`): its architecture
    trained from scratch is the baseline of a cut student."""
    fresh = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters") and module is not fresh:
            module.reset_parameters()
    return fresh


#: module type -> (attribute, the dimension of `weight` it is read from)
SHAPE_ATTRIBUTES: dict[type, tuple[tuple[str, int], ...]] = {
    nn.Linear: (("out_features", 0), ("in_features", 1)),
    nn.Conv1d: (("out_channels", 0),),
    nn.Conv2d: (("out_channels", 0),),
    nn.BatchNorm1d: (("num_features", 0),),
    nn.BatchNorm2d: (("num_features", 0),),
}


def fit_shapes(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """Reshape `model` (built from the teacher's config) to the shapes of a cut student's `state`, so that
    `load_state_dict` fits: every tensor of another shape is replaced, and the layers' size attributes follow."""
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    for name, value in state.items():
        if name in own and own[name].shape != value.shape:
            path, _, attr = name.rpartition(".")
            module = model.get_submodule(path)
            empty = torch.empty_like(value, dtype=own[name].dtype)
            if isinstance(own[name], nn.Parameter):
                setattr(module, attr, nn.Parameter(empty, requires_grad=own[name].requires_grad))
            else:
                module.register_buffer(attr, empty)
    for module in model.modules():
        weight = getattr(module, "weight", None)
        for kind, attributes in SHAPE_ATTRIBUTES.items():
            if isinstance(module, kind) and isinstance(weight, Tensor):
                for attr, dim in attributes:
                    setattr(module, attr, weight.shape[dim])
                if isinstance(module, nn.Conv1d | nn.Conv2d):
                    module.in_channels = weight.shape[1] * module.groups
    return model
