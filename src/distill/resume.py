"""Picking up an interrupted run: which earlier run folder to continue, and each stage's checkpoint in it.

Every training stage writes `checkpoints/<stage>/last.ckpt` at the end of each epoch (and, on
SLURM, Lightning writes `hpc_ckpt_<n>.ckpt` there when SIGUSR1 announces the time limit). A
restarted run resumes each stage from the newest of those files, so no completed epoch is lost;
stages that finished before the interruption come back from the model cache or finish at once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from distill.errors import DistillError

log = logging.getLogger(__name__)


def _has_checkpoints(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("*/*.ckpt"))


def find_resume_dir(ckpt_path: str | None, output_dir: Path) -> Path | None:
    """The run folder to continue, or None for a fresh run.

    - `ckpt_path=last`: this run's own folder if it holds checkpoints (a requeued job that kept
      its folder), else the newest earlier run beside it that has checkpoints but no report;
    - `ckpt_path=<run folder>`: that folder;
    - unset, on a requeued SLURM job (SLURM_RESTART_COUNT > 0): as `last`, among the folders of the same job id.
    """
    output_dir = Path(output_dir)
    restarted = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
    if ckpt_path in (None, "", "null") and not restarted:
        return None
    if ckpt_path not in (None, "", "null", "last"):
        folder = Path(str(ckpt_path)).expanduser()
        if folder.is_file() and folder.parent.parent.name == "checkpoints":
            folder = folder.parent.parent.parent  # a stage checkpoint: its run folder
        if not folder.is_dir() or not _has_checkpoints(folder):
            raise DistillError(f"ckpt_path={ckpt_path}: no run folder with checkpoints/<stage>/*.ckpt there")
        return folder
    if _has_checkpoints(output_dir):
        return output_dir
    siblings = [p for p in output_dir.parent.glob("*") if p.is_dir() and p != output_dir]
    if restarted and ckpt_path in (None, "", "null"):
        job = os.environ.get("SLURM_JOB_ID", "")
        siblings = [p for p in siblings if job and p.name.endswith(f"_{job}")]
    candidates = [p for p in siblings if _has_checkpoints(p) and not (p / "report.json").exists()]
    if not candidates:
        if ckpt_path == "last":
            raise DistillError(f"ckpt_path=last: no interrupted run (checkpoints but no report) in {output_dir.parent}")
        return None
    newest = max(candidates, key=lambda p: max(f.stat().st_mtime for f in (p / "checkpoints").glob("*/*.ckpt")))
    return newest


def stage_checkpoint(resume_dir: Path | None, stage: str) -> Path | None:
    """The newest checkpoint of `stage` in `resume_dir` (last.ckpt or a SLURM hpc_ckpt_<n>.ckpt)."""
    if resume_dir is None:
        return None
    files = list((Path(resume_dir) / "checkpoints" / stage).glob("*.ckpt"))
    return max(files, key=lambda f: f.stat().st_mtime) if files else None


def check_compatible(path: Path, module: nn.Module) -> None:
    """Refuse a checkpoint whose weights do not fit `module` (another architecture), naming the first misfit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True).get("state_dict", {})
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error here
        raise DistillError(f"cannot resume from {path}: {' '.join(str(err).split())[:300]}") from None
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        if mismatched:
            k = mismatched[0]
            detail = f"'{k}' is {tuple(state[k].shape)} there but {tuple(expected[k].shape)} here"
        else:
            detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise DistillError(f"cannot resume from {path}: it was saved by a different architecture ({detail})")
