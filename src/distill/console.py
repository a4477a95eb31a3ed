"""What a run prints: one line per training stage, a progress bar that names the stage and counts its
epochs (one plain line per epoch without a terminal), the report's table fitted to the terminal, and
Lightning's and submitit's chatter reduced to what matters.

Without a terminal (output redirected to a file, SLURM, CI) nothing here writes bar frames, carriage
returns or colour codes. Light at import: the entry points install the log filters before the command
line is parsed; the progress bar class, which needs Lightning, is built on first use
(`distill.console.StageProgressBar`, the `callbacks.progress_bar` of configs/callbacks/default.yaml).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Lightning's loggers whose INFO lines are its start-up banner (GPU/TPU/HPU available, the litlogger and
# litmodels tips), "`Trainer.fit` stopped: `max_epochs=N` reached", CUDA_VISIBLE_DEVICES...: each stage's
# Trainer printed them again. Warnings and errors pass, and so do the INFO lines matching _KEPT_INFO.
LIGHTNING_CHATTY_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
    "lightning.fabric.accelerators.cuda",
)
_KEPT_INFO = re.compile(r"requeue|signal|KeyboardInterrupt|max_time|max_steps|No training batches", re.IGNORECASE)
# Loggers under which Lightning installs its own console handler (a second copy of every line, with
# "INFO: " in front, beside the one Hydra's logging configuration writes).
LIGHTNING_PACKAGE_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")  # fmt: skip
# Lightning's hint on any machine where `srun` exists, once per Trainer: it does not apply to our runs
# (a SLURM job of the launcher runs its one task directly; multi-task jobs are started by srun already).
SRUN_HINT = r"The `srun` command is available on your system but is not used"
SACCT_ERROR = "Bypassing sacct error"
SACCT_MESSAGE = "SLURM has no accounting database here (sacct fails): job states are read from squeue and result files"


def is_terminal(stream: Any = None) -> bool:
    """Whether `stream` (stdout by default) is an interactive terminal that understands cursor moves."""
    stream = sys.stdout if stream is None else stream
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


# -- log filters ---------------------------------------------------------------------------------------------


class LightningChatterFilter(logging.Filter):
    """Drops Lightning's INFO banner lines; warnings, errors and the INFO lines that matter pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return bool(_KEPT_INFO.search(record.getMessage()))


class SacctFilter(logging.Filter):
    """submitit's "Bypassing sacct error ..., status may be inaccurate" (one per poll of the job states, on a
    cluster without an accounting database): dropped, and said once, in words that say what it means, through
    the logger `say_to` (submitit's logger would print it twice: on its own handlers and on Hydra's)."""

    def __init__(self, say_to: str = __name__) -> None:
        super().__init__()
        self.say_to, self.said = say_to, False

    def filter(self, record: logging.LogRecord) -> bool:
        if SACCT_ERROR not in str(record.msg):
            return True
        if not self.said:
            self.said = True
            logging.getLogger(self.say_to).info(SACCT_MESSAGE)
        return False


_LIGHTNING_FILTER = LightningChatterFilter()
_SACCT_FILTER = SacctFilter()


def _add_filter(logger: logging.Logger, flt: logging.Filter) -> None:
    if flt not in logger.filters:
        logger.addFilter(flt)


def install_log_filters() -> None:
    """At start-up: quiet Lightning's banner and SLURM hint, and say submitit's sacct failure once (idempotent).

    Light: imports neither Lightning nor submitit (the filters sit on their loggers before they exist).
    """
    for name in LIGHTNING_CHATTY_LOGGERS:
        _add_filter(logging.getLogger(name), _LIGHTNING_FILTER)
    _add_filter(logging.getLogger("submitit"), _SACCT_FILTER)
    warnings.filterwarnings("ignore", message=SRUN_HINT)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Optuna's import of it lists its plugins at INFO


def adopt_lightning_loggers() -> None:
    """Remove the console handlers Lightning adds to its own loggers when it is imported, so that its lines
    reach the root logger's handlers (Hydra's console and the run's .log file) once, and only there.

    Only when the root logger has handlers: elsewhere (a library use of distill) Lightning keeps its own.
    """
    if not logging.getLogger().handlers:
        return
    for name in LIGHTNING_PACKAGE_LOGGERS:
        if name not in logging.root.manager.loggerDict:
            continue
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True


