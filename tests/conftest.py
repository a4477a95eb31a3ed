"""Shared helpers: composing the project's configs, a tiny, fast version of the main job, running the
command line, the SLURM cluster of the SLURM tests, and skipping `gpu` tests without CUDA.
(Small objects the unit tests build: tests/builders.py.)"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from distill.cli import CONFIG_DIR

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def compose_config(overrides: list[str], name: str = "train") -> DictConfig:
    """The config `distill-train OVERRIDES` would run, without starting a job."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=overrides)


def tiny_job(tmp_path: Path, *extra: str) -> list[str]:
    """Overrides for a seconds-long run on digits that still trains every stage for real."""
    return [
        "data=digits",
        "teacher=[mlp_large]",
        "student=mlp_small",
        "teacher.mlp_large.fit.epochs=8",
        "student.fit.epochs=8",
        "student.fit.batch_size=128",
        "student.baseline.epochs=8",
        "report.latency_repeats=3",
        "report.latency_batch_sizes=[1,64]",
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path}/run",
        "callbacks.progress_bar.refresh_rate=0",
        *extra,
    ]


def vision_job(tmp_path: Path, *extra: str) -> list[str]:
    """Overrides for a short run of experiment=cifar_quick (ResNet-20 -> ResNet-8) on 400 CIFAR-shaped images."""
    return [
        "experiment=cifar_quick",
        "data.num_train=400",
        "data.num_test=200",
        "data.val_size=100",
        "data.batch_size=64",
        "teacher=[resnet20]",
        "teacher.resnet20.fit.epochs=2",
        "teacher.resnet20.fit.batch_size=64",
        "student.fit.epochs=2",
        "student.fit.batch_size=64",
        "student.baseline.epochs=2",
        "student.baseline.batch_size=64",
        "report.latency_repeats=2",
        "report.latency_batch_sizes=[1,8]",
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path}/run",
        "callbacks.progress_bar.refresh_rate=0",
        *extra,
    ]


# vision_job's extra overrides for a recipe that learns: 2,000 images, 4 epochs, lr x0.1 after the third.
CIFAR_SHORT_RECIPE = [
    "data.num_train=2000",
    "teacher.resnet20.fit.epochs=4",
    "student.fit.epochs=4",
    "student.baseline.epochs=4",
    "teacher.resnet20.fit.scheduler.milestones=[3]",
    "student.fit.scheduler.milestones=[3]",
    "student.baseline.scheduler.milestones=[3]",
]


def cli_job(tmp_path: Path, *extra: str) -> list[str]:
    """tiny_job for the command line: the run folder left to Hydra (logs/train/runs/<time>_<job id>)."""
    return [a for a in tiny_job(tmp_path) if not a.startswith("paths.output_dir")] + list(extra)


REPO = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a command-line run; `tests.helpers` is importable in it (for test callbacks)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore", "PYTHONPATH": path, **extra}


def run_cli(
    args: list[str], cwd: Path, module: str = "distill.train", timeout: int = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run an entry point as a user would (`python -m distill.train ...`)."""
    env = env or cli_env()
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` are skipped where CUDA is not available."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        import torch

        if not torch.cuda.is_available():
            for item in gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on a GPU machine)"))


@pytest.fixture(autouse=True)
def _one_thread_unless_slow(request: pytest.FixtureRequest) -> Iterator[None]:
    """The fast tests run torch on one thread: their tensors are small, and on a machine whose cores are
    busy with other work, several threads wait on each other at every op (tens of times slower)."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_lightning_handler_on_a_closed_stream() -> Iterator[None]:
    """`import lightning` adds a StreamHandler bound to the sys.stderr of that moment: under pytest's capture
    (capsys), a stream closed when that test ends, and every later Lightning log line ended in
    `--- Logging error --- ValueError: I/O operation on closed file`. Lightning's own handlers go after
    each test: its lines reach the root logger, as they do in a run (distill.console.adopt_lightning_loggers)."""
    yield
    if "lightning" in sys.modules:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logger = logging.getLogger(name)
            for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
                logger.removeHandler(handler)
            logger.propagate = True
    # The same for handlers an in-process Hydra run configured (its colorlog formatter asks its stream isatty()).
    for logger in [
        logging.getLogger(),
        *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]:
        for handler in list(logger.handlers):
            streams = (getattr(handler, "stream", None), getattr(handler.formatter, "stream", None))
            if any(getattr(stream, "closed", False) for stream in streams):
                logger.removeHandler(handler)


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> DictConfig:
    return compose_config(tiny_job(tmp_path))


# -- the SLURM cluster of the SLURM tests -----------------------------------------------------------

SLURM_SCRIPT = REPO / "scripts" / "slurm_cluster.sh"
SLURM_STATE = Path(os.environ.get("TMPDIR", "/tmp")) / "distill-slurm-tests"


def slurm_answers() -> bool:
    """Whether a SLURM controller answers (the one SLURM_CONF, or else /etc/slurm/slurm.conf, names)."""
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def own_slurm_alive(state: Path = SLURM_STATE) -> bool:
    """Whether a daemon that scripts/slurm_cluster.sh started in `state` (the tests' cluster) is alive."""
    for name in ("slurmctld.pid", "slurmd.pid"):
        try:
            pid = int((state / name).read_text().strip())
        except (OSError, ValueError):
            continue
        if Path(f"/proc/{pid}").is_dir():
            return True
    return False


def slurm_script(command: str) -> None:
    """scripts/slurm_cluster.sh COMMAND SLURM_STATE; a failed start raises."""
    subprocess.run([str(SLURM_SCRIPT), command, str(SLURM_STATE)], check=command == "start", timeout=180)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # pytest stops and still runs the fixtures' teardown


@contextlib.contextmanager
def slurm_cluster_for_tests() -> Iterator[None]:
    """A SLURM cluster that answers, for the duration of the block.

    A cluster the caller named with SLURM_CONF (.ci/run, which stops it on exit), or another one of
    this machine's, is used and left running. Otherwise the tests' own cluster (SLURM_STATE) is
    started, or taken over when an earlier session left it running, and stopped on the way out:
    also when its start fails half-way, when a test fails, and when pytest gets SIGTERM (`timeout`).
    """
    if slurm_answers() and ("SLURM_CONF" in os.environ or not own_slurm_alive()):
        yield
        return
    conf, on_term = os.environ.get("SLURM_CONF"), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        slurm_script("start")  # "already running" when an earlier session left it up
        os.environ["SLURM_CONF"] = str(SLURM_STATE / "slurm.conf")
        if not slurm_answers():
            raise RuntimeError(f"the SLURM cluster in {SLURM_STATE} does not answer after its start")
        yield
    finally:
        try:
            slurm_script("stop")
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if on_term is None else on_term)
            if conf is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = conf


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """A SLURM cluster for the session (slurm_cluster_for_tests); the tests that use it are skipped when
    SLURM is not installed, or fail under DISTILL_REQUIRE_SLURM=1 (.ci/run)."""
    if not shutil.which("sbatch") or not shutil.which("slurmctld"):
        message = "SLURM is not installed (scripts/slurm_cluster.sh install)"
        if os.environ.get("DISTILL_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with slurm_cluster_for_tests():
        yield
