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
