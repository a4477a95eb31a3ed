"""The Pareto front of a search: which points are non-dominated, the trials read from a sweep folder, the best
trial within the budget (or the closest), pareto.json/.md/.png, the test-set rerun of the best trial (its
subprocess replaced), and the Hydra callback, on fake sweep folders and in a real Optuna multirun."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from distill import pareto
from distill.errors import DistillError
from distill.pareto import ParetoFront, Trial, best_within_budget, non_dominated, read_trials, srun_prefix, write_front

# -- non_dominated ---------------------------------------------------------------------------------


def test_non_dominated_keeps_ties_and_duplicates() -> None:
    points = [(1, 1), (2, 0), (0, 2), (0, 0), (1, 1)]
    assert non_dominated(points, ["maximize", "maximize"]) == [0, 1, 2, 4]  # the two (1, 1) stay
    assert non_dominated([(1, 2), (1, 3)], ["maximize", "maximize"]) == [1]  # equal on one, better on the other
    assert non_dominated([(1, 2), (1, 3)], ["maximize", "minimize"]) == [0]
    assert non_dominated([], ["maximize"]) == []


def test_non_dominated_on_one_objective_and_mixed_senses() -> None:
    assert non_dominated([(3,), (5,), (5,), (1,)], ["maximize"]) == [1, 2]
    assert non_dominated([(3,), (5,), (5,), (1,)], ["minimize"]) == [3]
    # (accuracy, bytes): (0.9, 90) beats (0.9, 100); (0.85, 120) loses to both 0.9s; (0.8, 50) is the smallest.
    assert non_dominated([(0.9, 100), (0.8, 50), (0.85, 120), (0.9, 90)], ["maximize", "minimize"]) == [1, 3]
    # accuracy up, bytes and latency down: (0.9, 100, 2) is slower than (0.9, 100, 1), (0.8, 110, 6) worse on all
    # three; (0.8, 60, 6) is worse than each other point on one objective but better on another.
    points = [(0.9, 100, 2.0), (0.9, 100, 1.0), (0.95, 300, 3.0), (0.7, 50, 5.0), (0.8, 110, 6.0), (0.8, 60, 6.0)]
    assert non_dominated(points, ["maximize", "minimize", "minimize"]) == [1, 2, 3, 5]


def _brute_force(points: list[tuple[int, ...]], senses: list[str]) -> list[int]:
    def better_or_equal(a: int, b: int, sense: str) -> bool:
        return a >= b if sense == "maximize" else a <= b

    def strictly_better(a: int, b: int, sense: str) -> bool:
        return a > b if sense == "maximize" else a < b

    def dominated(i: int) -> bool:
        return any(
            all(better_or_equal(q, p, s) for q, p, s in zip(other, points[i], senses, strict=True))
            and any(strictly_better(q, p, s) for q, p, s in zip(other, points[i], senses, strict=True))
            for other in points
        )

    return [i for i in range(len(points)) if not dominated(i)]


@pytest.mark.parametrize("seed", range(20))
def test_non_dominated_matches_the_definition_on_random_points(seed: int) -> None:
    rng = random.Random(seed)
    dims = rng.randint(1, 4)
    senses = [rng.choice(["maximize", "minimize"]) for _ in range(dims)]
    points = [tuple(rng.randint(0, 4) for _ in range(dims)) for _ in range(rng.randint(1, 60))]  # many ties
    front = non_dominated(points, senses)
    assert front == _brute_force(points, senses)
    assert front  # a finite set always has a non-dominated point


# -- fake sweep folders ----------------------------------------------------------------------------

LIMITS = {"max_bytes": 30_000.0, "max_accuracy_drop": 0.05}
TEACHER = {"model": "teacher:cnn", "role": "teacher", "accuracy": 0.95, "bytes": 700_000, "latency_ms_batch_1": 0.2}
COMMON = ["hparams_search=pareto", "data=digits", "hydra.sweeper.n_jobs=1"]


def search_entry(accuracy: float, size: int, ms: float, within: bool | None) -> dict[str, Any]:
    return {"model": "compress:int8", "split": "val", "accuracy": accuracy, "bytes": size, "latency_ms": ms,
            "parameters": size // 2, "within_budget": within, "file": f"/runs/{size}/student.int8.onnx"}  # fmt: skip


def make_trial(
    sweep: Path, name: str, overrides: list[str], search: dict[str, Any] | None, misses: bool = False, **report: Any
) -> Path:
    """A job folder as a search leaves it: .hydra/overrides.yaml and, unless `search` is None, report.json with
    the teacher's and the search model's rows (with `misses`, what it is over max_bytes), the search entry and
    the budget entry; `report` entries replace those."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if search is None:
        return folder
    row = {"model": search["model"], "role": "compressed", "accuracy": search["accuracy"], "bytes": search["bytes"],
           "latency_ms_batch_1": search["latency_ms"], "meets_budget": search["within_budget"]}  # fmt: skip
    if misses:
        row["budget_misses"] = {"max_bytes": search["bytes"] - LIMITS["max_bytes"]}
    content = {"title": name, "models": [TEACHER, row], "summary": {}, "search": search,
               "budget": {"limits": LIMITS, "within": []}, **report}  # fmt: skip
    (folder / "report.json").write_text(json.dumps(content))
    return folder


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Six trials (budget: 30 KB, 0.05 below the teacher's 0.95, so accuracy >= 0.90):
    0_1 most accurate but too large; 1_1 and 2_1 as accurate and as large, 2_1 slower (dominated, and the tie
    for the best goes to 1_1); 3_1 the smallest but too inaccurate; 5_1 the fastest; 10_1 failed."""
    sweep = tmp_path / "multiruns" / "2026-01-01_00-00-00"
    trials = {
        "0_1": ("2", search_entry(0.93, 40_000, 0.05, False)),
        "1_1": ("4", search_entry(0.92, 20_000, 0.05, True)),
        "2_1": ("6", search_entry(0.92, 20_000, 0.06, True)),
        "3_1": ("8", search_entry(0.88, 10_000, 0.04, False)),
        "5_1": ("3", search_entry(0.91, 25_000, 0.03, True)),
        "10_1": ("10", None),
    }
    for name, (temperature, search) in trials.items():
        make_trial(sweep, name, [f"distill.kd.temperature={temperature}", *COMMON], search)
    make_trial(sweep, "best", ["distill.kd.temperature=4"], search_entry(0.99, 1, 0.01, True))  # a rerun: no trial
    return sweep


def test_read_trials_in_job_order_with_failed_ones(sweep: Path) -> None:
    trials = read_trials(sweep)
    assert [t.name for t in trials] == ["0_1", "1_1", "2_1", "3_1", "5_1", "10_1"]  # numbers, not text; no best/
    assert [t.job for t in trials] == [0, 1, 2, 3, 5, 10]
    assert trials[1].overrides == ["distill.kd.temperature=4", *COMMON]
    assert trials[1].search == search_entry(0.92, 20_000, 0.05, True)
    assert trials[1].budget["limits"] == LIMITS and trials[1].reference == 0.95
    assert trials[-1].search is None and trials[-1].overrides[0] == "distill.kd.temperature=10"


def test_write_front_marks_the_front_and_names_the_best(sweep: Path) -> None:
    data = write_front(sweep, read_trials(sweep))
    flags = {r["trial"]: r["on_front"] for r in data["trials"]}
    assert flags == {"0_1": True, "1_1": True, "2_1": False, "3_1": True, "5_1": True, "10_1": False}
    assert data["front"] == ["3_1", "1_1", "5_1", "0_1"]  # by size
    assert data["best"]["trial"] == "1_1" and data["best"]["file"] == "/runs/20000/student.int8.onnx"
    assert data["closest"] is None and data["failed"] == ["10_1"]
    assert data["quality_limit"] == pytest.approx(0.90)
    assert data["objectives"] == {"accuracy": "maximize", "bytes": "minimize", "latency_ms": "minimize"}
    assert json.loads((sweep / "pareto.json").read_text()) == data
    assert (sweep / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_md_has_the_front_table_the_best_model_and_the_failed_trials(sweep: Path) -> None:
    write_front(sweep, read_trials(sweep))
    md = (sweep / "pareto.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table == [
        "| trial | distill.kd.temperature | val accuracy | bytes | latency ms | within budget |",
        "|---|---|---|---|---|---|",
        "| [3_1](3_1/report.md) | 8 | 0.8800 | 10,000 | 0.040 | no |",
        "| [1_1](1_1/report.md) | 4 | 0.9200 | 20,000 | 0.050 | yes |",
        "| [5_1](5_1/report.md) | 3 | 0.9100 | 25,000 | 0.030 | yes |",
        "| [0_1](0_1/report.md) | 2 | 0.9300 | 40,000 | 0.050 | no |",
    ]  # the overrides common to every trial (hparams_search=..., data=...) are no column
    assert "4 of 5 completed trials are on the front" in md and "1 failed" in md
    assert "Budget: max_bytes=30000, max_accuracy_drop=0.05; validation accuracy limit: 0.9000." in md
    assert "Trial `1_1`, model `compress:int8`: validation accuracy 0.9200, 20,000 bytes, 0.050 ms." in md
    assert f"- trial folder: {sweep / '1_1'}" in md and "- file: /runs/20000/student.int8.onnx" in md
    assert "- `10_1` (no report.json): distill.kd.temperature=10" in md
    assert "![validation accuracy against size](pareto.png)" in md


def test_the_plot_draws_the_front_and_the_budget_lines(sweep: Path) -> None:
    data = write_front(sweep, read_trials(sweep))
    ax = pareto.plot_front(data).axes[0]
    lines = {tuple(line.get_xdata()): tuple(line.get_ydata()) for line in ax.lines}
    assert lines[(10_000, 20_000, 25_000, 40_000)] == (0.88, 0.92, 0.91, 0.93)  # the front, joined by size
    assert lines[(30_000.0, 30_000.0)] == (0, 1)  # max_bytes, vertical
    assert lines[(0, 1)] == pytest.approx((0.90, 0.90))  # the accuracy limit, horizontal
    grey, front, best = ax.collections
    assert len(grey.get_offsets()) == 5 and list(front.get_array()) == [0.04, 0.05, 0.03, 0.05]  # coloured by latency
    assert list(best.get_offsets()[0]) == [20_000, 0.92]
    assert ax.get_xscale() == "log"


def test_without_a_teacher_figure_there_is_no_accuracy_line(tmp_path: Path) -> None:
    make_trial(tmp_path, "0_1", ["x=1"], search_entry(0.9, 20_000, 0.05, True), models=[])
    make_trial(tmp_path, "1_1", ["x=2"], search_entry(0.8, 10_000, 0.05, True), models=[])
    data = write_front(tmp_path, read_trials(tmp_path))
    assert data["quality_limit"] is None and data["front"] == ["1_1", "0_1"]
    lines = [tuple(line.get_xdata()) for line in pareto.plot_front(data).axes[0].lines]
    assert lines == [(10_000, 20_000), (30_000.0, 30_000.0)]  # the front and max_bytes only
    assert "Budget: max_bytes=30000, max_accuracy_drop=0.05." in (tmp_path / "pareto.md").read_text()


def test_language_model_trials_minimise_perplexity(tmp_path: Path) -> None:
    for name, ppl, size in (("0_1", 20.0, 1000), ("1_1", 30.0, 2000), ("2_1", 25.0, 500)):
        search = {"model": "student", "split": "val", "perplexity": ppl, "bytes": size, "latency_ms": 1.0,
                  "within_budget": None, "file": "w.safetensors"}  # fmt: skip
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={name[0]}"]))
        (folder / "report.json").write_text(json.dumps({"models": [], "search": search}))
    data = write_front(tmp_path, read_trials(tmp_path))
    assert data["metric"] == "perplexity" and data["front"] == ["2_1", "0_1"]  # 1_1: larger and worse than 0_1
    assert data["best"] is None and data["closest"] is None  # no budget set
    md = (tmp_path / "pareto.md").read_text()
    assert "| trial | seed | val perplexity | bytes | latency ms | within budget |" in md
    assert "No budget was set (budget.*): no single model is picked" in md


# -- best_within_budget ----------------------------------------------------------------------------


def trial(name: str, search: dict[str, Any], misses: dict[str, float] | None = None) -> Trial:
    return Trial(Path(name), None, [], search, {"limits": LIMITS}, misses or {})


def test_best_within_budget_breaks_ties_by_bytes_then_latency() -> None:
    a = trial("a", search_entry(0.92, 20_000, 0.05, True))
    b = trial("b", search_entry(0.92, 15_000, 0.07, True))  # as accurate, smaller
    c = trial("c", search_entry(0.92, 15_000, 0.06, True))  # as accurate and small, faster
    d = trial("d", search_entry(0.95, 40_000, 0.01, False))  # the most accurate, outside
    assert best_within_budget([a, b, d]) == (b, None)
    assert best_within_budget([a, b, c, d]) == (c, None)
    assert best_within_budget([a, trial("e", search_entry(0.93, 29_000, 0.09, True))])[0].name == "e"
    lm = [
        trial(n, {"perplexity": p, "bytes": 1, "latency_ms": 1, "within_budget": True}) for n, p in (("x", 9), ("y", 7))
    ]
    assert best_within_budget(lm)[0].name == "y"  # the lowest perplexity


def test_none_within_budget_names_the_closest() -> None:
    two = trial("two", search_entry(0.8, 31_000, 0.05, False), {"max_bytes": 1_000, "max_accuracy_drop": 0.001})
    far = trial("far", search_entry(0.93, 60_000, 0.05, False), {"max_bytes": 30_000})  # one miss, 100% over
    near = trial("near", search_entry(0.93, 33_000, 0.05, False), {"max_bytes": 3_000})  # one miss, 10% over
    assert best_within_budget([two, far, near]) == (None, near)
    assert best_within_budget([two, far]) == (None, far)  # fewer misses first
    assert best_within_budget([trial("n", search_entry(0.9, 1, 1, None))]) == (None, None)  # no budget set
    failed = Trial(Path("f"), 0, [])
    assert best_within_budget([failed]) == (None, None)


def test_pareto_md_names_the_closest_when_none_meets_the_budget(tmp_path: Path) -> None:
    make_trial(tmp_path, "0_1", ["x=1"], search_entry(0.93, 40_000, 0.05, False), misses=True)
    make_trial(tmp_path, "1_1", ["x=2"], search_entry(0.94, 35_000, 0.05, False), misses=True)
    data = write_front(tmp_path, read_trials(tmp_path))
    assert data["best"] is None and data["closest"]["trial"] == "1_1"
    assert data["closest"]["misses"] == {"max_bytes": 5_000}
    md = (tmp_path / "pareto.md").read_text()
    assert "No trial meets the budget. Closest: trial `1_1`, model `compress:int8`: " in md
    assert "over max_bytes by 5000." in md


# -- test_best -------------------------------------------------------------------------------------


class FakeRun:
    """Stands in for subprocess.run: records the command, prints to its stdout, writes best/report.json."""

    def __init__(self, sweep: Path, val: float = 0.92, code: int = 0) -> None:
        self.sweep, self.val, self.code, self.args = sweep, val, code, None

    def __call__(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        self.args = args
        kwargs["stdout"].write("training the best trial\n")
        test_row = {"model": "compress:int8", "role": "compressed", "accuracy": 0.9034, "bytes": 20_000,
                    "latency_ms_batch_1": 0.051, "meets_budget": True}  # fmt: skip
        report = {"models": [TEACHER, test_row], "summary": {}, "search": search_entry(self.val, 20_000, 0.05, True)}
        if not self.code:
            (self.sweep / "best" / "report.json").write_text(json.dumps(report))
        return subprocess.CompletedProcess(args, self.code)


@pytest.fixture
def tested(sweep: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, FakeRun, dict[str, Any]]:
    """The sweep's front written, then its best trial rerun by the fake."""
    trials = read_trials(sweep)
    write_front(sweep, trials)
    fake = FakeRun(sweep)
    monkeypatch.setattr(pareto.subprocess, "run", fake)
    entry = pareto.test_best(sweep, trials[1], ["python", "-m", "distill.train"])
    return sweep, fake, entry


def test_the_best_trial_is_rerun_as_one_run_on_the_test_split(tested: tuple) -> None:
    sweep, fake, _ = tested
    assert fake.args == [
        "python", "-m", "distill.train", "distill.kd.temperature=4", "hparams_search=pareto", "data=digits",
        "hydra.mode=RUN", "report.split=test", f"hydra.run.dir={(sweep / 'best').resolve()}",
    ]  # fmt: skip
    assert (sweep / "best" / "rerun.log").read_text() == "training the best trial\n"


def test_the_test_figures_of_the_best_model_go_into_pareto_files(tested: tuple) -> None:
    sweep, _, entry = tested
    assert entry["accuracy"] == 0.9034 and entry["split"] == "test" and entry["same_model"] is True
    assert entry["row"]["latency_ms_batch_1"] == 0.051
    saved = json.loads((sweep / "pareto.json").read_text())
    assert saved["test"] == entry and saved["best"]["trial"] == "1_1"
    md = (sweep / "pareto.md").read_text()
    assert "## Test set: the best model only" in md
    assert "| compress:int8 | 0.9034 | 20,000 | yes | 0.051 |" in md  # report.md's columns
    assert "The rerun's validation accuracy, 0.9200, equals the trial's: the same model was rebuilt." in md


def test_a_rerun_that_measures_another_model_is_flagged(sweep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trials = read_trials(sweep)
    write_front(sweep, trials)
    monkeypatch.setattr(pareto.subprocess, "run", FakeRun(sweep, val=0.9150))
    entry = pareto.test_best(sweep, trials[1], ["python"])
    assert entry["same_model"] is False and entry["val_rerun"] == 0.915
    assert (
        "**WARNING: the rerun's model `compress:int8` with validation accuracy 0.9150 is not the trial's"
        in (sweep / "pareto.md").read_text()
    )
    monkeypatch.setattr(pareto.subprocess, "run", FakeRun(sweep, code=1))
    with pytest.raises(DistillError, match=r"the rerun of trial 1_1 failed \(exit code 1\); see .*rerun.log"):
        pareto.test_best(sweep, trials[1], ["python"])


def test_rerun_overrides_keep_the_search_config_but_not_its_sweeper_or_credentials(tmp_path: Path) -> None:
    overrides = ["hparams_search=pareto", "+hydra.sweeper.n_trials=4", "hydra/sweeper=optuna", "hydra.mode=MULTIRUN",
                 "report.split=val", "hydra.run.dir=x", "+logger.wandb.api_key=<redacted>", "compress=[int8]",
                 "hparams_search_note=kept"]  # fmt: skip
    command = pareto.rerun_command(tmp_path, Trial(tmp_path / "0_1", 0, overrides), ["cmd"])
    assert command == ["cmd", "hparams_search=pareto", "compress=[int8]", "hparams_search_note=kept",
                       "hydra.mode=RUN", "report.split=test", f"hydra.run.dir={tmp_path.resolve() / 'best'}"]  # fmt: skip


def test_the_command_follows_the_primary_config() -> None:
    def config(name: str) -> Any:
        return OmegaConf.create({"task_name": "mine", "hydra": {"job": {"config_name": name}}})

    assert pareto.task_command(config("train")) == [sys.executable, "-m", "distill.train"]
    assert pareto.task_command(config("lm")) == [sys.executable, "-m", "distill.llm.train"]
    assert pareto.task_command(OmegaConf.create({"task_name": "lm"}))[-1] == "distill.llm.train"
    with pytest.raises(DistillError, match="cannot tell which command ran the search"):
        pareto.task_command(config("eval"))


# -- the callback ----------------------------------------------------------------------------------


def sweep_config(sweep: Path, **extra: Any) -> Any:
    return OmegaConf.create(
        {"task_name": "train", "hydra": {"sweep": {"dir": str(sweep)}, "job": {"config_name": "train"}}, **extra}
    )


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "distill.pareto"]


def test_the_callback_writes_the_front_and_logs_each_step(sweep: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="distill.pareto"):
        ParetoFront(test=False).on_multirun_end(sweep_config(sweep, logger={"csv": {"_target_": "CSVLogger"}}))
    assert json.loads((sweep / "pareto.json").read_text())["front"] == ["3_1", "1_1", "5_1", "0_1"]
    assert (sweep / "pareto.md").is_file() and (sweep / "pareto.png").is_file()
    assert not (sweep / "best" / "rerun.log").exists() and not (sweep / "wandb").exists()  # test=False, no W&B
    assert messages(caplog) == [
        f"Pareto front: 4 of 6 trials (1 failed), written to {sweep / 'pareto.md'}",
        "Best within the budget: trial 1_1, compress:int8: validation accuracy 0.9200, 20,000 bytes, 0.050 ms",
    ]


def test_the_callback_tests_the_best_trial(
    sweep: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRun(sweep)
    monkeypatch.setattr(pareto.subprocess, "run", fake)
    with caplog.at_level(logging.INFO, logger="distill.pareto"):
        ParetoFront().on_multirun_end(sweep_config(sweep))
    assert fake.args[:3] == [sys.executable, "-m", "distill.train"]
    assert messages(caplog)[-1] == "Test accuracy of the best model (trial 1_1, compress:int8): 0.9034"
    assert json.loads((sweep / "pareto.json").read_text())["test"]["accuracy"] == 0.9034


def test_a_search_on_slurm_reruns_its_best_as_a_slurm_job(sweep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep ends where it was started (often a login node): the rerun goes through srun with the trials'
    partition, account, time, GPUs, CPUs and memory."""
    fake = FakeRun(sweep)
    monkeypatch.setattr(pareto.subprocess, "run", fake)
    config = sweep_config(sweep)
    config.hydra.launcher = {
        "_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
        "partition": "gpu", "account": None, "timeout_min": 30, "gpus_per_node": 1, "cpus_per_task": 4, "mem_gb": 8,
    }  # fmt: skip
    ParetoFront().on_multirun_end(config)
    assert fake.args[:9] == ["srun", "--nodes=1", "--ntasks=1", "--partition=gpu", "--time=30", "--gpus-per-node=1",
                             "--cpus-per-task=4", "--mem=8G", sys.executable]  # fmt: skip
    assert json.loads((sweep / "pareto.json").read_text())["test"]["accuracy"] == 0.9034
    assert srun_prefix({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}) == []


def test_the_callback_survives_a_broken_sweep(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_trial(tmp_path, "0_1", ["x=1"], search_entry(0.9, 1, 1, True))
    (tmp_path / "0_1" / "report.json").write_text("{not json")
    ParetoFront().on_multirun_end(sweep_config(tmp_path))
    (error,) = [r for r in caplog.records if r.name == "distill.pareto"]
    assert error.levelname == "ERROR" and error.getMessage() == f"Could not write the Pareto front of {tmp_path}"
    ParetoFront().on_multirun_end(sweep_config(tmp_path / "missing"))  # no sweep folder: nothing to do


def test_the_callback_logs_the_front_to_wandb_offline(sweep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_tracking import wandb_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = {"wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger", "project": "distill"}}
    ParetoFront(test=False).on_multirun_end(sweep_config(sweep, logger=logger))
    (run_dir,) = (sweep / "wandb").glob("offline-run-*")
    records = [r for r in wandb_records(run_dir) if r.WhichOneof("record_type") in ("run", "history")]
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.job_type, run.display_name, run.run_group) == ("pareto", f"pareto {sweep.name}", sweep.name)
    history = [r.history for r in records if r.WhichOneof("record_type") == "history"]
    logged = {i.key or i.nested_key[0] for h in history for i in h.item}  # a table or image: its nested fields
    assert {"pareto_front", "plots/pareto"} <= logged


# -- a real multirun -------------------------------------------------------------------------------

APP = """
import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg):
    size = int(cfg.size)
    search = {"model": "student", "split": "val", "accuracy": 1 - 1000 / size, "bytes": size, "latency_ms": 0.1,
              "within_budget": size <= 5000, "file": "student.pt"}
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "report.json").write_text(json.dumps({"models": [], "search": search}))
    return search["accuracy"], size, 0.1


main()
"""

CONFIG = """
defaults:
  - _self_
  - hparams_search: null
task_name: train
size: 1000
seed: 0
report:
  split: val
hydra:
  sweep:
    dir: {sweep}
  callbacks:
    pareto:
      _target_: distill.pareto.ParetoFront
      test: false
"""

SEARCH = """
# @package _global_
defaults:
  - override /hydra/sweeper: optuna
hydra:
  mode: MULTIRUN
  sweeper:
    direction: [maximize, minimize, minimize]
    n_trials: 4
    sampler:
      seed: 0
    params:
      size: choice(2000, 4000, 8000, 16000)
"""


def test_a_real_optuna_search_gets_its_front_and_its_rerun_is_one_run(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    (tmp_path / "conf" / "hparams_search").mkdir(parents=True)
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "conf" / "train.yaml").write_text(CONFIG.format(sweep=sweep))
    (tmp_path / "conf" / "hparams_search" / "pareto.yaml").write_text(textwrap.dedent(SEARCH))
    args = [sys.executable, "app.py", "hparams_search=pareto", "seed=3"]
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Pareto front: " in result.stdout + result.stderr
    data = json.loads((sweep / "pareto.json").read_text())
    trials = read_trials(sweep)
    sizes = [t.search["bytes"] for t in trials]
    assert len(trials) == 4 and data["front"] == [t.name for t in sorted(trials, key=lambda t: t.search["bytes"])]
    within = [s for s in sizes if s <= 5000]
    assert (data["best"] or {}).get("bytes") == (max(within) if within else None)
    # What Hydra records of a trial: the sweeper's choice and the command line, hparams_search included.
    assert sorted(trials[0].overrides) == sorted([f"size={sizes[0]}", "hparams_search=pareto", "seed=3"])
    command = pareto.rerun_command(sweep, trials[0], [sys.executable, "app.py"])
    assert sorted(command[2:5]) == sorted([f"size={sizes[0]}", "hparams_search=pareto", "seed=3"])
    assert command[5:7] == ["hydra.mode=RUN", "report.split=test"]
    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]  # the search's config composes as one run
    assert json.loads((sweep / "best" / "report.json").read_text())["search"]["bytes"] == sizes[0]
    assert len(read_trials(sweep)) == 4  # no new trial
