"""The battery of bad inputs: each ends the run before anything trains, with exit status 2, exactly one
`error:` line on stderr, no traceback, and nothing added to the model cache.

The entry points run in this process (as `distill-train ARGS` would, through their `main()`). Each case
costs about 0.4 s, three quarters of it Hydra composing the config twice (once to read the run mode);
the cases refused before any data is read are in the fast part of the suite, those refused once the
data are read (READS_DATA) in the slow part.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import lightning  # noqa: F401 - imported before output is captured: its log handler keeps the real stderr
import numpy as np
import pytest
import torch
from tests.conftest import tiny_job

from distill.nets import MLP

DIGITS = ["data=digits", "teacher=[mlp_large]", "student=mlp_small"]


def run_main(main: Callable[[], None], args: list[str], capfd: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run an entry point's `main()` with `args` in this process; returns (exit status, stdout, stderr)."""
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    import logging

    argv, env = sys.argv, dict(os.environ)
    factory, hook = logging.getLogRecordFactory(), sys.excepthook  # a process-wide state the run installs
    sys.argv = ["distill", *args]
    code, crash = 0, ""
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 - any escape is what the battery reports
        code, crash = 1, traceback.format_exc()
    finally:
        sys.argv, sys.excepthook = argv, hook
        logging.setLogRecordFactory(factory)
        os.environ.clear()
        os.environ.update(env)
        GlobalHydra.instance().clear()
    out, err = capfd.readouterr()
    return code, out, err + crash


def assert_refused(code: int, out: str, err: str, expect: str, cache: Path) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, f"exit {code}\n{err[-3000:]}"
    assert len(errors) == 1, err[-3000:]
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    assert expect in errors[0], errors[0]
    assert not list(cache.glob("*.pt")), sorted(p.name for p in cache.iterdir())  # nothing trained, nothing cached
    return errors[0]


