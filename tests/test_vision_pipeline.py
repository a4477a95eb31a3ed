"""The main job on images: CIFAR-format files, zoo networks, feature taps, channels-last, ONNX export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("torchvision")

from tests.conftest import CIFAR_SHORT_RECIPE, compose_config, vision_job  # noqa: E402

from distill.spine import run  # noqa: E402


@pytest.mark.slow
def test_cifar_like_job_with_feature_and_relation_terms_and_onnx_export(tmp_path: Path) -> None:
    overrides = vision_job(
        tmp_path,
        "distill=[hard,kd,crd,rkd]",
        "distill.crd.student_layer=pool",
        "distill.crd.teacher_layer=pool",
        "distill.crd.num_negatives=64",
        "distill.rkd.student_layer=pool",
        "distill.rkd.teacher_layer=pool",
        "compress=[onnx]",
    )
    report = run(compose_config(overrides))
    rows = {r["model"]: r for r in report["models"]}
    assert set(rows) == {"teacher:resnet20", "baseline", "student", "compress:onnx"}
    assert rows["teacher:resnet20"]["parameters"] == 272_474 and rows["student"]["parameters"] == 78_042
    assert rows["student"]["flops"] > 10 * 78_042  # a conv net: many multiply-adds per parameter
    assert rows["compress:onnx"]["stage"]["max_abs_diff"] < 1e-3  # export parity on real (normalised) images
    assert rows["compress:onnx"]["accuracy"] == pytest.approx(rows["student"]["accuracy"], abs=0.01)
    for row in rows.values():
        assert 0.0 <= row["accuracy"] <= 1.0
    logged = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0]
    for column in ("student/train/crd", "student/train/rkd", "student/train/kd"):
        assert column in logged


@pytest.mark.slow
def test_a_short_recipe_learns_the_cifar_like_task(tmp_path: Path) -> None:
    """Four epochs on 2,000 images: far above chance (0.1) for teacher and students, in about a minute."""
    overrides = vision_job(tmp_path, *CIFAR_SHORT_RECIPE)
    rows = {r["model"]: r for r in run(compose_config(overrides))["models"]}
    assert rows["teacher:resnet20"]["accuracy"] > 0.5
    assert rows["student"]["accuracy"] > 0.3


def test_channels_last_inputs_and_weights(tmp_path: Path) -> None:
    from distill.assembly import build_net
    from distill.tasks import ClassificationTask

    cfg = compose_config(vision_job(tmp_path))
    dm = ClassificationTask().build_data(cfg)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].is_contiguous(memory_format=torch.channels_last)
    net = build_net(cfg.student.net, "student", 0).to(memory_format=torch.channels_last)
    assert net(batch["x"]).shape == (64, 10)
