"""scripts/bench_step.py's optional `torchdistill` arm (scripts/torchdistill_arm.py): the student it trains with
torchdistill's DistillationBox really learns, and it reports one positive time per epoch.
Skipped without torchdistill (`pip install -e ".[bench]"`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torchdistill")

from tests.conftest import compose_config  # noqa: E402

from distill.assembly import build_net  # noqa: E402
from distill.tasks import ClassificationTask  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
import bench_step  # noqa: E402
from torchdistill_arm import torchdistill_fit  # noqa: E402


def bench_config(tmp_path: Path, n: int):
    """bench_step.main's config (CPU) on a workload of `n` training samples."""
    return compose_config([
        "data=file", f"data.path={bench_step.workload(tmp_path, n)}", "data.standardize=false",
        "data.val_fraction=0.1", "data.test_fraction=0.1", "teacher=[mlp_large]", "student=mlp",
        "student.fit.optimizer._target_=torch.optim.SGD", "~student.fit.optimizer.weight_decay",
        "student.fit.scheduler=null", f"paths.output_dir={tmp_path}/run", "+trainer.limit_val_batches=0",
        "callbacks=none", "cache_teacher_outputs=true",
    ])  # fmt: skip


def accuracy(model: torch.nn.Module, dm) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(dm.model_inputs("val", len(dm.tensors["y_val"])))
    return (logits.argmax(1) == dm.tensors["y_val"]).float().mean().item()


def test_torchdistill_arm_student_learns(tmp_path: Path) -> None:
    cfg = bench_config(tmp_path, n=2000)
    dm = ClassificationTask().build_data(cfg)
    # The benchmark distils from an untrained teacher (only the cost counts there); here the teacher is trained
    # first, by a few full-batch Adam steps on the labels, so that the student has something worth learning.
    teacher = build_net(cfg.teacher.mlp_large.net, "teacher", cfg.seed, dm)
    x, y = dm.model_inputs("train", dm.num_train), dm.tensors["y_train"]
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    for _ in range(150):
        loss = F.cross_entropy(teacher(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    teacher.eval().requires_grad_(False)
    teacher_accuracy = accuracy(teacher, dm)
    assert teacher_accuracy > 0.7, teacher_accuracy

    fresh = build_net(cfg.student.net, "student", cfg.seed, dm)
    before = accuracy(fresh, dm)
    epochs = 5
    torch.manual_seed(0)  # the order torchdistill's RandomSampler draws
    times, student = torchdistill_fit(cfg, dm, teacher, epochs, 32, torch.device("cpu"))

    assert len(times) == epochs and all(t > 0 for t in times), times
    after = accuracy(student, dm)
    assert after > 0.5 and after > before + 0.2, (before, after, teacher_accuracy)
    # The teacher the benchmark shares between its arms stays frozen.
    assert not any(p.requires_grad for p in teacher.parameters())
