"""scripts/gpu_check.sh on a machine without a CUDA GPU: a dry run that lists every step it skipped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from tests.conftest import REPO, cli_env


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible: gpu_check.sh runs for real")
def test_gpu_check_is_a_dry_run_without_a_gpu(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                            env=cli_env(OUT=str(tmp_path)), timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    skipped = [line for line in result.stdout.splitlines() if line.startswith("  skipped: ")]
    names = [line.split(" (limit")[0].removeprefix("  skipped: ") for line in skipped]
    assert names == ["pytest -m gpu", "vision throughput, bf16, channels-last",
                     "vision throughput, bf16, channels-last, compile", "per-step cost on CUDA",
                     "trainer=ddp on one device", "distill-lm on CUDA"]  # fmt: skip
    limits = [int(line.split("(limit ")[1].split("s)")[0]) for line in skipped]
    assert sum(limits) <= 8 * 60  # the steps fit the 8 minutes the script promises
    assert "no CUDA GPU visible, so this is a dry run" in result.stdout
    assert (tmp_path / "gpu_check.log").read_text() == result.stdout.split("gpu_check: output in")[0]
    assert not (tmp_path / "gpu_figures.md").exists()  # nothing measured, no figures
