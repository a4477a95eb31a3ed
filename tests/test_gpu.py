"""The main job on CUDA: trainer=gpu in fp32 and bf16-mixed, images held on the GPU in channels-last
with torch.compile, and DDP on two GPUs. Skipped without CUDA (tests/conftest.py); on a GPU machine
`pytest -m gpu` runs them all (scripts/gpu_check.sh runs them with the speed benchmarks).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.conftest import CIFAR_SHORT_RECIPE, cli_job, compose_config, run_cli, tiny_job, vision_job

pytestmark = pytest.mark.gpu
ON_THE_GPU = ["data.device=cuda", "data.channels_last=true"]


def report(run: Path) -> dict[str, dict]:
    return {m["model"]: m for m in json.loads((run / "report.json").read_text())["models"]}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_the_digits_job_trains_on_one_gpu(tmp_path: Path, precision: str) -> None:
    result = run_cli(tiny_job(tmp_path, "trainer=gpu", f"trainer.precision={precision}"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = report(tmp_path / "run")
    assert set(rows) == {"teacher:mlp_large", "baseline", "student"}
    # on the CPU the same job reaches 0.93 (teacher), 0.83 (baseline) and 0.92 (student), in both precisions
    assert rows["teacher:mlp_large"]["accuracy"] > 0.85
    assert rows["baseline"]["accuracy"] > 0.6 and rows["student"]["accuracy"] > 0.6


@pytest.mark.slow
def test_images_on_the_gpu_in_channels_last_with_compile_learn_the_cifar_like_task(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    args = vision_job(tmp_path, *CIFAR_SHORT_RECIPE, "trainer=gpu", *ON_THE_GPU, "compile=true")
    result = run_cli(args, tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = report(tmp_path / "run")
    assert set(rows) == {"teacher:resnet20", "baseline", "student"}
    # the bounds of the same recipe on the CPU (tests/test_vision_pipeline.py); chance is 0.1
    assert rows["teacher:resnet20"]["accuracy"] > 0.5
    assert rows["baseline"]["accuracy"] > 0.3 and rows["student"]["accuracy"] > 0.3


def test_cifar_like_batches_are_made_on_the_gpu_in_channels_last(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    from distill.tasks import ClassificationTask

    dm = ClassificationTask().build_data(compose_config(vision_job(tmp_path, *ON_THE_GPU)))
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].is_cuda and batch["y"].is_cuda
    assert batch["x"].dtype == torch.float32 and batch["x"].shape == (64, 3, 32, 32)
    assert batch["x"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_ddp_on_two_gpus_gives_one_run_and_one_report(tmp_path: Path) -> None:
    result = run_cli(cli_job(tmp_path, "trainer=ddp"), tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()  # one folder for both processes
    assert "Process group ready: rank 1 of 2" in (run / "train_ddp_process_1.log").read_text()
    rows = report(run)
    assert set(rows) == {"teacher:mlp_large", "baseline", "student"}
    # each process sees half of each epoch: on two CPU processes (trainer=ddp_cpu) 0.89, 0.75 and 0.86
    assert rows["teacher:mlp_large"]["accuracy"] > 0.75
    assert rows["baseline"]["accuracy"] > 0.5 and rows["student"]["accuracy"] > 0.5
