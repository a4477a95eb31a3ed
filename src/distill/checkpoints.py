"""The model file: weights plus the config that rebuilds the network, read back without pickle."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError

FORMAT = "distill.model/1"


def save_model(path: Path, model: nn.Module, **meta: Any) -> int:
    """Atomically write `{"format", "state_dict", **meta}` to `path`; returns its size in bytes.

    `meta` holds plain containers only (e.g. the network's config), so the file loads with
    `weights_only=True`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "state_dict": model.state_dict(), **meta}, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.stat().st_size


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint (ours or Lightning's) as tensors and plain containers only."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DistillError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt file can fail anywhere in the unpickler
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistillError(f"cannot read checkpoint {path}: {first_line}") from None


def state_dict_of(
    checkpoint: dict[str, Any], prefixes: tuple[str, ...] = ("net.", "student.", "model.")
) -> dict[str, Any]:
    """The network weights of a checkpoint, with a LightningModule attribute prefix stripped."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        raise DistillError("checkpoint holds no state_dict")
    if checkpoint.get("format") == FORMAT:  # our own files hold the bare network
        return state
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state if not k.startswith("terms.")):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_weights(model: nn.Module, path: str | Path, who: str) -> nn.Module:
    """Load the weights at `path` into `model`; a mismatch names the keys that differ."""
    state = state_dict_of(read_checkpoint(path))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise DistillError(f"{who}: checkpoint {path} does not fit the configured network: {detail}") from None
    return model
