"""Interrupted runs continue where they stopped; credentials never reach a saved or logged config."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.conftest import cli_env, cli_job, run_cli

from distill.data.batches import TensorBatches
from distill.errors import DistillError
from distill.resume import find_resume_dir, stage_checkpoint
from distill.secrets import REDACTED, command_line_has_secret, redact

SECRET = "s3cr3t-" + "x" * 40


def runs(tmp: Path) -> list[Path]:
    return sorted((tmp / "logs" / "train" / "runs").iterdir())


def report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def logged_epochs(run: Path, key: str) -> list[int]:
    with open(run / "csv" / "metrics.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f) if r.get(key)]


# -- a run killed with SIGKILL, continued with ckpt_path=last -------------------------------------------


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("resume")
    # The killer callback is on every command (the same overrides); DISTILL_TEST_KILL_EPOCH arms it.
    killer = ["+callbacks.killer._target_=tests.helpers.KillAfterEpoch", "+callbacks.killer.stage=student"]
    job = cli_job(tmp, "student.fit.epochs=8", *killer)
    full = run_cli(job, tmp)
    assert full.returncode == 0, full.stderr[-2000:]
    killed = run_cli(job, tmp, env=cli_env(DISTILL_TEST_KILL_EPOCH="3"))
    assert killed.returncode == -9  # SIGKILL: no report, no clean-up
    resumed = run_cli([*job, "ckpt_path=last"], tmp)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return tmp


@pytest.mark.slow
def test_a_killed_run_continues_from_its_last_epoch_and_matches_an_uninterrupted_one(interrupted: Path) -> None:
    full, killed, resumed = runs(interrupted)
    assert not (killed / "report.json").exists()
    assert (killed / "checkpoints" / "student" / "last.ckpt").is_file()
    assert (
        f"Resuming stage 'student' from {killed}/checkpoints/student/last.ckpt" in (resumed / "train.log").read_text()
    )
    # Epochs 0-3 were done before the kill; the continued run trains 4-7 only.
    assert logged_epochs(killed, "student/val/acc") == [0, 1, 2, 3]
    assert logged_epochs(resumed, "student/val/acc") == [4, 5, 6, 7]
    a, b = report(full), report(resumed)
    student = {r["model"]: r["accuracy"] for r in a["models"]}, {r["model"]: r["accuracy"] for r in b["models"]}
    assert student[0]["student"] == pytest.approx(student[1]["student"], abs=1e-6)  # the same batches, the same result
    assert a["student_val_accuracy"] == pytest.approx(b["student_val_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_resuming_with_another_student_architecture_is_refused(interrupted: Path) -> None:
    killed = runs(interrupted)[1]
    result = run_cli(
        [*cli_job(interrupted, "student=mlp", "student.baseline.epochs=1"), f"ckpt_path={killed}"], interrupted
    )
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot resume from {killed}/checkpoints/student/last.ckpt")
    assert "different architecture" in line and "features.1.weight" in line


def test_find_resume_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    parent = tmp_path / "runs"
    old, done, other_job, me = (parent / n for n in ("t1_111", "t2_222", "t3_333", "t4_111"))
    for folder in (old, done, other_job):
        (folder / "checkpoints" / "student").mkdir(parents=True)
        (folder / "checkpoints" / "student" / "last.ckpt").write_bytes(b"x")
    (done / "report.json").write_text("{}")
    me.mkdir()
    assert find_resume_dir(None, me) is None
    assert find_resume_dir("last", me) in (old, other_job)  # the newest interrupted one
    assert find_resume_dir(str(old), me) == old
    assert find_resume_dir(str(old / "checkpoints" / "student" / "last.ckpt"), me) == old
    with pytest.raises(DistillError, match="no run folder with checkpoints"):
        find_resume_dir(str(tmp_path / "nowhere"), me)
    with pytest.raises(DistillError, match="no interrupted run"):
        find_resume_dir("last", tmp_path / "empty" / "me")
    # A requeued SLURM job continues its own earlier folder (same job id), by itself.
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "111")
    assert find_resume_dir(None, me) == old
    monkeypatch.setenv("SLURM_JOB_ID", "999")
    assert find_resume_dir(None, me) is None
    # ... or its own folder, when the launcher kept it (submitit sweeps).
    (me / "checkpoints" / "baseline").mkdir(parents=True)
    (me / "checkpoints" / "baseline" / "hpc_ckpt_1.ckpt").write_bytes(b"x")
    assert find_resume_dir(None, me) == me
    assert stage_checkpoint(me, "baseline").name == "hpc_ckpt_1.ckpt"
    assert stage_checkpoint(me, "student") is None


def test_shuffling_depends_on_the_epoch_number_only() -> None:
    x, y = torch.arange(40.0).unsqueeze(1), torch.zeros(40, dtype=torch.long)
    a, b = TensorBatches(x, y, 8, shuffle=True, seed=3), TensorBatches(x, y, 8, shuffle=True, seed=3)
    for _ in range(3):
        list(a)  # three epochs run in this process
    b.set_epoch(3)  # a resumed process jumps straight to epoch 3
    assert all(torch.equal(p["index"], q["index"]) for p, q in zip(a, b, strict=True))
    assert b.epoch == 4  # iterating moves on by itself outside Lightning
    c = TensorBatches(x, y, 8, shuffle=True, seed=3)
    c.set_epoch(3)
    first_of_epoch_3 = next(iter(c))["index"]
    c.set_epoch(4)
    assert not torch.equal(next(iter(c))["index"], first_of_epoch_3)


# -- credentials ------------------------------------------------------------------------------------


def test_redact_by_key_and_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", SECRET)
    config = {
        "wandb": {"api_key": "abc", "project": "p", "token": None},
        "paths": ["a", f"https://u:{SECRET}@host"],
        "lr": 0.1,
    }
    assert redact(config) == {
        "wandb": {"api_key": REDACTED, "project": "p", "token": None},
        "paths": ["a", REDACTED],
        "lr": 0.1,
    }
    assert command_line_has_secret(["lr=0.1", "+logger.wandb.api_key=abc"])
    assert command_line_has_secret([f"data.url=https://{SECRET}@x"])
    assert not command_line_has_secret(["lr=0.1", "student=mlp"])


@pytest.mark.slow
def test_no_credential_reaches_the_run_folder(tmp_path: Path) -> None:
    env = cli_env(WANDB_API_KEY=SECRET, WANDB_MODE="offline", HF_TOKEN="hf_" + "y" * 30)
    hook = ["+callbacks.upload._target_=tests.helpers.NeedsCredential", f"+callbacks.upload.token={SECRET}"]
    args = cli_job(tmp_path, "logger=many", *hook, "+callbacks.upload.url=x${oc.env:HF_TOKEN}")
    result = run_cli(args, tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = runs(tmp_path)
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files) and (run / ".hydra" / "config.yaml").is_file()
    for path in files:
        data = path.read_bytes()
        assert SECRET.encode() not in data, path
        assert b"hf_" + b"y" * 30 not in data, path
    assert f"token: {REDACTED}" in (run / ".hydra" / "config.yaml").read_text()
    assert REDACTED in (run / "csv" / "hparams.yaml").read_text()


# -- run folders --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path: Path) -> None:
    # Both fail fast (bad temperature) after Hydra made their folders.
    args = [*cli_job(tmp_path), "distill.kd.temperature=-1"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "distill.train", *args], cwd=tmp_path, env=cli_env(), stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    pids = {str(p.pid) for p in procs}
    for p in procs:
        p.communicate(timeout=120)
        assert p.returncode == 2
    folders = runs(tmp_path)
    assert len(folders) == 2 and {f.name.rsplit("_", 1)[1] for f in folders} == pids


def test_the_job_id_names_slurm_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    from distill.cli import job_id

    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    assert job_id().isdigit()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert job_id() == "4242"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert job_id() == "4240_2"


def test_a_slurm_job_uses_as_many_threads_as_cpus_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from distill.runtime import fit_threads_to_allocation

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # whatever this process runs with (fast tests: one thread, tests/conftest.py)
        monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
        assert fit_threads_to_allocation() == 2
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
        assert fit_threads_to_allocation() == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