def quiet_lightning() -> None:
    """install_log_filters and adopt_lightning_loggers: before a Trainer is made (each stage, idempotent)."""
    install_log_filters()
    adopt_lightning_loggers()


# -- one line per stage --------------------------------------------------------------------------------------


def device_words(trainer: Any) -> str:
    """Where a Trainer config trains, in words: "cpu", "gpu (NVIDIA H200)", "4 gpus", "2 cpu processes x 2 nodes"."""
    import torch

    get = trainer.get if hasattr(trainer, "get") else lambda k, d=None: getattr(trainer, k, d)
    kind = str(get("accelerator", "auto") or "auto").lower()
    if kind == "auto":
        mps = getattr(torch.backends, "mps", None)
        kind = "gpu" if torch.cuda.is_available() else "mps" if mps is not None and mps.is_available() else "cpu"
    kind = "gpu" if kind == "cuda" else kind
    devices = get("devices", 1)
    if isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
        count = len(devices)
    elif str(devices).lstrip("-").isdigit() and int(devices) > 0:
        count = int(devices)
    else:  # "auto" or -1: every device of that kind
        count = torch.cuda.device_count() if kind == "gpu" else 1
    nodes = int(get("num_nodes", 1) or 1)
    if count == 1 and kind == "gpu" and torch.cuda.is_available():
        words = f"gpu ({torch.cuda.get_device_name(0)})"
    elif count == 1:
        words = kind
    else:
        words = f"{count} {kind} processes" if kind == "cpu" else f"{count} {kind}s"
    return words + (f" x {nodes} nodes" if nodes > 1 else "")


def announce_stage(cfg: Any, stage: str, epochs: int) -> None:
    """One line as a training stage starts ("teacher_cnn: training 60 epochs on cpu"), instead of the
    banner each Trainer prints (quieted here, before the stage's Trainer is made)."""
    quiet_lightning()
    trainer = cfg.get("trainer") if hasattr(cfg, "get") else None
    where = device_words(trainer) if trainer is not None else "cpu"
    log.info("%s: training %d epoch%s on %s", stage, epochs, "" if epochs == 1 else "s", where)


# -- the progress bar ----------------------------------------------------------------------------------------


def significant(value: Any, digits: int = 4) -> str:
    """A metric in `digits` significant digits (0.9840 -> 0.984, 1234.5 -> 1234, 3.2e-05 -> 3.2e-05)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.{digits}g}"


def short_metrics(metrics: dict[str, Any], stage: str) -> list[tuple[str, str]]:
    """The progress bar's metrics, named without the stage ("teacher_cnn/val/acc" -> "val acc",
    "teacher_cnn/train/loss" -> "loss"): training ones first (the loss leading), then validation ones."""
    shown: list[tuple[int, str, str]] = []
    for key, value in metrics.items():
        if key == "v_num":
            continue
        parts = [p for p in str(key).split("/") if p]
        if parts and parts[0] == stage:
            parts = parts[1:]
        if parts and parts[0] == "train":
            parts = parts[1:]
        name = " ".join(parts) or str(key)
        name = re.sub(r"_(step|epoch)$", "", name)
        order = 0 if name == "loss" else 2 if name.startswith("val ") else 1
        if any(n == name for _, n, _ in shown):
            continue
        shown.append((order, name, significant(value)))
    return [(name, value) for _, name, value in sorted(shown, key=lambda item: item[0])]


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class _BarSafeStream:
    """A console handler's stream whose writes clear the live progress bars first and redraw them after:
    a log line during training lands above the bar, not glued to its end."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> Any:
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self.stream):
            return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def bar_safe_output() -> Iterator[None]:
    """While the block runs, log records and warnings written to a terminal go above the progress bars."""
    from tqdm import tqdm

    patched: list[tuple[logging.StreamHandler, Any]] = []
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in LIGHTNING_PACKAGE_LOGGERS)]
    for logger in loggers:
        for handler in logger.handlers:
            stream = getattr(handler, "stream", None)
            if type(handler) is not logging.FileHandler and isinstance(handler, logging.StreamHandler):
                if not isinstance(stream, _BarSafeStream) and is_terminal(stream):
                    patched.append((handler, stream))
                    handler.stream = _BarSafeStream(stream)
    show = warnings.showwarning

    def show_above_bars(*args: Any, **kwargs: Any) -> None:
        with tqdm.external_write_mode():
            show(*args, **kwargs)

    warnings.showwarning = show_above_bars
    try:
        yield
    finally:
        if warnings.showwarning is show_above_bars:
            warnings.showwarning = show
        for handler, stream in patched:
            if isinstance(handler.stream, _BarSafeStream):
                handler.stream = stream


