"""What the Hydra entry points share: where the configs live and how user errors end a run.

Only light imports here: `--help` and `--cfg job` must answer before torch is loaded.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
# A source checkout keeps `configs/` at the top; an installed wheel carries a copy inside the package.
CONFIG_DIR = str(
    _HERE.parents[1] / "configs" if (_HERE.parents[1] / "configs" / "train.yaml").is_file() else _HERE / "configs"
)


def job_id() -> str:
    """What tells this job apart from others started in the same second: its SLURM job (and array task) id, else its pid."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID") or str(os.getpid())


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("job_id", job_id, use_cache=True, replace=True)


register_resolvers()  # at import: a SLURM job imports this module before Hydra resolves its run folder


def check_group_choices(argv: list[str], config_dir: str = CONFIG_DIR) -> str | None:
    """A one-line complaint about the first `group=option` naming no file of a config group, or None.

    Hydra reports the same, but over a dozen lines with its search path; this also covers
    multi-select (`teacher=[a,b]`) and sweep (`student=a,b`) values.
    """
    root = Path(config_dir)
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        group = key.lstrip("+~").split("@", 1)[0]
        if not group or group.startswith("hydra") or not (root / group).is_dir():
            continue
        valid = sorted(p.stem for p in (root / group).glob("*.yaml"))
        for choice in value.replace("[", ",").replace("]", ",").replace(" ", "").split(","):
            if choice and choice != "null" and choice not in valid:
                return f"unknown {group} option '{choice}'; valid options: {', '.join(valid)}"
    return None


def guarded(hydra_main: Callable[[], Any]) -> None:
    """Entry point: refuse unknown config group options in one line, then let Hydra run."""
    problem = check_group_choices(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


def run_task(task: Callable[[Any], Any], cfg: Any) -> Any:
    """Run `task(cfg)`; a `DistillError` becomes one line on stderr and exit status 2."""
    from distill.errors import DistillError

    try:
        return task(cfg)
    except DistillError as err:
        logging.getLogger("distill").debug("user error", exc_info=True)
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
