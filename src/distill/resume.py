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

from torch import nn

from distill.checkpoints import read_checkpoint
from distill.errors import DistillError

log = logging.getLogger(__name__)


CONTINUED_MARK = "continued_in"  # written into a run folder once another run has finished it
# Overrides that cannot change what a run computes: left out when matching a run to continue.
OVERRIDES_NOT_MATCHED = ("ckpt_path", "paths.output_dir", "hydra", "logger", "extras")


def _has_checkpoints(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("*/*.ckpt"))


def _unfinished(run_dir: Path) -> bool:
    """Checkpoints, but no report and not continued to its end by another run."""
    return (
        _has_checkpoints(run_dir) and not (run_dir / "report.json").exists() and not (run_dir / CONTINUED_MARK).exists()
    )


def _matched(overrides: list[str]) -> list[str]:
    """The overrides that count when matching runs: those that can change what the run computes."""
    kept = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if not any(key == k or key.startswith((f"{k}.", f"{k}/")) for k in OVERRIDES_NOT_MATCHED):
            kept.append(override)
    return sorted(kept)


def saved_overrides(run_dir: Path) -> list[str] | None:
    """The command-line overrides a run folder was started with (`.hydra/overrides.yaml`), or None if unknown."""
    import yaml

    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(o) for o in data] if isinstance(data, list) else None


def override_difference(theirs: list[str], ours: list[str]) -> str | None:
    """How two runs' overrides differ (ignoring those that cannot change the result), or None if they match."""
    a, b = _matched(theirs), _matched(ours)
    if a == b:
        return None
    only_there = [o for o in a if o not in b] or ["nothing"]
    only_here = [o for o in b if o not in a] or ["nothing"]
    return f"only there: {' '.join(only_there)}; only here: {' '.join(only_here)}"


def find_resume_dir(ckpt_path: str | None, output_dir: Path, overrides: list[str] | None = None) -> Path | None:
    """The run folder to continue, or None for a fresh run.

    - `ckpt_path=last`: this run's own folder if it holds checkpoints (a requeued job that kept
      its folder), else the newest earlier run beside it that has checkpoints, no report, was not
      continued to its end by another run, and was started with the same `overrides` (those that
      can change the result: not ckpt_path, paths.output_dir, hydra.*, logger, extras); when only
      runs with other overrides are there, the error names the newest and how it differs;
    - `ckpt_path=<run folder>`: that folder (a warning says how its overrides differ, if they do);
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
        theirs = saved_overrides(folder)
        if overrides is not None and theirs is not None and (diff := override_difference(theirs, overrides)):
            log.warning("Continuing %s, which was started with other overrides (%s)", folder, diff)
        return folder
    if _has_checkpoints(output_dir):
        return output_dir
    siblings = [p for p in output_dir.parent.glob("*") if p.is_dir() and p != output_dir]
    if restarted and ckpt_path in (None, "", "null"):
        job = os.environ.get("SLURM_JOB_ID", "")
        siblings = [p for p in siblings if job and p.name.endswith(f"_{job}")]
    candidates = sorted(
        (p for p in siblings if _unfinished(p)),
        key=lambda p: max(f.stat().st_mtime for f in (p / "checkpoints").glob("*/*.ckpt")),
        reverse=True,
    )
    if not candidates:
        if ckpt_path == "last":
            raise DistillError(f"ckpt_path=last: no interrupted run (checkpoints but no report) in {output_dir.parent}")
        return None
    if overrides is None or restarted:
        return candidates[0]
    for folder in candidates:
        theirs = saved_overrides(folder)
        if theirs is None or override_difference(theirs, overrides) is None:
            return folder
    newest = candidates[0]
    raise DistillError(
        f"ckpt_path=last: the newest interrupted run, {newest}, was started with other overrides "
        f"({override_difference(saved_overrides(newest) or [], overrides)}); rerun with its overrides, "
        f"or continue it anyway with ckpt_path={newest}"
    )


def mark_continued(resume_dir: Path | str | None, out: Path) -> None:
    """Record in a continued run's folder that `out` finished it, so that `ckpt_path=last` no longer offers it."""
    if not resume_dir or Path(resume_dir).resolve() == Path(out).resolve():
        return
    try:
        (Path(resume_dir) / CONTINUED_MARK).write_text(f"{out}\n")
    except OSError as err:
        log.warning("Cannot mark %s as continued (%s)", resume_dir, err.strerror or err)


def stage_checkpoint(resume_dir: Path | None, stage: str) -> Path | None:
    """The newest checkpoint of `stage` in `resume_dir` (last.ckpt or a SLURM hpc_ckpt_<n>.ckpt)."""
    if resume_dir is None:
        return None
    files = list((Path(resume_dir) / "checkpoints" / stage).glob("*.ckpt"))
    return max(files, key=lambda f: f.stat().st_mtime) if files else None


def check_compatible(path: Path, module: nn.Module) -> None:
    """Refuse a checkpoint whose weights do not fit `module` (another architecture), naming the first misfit."""
    try:
        state = read_checkpoint(path).get("state_dict", {})
    except DistillError as err:
        raise DistillError(f"cannot resume from {path}: {str(err).split(': ', 1)[-1]}") from None
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
