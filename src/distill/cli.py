"""What the Hydra entry points share: where the configs live and how user errors end a run.

Only light imports here: `--help` and `--cfg job` must answer before torch is loaded.
"""

from __future__ import annotations

import errno
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


def check_strategy_overrides(argv: list[str]) -> str | None:
    """A one-line refusal of a trainer strategy that restarts the processes at every fit, however it is spelt."""
    from distill.validate import SPAWNING_STRATEGIES

    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") == "trainer.strategy":
            for choice in value.replace("[", ",").replace("]", ",").replace(" ", "").split(","):
                if any(s in choice for s in SPAWNING_STRATEGIES):
                    return (
                        f"trainer.strategy={choice} starts fresh processes for every fit, and the job fits several "
                        "models: use strategy=ddp (trainer=ddp or trainer=ddp_cpu), which starts them once"
                    )
    return None


# Errors of the environment rather than of the code: a full disk, a read-only or forbidden folder.
_IO_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EDQUOT, errno.ENOTDIR}


def _one_line(text: str) -> str:
    return "; ".join(line.strip().rstrip(".") for line in str(text).strip().splitlines() if line.strip())


def _argv_value(argv: list[str], key: str) -> str | None:
    for arg in argv:
        k, sep, value = arg.partition("=")
        if sep and k.lstrip("+~") == key:
            return value
    return None


def _closest(key: str, candidates: list[str], prefix: str = "") -> str:
    import difflib

    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    shown = close or sorted(candidates)[:8]
    label = "closest valid keys" if close else "valid keys include"
    return f"{label}: {', '.join(prefix + k for k in shown)}" if shown else "the node has no keys"


def describe_config_error(err: BaseException, argv: list[str]) -> str:
    """One line for a Hydra composition error or an OmegaConf error: the key, the value, the closest valid keys."""
    import difflib

    from hydra.errors import OverrideParseException
    from omegaconf import DictConfig
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        InterpolationResolutionError,
        MissingMandatoryValue,
    )

    unknown_key = ConfigKeyError | ConfigAttributeError
    cause = err if isinstance(err, unknown_key | MissingMandatoryValue) else err.__cause__
    if isinstance(cause, MissingMandatoryValue):
        key = getattr(cause, "full_key", None) or "a value"
        return f"missing mandatory value {key} (the config has ???): set it on the command line, e.g. {key}=..."
    if isinstance(cause, unknown_key) and getattr(cause, "full_key", None):
        full_key, key = str(cause.full_key), str(cause.key)
        parent = cause.parent_node
        parent_path = full_key[: -len(key)] if full_key.endswith(key) else ""
        value = _argv_value(argv, full_key)
        shown = f"{full_key}={value}" if value is not None else full_key
        keys = [str(k) for k in parent.keys() if k != "_target_"] if isinstance(parent, DictConfig) else []
        close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
        if not close and isinstance(parent, DictConfig) and "_target_" in parent:
            return (
                f"unknown config key in '{shown}': {parent_path.rstrip('.') or 'the config'} has no key '{key}'; "
                f"to pass it to {parent._target_} as a new argument, add it with +{shown}"
            )
        return f"unknown config key in '{shown}'; {_closest(key, keys, parent_path)}"
    if isinstance(err, OverrideParseException):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create()
        for arg in argv:
            if arg.startswith("-") and not arg.startswith("--"):
                continue
            try:
                parser.parse_overrides([arg])
            except OverrideParseException:
                return f"cannot parse the override '{arg}': {_one_line(err.message).split('; See ')[0]}"
        return f"cannot parse the overrides: {_one_line(err.message)}"
    if isinstance(err, InterpolationResolutionError) or isinstance(cause, InterpolationResolutionError):
        return f"cannot resolve the config: {_one_line(cause or err)}"
    return _one_line(err)


