"""What the Hydra entry points share: where the configs live and how user errors end a run.

Only light imports here: `--help` and `--cfg job` must answer before torch is loaded.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
# A source checkout keeps `configs/` at the top; an installed wheel carries a copy inside the package.
CONFIG_DIR = str(
    _HERE.parents[1] / "configs" if (_HERE.parents[1] / "configs" / "train.yaml").is_file() else _HERE / "configs"
)


def run_task(task: Callable[[Any], Any], cfg: Any) -> Any:
    """Run `task(cfg)`; a `DistillError` becomes one line on stderr and exit status 2."""
    from distill.errors import DistillError

    try:
        return task(cfg)
    except DistillError as err:
        logging.getLogger("distill").debug("user error", exc_info=True)
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
