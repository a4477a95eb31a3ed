"""Pieces the tests plug into real runs through the command line."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L


class KillAfterEpoch(L.Callback):
    """SIGKILL the process once `stage` has saved the checkpoint of epoch `epoch` (0-based): a hard crash."""

    cache_neutral = True  # it stops a run but never changes what a finished training learns: not in cache keys

    def __init__(self, stage: str, epoch: int | None = None) -> None:
        # Without `epoch`, the epoch comes from DISTILL_TEST_KILL_EPOCH (unset: never kill), so that a killed
        # run and its continuation can be started with the same overrides.
        env = os.environ.get("DISTILL_TEST_KILL_EPOCH")
        self.stage, self.epoch = stage, epoch if epoch is not None else (int(env) if env else -1)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if Path(trainer.default_root_dir).name == self.stage and trainer.current_epoch == self.epoch:
            # ModelCheckpoint runs after this hook in the same epoch end; kill at the next batch instead.
            self._armed = True

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        if getattr(self, "_armed", False):
            os.kill(os.getpid(), signal.SIGKILL)


class NeedsCredential(L.Callback):
    """A callback configured with a credential, as an upload hook would be; `fail=true` makes it crash the run."""

    cache_neutral = True  # it never changes what a training learns: not in cache keys

    def __init__(self, token: str, url: str = "", fail: bool = False) -> None:
        self.token, self.url, self.fail = token, url, fail

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.fail:
            raise RuntimeError(f"upload to {self.url} refused")


class SweepConfigIsClean(L.Callback):
    """Crash the job if its sweep's multirun.yaml holds the value of the environment variable `variable`."""

    cache_neutral = True

    def __init__(self, variable: str) -> None:
        self.variable = variable

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        from hydra.core.hydra_config import HydraConfig

        saved = Path(HydraConfig.get().sweep.dir) / "multirun.yaml"
        if os.environ[self.variable] in saved.read_text():
            raise RuntimeError(f"{saved} holds ${self.variable}")


class FailWritesAfterEpoch(L.Callback):
    """From the end of `stage`'s epoch DISTILL_TEST_FAIL_WRITES_EPOCH on, no file may grow past `limit` bytes
    (RLIMIT_FSIZE, as a full disk would refuse): that epoch's checkpoint write fails half-way."""

    cache_neutral = True

    def __init__(self, stage: str, limit: int = 16384) -> None:
        env = os.environ.get("DISTILL_TEST_FAIL_WRITES_EPOCH")
        self.stage, self.limit, self.epoch = stage, limit, int(env) if env else -1

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        import resource

        if Path(trainer.default_root_dir).name == self.stage and trainer.current_epoch == self.epoch:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
