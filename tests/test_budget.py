"""The deployment budget: its keys and values, which report rows meet it, the best and the closest model, and
the budgets refused before training (unknown key, one the teacher already meets, one no model can reach)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import compose_config, tiny_job
from tests.test_bad_input import assert_refused, run_main

from distill.budget import budget_lines, check_reachable, check_teacher_outside, judge, limits_of, misses
from distill.errors import DistillError
from distill.train import main as train_main


def test_limits_are_checked_in_one_line() -> None:
    assert limits_of({"max_params": 1000, "max_bytes": None, "max_accuracy_drop": 0.01}) == {
        "max_params": 1000.0, "max_accuracy_drop": 0.01,
    }  # fmt: skip
    assert limits_of(None) == {} and limits_of(compose_config([]).budget) == {}
    for node, message in (
        ({"max_parameters": 5}, "unknown budget key 'max_parameters': use max_params, max_flops"),
        ({"max_params": -1}, "must be a number >= 0"),
        ({"max_params": 0}, "must be > 0"),
        ({"max_bytes": "small"}, "must be a number >= 0"),
        ({"max_accuracy_drop": True}, "must be a number >= 0"),
    ):
        with pytest.raises(DistillError, match=message):
            limits_of(node)


ROWS = [
    {"model": "teacher:t", "role": "teacher", "accuracy": 0.95, "parameters": 100_000, "bytes": 400_000},
    {"model": "baseline", "role": "baseline", "accuracy": 0.80, "parameters": 5_000, "bytes": 20_000},
    {"model": "student", "role": "student", "accuracy": 0.945, "parameters": 5_000, "bytes": 20_000},
    {"model": "compress:int8", "role": "compressed", "accuracy": 0.94, "parameters": 5_000, "bytes": 6_000,
     "flops": None},
]  # fmt: skip


def test_which_rows_meet_the_budget_and_the_best_of_them() -> None:
    rows = [dict(r) for r in ROWS]
    entry = judge(rows, {"max_bytes": 10_000, "max_accuracy_drop": 0.01})
    assert [r["meets_budget"] for r in rows] == [False, False, False, True]
    assert rows[2]["budget_misses"] == {"max_bytes": 10_000.0}
    assert rows[1]["budget_misses"] == {"max_bytes": 10_000.0, "max_accuracy_drop": pytest.approx(0.14)}
    assert entry["within"] == ["compress:int8"] and entry["best"]["model"] == "compress:int8"
    assert budget_lines(entry)[1] == "- within budget: compress:int8; best: compress:int8"
    # Two within: the more accurate is the best; the teacher never counts.
    rows = [dict(r) for r in ROWS]
    entry = judge(rows, {"max_params": 10_000})
    assert entry["within"] == ["baseline", "student", "compress:int8"] and entry["best"]["model"] == "student"
    # None within: the closest (the smallest excess relative to the limits) is named with what it misses.
    rows = [dict(r) for r in ROWS]
    entry = judge(rows, {"max_bytes": 5_000, "max_accuracy_drop": 0.001})
    # student: bytes 3x over, accuracy 4x over (0.005 > 0.001); int8: 0.2x and 9x over (0.01 > 0.001)
    assert entry["within"] == [] and entry["closest"]["model"] == "student"
    assert budget_lines(entry)[1] == (
        "- no model meets the budget; closest: student (over max_bytes by 1.5e+04, max_accuracy_drop by 0.004)"
    )
    # A limit on a figure not measured for a model (FLOPs of an ONNX file): unknown, not a pass.
    assert misses(ROWS[3], {"max_flops": 10}, {}) is None


def test_perplexity_increase_for_language_models() -> None:
    rows = [
        {"model": "teacher:t", "role": "teacher", "perplexity": 20.0},
        {"model": "student", "role": "student", "perplexity": 21.5},
    ]
    assert judge(rows, {"max_perplexity_increase": 2.0})["best"]["model"] == "student"
    assert judge(rows, {"max_perplexity_increase": 1.0})["closest"]["misses"] == {"max_perplexity_increase": 0.5}


def test_budgets_refused_before_training() -> None:
    with pytest.raises(DistillError, match=r"teacher 't' already meets the budget \(parameters 1,000 <= 2,000\)"):
        check_teacher_outside({"max_params": 2000, "max_accuracy_drop": 0.01}, {"t": {"parameters": 1000}})
    check_teacher_outside({"max_params": 500}, {"t": {"parameters": 1000}})  # the teacher is over: fine
    check_teacher_outside({"max_accuracy_drop": 0.01}, {"t": {}})  # no size limit: nothing to check
    with pytest.raises(DistillError, match="the closest, the student, has parameters 1,000 > 500"):
        check_reachable({"max_params": 500}, {"parameters": 1000}, [])
    check_reachable({"max_params": 500}, {"parameters": 1000}, ["prune"])  # a stage may shrink it


@pytest.mark.slow
def test_the_report_says_which_models_meet_the_budget(tmp_path: Path) -> None:
    from distill.spine import run

    report = run(compose_config(tiny_job(tmp_path, "budget.max_params=3000", "budget.max_accuracy_drop=0.5")))
    rows = {r["model"]: r for r in report["models"]}
    assert rows["teacher:mlp_large"]["meets_budget"] is False  # far over 3,000 parameters
    assert report["budget"]["limits"] == {"max_params": 3000.0, "max_accuracy_drop": 0.5}
    assert set(report["budget"]["within"]) <= {"baseline", "student"}
    text = (tmp_path / "run" / "report.md").read_text()
    assert "| within budget |" in text and "- budget: max_params=3000, max_accuracy_drop=0.5" in text


@pytest.mark.parametrize(
    "extra,expect",
    [
        (["+budget.max_size=3"], "unknown config key"),
        (["budget.max_params=1000000000"], "teacher 'mlp_large' already meets the budget"),
        (["budget.max_params=10"], "no model of this run can meet the budget"),
    ],
)
def test_bad_budgets_exit_2(extra: list[str], expect: str, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    (tmp_path / "logs" / "cache").mkdir(parents=True)
    code, out, err = run_main(train_main, [*tiny_job(tmp_path), *extra], capfd)
    assert_refused(code, out, err, expect, tmp_path / "logs" / "cache")


@pytest.mark.slow
def test_a_flops_limit_on_a_task_that_counts_none_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    from tests.test_llm_pipeline import tiny_lm_job

    from distill.llm.train import main as lm_main

    (tmp_path / "logs" / "cache").mkdir(parents=True)
    code, out, err = run_main(lm_main, [*tiny_lm_job(tmp_path), "budget.max_flops=1000"], capfd)
    assert_refused(code, out, err, "budget.max_flops: this task's report counts no FLOPs", tmp_path / "logs" / "cache")
