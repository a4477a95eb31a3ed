"""What a run prints: one line per stage, a progress line per epoch without a terminal (a bar in one), no
colour codes or carriage returns when redirected, no Lightning banner, the report's table fitted to the
terminal, and SLURM's noise (submitit's sacct errors, Lightning's srun hint) said once or not at all."""

from __future__ import annotations

import io
import logging
import re
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from rich.console import Console
from tests.conftest import cli_env, cli_job, run_cli
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distill import console
from distill.report import _columns, _header, markdown_table, print_table

# -- the report's table ----------------------------------------------------------------------------------------

ROWS = [
    {
        "model": name,
        "accuracy": 0.9,
        "agreement": 0.95,
        "calibration_error": 0.03,
        "parameters": 1_234_567,
        "trainable_parameters": 1_234_567,
        "nonzero_parameters": 1_000_000,
        "bytes": 4_938_271,
        "latency_ms_batch_1": 0.21,
        "latency_ms_batch_64": 1.5,
        "latency_ms_batch_1024": 23.6,
        "flops": 4_992_000,
    }  # fmt: skip
    for name in ("teacher:resnet32x4", "baseline", "student", "compress:prune_structured")
]


def rendered(width: int, terminal: bool = True) -> str:
    out = io.StringIO()
    print_table(ROWS, "train: teacher:resnet32x4 → student", Console(file=out, width=width, force_terminal=terminal))
    return out.getvalue()


@pytest.mark.parametrize("width", [100, 120])
def test_the_table_fits_the_terminal_and_names_what_it_leaves_out(width: int) -> None:
    text = re.sub(r"\x1b\[[0-9;]*m", "", rendered(width))
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), text
    assert "…" not in text  # nothing cut
    for row in ROWS:
        assert row["model"] in text
    table_lines = [line for line in lines if line[:1] in "┏┃┡│└"]
    notes = " ".join(" ".join(line for line in lines if line[:1] not in "┏┃┡│└").split())  # wrapped lines joined
    headers = {cell.strip() for line in table_lines if line.startswith("┃") for cell in line.strip("┃").split("┃")}
    dropped = notes.partition("not shown (terminal too narrow):")[2]
    for key in _columns(ROWS):
        assert {_header(key), console._short_header(key)} & headers or _header(key) in dropped, (key, text)
    if dropped:
        assert "report.md has every column" in notes


def test_without_a_terminal_the_table_is_whole_and_plain() -> None:
    text = rendered(80, terminal=False)
    assert "\x1b" not in text and "…" not in text
    for key in _columns(ROWS):
        assert _header(key) in text
    assert all(_header(key) in markdown_table(ROWS) for key in _columns(ROWS))  # report.md: every column


# -- log filters ----------------------------------------------------------------------------------------------


def test_sacct_errors_are_said_once_in_plain_words() -> None:
    logger, said = logging.getLogger("tests.console.submitit"), logging.getLogger("tests.console.said")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    said.addHandler(handler)
    said.setLevel(logging.INFO)
    logger.addFilter(console.SacctFilter(say_to=said.name))
    try:
        for call in range(1, 6):
            logger.warning(
                f"Call #{call} - Bypassing sacct error Command '['sacct', '-o', 'JobID']' returned non-zero exit "
                "status 1., status may be inaccurate."
            )
        logger.warning("Requeued job 12 (3 remaining timeouts)")
    finally:
        logger.removeHandler(handler)
        said.removeHandler(handler)
    assert out.getvalue().splitlines() == [console.SACCT_MESSAGE, "Requeued job 12 (3 remaining timeouts)"]


def test_the_filters_sit_on_submitits_and_lightnings_loggers() -> None:
    console.install_log_filters()
    console.install_log_filters()  # idempotent
    assert logging.getLogger("submitit").filters.count(console._SACCT_FILTER) == 1
    for name in console.LIGHTNING_CHATTY_LOGGERS:
        assert logging.getLogger(name).filters.count(console._LIGHTNING_FILTER) == 1


def test_lightning_banner_goes_and_its_warnings_stay() -> None:
    chatter = console.LightningChatterFilter()

    def passes(level: int, message: str) -> bool:
        return chatter.filter(
            logging.LogRecord("lightning.pytorch.utilities.rank_zero", level, "", 0, message, (), None)
        )

    for banner in (
        "GPU available: False, used: False", "TPU available: False, using: 0 TPU cores",
        "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
        "`Trainer.fit` stopped: `max_epochs=2` reached.", "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]",
    ):  # fmt: skip
        assert not passes(logging.INFO, banner), banner
    assert passes(logging.WARNING, "GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.")
    assert passes(logging.INFO, "SLURM auto-requeueing enabled. Setting signal handlers.")
    assert passes(logging.INFO, "`Trainer.fit` stopped: `max_time=00:01:00:00` reached.")