# -- files the cases point at -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad-files")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = np.arange(60) % 3
    header = "a,b,c,d,label\n"
    rows = "".join(",".join(f"{v:.3f}" for v in xi) + f",{yi}\n" for xi, yi in zip(x, y, strict=True))
    (d / "good.csv").write_text(header + rows)
    (d / "empty.csv").touch()
    (d / "header_only.csv").write_text(header)
    lines = (header + rows).splitlines()
    lines[5] = "0.1,0.2,,0.4,1"
    (d / "missing.csv").write_text("\n".join(lines) + "\n")
    lines[5] = "0.1,0.2,oops,0.4,1"
    (d / "word.csv").write_text("\n".join(lines) + "\n")
    lines[5] = "0.1,0.2,0.4,1"
    (d / "short_row.csv").write_text("\n".join(lines) + "\n")
    (d / "no_label.csv").write_text("a,b,c,d,e\n" + rows)
    (d / "text.npz").write_text("x,y\n1,2\n")
    (d / "notes.txt").write_text("hello\n")
    np.savez(d / "no_arrays.npz", features=x)
    np.savez(d / "flat.npz", x=x[:, 0], y=y)
    np.savez(d / "one_class.npz", x=x, y=np.zeros(60, dtype=np.int64))
    np.savez(d / "huge_label.npz", x=x, y=np.where(np.arange(60) == 7, 10**9, y))
    np.savez(d / "gap_labels.npz", x=x, y=y + 1)  # classes 1..3: class 0 never occurs
    np.savez(d / "nan.npz", x=np.where(np.arange(60)[:, None] == 3, np.nan, x), y=y)
    np.savez(d / "negative.npz", x=x, y=y - 1)
    np.savez(d / "ragged.npz", x=x, y=y[:50])
    np.savez(
        d / "test_only_class.npz",
        x_train=x[:40], y_train=y[:40] % 2, x_test=x[40:], y_test=np.r_[y[40:50] % 2, np.full(10, 2)],
    )  # fmt: skip
    torch.manual_seed(0)
    good = d / "teacher.ckpt"
    torch.save({"state_dict": MLP([64], 10, hidden=[512, 512]).state_dict()}, good)
    data = good.read_bytes()
    (d / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (d / "garbage.ckpt").write_bytes(b"this is not a checkpoint")
    (d / "empty.ckpt").touch()
    torch.save({"state_dict": torch.nn.Linear(3, 2).state_dict()}, d / "other_arch.ckpt")
    (d / "code.ckpt").write_bytes(pickle.dumps({"state_dict": os.system}))  # unpickling would run code
    (d / "folder").mkdir()
    onnx_net = MLP([40], 10, hidden=[8]).eval()
    torch.onnx.export(onnx_net, (torch.zeros(1, 40),), str(d / "mnist1d.onnx"), dynamo=False,
                      input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    return d


# -- the cases: (entry point, overrides, text the error line must contain) ----------------------------

F = "{files}"  # replaced by the fixture folder
TRAIN_CASES: list[tuple[str, list[str], str]] = [
    # the config and its overrides
    ("unknown student option", ["student=nope"], "unknown student option 'nope'"),
    ("unknown teacher in a list", ["teacher=[mlp_large,resnet_nope]"], "unknown teacher option 'resnet_nope'"),
    ("unknown option in a sweep", ["-m", "student=mlp,nope"], "unknown student option 'nope'"),
    ("unknown hparams search", ["hparams_search=nope"], "unknown hparams_search option 'nope'"),
    ("misspelt loss key", ["distill.kd.temprature=2"], "closest valid keys: distill.kd.temperature"),
    ("misspelt recipe key", ["student.fit.epohcs=3"], "closest valid keys: student.fit.epochs"),
    ("misspelt top-level key", ["sed=3"], "closest valid keys: seed"),
    ("added key nothing reads", ["+unknown=1"], "unknown config key 'unknown' (+unknown=1): nothing reads it"),
    ("added recipe key nothing reads", ["+student.fit.lrr=3"], "unknown config key 'student.fit.lrr'"),
    ("added key already there", ["+trainer.accelerator=cpu"], "An item is already at 'trainer.accelerator'"),
    ("override that does not parse", ["student.fit.epochs=[1"], "cannot parse the override 'student.fit.epochs=[1'"),
    ("unknown Trainer key without +", ["trainer.strategy=ddp"], "add it with +trainer.strategy=ddp"),
    ("ddp_spawn", ["trainer.strategy=ddp_spawn"], "trainer.strategy=ddp_spawn starts fresh processes"),
    ("+ddp_spawn", ["+trainer.strategy=ddp_spawn"], "trainer.strategy=ddp_spawn starts fresh processes"),
    ("++ddp_fork", ["++trainer.strategy=ddp_fork"], "trainer.strategy=ddp_fork starts fresh processes"),
    ("max_epochs on the Trainer", ["+trainer.max_epochs=3"], "trainer.max_epochs is not used"),
    ("bad precision", ["trainer.precision=banana"], "cannot build trainer"),
    # recipes that cannot be meant
    ("epochs -1", ["student.fit.epochs=-1"], "student.fit.epochs must be an integer >= 1, got -1"),
    ("epochs 0", ["student.fit.epochs=0"], "student.fit.epochs must be an integer >= 1, got 0"),
    ("epochs 1.5", ["student.fit.epochs=1.5"], "student.fit.epochs must be an integer >= 1, got 1.5"),
    ("baseline epochs 0", ["student.baseline.epochs=0"], "student.baseline.epochs must be an integer >= 1, got 0"),
    ("teacher epochs -3", ["teacher.mlp_large.fit.epochs=-3"], "teacher.mlp_large.fit.epochs must be an integer"),
    ("batch size 0", ["student.fit.batch_size=0"], "student.fit.batch_size must be an integer >= 1, got 0"),
    ("batch size abc", ["student.fit.batch_size=abc"], "student.fit.batch_size must be an integer >= 1, got 'abc'"),
    (
        "negative lr",
        ["teacher.mlp_large.fit.optimizer.lr=-1"],
        "teacher.mlp_large.fit.optimizer.lr must be a positive number",
    ),
    ("zero lr", ["student.fit.optimizer.lr=0"], "student.fit.optimizer.lr must be a positive number, got 0"),
    ("negative weight decay", ["student.fit.optimizer.weight_decay=-0.1"], "weight_decay must be a number >= 0"),
    (
        "negative clipping",
        ["+student.fit.gradient_clip_val=-1"],
        "student.fit.gradient_clip_val must be a positive number",
    ),
    ("seed 1.5", ["seed=1.5"], "seed must be an integer >= 0, got 1.5"),
    ("seed abc", ["seed=abc"], "seed must be an integer >= 0, got 'abc'"),
    ("val fraction 1.5", ["data.val_fraction=1.5"], "data.val_fraction must be a number in [0, 1), got 1.5"),
    ("test fraction -0.1", ["data.test_fraction=-0.1"], "data.test_fraction must be a number in [0, 1), got -0.1"),
    ("fractions sum to 1", ["data.val_fraction=0.5", "data.test_fraction=0.5"], "must be below 1, got 0.5 + 0.5"),
    ("data batch size 0", ["data.batch_size=0"], "data.batch_size must be an integer >= 1, got 0"),
    ("one class declared", ["data.num_classes=1"], "data.num_classes must be an integer >= 2, got 1"),
    ("zero-width student", ["student.net.hidden=[0]"], "hidden must be layer widths >= 1, got [0]"),
    ("negative-width teacher", ["teacher.mlp_large.net.hidden=[-5,10]"], "hidden must be layer widths >= 1"),
    ("dropout 1", ["teacher.mlp_large.net.dropout=1.0"], "MLP dropout must be in [0, 1), got 1.0"),
    ("latency repeats 0", ["report.latency_repeats=0"], "report.latency_repeats must be an integer >= 1, got 0"),
    ("latency batch 0", ["report.latency_batch_sizes=[0]"], "report.latency_batch_sizes[0] must be an integer >= 1"),
    ("born-again generations -1", ["born_again.generations=-1"], "born_again.generations must be an integer >= 0"),
    ("temperature 0", ["distill.kd.temperature=0"], "KD temperature must be a positive number"),
    ("temperature -2.5", ["distill.kd.temperature=-2.5"], "KD temperature must be a positive number"),
    ("unknown network class", ["student.net._target_=no.such.Net"], "cannot build student"),
    ("unknown callback class", ["+callbacks.x._target_=no.such.Callback"], "cannot build callback no.such.Callback"),
    ("unknown logger class", ["logger.csv._target_=no.such.Logger"], "cannot build logger no.such.Logger"),
    # models and checkpoints
    ("missing teacher checkpoint", ["teacher.mlp_large.ckpt_path=/no/such/t.ckpt"], "checkpoint not found: /no/such"),
    ("garbage checkpoint", [f"teacher.mlp_large.ckpt_path={F}/garbage.ckpt"], "not a complete PyTorch checkpoint"),
    ("truncated checkpoint", [f"teacher.mlp_large.ckpt_path={F}/truncated.ckpt"], "not a complete PyTorch checkpoint"),
    ("empty checkpoint", [f"teacher.mlp_large.ckpt_path={F}/empty.ckpt"], "not a complete PyTorch checkpoint"),
    (
        "checkpoint that runs code",
        [f"teacher.mlp_large.ckpt_path={F}/code.ckpt"],
        "beyond tensors and plain containers",
    ),
    ("checkpoint is a folder", [f"teacher.mlp_large.ckpt_path={F}/folder"], "checkpoint not found"),
    (
        "checkpoint of another network",
        [f"teacher.mlp_large.ckpt_path={F}/other_arch.ckpt"],
        "does not fit the configured network",
    ),
    ("ckpt_path=last, nothing to continue", ["ckpt_path=last"], "ckpt_path=last: no interrupted run"),
    ("ckpt_path=a folder without checkpoints", [f"ckpt_path={F}/folder"], "no run folder with checkpoints"),
    (
        "feature path that does not exist",
        [
            "distill=[hard,kd,fitnet]",
            "distill.fitnet.student_layer=features.7",
            "distill.fitnet.teacher_layer=features.2",
        ],
        "student has no module 'features.7'",
    ),
    ("teacher predicts other classes", ["teacher.mlp_large.net.num_classes=5"], "teacher 'mlp_large' predicts 5"),
    # your own data
    ("data file not given", ["data=file"], "missing mandatory value data.path"),
    ("data file missing", ["data=file", "data.path=/no/such.csv"], "data file not found: /no/such.csv"),
    ("data file is a folder", ["data=file", f"data.path={F}/folder"], "data file not found"),
    ("unsupported data file", ["data=file", f"data.path={F}/notes.txt"], "unsupported data file type '.txt'"),
    ("empty csv", ["data=file", f"data.path={F}/empty.csv"], "data file is empty"),
    ("csv header only", ["data=file", f"data.path={F}/header_only.csv"], "no data rows"),
    ("csv missing value", ["data=file", f"data.path={F}/missing.csv"], "missing value"),
    ("csv word in a number column", ["data=file", f"data.path={F}/word.csv"], "column 'c'"),
    ("csv short row", ["data=file", f"data.path={F}/short_row.csv"], "line 6"),
    ("csv without the label column", ["data=file", f"data.path={F}/no_label.csv"], "no label column 'label'"),
    ("text file named .npz", ["data=file", f"data.path={F}/text.npz"], "not an .npz"),
    ("npz without x and y", ["data=file", f"data.path={F}/no_arrays.npz"], "must hold arrays 'x' and 'y'"),
    ("npz with 1-D x", ["data=file", f"data.path={F}/flat.npz"], "feature axis"),
    ("npz with one class", ["data=file", f"data.path={F}/one_class.npz"], "single class"),
    ("npz with a label of 10^9", ["data=file", f"data.path={F}/huge_label.npz"], "has no training sample"),
    ("npz with labels 1..3", ["data=file", f"data.path={F}/gap_labels.npz"], "class 0"),
    ("npz with NaN", ["data=file", f"data.path={F}/nan.npz"], "NaN or infinite"),
    ("npz with negative labels", ["data=file", f"data.path={F}/negative.npz"], ">= 0"),
    ("npz with fewer labels than rows", ["data=file", f"data.path={F}/ragged.npz"], "60 rows but 'y' has 50"),
    ("npz with a class only in test", ["data=file", f"data.path={F}/test_only_class.npz"], "class 2"),
]

EVAL_CASES: list[tuple[str, list[str], str]] = [
    ("eval without ckpt_path", [], "missing mandatory value ckpt_path"),
    ("eval of a missing file", ["ckpt_path=/no/such/student.ckpt"], "checkpoint not found: /no/such/student.ckpt"),
    ("eval of a truncated file", [f"ckpt_path={F}/truncated.ckpt"], "not a complete PyTorch checkpoint"),
    ("eval of a teacher checkpoint", [f"ckpt_path={F}/teacher.ckpt"], "is not a student file written by distill-train"),
    ("eval of ONNX without data", [f"ckpt_path={F}/mnist1d.onnx"], "name the dataset"),
    ("eval of ONNX on other shapes", [f"ckpt_path={F}/mnist1d.onnx", "data=digits"], "[40]"),
    ("eval of a missing ONNX file", ["ckpt_path=/no/such/model.onnx", "data=digits"], "ONNX artifact not found"),
    ("eval unknown data", [f"ckpt_path={F}/teacher.ckpt", "data=nope"], "unknown data option 'nope'"),
]

LM_CASES: list[tuple[str, list[str], str]] = [
    ("lm epochs 0", ["lm_student.fit.epochs=0"], "lm_student.fit.epochs must be an integer >= 1, got 0"),
    ("lm teacher lr -1", ["lm_teacher.fit.optimizer.lr=-1"], "lm_teacher.fit.optimizer.lr must be a positive number"),
    ("lm seq_len 1", ["lm_data.seq_len=1"], "lm_data.seq_len must be an integer >= 2, got 1"),
    ("lm on-policy share 1.5", ["on_policy_fraction=1.5"], "on_policy_fraction must be a number in [0, 1], got 1.5"),
    ("lm weight -1", ["lm_weight=-1"], "lm_weight must be a number >= 0, got -1"),
    (
        "lm train fraction 0",
        ["lm_student.fit.train_fraction=0"],
        "lm_student.fit.train_fraction must be a number in (0, 1]",
    ),
    ("lm prompt length 0", ["generation.prompt_len=0"], "generation.prompt_len must be an integer >= 1, got 0"),
    ("lm ddp_spawn", ["+trainer.strategy=ddp_spawn"], "starts fresh processes"),
    ("lm unknown loss", ["lm_distill=[nope]"], "unknown lm_distill option 'nope'"),
    ("lm added key", ["+lm_typo=1"], "unknown config key 'lm_typo'"),
    ("lm teacher top-k 0", ["teacher_top_k=0"], "teacher_top_k must be a whole number >= 1, or null"),
    ("lm teacher top-k 2.5", ["teacher_top_k=2.5"], "teacher_top_k must be a whole number >= 1, or null"),
    ("lm teacher tail", ["teacher_tail=flat"], "teacher_tail must be student or even, got 'flat'"),
    ("lm missing text file", ["lm_data=text", "lm_data.paths=[/no/such.txt]"], "not found"),
    (
        "lm missing teacher folder",
        ["lm_teacher=pretrained", "lm_teacher.model.pretrained=/no/such/model"],
        "/no/such/model",
    ),
]

if not torch.cuda.is_available():
    TRAIN_CASES.append(("trainer=gpu without a GPU", ["trainer=gpu"], "no CUDA GPU is visible"))
if not torch.backends.mps.is_available():
    TRAIN_CASES.append(("trainer=mps off Apple silicon", ["trainer=mps"], "MPS backend is not available"))


# The cases refused only once the data are read: bad data files, and what is checked against the data
# (networks and loss terms built for its shapes, checkpoints, run folders). Marked slow.
READS_DATA = {
    "bad precision", "zero-width student", "negative-width teacher", "dropout 1", "temperature 0",
    "temperature -2.5", "unknown network class", "unknown callback class", "unknown logger class",
    "missing teacher checkpoint", "garbage checkpoint", "truncated checkpoint", "empty checkpoint",
    "checkpoint that runs code", "checkpoint is a folder", "checkpoint of another network",
    "ckpt_path=last, nothing to continue", "ckpt_path=a folder without checkpoints",
    "feature path that does not exist", "teacher predicts other classes",
    *(case for case, args, _ in TRAIN_CASES if "data=file" in args),
    "eval of ONNX on other shapes", "lm missing text file",
}  # fmt: skip


def cases(battery: list[tuple[str, list[str], str]]) -> list:
    return [pytest.param(*c, id=c[0], marks=[pytest.mark.slow] * (c[0] in READS_DATA)) for c in battery]


def _args(args: list[str], files: Path) -> list[str]:
    return [a.replace(F, str(files)) for a in args]


@pytest.mark.parametrize(("case", "args", "expect"), cases(TRAIN_CASES))
def test_distill_train_refuses(
    case: str, args: list[str], expect: str, files: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    from distill.train import main

    job = [*tiny_job(tmp_path), *DIGITS]
    code, out, err = run_main(main, [*job, *_args(args, files)], capfd)
    assert_refused(code, out, err, expect.replace(F, str(files)), tmp_path / "logs" / "cache")


@pytest.mark.parametrize(("case", "args", "expect"), cases(EVAL_CASES))
def test_distill_eval_refuses(
    case: str, args: list[str], expect: str, files: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    from distill.eval import main

    job = [f"paths.root_dir={tmp_path}", "report.latency_repeats=2", *_args(args, files)]
    code, out, err = run_main(main, job, capfd)
    (tmp_path / "logs" / "cache").mkdir(parents=True, exist_ok=True)
    assert_refused(code, out, err, expect, tmp_path / "logs" / "cache")


@pytest.mark.parametrize(("case", "args", "expect"), cases(LM_CASES))
def test_distill_lm_refuses(
    case: str, args: list[str], expect: str, files: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    from distill.llm.train import main

    job = [f"paths.root_dir={tmp_path}", "lm_data.max_chars=20000", "lm_data.seq_len=32", *_args(args, files)]
    code, out, err = run_main(main, job, capfd)
    (tmp_path / "logs" / "cache").mkdir(parents=True, exist_ok=True)
    assert_refused(code, out, err, expect, tmp_path / "logs" / "cache")


def test_the_battery_is_large_enough() -> None:
    assert len(TRAIN_CASES) + len(EVAL_CASES) + len(LM_CASES) >= 60
    assert READS_DATA <= {case for case, _, _ in TRAIN_CASES + EVAL_CASES + LM_CASES}  # no stale name
