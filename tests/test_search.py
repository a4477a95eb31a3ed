"""Search to a budget: what a trial returns to the sweeper (report.json's `search` entry, a list of metrics), its
figures on the validation split (`report.split=val`), a run without a baseline, and `hparams_search=budget_pareto`
end to end: trials, the Pareto front, and the best model within the budget rerun once for its test figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tests.conftest import cli_job, compose_config, run_cli, tiny_job
from tests.test_bad_input import assert_refused, run_main

from distill.pareto import non_dominated
from distill.train import main as train_main
from distill.train import optimized


def test_the_sweeper_gets_a_key_a_dotted_key_or_a_tuple_of_them() -> None:
    report = {"student_val_accuracy": 0.9, "search": {"accuracy": 0.8, "bytes": 2000, "latency_ms": 0.1}}
    assert optimized(report, "student_val_accuracy") == 0.9
    assert optimized(report, "search.bytes") == 2000
    assert optimized(report, ["search.accuracy", "search.bytes", "search.latency_ms"]) == (0.8, 2000, 0.1)
    assert optimized(report, "search.missing") is None and optimized({}, "search.accuracy") is None
    assert optimized(report, None) is None


@pytest.mark.slow
def test_a_search_trial_reports_on_validation_and_names_its_last_model(tmp_path: Path) -> None:
    """report.split=val: every figure is on the validation split (the student's accuracy equals its validation
    accuracy); the search entry is the last compression stage, measured on validation, with its file. No
    baseline with student.baseline=null."""
    from distill.spine import run

    report = run(compose_config(tiny_job(tmp_path, "report.split=val", "student.baseline=null",
                                         "compress=[onnx,int8]", "budget.max_bytes=20000")))  # fmt: skip
    rows = {r["model"]: r for r in report["models"]}
    assert "baseline" not in rows
    assert rows["student"]["accuracy"] == pytest.approx(report["student_val_accuracy"])
    search = report["search"]
    assert search["model"] == "compress:int8" and search["split"] == "val"
    assert search["accuracy"] == pytest.approx(rows["compress:int8"]["accuracy"])
    assert search["bytes"] == rows["compress:int8"]["bytes"] == Path(search["file"]).stat().st_size
    assert search["latency_ms"] == rows["compress:int8"]["latency_ms_batch_1"]
    assert search["within_budget"] is rows["compress:int8"]["meets_budget"] is (search["bytes"] <= 20000)
    test = run(compose_config(tiny_job(tmp_path / "test", "student.baseline=null", "compress=[onnx,int8]")))
    # The same model on the test split: the search entry still holds its validation figure.
    assert test["search"]["accuracy"] == pytest.approx(search["accuracy"])
    assert {r["model"]: r for r in test["models"]}["student"]["accuracy"] != rows["student"]["accuracy"]


def test_a_split_the_task_cannot_report_on_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    (tmp_path / "logs" / "cache").mkdir(parents=True)
    code, out, err = run_main(train_main, tiny_job(tmp_path, "report.split=train"), capfd)
    assert_refused(code, out, err, "report.split: this task reports on test or val, not 'train'",
                   tmp_path / "logs" / "cache")  # fmt: skip


@pytest.mark.slow
def test_the_budget_search_finds_the_front_and_tests_only_the_best(tmp_path: Path) -> None:
    """hparams_search=budget_pareto on the tiny job, 3 trials: every trial reports on validation only, pareto.json
    marks as on the front exactly the non-dominated trials, and the best within the budget is rerun once in
    best/, on the test split, rebuilding the same model."""
    args = [a for a in cli_job(tmp_path) if not a.startswith(("student=", "student.baseline."))]  # the search's
    args += ["hparams_search=budget_pareto", "hydra.sweeper.n_trials=3",
                   "hydra.sweeper.sampler.population_size=3", "student.fit.epochs=3", "budget.max_bytes=200000",
                   "budget.max_accuracy_drop=0.5", f"hydra.sweep.dir={tmp_path}/sweep"]  # fmt: skip
    result = run_cli(args, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    front = json.loads((sweep / "pareto.json").read_text())
    trials = front["trials"]
    assert len(trials) == 3
    for trial in trials:
        report = json.loads((sweep / trial["trial"] / "report.json").read_text())
        assert report["search"]["split"] == "val" and "baseline" not in {r["model"] for r in report["models"]}
        overrides = yaml.safe_load((sweep / trial["trial"] / ".hydra" / "overrides.yaml").read_text())
        assert "report.split=test" not in overrides  # the search config's val holds
    points = [(t["accuracy"], t["bytes"], t["latency_ms"]) for t in trials]
    expected = non_dominated(points, ["maximize", "minimize", "minimize"])
    assert [i for i, t in enumerate(trials) if t["on_front"]] == expected
    best = front["best"]
    assert best is not None and front["test"]["same_model"] is True
    rerun = json.loads((sweep / "best" / "report.json").read_text())
    assert rerun["search"]["accuracy"] == pytest.approx(best["accuracy"])
    assert front["test"]["row"]["accuracy"] == {r["model"]: r for r in rerun["models"]}[best["model"]]["accuracy"]
    text = (sweep / "pareto.md").read_text()
    assert best["trial"] in text and (sweep / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    summary = (sweep / "summary.md").read_text()
    assert "| best |" not in summary  # the rerun is not a job of the sweep
