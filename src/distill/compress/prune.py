"""Pruning stages: unstructured magnitude pruning (torch.nn.utils.prune) and structured channel
pruning that physically shrinks the network (torch-pruning)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import prune

from distill.compress.base import StageContext, StageResult
from distill.errors import DistillError
from distill.measure import count_parameters
from distill.validate import number


def _as_str_tuple(value: object, what: str) -> tuple[str, ...]:
    """Accept a string, tuple, list or Hydra ListConfig of strings."""
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise DistillError(f"{what} must be a list of names, got {value!r}") from None
    if not all(isinstance(item, str) for item in items):
        raise DistillError(f"{what} must be a list of names, got {list(items)!r}")
    return items


class MagnitudePrune:
    """Global unstructured L1 pruning of the weights of every module of the listed types, made permanent.

    The `amount` smallest-magnitude weights across all those tensors together are set to zero; the result has
    plain weight tensors (no `weight_orig`, `weight_mask` or forward pre-hooks).
    """

    def __init__(self, amount: float = 0.5, layers: Sequence[str] = ("Linear", "Conv1d", "Conv2d")) -> None:
        self.amount = number(amount, "MagnitudePrune amount", low=0, high=1, low_open=True, high_open=True)
        self.layers = _as_str_tuple(layers, "MagnitudePrune layers")
        if not self.layers:
            raise DistillError("MagnitudePrune layers must name at least one module type, e.g. ['Linear']")
        types = []
        for name in self.layers:
            cls = getattr(nn, name, None)
            if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                raise DistillError(f"MagnitudePrune layers: {name!r} is not a torch.nn module type (e.g. 'Linear')")
            types.append(cls)
        self.layer_types = tuple(types)

    def apply(self, model: nn.Module, ctx: StageContext) -> StageResult:
        model = copy.deepcopy(model)
        targets = [
            (module, "weight")
            for module in model.modules()
            if isinstance(module, self.layer_types) and isinstance(getattr(module, "weight", None), nn.Parameter)
        ]
        if not targets:
            raise DistillError(
                f"MagnitudePrune found no layer to prune in {type(model).__name__}: "
                f"no module of type {', '.join(self.layers)} with a weight"
            )
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=self.amount)
        for module, name in targets:
            prune.remove(module, name)
        total = sum(module.weight.numel() for module, _ in targets)
        zeros = sum(int((module.weight == 0).sum()) for module, _ in targets)
        return StageResult(
            model=model,
            info={
                "sparsity": zeros / total,
                "target": self.amount,
                "pruned_parameters": zeros,
                "total_parameters": total,
                "tensors": len(targets),
            },
        )


def find_classifier(model: nn.Module, num_classes: int) -> nn.Linear | None:
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            found = module
    return found


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class StructuredPrune:
    """Remove a fraction `ratio` of the channels/neurons of every prunable layer group (L2 magnitude), with torch-pruning.

    The final classifier (the last Linear with `num_classes` outputs) and the modules named in `ignore` keep their
    output channels, so the model's output shape is unchanged while its parameter count drops.
    """

    def __init__(self, ratio: float = 0.5, ignore: Sequence[str] = ()) -> None:
        self.ratio = number(ratio, "StructuredPrune ratio", low=0, high=1, low_open=True, high_open=True)
        self.ignore = _as_str_tuple(ignore, "StructuredPrune ignore")

    def apply(self, model: nn.Module, ctx: StageContext) -> StageResult:
        try:
            import torch_pruning as tp
        except ImportError:
            raise DistillError("StructuredPrune needs the torch-pruning package: pip install torch-pruning") from None

        model = copy.deepcopy(model)
        name_of = dict(model.named_modules())
        missing = [name for name in self.ignore if name not in name_of]
        if missing:
            raise DistillError(
                f"StructuredPrune ignore: {type(model).__name__} has no module named {', '.join(missing)}"
            )
        classifier = find_classifier(model, ctx.num_classes)
        if classifier is None:
            raise DistillError(
                f"StructuredPrune found no final classifier in {type(model).__name__}: "
                f"no nn.Linear with out_features == {ctx.num_classes}"
            )
        ignored = [classifier, *(name_of[name] for name in self.ignore)]

        first = next(iter(model.parameters()), None)
        example = ctx.example_input[:1]
        if first is not None:
            example = example.to(first.device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out_shape = tuple(model(example).shape)
            try:
                pruner = tp.pruner.MetaPruner(
                    model,
                    example_inputs=example,
                    importance=tp.importance.MagnitudeImportance(p=2),
                    pruning_ratio=self.ratio,
                    ignored_layers=ignored,
                )
            except Exception as exc:  # torch-pruning's tracer raises anything
                raise DistillError(f"torch-pruning could not trace {type(model).__name__}: {first_line(exc)}") from exc
            groups = list(
                pruner.DG.get_all_groups(
                    ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
                )
            )
            if not groups:
                raise DistillError(
                    f"StructuredPrune found no prunable layer group in {type(model).__name__} "
                    f"(the classifier and {list(self.ignore) or 'nothing else'} are ignored)"
                )
            before = count_parameters(model)
            try:
                pruner.step()
            except Exception as exc:
                raise DistillError(f"torch-pruning failed on {type(model).__name__}: {first_line(exc)}") from exc
            after = count_parameters(model)
            if after >= before:
                raise DistillError(
                    f"StructuredPrune removed nothing from {type(model).__name__}: "
                    f"ratio {self.ratio} is too small to remove a whole channel"
                )
            with torch.no_grad():
                new_shape = tuple(model(example).shape)
            if new_shape != out_shape:
                raise DistillError(
                    f"StructuredPrune changed the output shape of {type(model).__name__} from {out_shape} to {new_shape}"
                )
        finally:
            model.train(was_training)
        del pruner, groups
        return StageResult(
            model=model,
            info={"parameters_before": before, "parameters_after": after, "ratio": self.ratio},
        )
