"""Trained models cached by a hash of everything that shaped them, shared safely between runs.

A run that needs a model another run is training waits on a file lock instead of training it
again; files appear atomically, so a reader never sees half a model. An entry that cannot be read
(truncated, corrupted) is moved aside and trained again; a training that stopped before its
recipe's end (`trainer.max_time`, an early-stopping callback) is not cached, so that no later run
takes it for the full recipe; temporary files of writers that died are removed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from torch import nn

from distill import distributed
from distill.atomic import remove_stale_temporaries, write_text
from distill.checkpoints import load_weights, read_checkpoint, save_model
from distill.errors import DistillError
from distill.history import history_of
from distill.secrets import redact

log = logging.getLogger(__name__)


def cache_key(payload: Any) -> str:
    """A short stable hash of a JSON-serialisable description."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def acquire(path: Path, doing: str) -> FileLock:
    """The lock of the cache entry `path`, held; says so when another run holds it first (`doing`: what it does)."""
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("Waiting for another run that is %s (%s)", doing, path.name)
        lock.acquire()
    return lock


def _store(path: Path, label: str, key: str, payload: dict[str, Any], model: nn.Module) -> None:
    """Write the trained weights and, beside them, the payload that keys them (readable JSON)."""
    shown = redact(
        json.loads(json.dumps(payload, default=str))
    )  # the key hashes the full payload; files hold no credential
    save_model(path, model, payload=shown)
    write_text(path.parent / f"{label}-{key}.json", json.dumps(shown, indent=2, sort_keys=True))


# Why a model trained in this run was not cached, by the cache file it would have had.
NOT_CACHED: dict[Path, str] = {}


def history_path(path: Path) -> Path:
    """Where the training history of the cache entry `path` is kept (JSON rows, one per epoch)."""
    return path.with_name(path.name.removesuffix(".pt") + ".history.json")


def cached_history(path: Path) -> list[dict[str, float]] | None:
    """The training history stored with a cache entry, or None (an entry written without one, or unreadable)."""
    try:
        rows = json.loads(history_path(Path(path)).read_text())
    except (OSError, ValueError):
        return None
    return rows if isinstance(rows, list) else None


def stopped_early(trainer: Any) -> str | None:
    """Why a finished `Trainer.fit` did not run its whole recipe (None when it did, or for no trainer)."""
    if trainer is None or not hasattr(trainer, "current_epoch"):
        return None
    if getattr(trainer, "interrupted", False):
        return "was interrupted"
    stopper = getattr(trainer, "early_stopping_callback", None)
    if stopper is not None and getattr(stopper, "stopped_epoch", 0) > 0:
        return None  # stopped on a plateau: the recipe's early_stopping (or a callback in the key) did it
    max_steps = getattr(trainer, "max_steps", -1)
    if max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps:
        return None  # a step budget (trainer.max_steps) is part of the recipe and the cache key
    done, wanted = trainer.current_epoch, trainer.max_epochs
    if wanted is not None and wanted >= 0 and done < wanted:
        return f"stopped after {done} of {wanted} epochs"
    return None


def source_of(path: Path, reused: bool) -> str:
    """Where a model came from, for the report: the cache entry reused or written, or why none was written."""
    if reused:
        return f"cache {path.name}"
    if path in NOT_CACHED:
        return f"trained in this run, not cached: {NOT_CACHED[path]}"
    return f"trained, cached as {path.name}"


def move_aside(path: Path, why: str) -> Path | None:
    """Rename an unreadable cache entry out of the way (kept for inspection); returns its new path."""
    aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    try:
        os.replace(path, aside)
    except OSError as err:
        log.warning("Cannot move the unreadable cache entry %s aside (%s)", path, err.strerror or err)
        return None
    log.warning("Cache entry %s is unreadable (%s): moved aside to %s; training it again", path, why, aside.name)
    return aside


def _load_cached(model: nn.Module, path: Path, label: str) -> bool:
    """Fill `model` from the cache entry; an unreadable entry is moved aside and `model` left as it was."""
    initial = copy.deepcopy(model.state_dict())
    try:
        load_weights(model, path, label)
    except DistillError as err:
        model.load_state_dict(initial)
        move_aside(path, str(err).split(": ", 1)[-1])
        return False
    log.info("Reusing cached %s from %s", label, path)
    return True


def _finish(path: Path, label: str, key: str, payload: dict[str, Any], model: nn.Module, trainer: Any) -> None:
    """Cache a model trained in this run, unless its training stopped before the recipe's end."""
    short = stopped_early(trainer)
    if short:
        NOT_CACHED[path] = short
        log.warning("%s %s: not cached, so that no run takes it for the full recipe", label, short)
        return
    NOT_CACHED.pop(path, None)
    _store(path, label, key, payload, model)
    rows = history_of(trainer)
    if rows is not None:  # how it was trained, for the runs that reuse it
        write_text(history_path(path), json.dumps(rows))


def cached_model(
    cache_dir: Path,
    label: str,
    payload: dict[str, Any],
    model: nn.Module,
    train: Callable[[nn.Module], Any],
) -> tuple[Path, bool]:
    """Fill `model` with the cached weights for `payload`, or `train(model)` and cache it.

    `train` may return its Lightning Trainer: a training that stopped before the recipe's end is
    then not cached (`source_of` says why). Returns the cache file and whether it was reused.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(payload)
    path = cache_dir / f"{label}-{key}.pt"
    if distributed.world_size() > 1:
        return _cached_model_collective(label, key, payload, path, model, train)
    lock = acquire(path, f"training {label}")
    try:
        remove_stale_temporaries(cache_dir)
        if path.exists() and _load_cached(model, path, label):
            return path, True
        log.info("Training %s (no cached copy with key %s)", label, key)
        trainer = train(model)
        _finish(path, label, key, payload, model, trainer)
    finally:
        lock.release()
    return path, False


def _cached_model_collective(
    label: str,
    key: str,
    payload: dict[str, Any],
    path: Path,
    model: nn.Module,
    train: Callable[[nn.Module], Any],
) -> tuple[Path, bool]:
    """`cached_model` for the ranks of one distributed run: rank 0 holds the lock and decides for all.

    Either every rank loads the cached weights, or every rank trains together (as DDP needs) and
    rank 0 writes the result.
    """
    lock = acquire(path, f"training {label}") if distributed.is_global_zero() else FileLock(str(path) + ".lock")
    try:
        readable = False
        if distributed.is_global_zero():
            remove_stale_temporaries(path.parent)
            if path.exists():
                try:
                    read_checkpoint(path, "cache entry")
                    readable = True
                except DistillError as err:
                    move_aside(path, str(err).split(": ", 1)[-1])
        if distributed.broadcast(readable):
            log.info("Reusing cached %s from %s", label, path)
            load_weights(model, path, label)
            return path, True
        log.info("Training %s on %d processes (no cached copy with key %s)", label, distributed.world_size(), key)
        trainer = train(model)
        if distributed.is_global_zero():
            _finish(path, label, key, payload, model, trainer)
        distributed.barrier()
    finally:
        if lock.is_locked:
            lock.release()
    return path, False
