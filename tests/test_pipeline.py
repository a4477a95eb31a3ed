"""The main job end to end: report contents, the teacher cache, the student file and distill-eval."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from tests.conftest import compose_config, run_cli, tiny_job

from distill.checkpoints import read_checkpoint
from distill.spine import run

pytestmark = pytest.mark.slow  # every test runs the main job

REPORT_FIELDS = {
    "model", "accuracy", "agreement", "calibration_error", "parameters", "bytes",
    "latency_ms_batch_1", "latency_ms_batch_64", "flops", "per_class_accuracy", "worst_class", "worst_class_accuracy",
}  # fmt: skip


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("job")
    report = run(compose_config(tiny_job(tmp)))
    return tmp, report


def test_report_has_every_model_with_sane_values(first_run) -> None:
    tmp, report = first_run
    on_disk = json.loads((tmp / "run" / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    rows = {r["model"]: r for r in on_disk["models"]}
    assert list(rows) == ["teacher:mlp_large", "baseline", "student"]
    for name, row in rows.items():
        assert REPORT_FIELDS <= row.keys(), name
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["agreement"] <= 1.0
        assert 0.0 <= row["calibration_error"] <= 1.0
        assert row["bytes"] > 4 * row["parameters"] * 0.9  # float32 weights, plus a small header
        assert 0 < row["latency_ms_batch_1"] < 1000 and 0 < row["latency_ms_batch_64"] < 1000
    teacher, baseline, student = rows["teacher:mlp_large"], rows["baseline"], rows["student"]
    assert teacher["accuracy"] > 0.9  # digits is easy for a wide MLP
    assert teacher["agreement"] == 1.0
    assert student["parameters"] == baseline["parameters"] < teacher["parameters"] / 10
    # an MLP's forward pass is 2 FLOPs per weight (biases and ReLUs are not counted)
    assert student["flops"] == 2 * (64 * 32 + 32 * 10)
    assert teacher["flops"] == 2 * (64 * 512 + 512 * 512 + 512 * 10)
    assert student["accuracy"] > 0.5
    assert set(on_disk["summary"]) == {"student_minus_baseline", "gap_closed"}


def test_run_folder_holds_markdown_plot_student_and_logs(first_run) -> None:
    out = first_run[0] / "run"
    md = (out / "report.md").read_text()
    assert "| model |" in md and "| student |" in md and "teacher:mlp_large" in md
    assert (out / "report.png").stat().st_size > 5000
    assert (out / "csv" / "metrics.csv").read_text().count("student/val/acc") == 1
    student = read_checkpoint(out / "student.ckpt")
    assert student["net"]["_target_"] == "distill.nets.MLP" and student["num_classes"] == 10
    assert all(not k.startswith(("teacher", "terms")) for k in student["state_dict"])
    assert (out / "checkpoints" / "student" / "last.ckpt").is_file()


def test_second_run_reuses_the_cached_teacher_and_baseline(first_run, caplog) -> None:
    tmp, first = first_run
    caplog.set_level(logging.INFO, logger="distill")
    second = run(compose_config(tiny_job(tmp, f"paths.output_dir={tmp}/run2")))
    assert "Reusing cached teacher-mlp_large" in caplog.text and "Reusing cached baseline" in caplog.text
    before = {r["model"]: r for r in first["models"]}
    after = {r["model"]: r for r in second["models"]}
    for name in ("teacher:mlp_large", "baseline"):
        assert after[name]["accuracy"] == before[name]["accuracy"]
        assert after[name]["source"].startswith("cache ")
    assert len(list((tmp / "logs" / "cache").glob("teacher-mlp_large-*.pt"))) == 1


def test_a_changed_teacher_recipe_is_trained_again(first_run, caplog) -> None:
    tmp, _ = first_run
    caplog.set_level(logging.INFO, logger="distill")
    run(compose_config(tiny_job(tmp, f"paths.output_dir={tmp}/run3", "teacher.mlp_large.fit.epochs=2")))
    assert "Training teacher-mlp_large" in caplog.text
    assert len(list((tmp / "logs" / "cache").glob("teacher-mlp_large-*.pt"))) == 2


def test_distill_eval_reproduces_the_reported_accuracy(first_run) -> None:
    tmp, report = first_run
    student = next(r for r in report["models"] if r["model"] == "student")
    args = [f"ckpt_path={tmp}/run/student.ckpt", f"paths.output_dir={tmp}/eval", "report.latency_repeats=2"]
    result = run_cli(args, cwd=tmp, module="distill.eval")
    assert result.returncode == 0, result.stderr[-2000:]
    evaluated = json.loads((tmp / "eval" / "report.json").read_text())["models"][0]
    assert evaluated["accuracy"] == pytest.approx(student["accuracy"], abs=1e-6)
    assert evaluated["parameters"] == student["parameters"]


def test_teacher_from_checkpoint_path(first_run) -> None:
    tmp, first = first_run
    first_teacher = next(r for r in first["models"] if r["model"] == "teacher:mlp_large")
    cached = tmp / "logs" / "cache" / first_teacher["source"].removeprefix("trained, cached as ")
    report = run(compose_config(tiny_job(tmp, f"paths.output_dir={tmp}/run4", f"teacher.mlp_large.ckpt_path={cached}")))
    rows = {r["model"]: r for r in report["models"]}
    assert rows["teacher:mlp_large"]["source"] == f"checkpoint {cached}"
    assert rows["teacher:mlp_large"]["accuracy"] == first_teacher["accuracy"]


def test_multi_teacher_job(tmp_path: Path) -> None:
    report = run(
        compose_config(
            tiny_job(
                tmp_path,
                "teacher=[mlp_large,cnn]",
                "teacher.cnn.net._target_=distill.nets.MLP",  # any nn.Module works as a teacher
                "~teacher.cnn.net.channels",
                "~teacher.cnn.net.kernel_size",
                "+teacher.cnn.net.hidden=[128]",
                "teacher.mlp_large.fit.epochs=3",
                "teacher.cnn.fit.epochs=3",
                "student.fit.epochs=2",
                "student.baseline.epochs=2",
            )
        )
    )
    assert [r["model"] for r in report["models"]] == ["teacher:mlp_large", "teacher:cnn", "baseline", "student"]


def test_wandb_logs_offline_without_an_api_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    run(
        compose_config(
            tiny_job(
                tmp_path,
                "logger=wandb",
                "student.fit.epochs=2",
                "student.baseline.epochs=2",
                "teacher.mlp_large.fit.epochs=2",
            )
        )
    )
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    table = json.loads(next(runs[0].rglob("report_table_*.table.json")).read_text())
    assert table["columns"][0] == "model" and [row[0] for row in table["data"]] == [
        "teacher:mlp_large",
        "baseline",
        "student",
    ]
    assert next(runs[0].rglob("plots/report_*.png")).stat().st_size > 5000
    records = next(runs[0].glob("run-*.wandb")).read_bytes()  # offline runs keep config and metrics here
    for text in (b"distill.nets.MLP", b"student/val/acc", b"report/student/accuracy", b"teacher_mlp_large/train/loss"):
        assert text in records, text


@pytest.mark.parametrize("debug", ["fast", "overfit"])
def test_debug_presets_run(debug: str, tmp_path: Path) -> None:
    overrides = tiny_job(tmp_path, f"debug={debug}")
    if debug == "overfit":
        overrides += ["student.fit.epochs=2", "student.baseline.epochs=2", "teacher.mlp_large.fit.epochs=2"]
    report = run(compose_config(overrides))
    assert len(report["models"]) == 3
    assert not (tmp_path / "logs" / "cache").exists()  # debug runs never fill the shared cache


def test_default_job_shows_the_point_of_distillation(tmp_path: Path) -> None:
    """The default MNIST-1D job, unchanged: the distilled student clearly beats the baseline."""
    report = run(
        compose_config(
            [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/run", "callbacks.progress_bar.refresh_rate=0"]
        )
    )
    rows = {r["model"]: r for r in report["models"]}
    assert rows["teacher:cnn"]["accuracy"] > 0.93
    assert rows["student"]["accuracy"] > rows["baseline"]["accuracy"] + 0.15
    assert report["summary"]["gap_closed"] > 0.6
    assert torch.get_num_threads() >= 1
