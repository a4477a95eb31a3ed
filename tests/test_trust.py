"""Numbers you can trust: the cache keys cover the data and the whole recipe, a training cut short is
never cached, a failed write never leaves half a checkpoint, and a run continues only a run of its own
command."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tests.conftest import cli_env, cli_job, compose_config, run_cli, tiny_job

from distill.assembly import TRAINER_KEYS_NOT_IN_CACHE_KEY, fit_payload
from distill.errors import DistillError
from distill.model_cache import cache_key
from distill.resume import CONTINUED_MARK, find_resume_dir, mark_continued


def sources(run: Path) -> dict[str, str]:
    report = json.loads((run / "report.json").read_text())
    return {m["model"]: m["source"] for m in report["models"]}


def write_table(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    w = rng.normal(size=(6, 3))
    np.savez(path, x=x, y=(x @ w).argmax(1))


# -- what the cache key covers ------------------------------------------------------------------------


def test_every_trainer_setting_is_in_the_key_but_the_named_few(tmp_path: Path) -> None:
    cfg = compose_config(tiny_job(tmp_path))
    base = cache_key(fit_payload(cfg, "teacher", cfg.student.net, cfg.student.fit, data_fingerprint="abc"))

    def key(*overrides: str, fingerprint: str = "abc") -> str:
        overrides = tuple(o for part in overrides for o in part.split(" "))
        c = compose_config(tiny_job(tmp_path, *overrides))
        return cache_key(fit_payload(c, "teacher", c.student.net, c.student.fit, data_fingerprint=fingerprint))

    # Settings that change the trained weights: each gives another key.
    for override in (
        "+trainer.max_time=00:00:00:04", "+trainer.max_steps=10", "+trainer.limit_train_batches=0.5",
        "trainer.precision=bf16-mixed", "+trainer.accumulate_grad_batches=2", "+trainer.gradient_clip_val=1.0",
        "+trainer.sync_batchnorm=true", "trainer.deterministic=true", "+trainer.benchmark=true",
        "trainer.check_val_every_n_epoch=2", "seed=7", "student.fit.batch_size=64",
        "+callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAveraging", "data.val_fraction=0.3",
    ):  # fmt: skip
        assert key(override) != base, override
    assert key(fingerprint="other content") != base
    # Settings that cannot change them: the same key.
    for override in (
        "trainer.log_every_n_steps=5", "trainer.enable_model_summary=true", "+trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=2", "callbacks.progress_bar.refresh_rate=7", "data.eval_batch_size=17",
        "logger=tensorboard", "+callbacks.lr._target_=lightning.pytorch.callbacks.LearningRateMonitor",
        "+callbacks.killer._target_=tests.helpers.KillAfterEpoch +callbacks.killer.stage=student",
    ):  # fmt: skip
        assert key(override) == base, override
    # No callbacks at all (an empty node, the benchmarks' setting): the same key too.
    bare = compose_config([o for o in tiny_job(tmp_path) if not o.startswith("callbacks.")] + ["callbacks=none"])
    assert cache_key(fit_payload(bare, "teacher", bare.student.net, bare.student.fit, data_fingerprint="abc")) == base
    assert {"devices", "accelerator", "strategy", "logger", "callbacks", "enable_progress_bar"} <= set(
        TRAINER_KEYS_NOT_IN_CACHE_KEY
    )


def test_the_content_replaces_the_path_in_the_key(tmp_path: Path) -> None:
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    write_table(a, 0)
    shutil.copy(a, b)

    def key(path: Path) -> str:
        from distill.tasks import ClassificationTask

        cfg = compose_config(tiny_job(tmp_path, "data=file", f"data.path={path}"))
        dm = ClassificationTask().build_data(cfg)
        return cache_key(fit_payload(cfg, "teacher", cfg.student.net, cfg.student.fit, dm=dm))

    first = key(a)
    assert key(b) == first  # the same content elsewhere: the same models
    write_table(a, 1)
    assert key(a) != first  # other content at the same path: other models


# -- end to end: the data change, the run is cut short -----------------------------------------------


@pytest.mark.slow
def test_data_changed_under_the_same_path_retrains_the_teacher(tmp_path: Path) -> None:
    table = tmp_path / "mine.npz"
    write_table(table, 0)
    job = cli_job(tmp_path, "data=file", f"data.path={table}")
    runs = tmp_path / "logs" / "train" / "runs"
    for _ in range(2):
        result = run_cli(job, tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    first, second = sorted(runs.iterdir())
    assert sources(first)["teacher:mlp_large"].startswith("trained, cached as teacher-mlp_large-")
    assert sources(second)["teacher:mlp_large"] == "cache " + sources(first)["teacher:mlp_large"].split()[-1]
    write_table(table, 1)  # other data, same file name
    result = run_cli(job, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    third = sorted(runs.iterdir())[-1]
    assert sources(third)["teacher:mlp_large"].startswith("trained, cached as teacher-mlp_large-")
    assert sources(third)["baseline"].startswith("trained, cached as baseline-")
    assert len(list((tmp_path / "logs" / "cache").glob("teacher-mlp_large-*.pt"))) == 2


@pytest.mark.slow
def test_a_teacher_cut_short_by_max_time_is_not_cached_as_the_full_recipe(tmp_path: Path) -> None:
    job = cli_job(tmp_path, "teacher.mlp_large.fit.epochs=150")
    cut = run_cli([*job, "+trainer.max_time=00:00:00:01"], tmp_path)
    assert cut.returncode == 0, cut.stderr[-2000:]
    run = sorted((tmp_path / "logs" / "train" / "runs").iterdir())[-1]
    source = sources(run)["teacher:mlp_large"]
    assert source.startswith("trained in this run, not cached: stopped after ") and source.endswith(" of 150 epochs")
    assert not list((tmp_path / "logs" / "cache").glob("teacher-*.pt"))
    full = run_cli(job, tmp_path)  # the same command without the time limit trains the whole recipe
    assert full.returncode == 0, full.stderr[-2000:]
    run = sorted((tmp_path / "logs" / "train" / "runs").iterdir())[-1]
    assert sources(run)["teacher:mlp_large"].startswith("trained, cached as teacher-mlp_large-")
    assert (
        "max_time"
        not in json.loads(next((tmp_path / "logs" / "cache").glob("teacher-*.pt")).with_suffix(".json").read_text())[
            "trainer"
        ]
    )


# -- writes that fail ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_full_disk_leaves_the_previous_checkpoint_and_the_run_continues(tmp_path: Path) -> None:
    failing = ["+callbacks.disk._target_=tests.helpers.FailWritesAfterEpoch", "+callbacks.disk.stage=student"]
    job = cli_job(tmp_path, *failing)
    result = run_cli(job, tmp_path, env=cli_env(DISTILL_TEST_FAIL_WRITES_EPOCH="4"))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr[-3000:]
    run = sorted((tmp_path / "logs" / "train" / "runs").iterdir())[-1]
    last = run / "checkpoints" / "student" / "last.ckpt"
    assert errors[0] == f"error: cannot write {last}: File too large"
    assert torch.load(last, weights_only=True)["epoch"] == 3  # the epoch before the failed write, whole
    assert not list(run.rglob("*.tmp"))
    resumed = run_cli([*job, "ckpt_path=last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    continued = sorted((tmp_path / "logs" / "train" / "runs").iterdir())[-1]
    assert f"Resuming stage 'student' from {last}" in (continued / "train.log").read_text()
    assert (run / CONTINUED_MARK).read_text().strip() == str(continued)


def _can_mount_read_only(folder: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind -o ro {folder} {folder} && ! touch {folder}/x"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.slow
def test_a_read_only_log_folder_is_one_line(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    if not _can_mount_read_only(logs):
        pytest.skip("no private mount namespace here (unshare -m) to make a read-only folder")
    import shlex
    import sys

    job = " ".join(shlex.quote(a) for a in cli_job(tmp_path))
    script = f"mount --bind -o ro {logs} {logs} && exec {sys.executable} -m distill.train {job}"
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=cli_env(), timeout=300
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith(f"error: cannot write {logs}/") and errors[0].endswith("Read-only file system")


# -- which run ckpt_path=last continues -----------------------------------------------------------------


def _run_folder(parent: Path, name: str, overrides: list[str], mtime: float) -> Path:
    import os

    folder = parent / name
    (folder / "checkpoints" / "student").mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    ckpt = folder / "checkpoints" / "student" / "last.ckpt"
    ckpt.write_bytes(b"x")
    os.utime(ckpt, (mtime, mtime))
    return folder


def test_ckpt_path_last_continues_only_a_run_of_the_same_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    parent = tmp_path / "runs"
    ours = ["data=digits", "student.fit.epochs=8"]
    older = _run_folder(parent, "t1_1", [*ours, "logger=wandb"], 1000)  # the logger cannot change the result
    newer = _run_folder(parent, "t2_2", ["data=digits", "student.fit.epochs=9"], 2000)
    me = parent / "t3_3"
    me.mkdir()
    assert find_resume_dir("last", me, [*ours, "ckpt_path=last", "hydra.job.chdir=false"]) == older
    with pytest.raises(DistillError) as err:
        find_resume_dir("last", me, ["data=digits", "student.fit.epochs=10", "ckpt_path=last"])
    message = str(err.value)
    assert f"the newest interrupted run, {newer}, was started with other overrides" in message
    assert "only there: student.fit.epochs=9; only here: student.fit.epochs=10" in message
    assert f"ckpt_path={newer}" in message
    # Named explicitly, a run of other overrides is continued (with a warning).
    assert find_resume_dir(str(newer), me, ours) == newer
    # A run continued to its end by another is no longer offered.
    mark_continued(older, me)
    assert (older / CONTINUED_MARK).read_text().strip() == str(me)
    with pytest.raises(DistillError, match="was started with other overrides"):
        find_resume_dir("last", me, ours)
    mark_continued(newer, me)
    with pytest.raises(DistillError, match="no interrupted run"):
        find_resume_dir("last", me, ours)


@pytest.mark.slow
def test_every_file_a_run_writes_is_readable_by_the_team(tmp_path: Path) -> None:
    """Written with the umask's permissions (0644 under umask 022), not tempfile's 0600: a shared cache works."""
    import os

    old = os.umask(0o022)
    try:
        job = cli_job(tmp_path, "compress=[onnx,int8]")
        result = run_cli(job, tmp_path)
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr[-2000:]
    files = [p for p in (tmp_path / "logs").rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"report.json", "report.md", "report.png", "student.ckpt", "last.ckpt", "model.onnx"} <= names, names
    assert any(p.parent.name == "cache" and p.suffix == ".pt" for p in files)
    private = [str(p.relative_to(tmp_path)) for p in files if p.stat().st_mode & 0o044 != 0o044]
    assert not private, private