_progress_bar_class: type | None = None


def _make_progress_bar_class() -> type:
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf

    class StageProgressBar(TQDMProgressBar):
        """Lightning's tqdm progress bar, naming the stage and its epochs: in a terminal, one bar per stage
        (`student epoch 3/60 ... 20/32 [00:01<00:00, loss 0.412, val acc 0.951]`) that stays when the stage
        ends; without one, no bar at all but one line per epoch
        (`student epoch 3/60: loss 0.412, val acc 0.951 (1.2 s)`), logged like every other line.

        `plain`: true or false forces either form (default: the form stdout calls for). `refresh_rate: 0`
        shows nothing, as in Lightning.
        """

        cache_neutral = True  # it shows the training, never changes it: not part of a cached model's key
        BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"

        def __init__(
            self, refresh_rate: int = 20, process_position: int = 0, leave: bool = False, plain: bool | None = None
        ) -> None:
            super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
            self._plain = plain
            self._epoch_started = time.perf_counter()
            self._ended_epoch: tuple[str, float] | None = None  # (description, seconds) until it is said
            self._output: contextlib.ExitStack | None = None

        @property
        def plain(self) -> bool:
            return self._plain if self._plain is not None else not is_terminal(sys.stdout)

        @staticmethod
        def stage(trainer: Any) -> str:
            return Path(trainer.default_root_dir).name

        def describe(self, trainer: Any) -> str:
            total, epoch = trainer.max_epochs, trainer.current_epoch + 1
            return f"{self.stage(trainer)} epoch {epoch}" + (f"/{total}" if total and total > 0 else "")

        def metrics_text(self, trainer: Any, module: Any) -> str:
            shown = short_metrics(self.get_metrics(trainer, module), self.stage(trainer))
            return ", ".join(f"{name} {value}" for name, value in shown)

        def _bar(self, desc: str, position: int, leave: bool, **kwargs: Any) -> Tqdm:
            return Tqdm(
                desc=desc, position=position, disable=self.is_disabled or self.plain, leave=leave,
                dynamic_ncols=True, file=sys.stdout, bar_format=self.BAR_FORMAT, **kwargs,
            )  # fmt: skip

        def init_sanity_tqdm(self) -> Tqdm:
            return self._bar(self.sanity_check_description, 2 * self.process_position, leave=False)

        def init_train_tqdm(self) -> Tqdm:
            return self._bar(self.stage(self.trainer), 2 * self.process_position, leave=True, smoothing=0)

        def init_validation_tqdm(self) -> Tqdm:
            has_main_bar = self.trainer.state.fn != "validate"
            position = 2 * self.process_position + has_main_bar
            return self._bar(self.validation_description, position, leave=not has_main_bar)

        def init_test_tqdm(self) -> Tqdm:
            return self._bar("Testing", 2 * self.process_position, leave=True)

        def init_predict_tqdm(self) -> Tqdm:
            return self._bar(self.predict_description, 2 * self.process_position, leave=True, smoothing=0)

        def on_train_start(self, trainer: Any, module: Any) -> None:
            self._release_output()
            if self.is_enabled and not self.plain:
                self._output = contextlib.ExitStack()
                self._output.enter_context(bar_safe_output())
            super().on_train_start(trainer, module)

        def on_train_epoch_start(self, trainer: Any, *_: Any) -> None:
            self._say_epoch(trainer)
            self._epoch_started = time.perf_counter()
            if self._leave:
                self.train_progress_bar = self.init_train_tqdm()
            bar = self.train_progress_bar
            bar.reset(total=convert_inf(self.total_train_batches))
            bar.initial = 0
            if not bar.disable:
                bar.set_postfix_str(self.metrics_text(trainer, trainer.lightning_module), refresh=False)
            bar.set_description(self.describe(trainer))

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            bar = self._train_progress_bar
            n = batch_idx + 1
            if bar is not None and not bar.disable and self._should_update(n, bar.total):
                bar.n = n
                bar.set_postfix_str(self.metrics_text(trainer, module), refresh=False)
                bar.refresh()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            if self.is_disabled:
                return
            if self.plain:  # said once the module has logged the epoch's metrics (after this hook)
                self._ended_epoch = (self.describe(trainer), time.perf_counter() - self._epoch_started)
                return
            bar = self.train_progress_bar
            if not bar.disable:
                bar.set_postfix_str(self.metrics_text(trainer, module))
            if self._leave:
                bar.close()

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            self.val_progress_bar.close()
            self.reset_dataloader_idx_tracker()
            bar = self._train_progress_bar
            if bar is not None and not bar.disable and trainer.state.fn == "fit":
                bar.set_postfix_str(self.metrics_text(trainer, module))

        def _say_epoch(self, trainer: Any) -> None:
            """The line of the epoch that ended: its metrics are complete by the next epoch's start or the end."""
            if self._ended_epoch is None:
                return
            (what, seconds), self._ended_epoch = self._ended_epoch, None
            metrics = self.metrics_text(trainer, trainer.lightning_module)
            log.info("%s%s (%s)", what, f": {metrics}" if metrics else "", duration(seconds))

        def on_train_end(self, trainer: Any, module: Any) -> None:
            try:
                self._say_epoch(trainer)
                bar = self._train_progress_bar
                if bar is not None and not bar.disable:
                    bar.set_postfix_str(self.metrics_text(trainer, module), refresh=False)
                super().on_train_end(trainer, module)
            finally:
                self._release_output()

        def on_exception(self, trainer: Any, module: Any, exception: BaseException) -> None:
            self._say_epoch(trainer)
            for bar in (self._train_progress_bar, self._val_progress_bar):
                if bar is not None:
                    bar.close()
            self._release_output()

        def teardown(self, trainer: Any, module: Any, stage: str) -> None:
            self._release_output()

        def _release_output(self) -> None:
            if self._output is not None:
                self._output.close()
                self._output = None

        def __getstate__(self) -> dict:
            state = super().__getstate__()
            state["_output"] = None
            return state

    StageProgressBar.__qualname__ = "StageProgressBar"  # pickled by reference: distill.console.StageProgressBar
    return StageProgressBar


