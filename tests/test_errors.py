"""Bad input: a clear one-line error, a non-zero exit, and nothing half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.conftest import run_cli, tiny_job

from distill.cli import check_group_choices


def fails_cleanly(tmp_path: Path, *overrides: str, expect: str) -> str:
    result = run_cli(tiny_job(tmp_path, *overrides), cwd=tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr[-3000:]
    assert expect in lines[-1], lines[-1]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "report.json").exists()
    assert not list(tmp_path.glob("logs/cache/*.pt"))  # nothing trained, nothing cached
    return lines[-1]


@pytest.mark.slow
def test_unknown_group_option_lists_the_valid_ones(tmp_path: Path) -> None:
    line = fails_cleanly(tmp_path, "student=nope", expect="unknown student option 'nope'")
    assert "mlp, mlp_small" in line


def test_unknown_option_in_a_multi_select_or_sweep() -> None:
    assert "unknown teacher option 'resnet'" in check_group_choices(["teacher=[cnn,resnet]"])
    assert "unknown distill option 'mixup'" in check_group_choices(["-m", "distill=[kd],[mixup]"])
    assert check_group_choices(["teacher=[cnn,cnn_small]", "student.net.hidden=[1,2]", "hydra/launcher=basic"]) is None


@pytest.mark.slow
def test_missing_checkpoint(tmp_path: Path) -> None:
    fails_cleanly(
        tmp_path,
        "teacher.mlp_large.ckpt_path=/no/such/teacher.ckpt",
        expect="checkpoint not found: /no/such/teacher.ckpt",
    )


@pytest.mark.slow
def test_unreadable_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"this is not a checkpoint")
    fails_cleanly(tmp_path, f"teacher.mlp_large.ckpt_path={bad}", expect=f"cannot read checkpoint {bad}")


@pytest.mark.slow
def test_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    import torch

    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": torch.nn.Linear(3, 2).state_dict()}, other)
    fails_cleanly(tmp_path, f"teacher.mlp_large.ckpt_path={other}", expect="does not fit the configured network")


@pytest.mark.slow
def test_feature_path_that_does_not_exist(tmp_path: Path) -> None:
    line = fails_cleanly(
        tmp_path,
        "distill=[hard,kd,fitnet]",
        "distill.fitnet.student_layer=features.7",
        "distill.fitnet.teacher_layer=features.2",
        expect="student has no module 'features.7'",
    )
    assert "valid module paths: features, features.0, features.1" in line


@pytest.mark.slow
def test_teacher_and_student_disagree_on_classes(tmp_path: Path) -> None:
    fails_cleanly(tmp_path, "teacher.mlp_large.net.num_classes=5", expect="teacher 'mlp_large' predicts 5")


@pytest.mark.slow
@pytest.mark.parametrize("temperature", ["0", "-2.5"])
def test_non_positive_temperature(tmp_path: Path, temperature: str) -> None:
    fails_cleanly(tmp_path, f"distill.kd.temperature={temperature}", expect="KD temperature must be a positive number")


@pytest.mark.slow
def test_empty_data_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.touch()
    fails_cleanly(tmp_path, "data=file", f"data.path={empty}", expect=f"data file is empty: {empty}")


@pytest.mark.slow
def test_malformed_csv(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,0\n3,oops,1\n")
    fails_cleanly(tmp_path, "data=file", f"data.path={bad}", expect="malformed CSV")


@pytest.mark.slow
def test_npz_without_the_arrays(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, features=np.zeros((20, 3)))
    fails_cleanly(tmp_path, "data=file", f"data.path={bad}", expect="must hold arrays 'x' and 'y'")


@pytest.mark.slow
def test_a_good_user_file_runs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + 2 * (x[:, 2] > 0)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    overrides = tiny_job(tmp_path, "data=file", f"data.path={tmp_path / 'mine.npz'}", "teacher.mlp_large.fit.epochs=3")
    result = run_cli(overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "report.json").exists()


@pytest.mark.slow
def test_teachers_with_different_class_counts(tmp_path: Path) -> None:
    fails_cleanly(
        tmp_path,
        "teacher=[mlp_large,cnn_small]",
        "teacher.cnn_small.net._target_=distill.nets.MLP",
        "~teacher.cnn_small.net.channels",
        "~teacher.cnn_small.net.kernel_size",
        "teacher.cnn_small.net.num_classes=7",
        expect="teacher 'cnn_small' predicts 7",
    )


def test_crd_without_sample_indices_is_refused() -> None:
    from tests.builders import crd_view

    from distill.errors import DistillError
    from distill.losses import CRDLoss

    with pytest.raises(DistillError, match="CRD needs sample indices from the data module"):
        CRDLoss("s", "t", embed_dim=8, num_negatives=5).build(crd_view(num_samples=None))
