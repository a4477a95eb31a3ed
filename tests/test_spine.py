"""The spine and its contracts: what every task gets (best epoch, early stopping), and one-line errors for
objects that do not keep their contract."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from tests.conftest import compose_config, tiny_job

from distill.errors import DistillError
from distill.tasks import Batches, CompressionStage, DataModule, check_contract


class NoTestSplit:
    def setup(self, stage=None) -> None: ...
    def train_dataloader(self) -> list: ...
    def val_dataloader(self) -> list: ...


class NotAStage:
    def run(self, model, ctx) -> None: ...


def test_contracts_name_the_missing_member() -> None:
    with pytest.raises(DistillError, match=r"data: .*NoTestSplit has no method 'test_dataloader' \(a DataModule needs"):
        check_contract(NoTestSplit(), DataModule, "data")
    with pytest.raises(DistillError, match=r"compress.mine: .*NotAStage has no method 'apply'"):
        check_contract(NotAStage(), CompressionStage, "compress.mine")
    with pytest.raises(DistillError, match="has no method '__len__'"):
        check_contract(iter([]), Batches, "batches")
    assert check_contract([1, 2], Batches, "batches") == [1, 2]


def test_a_task_that_is_not_a_task_is_refused(tmp_path: Path) -> None:
    from distill.spine import run

    cfg = compose_config(tiny_job(tmp_path, "task._target_=distill.nets.MLP", "+task.input_shape=[4]",
                                  "+task.num_classes=2"))  # fmt: skip
    with pytest.raises(DistillError, match="task: distill.nets.MLP is not a distill.tasks.Task"):
        run(cfg)


def val_accuracy(run: Path, stage: str) -> list[float]:
    with open(run / "csv" / "metrics.csv") as f:
        return [float(r[f"{stage}/val/acc"]) for r in csv.DictReader(f) if r.get(f"{stage}/val/acc")]


@pytest.mark.slow
def test_every_stage_can_keep_its_best_epoch_and_stop_on_a_plateau(tmp_path: Path) -> None:
    """Classification stages get what LM stages had: restore_best, and early stopping that is cached."""
    from distill.spine import run

    overrides = tiny_job(
        tmp_path, "teacher.mlp_large.fit.epochs=300", "teacher.mlp_large.fit.early_stopping={patience: 3}",
        "student.fit.epochs=12", "student.fit.restore_best=true", "student.fit.optimizer.lr=0.3",
    )  # fmt: skip
    report = run(compose_config(overrides))
    out = tmp_path / "run"
    teacher = val_accuracy(out, "teacher_mlp_large")
    assert 4 <= len(teacher) < 300  # stopped on the plateau, long before its 300 epochs
    best_after = max(range(len(teacher)), key=teacher.__getitem__)
    assert len(teacher) - 1 - best_after >= 3  # patience: three epochs without improvement
    sources = {m["model"]: m["source"] for m in report["models"]}
    assert sources["teacher:mlp_large"].startswith("trained, cached as")  # the plateau is the recipe's end
    student = val_accuracy(out, "student")
    kept = report["student_epoch_kept"]
    assert kept == max(range(len(student)), key=student.__getitem__)  # the first of the best epochs
    saved = json.loads((out / "report.json").read_text())["student_val_accuracy"]
    assert saved == pytest.approx(student[kept], abs=1e-6)  # the student ends with that epoch's weights
    again = run(compose_config(overrides))
    assert {m["model"]: m["source"] for m in again["models"]}["teacher:mlp_large"].startswith("cache ")


def test_a_build_error_says_which_key_and_where_code_is_imported_from(tmp_path: Path, monkeypatch) -> None:
    from distill.assembly import build

    monkeypatch.chdir(tmp_path)
    cfg = compose_config(tiny_job(tmp_path, "+student.net.width=3"))
    with pytest.raises(DistillError) as err:
        build(cfg.student.net, "student")
    assert "unexpected keyword argument 'width'" in str(err.value)
    assert "the config key 'student.net.width' is not an argument of distill.nets.MLP" in str(err.value)
    assert "'~student.net.width'" in str(err.value)
    cfg = compose_config(tiny_job(tmp_path, "student.net._target_=my_pkg.nets.Net"))
    with pytest.raises(DistillError, match=rf"no module 'my_pkg' here: .*starts in \({tmp_path}\)"):
        build(cfg.student.net, "student")


def test_lm_recipes_clip_gradients_like_classification_ones() -> None:
    """`fit.gradient_clip_val` clips the gradient norm in every task (SGD at lr 1: the update is the clipped step)."""
    import lightning as L
    import torch

    from distill.llm.data import SequenceBatches
    from distill.llm.models import causal_lm
    from distill.llm.module import LMDistillationModule

    torch.manual_seed(0)
    model = causal_lm(40, hidden_size=16, num_hidden_layers=1, intermediate_size=32, num_attention_heads=2,
                      num_key_value_heads=2)  # fmt: skip
    module = LMDistillationModule(model, {}, {}, optimizer=lambda p: torch.optim.SGD(p, lr=1.0), gradient_clip_val=1e-3)
    ids = torch.randint(0, 40, (8, 10), generator=torch.Generator().manual_seed(0))
    split = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, SequenceBatches(split, 8))
    step = torch.sqrt(sum(((p.detach() - before[n]) ** 2).sum() for n, p in model.named_parameters()))
    assert float(step) == pytest.approx(1e-3, rel=1e-3)