def __getattr__(name: str) -> Any:
    """`StageProgressBar`, built (and Lightning imported) when first asked for."""
    global _progress_bar_class
    if name == "StageProgressBar":
        if _progress_bar_class is None:
            _progress_bar_class = _make_progress_bar_class()
        return _progress_bar_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the report's table --------------------------------------------------------------------------------------

# Short headers, for a terminal too narrow for the full ones (report.md keeps those).
SHORT_HEADERS = {
    "agreement": "agree",
    "nonzero_parameters": "non-zero",
    "bytes": "bytes",
    "flops": "FLOPs",
    "exact_match": "EM",
    "rouge_l": "R-L",
    "exact_match_sampled": "EM smp",
    "rouge_l_sampled": "R-L smp",
    "macro_f1": "F1",
    "rare_perplexity": "ppl rare",
    "worst_class": "worst",
    "meets_budget": "budget",
    "worst_class_accuracy": "worst acc",
    "tokens_per_second": "tok/s",
}
# The columns left out first when even short headers do not fit: the least telling first.
DROP_ORDER = (
    "trainable_parameters", "nonzero_parameters", "worst_class", "rouge_l_sampled", "exact_match_sampled",
    "calibration_error", "latency_ms_batch_*", "tokens_per_second", "flops", "worst_class_accuracy", "agreement",
    "macro_f1", "rouge_l", "bytes", "rare_perplexity", "val_perplexity", "latency_ms_batch_1", "parameters",
)  # fmt: skip
_LEGEND = {
    "agreement": "agree: agreement with the teacher",
    "bytes": "bytes: on disk",
    "latency": "ms@N: latency in ms at batch size N",
    "flops": "FLOPs: per sample",
    "macro_f1": "F1: macro-F1",
    "rare_perplexity": "ppl rare: test perplexity on the rarest 10% of tokens (by training count)",
    "worst_class": "worst: the class it classifies worst (worst acc: its accuracy)",
    "tokens_per_second": "tok/s: tokens per second at the largest batch",
    "exact_match": "EM: exact match of generated answers",
    "rouge_l": "R-L: ROUGE-L of generated answers",
    "exact_match_sampled": "smp: sampled, not greedy",
}


