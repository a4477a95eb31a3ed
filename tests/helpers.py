"""Pieces the tests plug into real runs through the command line."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L


class KillAfterEpoch(L.Callback):
    """SIGKILL the process once `stage` has saved the checkpoint of epoch `epoch` (0-based): a hard crash."""

    def __init__(self, stage: str, epoch: int) -> None:
        self.stage, self.epoch = stage, epoch

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if Path(trainer.default_root_dir).name == self.stage and trainer.current_epoch == self.epoch:
            # ModelCheckpoint runs after this hook in the same epoch end; kill at the next batch instead.
            self._armed = True

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        if getattr(self, "_armed", False):
            os.kill(os.getpid(), signal.SIGKILL)
