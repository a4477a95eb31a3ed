"""Shared helpers: composing the project's configs and a tiny, fast version of the main job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from distill.cli import CONFIG_DIR

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def compose_config(overrides: list[str], name: str = "train") -> DictConfig:
    """The config `distill-train OVERRIDES` would run, without starting a job."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=overrides)


def tiny_job(tmp_path: Path, *extra: str) -> list[str]:
    """Overrides for a seconds-long run on digits that still trains every stage for real."""
    return [
        "data=digits",
        "teacher=[mlp_large]",
        "student=mlp_small",
        "teacher.mlp_large.fit.epochs=8",
        "student.fit.epochs=8",
        "student.fit.batch_size=128",
        "student.baseline.epochs=8",
        "report.latency_repeats=3",
        "report.latency_batch_sizes=[1,64]",
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path}/run",
        "callbacks.progress_bar.refresh_rate=0",
        *extra,
    ]


REPO = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a command-line run; `tests.helpers` is importable in it (for test callbacks)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore", "PYTHONPATH": path, **extra}


def run_cli(
    args: list[str], cwd: Path, module: str = "distill.train", timeout: int = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run an entry point as a user would (`python -m distill.train ...`)."""
    env = env or cli_env()
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> DictConfig:
    return compose_config(tiny_job(tmp_path))
