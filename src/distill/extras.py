"""Conveniences applied before a run: warnings filter, config tree printed."""

from __future__ import annotations

import logging
import warnings

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# Lightning's advice for multi-worker DataLoaders does not apply to in-memory tensor batches.
QUIET = (
    ".*does not have many workers.*",
    ".*LeafSpec.*",
    ".*smaller than the logging interval.*",  # train metrics are logged once per epoch anyway
)


def apply_extras(cfg: DictConfig) -> None:
    """Act on `cfg.extras`: silence known-harmless warnings, print the config tree (credentials redacted)."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        for pattern in QUIET:
            warnings.filterwarnings("ignore", message=pattern)
    if extras.get("print_config"):
        from rich.console import Console
        from rich.syntax import Syntax

        from distill.secrets import redact, scrub

        text = scrub(OmegaConf.to_yaml(OmegaConf.create(redact(OmegaConf.to_container(cfg, resolve=False)))))
        Console().print(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
