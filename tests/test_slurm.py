"""Sweeps through the SLURM launcher on a real one-node cluster (slurm-wlm + munge on localhost).

The cluster comes from the session fixture `slurm_cluster` (tests/conftest.py): one the caller
set SLURM_CONF for (.ci/run) is used and left running; otherwise the tests start their own with
scripts/slurm_cluster.sh and stop it at the end of the session. Without the packages the tests
are skipped, unless DISTILL_REQUIRE_SLURM=1 (CI), which makes that a failure.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import cli_env, cli_job, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]


def queue_drains(seconds: float = 60) -> bool:
    """Whether the queue empties (finished jobs linger a moment in COMPLETING) within `seconds`."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h"], capture_output=True, text=True)
        if out.returncode == 0 and not out.stdout.strip():
            return True
        time.sleep(1)
    return False


@pytest.fixture(scope="module")
def slurm_sweep(slurm_cluster, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, float]:
    tmp = tmp_path_factory.mktemp("slurm_sweep")
    args = [
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.timeout_min=15",
        *cli_job(tmp, "student.fit.epochs=2,3", "distill.kd.temperature=2,4"),
    ]
    start = time.perf_counter()
    result = run_cli(args, tmp, timeout=900)
    return tmp, result, time.perf_counter() - start


def test_a_four_job_sweep_runs_as_slurm_jobs_and_reports_every_job(slurm_sweep) -> None:
    tmp, result, _ = slurm_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp / "logs" / "train" / "multiruns").iterdir()
    jobs = sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0]))
    assert len(jobs) == 4
    for job in jobs:
        # <job number>_<SLURM array job id>_<array task id>: the job id is SLURM's
        assert re.fullmatch(r"\d_\d+_\d", job.name), job.name
        report = json.loads((job / "report.json").read_text())
        assert {m["model"] for m in report["models"]} == {"teacher:mlp_large", "baseline", "student"}
    assert (sweep / ".submitit").is_dir()  # submitit's sbatch scripts and job logs
    assert len({j.name.split("_")[1] for j in jobs}) == 1  # one job array
    summary = (sweep / "summary.md").read_text()
    assert "4 jobs" in summary and summary.count("| ok |") == 4
    assert queue_drains()


def test_the_shared_teacher_is_trained_once_for_the_sweep(slurm_sweep) -> None:
    tmp, result, _ = slurm_sweep
    assert result.returncode == 0
    (sweep,) = (tmp / "logs" / "train" / "multiruns").iterdir()
    logs = [p.read_text() for p in sweep.glob("*/train.log")]
    assert len(logs) == 4
    assert sum("Training teacher-mlp_large" in log for log in logs) == 1
    assert sum("Reusing cached teacher-mlp_large" in log for log in logs) == 3
    assert len(list((tmp / "logs" / "cache").glob("teacher-mlp_large-*.pt"))) == 1


def test_slurm_rejects_an_unknown_partition_in_its_own_words(tmp_path: Path) -> None:
    args = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=no_such_partition", *cli_job(tmp_path, "seed=1,2")]
    result = run_cli(args, tmp_path, timeout=300)
    assert result.returncode != 0
    assert "invalid partition specified: no_such_partition" in result.stderr


def test_a_sweep_over_an_unknown_option_submits_nothing(tmp_path: Path) -> None:
    result = run_cli(["-m", "hydra/launcher=slurm", *cli_job(tmp_path, "student=mlp_small,no_such_student")], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown student option 'no_such_student'")
    assert not (tmp_path / "logs").exists()


def test_sigusr1_saves_a_checkpoint_requeues_and_the_job_continues(tmp_path: Path) -> None:
    """SIGUSR1 (what `--signal=USR1@<s>` sends before the time limit): Lightning writes
    hpc_ckpt_1.ckpt and requeues the job; the requeued job continues the interrupted stage from
    its newest checkpoint."""
    job = cli_job(tmp_path, "student.fit.epochs=400", "student.fit.batch_size=64", "report.latency_repeats=1")
    command = " ".join([sys.executable, "-m", "distill.train", *job])
    submit = subprocess.run(
        ["sbatch", "--parsable", "--requeue", "-c", "1", "--mem=2G", "-o", str(tmp_path / "slurm-%j.out"),
         f"--chdir={tmp_path}", "--wrap", f"srun {command}"],
        capture_output=True, text=True, env=cli_env(), check=True,
    )  # fmt: skip
    job_id = submit.stdout.strip().split(";")[0]
    runs = tmp_path / "logs" / "train" / "runs"
    deadline = time.time() + 300
    while not list(runs.glob("*/checkpoints/student/last.ckpt")):  # the student stage is under way
        assert time.time() < deadline, (tmp_path / f"slurm-{job_id}.out").read_text()[-3000:]
        time.sleep(1)
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
    while not list(runs.glob("*/report.json")):
        assert time.time() < deadline + 300, (tmp_path / f"slurm-{job_id}.out").read_text()[-3000:]
        time.sleep(2)
    folders = sorted(runs.iterdir())
    assert len(folders) == 2 and all(f.name.endswith(f"_{job_id}") for f in folders)
    first, second = folders
    hpc = first / "checkpoints" / "student" / "hpc_ckpt_1.ckpt"
    assert hpc.is_file() and not (first / "report.json").exists()
    log = (second / "train.log").read_text()
    assert f"Continuing the interrupted run in {first}" in log
    # It continues from the newer of the SIGUSR1 checkpoint and the last epoch's (an epoch may
    # have ended between the signal and the requeue).
    newest = max((hpc, first / "checkpoints" / "student" / "last.ckpt"), key=lambda f: f.stat().st_mtime)
    assert f"Resuming stage 'student' from {newest}" in log
    restarts = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    assert "Restarts=1" in restarts


def test_a_budget_search_runs_its_trials_and_its_best_rerun_on_slurm(tmp_path: Path) -> None:
    """hparams_search=budget_pareto through the SLURM launcher: the trials run as SLURM jobs, the front is
    written where the sweep ends, and the best model within the budget is rerun once (srun) on the test split."""
    args = ["hparams_search=budget_pareto", "hydra/launcher=slurm", "hydra.launcher.timeout_min=15",
            "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra.sweeper.sampler.population_size=2",
            *[a for a in cli_job(tmp_path) if not a.startswith(("student=", "student.baseline."))],
            "student.fit.epochs=2", "budget.max_bytes=300000", "budget.max_accuracy_drop=0.6"]  # fmt: skip
    result = run_cli(args, tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = [p for p in sweep.iterdir() if re.fullmatch(r"\d_\d+_\d", p.name)]
    assert len(jobs) == 2  # <job number>_<SLURM array job id>_<array task id>
    front = json.loads((sweep / "pareto.json").read_text())
    assert len(front["trials"]) == 2 and front["best"] is not None
    assert front["test"]["same_model"] is True and front["test"]["command"].startswith("srun --nodes=1 --ntasks=1")
    assert json.loads((sweep / "best" / "report.json").read_text())["models"]
    assert queue_drains()