def test_lightnings_srun_hint_is_silenced_and_other_warnings_are_not() -> None:
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.install_log_filters()
        warnings.warn(
            "The `srun` command is available on your system but is not used. HINT: If your intention is to run "
            "Lightning on SLURM, prepend your python command with `srun` like so: srun python ...",
            PossibleUserWarning,
            stacklevel=1,
        )
        warnings.warn("a real warning of tests.console", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real warning of tests.console"]


def test_lightnings_own_console_handler_goes() -> None:
    lightning_logger = logging.getLogger("lightning")
    lightning_logger.addHandler(logging.StreamHandler(io.StringIO()))  # what `import lightning` does
    console.adopt_lightning_loggers()
    assert not [h for h in lightning_logger.handlers if type(h) is logging.StreamHandler]
    assert lightning_logger.propagate


def test_a_handler_on_a_captured_stream_is_left_by_lightning(capsys: pytest.CaptureFixture) -> None:
    # What a first `import lightning` under capsys does; tests/conftest.py removes it once this test ends.
    logging.getLogger("lightning").addHandler(logging.StreamHandler(sys.stderr))


def test_a_later_lightning_log_line_finds_no_closed_stream(capsys: pytest.CaptureFixture) -> None:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").warning("a warning after the captured test")
    assert "Logging error" not in capsys.readouterr().err


# -- the progress bar, in-process ----------------------------------------------------------------------------


class Tiny(L.LightningModule):
    """Logs as distill's modules do: the epoch's mean loss in its own on_train_epoch_end, after the callbacks'."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.prefix, self.losses = nn.Linear(4, 2), "student", []

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        self.losses.append(loss.item())
        return loss

    def on_train_epoch_end(self) -> None:
        self.log(f"{self.prefix}/train/loss", sum(self.losses) / len(self.losses), prog_bar=True)
        self.losses = []

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self.log(f"{self.prefix}/val/acc", (self.net(batch[0]).argmax(1) == batch[1]).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_tiny(tmp_path: Path, bar: L.Callback, epochs: int = 3) -> Tiny:
    data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    trainer = L.Trainer(
        max_epochs=epochs, default_root_dir=str(tmp_path / "student"), callbacks=[bar], logger=False,
        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu",
    )  # fmt: skip
    module = Tiny()
    trainer.fit(module, DataLoader(data, batch_size=16), DataLoader(data, batch_size=32))
    return module


def test_without_a_terminal_each_epoch_is_one_plain_line_with_its_own_loss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="distill.console")
    fit_tiny(tmp_path, console.StageProgressBar(refresh_rate=1, plain=True))
    lines = [r.getMessage() for r in caplog.records if r.name == "distill.console"]
    assert len(lines) == 3, lines
    for k, line in enumerate(lines, 1):
        assert re.fullmatch(rf"student epoch {k}/3: loss \d\.\d+, val acc [\d.]+ \(\d+\.\d s\)", line), line
    out = capsys.readouterr()
    assert "\r" not in out.out + out.err and "\x1b" not in out.out + out.err


def test_in_a_terminal_one_bar_per_stage_names_the_stage_and_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(sys, "stdout", screen)
    fit_tiny(tmp_path, console.StageProgressBar(refresh_rate=1, plain=False))
    frames = screen.getvalue().split("\r")
    assert "student epoch 3/3" in frames[-1] and "loss" in frames[-1] and "val acc" in frames[-1]
    assert screen.getvalue().endswith("val acc " + frames[-1].rpartition("val acc ")[2])  # the final bar, once
    assert "Trainer.fit" not in screen.getvalue()  # nothing glued to it


def test_the_progress_bar_stays_out_of_cache_keys() -> None:
    from distill.assembly import _neutral_callback

    assert _neutral_callback({"_target_": "distill.console.StageProgressBar", "refresh_rate": 5})


# -- a real run, redirected -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_redirected_run_prints_plain_lines_once(tmp_path: Path) -> None:
    epochs = {"teacher_mlp_large": 2, "baseline": 3, "student": 2}
    args = [
        a for a in cli_job(tmp_path) if not a.startswith(("callbacks.progress_bar", "teacher.mlp_large.fit.epochs"))
    ]
    args = [a for a in args if not a.startswith(("student.fit.epochs", "student.baseline.epochs"))]
    args += [
        "teacher.mlp_large.fit.epochs=2", "student.fit.epochs=2", "student.baseline.epochs=3",
        "callbacks.progress_bar.refresh_rate=5",
    ]  # fmt: skip
    env = {k: v for k, v in cli_env().items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "PYTHONWARNINGS")}
    result = run_cli(args, tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (log_file,) = (tmp_path / "logs" / "train" / "runs").glob("*/train.log")
    logged = log_file.read_text()
    for name, text in (("stdout", result.stdout), ("stderr", result.stderr), ("train.log", logged)):
        assert "\x1b" not in text and "\r" not in text, name
        assert "GPU available" not in text and "litlogger" not in text and "`srun` command" not in text, name
        assert not re.search(r"^INFO: ", text, re.MULTILINE), name  # Lightning's own handler
        messages = [re.sub(r"^\[[^]]*\]\[[^]]*\]\[[A-Z]+\] - ", "", line) for line in text.splitlines()]
        repeated = [a for a, b in zip(messages, messages[1:], strict=False) if a.strip() and a == b]
        assert not repeated, (name, repeated)
    for stage, n in epochs.items():
        for where in (result.stdout, logged):  # on the console and, once, in the run's log
            assert len(re.findall(rf"\] - {stage}: training {n} epochs on cpu$", where, re.MULTILINE)) == 1, stage
            seen = re.findall(rf"\] - {stage} epoch (\d+)/{n}: loss [\d.e-]+, val acc [\d.]+ \(", where)
            assert seen == [str(k) for k in range(1, n + 1)], (stage, seen)
