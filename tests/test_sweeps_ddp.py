"""Multiruns (basic launcher and Optuna), their summary table, and the job on two DDP processes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from tests.conftest import cli_env, cli_job, run_cli, tiny_job

from distill.sweeps import summarize_sweep


def sweep_dir(tmp: Path) -> Path:
    (folder,) = (tmp / "logs" / "train" / "multiruns").iterdir()
    return folder


def jobs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0]))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    args = ["-m", *cli_job(tmp, "logger=many", "student.fit.epochs=2,4", "distill.kd.temperature=2,4")]
    result = run_cli(args, tmp, timeout=600, env=cli_env(WANDB_MODE="offline"))
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir(tmp)


@pytest.mark.slow
def test_every_job_of_a_sweep_has_its_folder_and_report(sweep: Path) -> None:
    folders = jobs(sweep)
    assert [f.name.split("_")[0] for f in folders] == ["0", "1", "2", "3"]
    assert len({f.name for f in folders}) == 4
    for f in folders:
        assert (f / "report.json").is_file()


@pytest.mark.slow
def test_the_teacher_is_trained_once_for_the_whole_sweep(sweep: Path) -> None:
    logs = [(f / "train.log").read_text() for f in jobs(sweep)]
    assert sum("Training teacher-mlp_large" in log for log in logs) == 1
    assert sum("Reusing cached teacher-mlp_large" in log for log in logs) == 3


@pytest.mark.slow
def test_the_sweep_summary_lists_overrides_and_results(sweep: Path) -> None:
    text = (sweep / "summary.md").read_text()
    assert "4 jobs" in text
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for row, folder in zip(rows, jobs(sweep), strict=True):
        assert row["job"] == folder.name and row["status"] == "ok"
        report = json.loads((folder / "report.json").read_text())
        student = next(m for m in report["models"] if m["model"] == "student")
        assert float(row["student_accuracy"]) == pytest.approx(student["accuracy"])
        assert float(row["student_val_accuracy"]) == pytest.approx(report["student_val_accuracy"])
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
        assert row["overrides"] == " ".join(o for o in overrides if o.startswith(("student.fit.epochs", "distill.kd")))
    assert {r["overrides"] for r in rows} == {
        "student.fit.epochs=2 distill.kd.temperature=2",
        "student.fit.epochs=2 distill.kd.temperature=4",
        "student.fit.epochs=4 distill.kd.temperature=2",
        "student.fit.epochs=4 distill.kd.temperature=4",
    }


@pytest.mark.slow
def test_wandb_groups_the_jobs_of_a_sweep(sweep: Path) -> None:
    for job in jobs(sweep):
        assert len(list(job.glob("wandb/offline-run-*/run-*.wandb"))) == 1
        assert f"W&B group: {sweep.name} (the jobs of this sweep)" in (job / "train.log").read_text()


def test_the_wandb_logger_gets_the_sweep_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import compose_config

    from distill import assembly as pipeline

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(pipeline, "sweep_name", lambda: "2026-01-01_00-00-00")
    (logger,) = pipeline.build_loggers(compose_config(tiny_job(tmp_path, "logger=wandb")))
    assert logger._wandb_init["group"] == "2026-01-01_00-00-00"
    (mine,) = pipeline.build_loggers(compose_config(tiny_job(tmp_path, "logger=wandb", "logger.wandb.group=mine")))
    assert mine._wandb_init["group"] == "mine"  # a group set by the user wins
    monkeypatch.setattr(pipeline, "sweep_name", lambda: None)
    (single,) = pipeline.build_loggers(compose_config(tiny_job(tmp_path, "logger=wandb")))
    assert single._wandb_init.get("group") is None


def test_summary_marks_jobs_without_a_report(tmp_path: Path) -> None:
    for name, overrides in (("0_1", ["a=1", "b=2"]), ("1_1", ["a=1", "b=3"])):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    rows = summarize_sweep(tmp_path)
    assert [(r["job"], r["overrides"], r["status"]) for r in rows] == [
        ("0_1", "b=2", "no report"),
        ("1_1", "b=3", "no report"),
    ]
    assert "Overrides common to every job: a=1" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
def test_optuna_search_maximises_the_validation_accuracy(tmp_path: Path) -> None:
    args = cli_job(tmp_path, "hparams_search=mnist1d_kd_optuna", "hydra.sweeper.n_trials=3")
    result = run_cli(args, tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = sweep_dir(tmp_path)
    best = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    values = [json.loads((f / "report.json").read_text())["student_val_accuracy"] for f in jobs(folder)]
    assert len(values) == 3
    assert best["best_value"] == pytest.approx(max(values))
    assert set(best["best_params"]) == {"distill.kd.temperature", "distill.kd.weight", "distill.hard.weight"}
    assert 1.0 <= best["best_params"]["distill.kd.temperature"] <= 10.0


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_gives_one_run_one_report_and_synchronised_metrics(tmp_path: Path) -> None:
    args = cli_job(tmp_path, "trainer=ddp_cpu", "logger=many", "compress=[prune,recover]", "compress.recover.epochs=2")
    result = run_cli(args, tmp_path, timeout=600, env=cli_env(WANDB_MODE="offline"))
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()  # one folder for both processes
    assert (run / "train.log").is_file() and (run / "train_ddp_process_1.log").is_file()
    assert "Process group ready: rank 1 of 2" in (run / "train_ddp_process_1.log").read_text()
    report = json.loads((run / "report.json").read_text())
    assert [m["model"] for m in report["models"]][-2:] == ["compress:prune", "compress:recover"]
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    # The logged validation accuracy is over the whole validation set (both ranks' halves), as the
    # report's single-process evaluation of the same student is.
    with open(run / "csv" / "metrics.csv") as f:
        logged = [float(r["student/val/acc"]) for r in csv.DictReader(f) if r.get("student/val/acc")]
    assert logged[-1] == pytest.approx(report["student_val_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_ddp_spawn_is_refused_with_a_reason(tmp_path: Path) -> None:
    result = run_cli(cli_job(tmp_path, "trainer=ddp_cpu", "trainer.strategy=ddp_spawn"), tmp_path)
    assert result.returncode == 2
    assert "use strategy=ddp" in result.stderr.strip().splitlines()[-1]