def _short_header(key: str) -> str:
    from distill.report import _header

    if key.startswith("latency_ms_batch_"):
        return f"ms@{key.rsplit('_', 1)[1]}"
    return SHORT_HEADERS.get(key, _header(key))


def _drop_candidates(keys: list[str]) -> list[str]:
    """The columns of `keys` in the order they are left out (never the model and its first metric)."""
    latency = [k for k in keys if k.startswith("latency_ms_batch_")]
    order: list[str] = []
    for entry in DROP_ORDER:
        if entry == "latency_ms_batch_*":
            order += latency[1:][::-1]  # the larger batches first; the smallest stays longest
        elif entry == "latency_ms_batch_1":
            order += latency[:1]
        elif entry in keys:
            order.append(entry)
    order += [k for k in keys[2:] if k not in order]
    return [k for k in order if k in keys[2:]]


def build_table(rows: list[dict[str, Any]], title: str, keys: list[str], short: bool) -> Any:
    from rich.table import Table

    from distill.report import _cell, _header

    table = Table(title=title)
    for key in keys:
        header = _short_header(key) if short else _header(key)
        table.add_column(header, justify="left" if key == "model" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(_cell(key, row.get(key)) for key in keys))
    return table


def fit_table(rows: list[dict[str, Any]], title: str, width: int) -> tuple[Any, list[str], list[str]]:
    """The report's table in at most `width` columns: full headers, else short ones, else without the
    least telling columns. Returns the table, the headers of the columns left out, and the legend of the
    short headers used."""
    from rich.console import Console

    from distill.report import _columns, _header

    keys = _columns(rows)
    measure = Console(width=10_000, file=io.StringIO())

    def natural(table: Any) -> int:
        return measure.measure(table).maximum

    table = build_table(rows, title, keys, short=False)
    if natural(table) <= width:
        return table, [], []
    dropped: list[str] = []
    shown = list(keys)
    candidates = _drop_candidates(keys)
    table = build_table(rows, title, shown, short=True)
    while natural(table) > width and candidates:
        key = candidates.pop(0)
        shown.remove(key)
        dropped.append(_header(key))
        table = build_table(rows, title, shown, short=True)
    legend = [text for key, text in _LEGEND.items() if any(k == key or k.startswith(key) for k in shown)]
    return table, dropped, legend


def print_report_table(rows: list[dict[str, Any]], title: str, console: Any = None) -> None:
    """The table on stdout: fitted to a terminal's width; without a terminal whole (200 columns or more), plain."""
    from rich.console import Console

    console = console or Console()
    if not console.is_terminal:  # logs and CI: no terminal width to respect (the table whole), no colour codes
        from distill.report import _columns

        table = build_table(rows, title, _columns(rows), short=False)
        width = max(200, Console(width=10_000, file=io.StringIO()).measure(table).maximum)
        Console(width=width, file=console.file, color_system=None, highlight=False).print(table)
        return
    table, dropped, legend = fit_table(rows, title, console.width)
    console.print(table)
    notes = []
    if legend:
        notes.append("; ".join(legend))
    if dropped:
        notes.append(f"not shown (terminal too narrow): {', '.join(dropped)}; report.md has every column")
    for note in notes:
        console.print(note, style="dim", highlight=False, soft_wrap=False)
