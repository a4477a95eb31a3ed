"""The main job on images: CIFAR-format files, zoo networks, feature taps, channels-last, ONNX export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("torchvision")

from tests.conftest import compose_config  # noqa: E402

from distill.spine import run  # noqa: E402


def vision_job(tmp: Path, *extra: str) -> list[str]:
    return [
        "experiment=cifar_quick",
        "data.num_train=400",
        "data.num_test=200",
        "data.val_size=100",
        "data.batch_size=64",
        "teacher=[resnet20]",
        "teacher.resnet20.fit.epochs=2",
        "teacher.resnet20.fit.batch_size=64",
        "student.fit.epochs=2",
        "student.fit.batch_size=64",
        "student.baseline.epochs=2",
        "student.baseline.batch_size=64",
        "report.latency_repeats=2",
        "report.latency_batch_sizes=[1,8]",
        f"paths.root_dir={tmp}",
        f"paths.output_dir={tmp}/run",
        "callbacks.progress_bar.refresh_rate=0",
        *extra,
    ]


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


def test_a_short_recipe_learns_the_cifar_like_task(tmp_path: Path) -> None:
    """Four epochs on 2,000 images: far above chance (0.1) for teacher and students, in about a minute."""
    overrides = vision_job(
        tmp_path, "data.num_train=2000", "teacher.resnet20.fit.epochs=4", "student.fit.epochs=4",
        "student.baseline.epochs=4", "teacher.resnet20.fit.scheduler.milestones=[3]",
        "student.fit.scheduler.milestones=[3]", "student.baseline.scheduler.milestones=[3]",
    )  # fmt: skip
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
