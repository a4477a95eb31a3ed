"""The model file: weights plus the config that rebuilds the network, read back without pickle."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from distill.atomic import save_torch
from distill.errors import DistillError

FORMAT = "distill.model/1"


def save_model(path: Path, model: nn.Module, **meta: Any) -> int:
    """Atomically write `{"format", "state_dict", **meta}` to `path`; returns its size in bytes.

    `meta` holds plain containers only (e.g. the network's config), so the file loads with
    `weights_only=True`.
    """
    return save_torch({"format": FORMAT, "state_dict": model.state_dict(), **meta}, Path(path))


def describe_load_error(err: BaseException) -> str:
    """Why `torch.load(..., weights_only=True)` could not read a file, in words (not torch's advice)."""
    text = " ".join(str(err).split())
    if "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (
            f"it holds Python objects{what} beyond tensors and plain containers, or is an old pickle format; "
            "checkpoints are read without running code (weights_only), so it is refused"
        )
    return "not a complete PyTorch checkpoint (truncated, or another kind of file)"


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """Load a checkpoint (ours or Lightning's) as tensors and plain containers only."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DistillError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the error below says enough
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt file can fail anywhere in the unpickler
        raise DistillError(f"cannot read {what} {path}: {describe_load_error(err)}") from None
    if not isinstance(checkpoint, dict):
        raise DistillError(f"cannot read {what} {path}: it holds a {type(checkpoint).__name__}, not a checkpoint")
    return checkpoint


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
        missing = set(model.state_dict()) - set(state)
        if missing and missing <= {"input_mean", "input_std"}:
            raise DistillError(
                f"{who}: checkpoint {path} holds a network trained without input standardisation, but this data "
                "standardises its features (data=file): set data.standardize=false to use it"
            ) from None
        detail = " ".join(str(err).split())[:300]
        raise DistillError(f"{who}: checkpoint {path} does not fit the configured network: {detail}") from None
    return model


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic: a checkpoint (`last.ckpt`, `hpc_ckpt_<n>.ckpt`) appears
    whole or not at all, with the process umask's permissions; a failed write (a full disk, a read-only
    folder) leaves the previous file in place and stops the run with one line naming the path."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_torch(checkpoint, Path(path), sync=False)  # rewritten every epoch: atomic, not synced each time
        return None
