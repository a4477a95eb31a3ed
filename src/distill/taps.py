"""Capture intermediate outputs of any `nn.Module` by module path, with forward hooks.

The model stays unmodified, so torchvision, timm or transformers models work as they are.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from distill.errors import DistillError


def _as_tensor(output: object) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]  # e.g. (hidden, attention) pairs: the first item is the feature map
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    raise TypeError(f"cannot take a feature tensor from an output of type {type(output).__name__}")


class FeatureTaps:
    """Holds the latest output of each named submodule of `model` in `self.outputs`.

    A path that names no submodule raises `DistillError` listing the valid paths.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], owner: str = "model") -> None:
        self.paths = list(dict.fromkeys(paths))
        self.outputs: dict[str, Tensor] = {}
        modules = dict(model.named_modules())
        missing = [p for p in self.paths if p not in modules or p == ""]
        if missing:
            valid = [name for name in modules if name]
            raise DistillError(f"{owner} has no module '{missing[0]}'; valid module paths: {', '.join(valid)}")
        self._handles = [modules[p].register_forward_hook(self._hook(p)) for p in self.paths]

    def _hook(self, path: str):
        def store(module: nn.Module, args: tuple, output: object) -> None:
            self.outputs[path] = _as_tensor(output)

        return store

    def remove(self) -> None:
        """Detach the hooks (the model then runs as if never tapped)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
