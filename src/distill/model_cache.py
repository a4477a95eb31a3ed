"""Trained models cached by a hash of everything that shaped them, shared safely between runs.

A run that needs a model another run is training waits on a file lock instead of training it
again; files appear atomically, so a reader never sees half a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from torch import nn

from distill import distributed
from distill.checkpoints import load_weights, save_model

log = logging.getLogger(__name__)


def cache_key(payload: Any) -> str:
    """A short stable hash of a JSON-serialisable description."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _acquire(path: Path, label: str) -> FileLock:
    """The cache entry's lock, held; says so when another run holds it first."""
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("Waiting for another run that is training %s (%s)", label, path.name)
        lock.acquire()
    return lock


def _store(path: Path, label: str, key: str, payload: dict[str, Any], model: nn.Module) -> None:
    """Write the trained weights and, beside them, the payload that keys them (readable JSON)."""
    save_model(path, model, payload=json.loads(json.dumps(payload, default=str)))
    (path.parent / f"{label}-{key}.json").write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))


def cached_model(
    cache_dir: Path,
    label: str,
    payload: dict[str, Any],
    model: nn.Module,
    train: Callable[[nn.Module], None],
) -> tuple[Path, bool]:
    """Fill `model` with the cached weights for `payload`, or `train(model)` and cache it.

    Returns the cache file and whether it was reused.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(payload)
    path = cache_dir / f"{label}-{key}.pt"
    if distributed.world_size() > 1:
        return _cached_model_collective(label, key, payload, path, model, train)
    lock = _acquire(path, label)
    try:
        if path.exists():
            log.info("Reusing cached %s from %s", label, path)
            load_weights(model, path, label)
            return path, True
        log.info("Training %s (no cached copy with key %s)", label, key)
        train(model)
        _store(path, label, key, payload, model)
    finally:
        lock.release()
    return path, False


def _cached_model_collective(
    label: str,
    key: str,
    payload: dict[str, Any],
    path: Path,
    model: nn.Module,
    train: Callable[[nn.Module], None],
) -> tuple[Path, bool]:
    """`cached_model` for the ranks of one distributed run: rank 0 holds the lock and decides for all.

    Either every rank loads the cached weights, or every rank trains together (as DDP needs) and
    rank 0 writes the result.
    """
    lock = _acquire(path, label) if distributed.is_global_zero() else FileLock(str(path) + ".lock")
    try:
        reuse = distributed.broadcast(path.exists())
        if reuse:
            log.info("Reusing cached %s from %s", label, path)
            load_weights(model, path, label)
            return path, True
        log.info("Training %s on %d processes (no cached copy with key %s)", label, distributed.world_size(), key)
        train(model)
        if distributed.is_global_zero():
            _store(path, label, key, payload, model)
        distributed.barrier()
    finally:
        if lock.is_locked:
            lock.release()
    return path, False