# Optional keys the code reads where present (`fit.get("gradient_clip_val")`): they may be added with `+`.
OPTIONAL_KEYS = ("gradient_clip_val", "train_fraction", "restore_best", "scheduler", "batch_size", "ckpt_path")


def check_added_keys(cfg: Any, overrides: list[str] | None = None) -> None:
    """Refuse a `+key=value` that nothing reads: a new key outside every node that passes its keys on.

    A key added under a node with a `_target_` (`+trainer.max_time=...`, `+student.net.dropout=0.1`)
    goes to that class as an argument, which accepts or refuses it; Hydra's own settings (`hydra.*`)
    and config groups (`+experiment=...`) are Hydra's. Anywhere else (`+unknown=1`, `+student.fit.lr=1`)
    the value would be silently ignored.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import DictConfig, OmegaConf

    from distill.errors import DistillError

    if overrides is None:
        if not HydraConfig.initialized():
            return
        hydra_cfg = HydraConfig.get()
        overrides = list(hydra_cfg.overrides.task)
        groups = set(hydra_cfg.runtime.choices.keys())
    else:
        groups = set()
    for override in OverridesParser.create().parse_overrides(overrides):
        if not (override.is_add() or override.is_force_add()) or override.package is not None:
            continue
        key = override.key_or_group
        if key.startswith("hydra.") or key == "hydra" or key in groups or Path(CONFIG_DIR, key).is_dir():
            continue
        parent_path, _, name = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_path, throw_on_missing=False) if parent_path else cfg
        if (isinstance(parent, DictConfig) and "_target_" in parent) or (parent_path and name in OPTIONAL_KEYS):
            continue
        keys = [str(k) for k in parent.keys() if str(k) != name] if isinstance(parent, DictConfig) else []
        raise DistillError(
            f"unknown config key '{key}' ({override.input_line}): nothing reads it; "
            + _closest(name, keys, f"{parent_path}." if parent_path else "")
        )


def guarded(hydra_main: Callable[[], Any]) -> None:
    """Entry point: refuse bad overrides in one line, then let Hydra run.

    Hydra's own errors (a misspelt key, an override it cannot parse or append) and errors of the
    environment (a read-only or full disk) end the run with one `error:` line and exit status 2,
    as user errors inside the job do (`run_task`).
    """
    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    from distill.secrets import scrub

    argv = sys.argv[1:]
    problem = check_group_choices(argv) or check_strategy_overrides(argv)
    if problem:
        print(f"error: {scrub(problem)}", file=sys.stderr)
        sys.exit(2)
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user asked for Hydra's full traces
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises, and the errors below become one line
    try:
        hydra_main()
    except (CompactHydraException, OmegaConfBaseException) as err:
        if full_error:
            raise
        print(f"error: {scrub(describe_config_error(err, argv))}", file=sys.stderr, flush=True)
        sys.exit(2)
    except OSError as err:
        if full_error or err.errno not in _IO_ERRNOS:
            raise
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot write{scrub(where)}: {err.strerror or err}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        if not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def run_task(task: Callable[[Any], Any], cfg: Any) -> Any:
    """Run `task(cfg)`; a `DistillError` becomes one line on stderr and exit status 2.

    First, credentials leave Hydra's saved configs and every later log line (also where the
    config's Hydra callbacks were changed).
    """
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    from distill.errors import DistillError
    from distill.secrets import guard_job, scrub

    guard_job()
    try:
        check_added_keys(cfg)
        return task(cfg)
    except DistillError as err:
        logging.getLogger("distill").debug("user error", exc_info=True)
        print(f"error: {scrub(str(err))}", file=sys.stderr, flush=True)
        sys.exit(2)
    except (MissingMandatoryValue, InterpolationResolutionError) as err:  # a ??? left unset, a ${...} that fails
        print(f"error: {scrub(describe_config_error(err, sys.argv[1:]))}", file=sys.stderr, flush=True)
        sys.exit(2)
