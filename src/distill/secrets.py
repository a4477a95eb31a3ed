"""Keeping credentials out of every config that is logged or saved."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

REDACTED = "<redacted>"
# Config keys and environment variables whose values are credentials.
SECRET_NAME = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential|private[_-]?key)", re.IGNORECASE)


def secret_values() -> set[str]:
    """Values of environment variables named like credentials (WANDB_API_KEY, HF_TOKEN, ...)."""
    return {v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 8}


def redact(config: Any, _secrets: set[str] | None = None) -> Any:
    """A copy of a plain config (dicts, lists, scalars) with credentials replaced by `<redacted>`.

    A value is a credential when its key is named like one, or when it contains the value of an
    environment variable named like one (e.g. a `${oc.env:WANDB_API_KEY}` that was resolved).
    """
    secrets = secret_values() if _secrets is None else _secrets
    if isinstance(config, dict):
        return {
            k: REDACTED if SECRET_NAME.search(str(k)) and config[k] not in (None, "") else redact(v, secrets)
            for k, v in config.items()
        }
    if isinstance(config, (list, tuple)):
        return type(config)(redact(v, secrets) for v in config)
    if isinstance(config, str) and any(s in config for s in secrets):
        return REDACTED
    return config


def _redact_override(override: str, secrets: set[str]) -> str:
    key, sep, value = override.partition("=")
    if sep and (SECRET_NAME.search(key) or any(s in value for s in secrets)):
        return f"{key}={REDACTED}"
    return override


def redact_saved_configs(hydra_dir: Path) -> None:
    """Rewrite Hydra's saved config.yaml / overrides.yaml / hydra.yaml in `hydra_dir` without credentials."""
    import yaml

    secrets = secret_values()
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        path = hydra_dir / name
        if not path.is_file():
            continue
        data = yaml.safe_load(path.read_text())
        if name == "overrides.yaml" and isinstance(data, list):
            clean: Any = [_redact_override(str(o), secrets) for o in data]
        else:
            clean = redact(data, secrets)
            if name == "hydra.yaml":  # the command line is kept there too, as task overrides
                task = (((clean or {}).get("hydra") or {}).get("overrides") or {}).get("task")
                if isinstance(task, list):
                    clean["hydra"]["overrides"]["task"] = [_redact_override(str(o), secrets) for o in task]
        if clean != data:
            path.write_text(yaml.safe_dump(clean, sort_keys=False))


def command_line_has_secret(argv: list[str]) -> bool:
    """Whether an override on the command line carries a credential (W&B would record the command line)."""
    secrets = secret_values()
    return any(_redact_override(a, secrets) != a for a in argv)
