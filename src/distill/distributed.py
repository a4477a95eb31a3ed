"""Collective steps of a multi-process (DDP) run, all no-ops in a single process.

Lightning starts the extra processes of a `strategy=ddp` run when the first `Trainer.fit`
begins. The main job has work to agree on before that (is a teacher in the cache, or must
every rank train it together?), so `start` launches the processes and joins the process group
as soon as the config is checked; the later fits find both in place.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig

from distill.errors import DistillError

log = logging.getLogger(__name__)


def initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if initialized() else 1


def is_global_zero() -> bool:
    """True outside distributed runs and on the rank-0 process of one."""
    return rank() == 0


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if initialized():
        torch.distributed.barrier()


def start(trainer_cfg: DictConfig) -> None:
    """Launch the processes of a multi-process trainer config and join its process group now."""
    import hydra
    from hydra.errors import InstantiationException

    if initialized():
        return
    try:
        trainer = hydra.utils.instantiate(trainer_cfg, logger=False, enable_progress_bar=False)
    except InstantiationException as err:
        from distill.assembly import instantiation_message

        raise DistillError(f"cannot build trainer: {instantiation_message(err)}") from None
    strategy = trainer.strategy
    if getattr(strategy, "world_size", 1) <= 1 or not hasattr(strategy, "setup_distributed"):
        return
    launcher = strategy.launcher
    if launcher is not None and type(launcher).__name__ != "_SubprocessScriptLauncher":
        raise DistillError(
            f"trainer.strategy={trainer_cfg.get('strategy')!r} starts fresh processes for every fit, and the main job "
            "fits several models: use strategy=ddp (one set of processes for the whole job)"
        )
    if launcher is not None:
        launcher.launch(lambda: None)
    strategy.setup_environment()
    log.info("Process group ready: rank %d of %d", rank(), world_size())
