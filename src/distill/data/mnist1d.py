"""MNIST-1D (Greydanus 2020), generated locally, with a large generated transfer set.

The `mnist1d` package draws every sample from ten 1-D templates under random shifts, scaling,
shear and noise, so any number of extra samples can be made for distillation without a
download. All splits come from one generation call (same normalisation) and are cached as an
`.npz` under `data_dir`, keyed by the generation settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from distill.atomic import atomic_write, remove_stale_temporaries
from distill.data.base import ArrayDataModule, Splits

log = logging.getLogger(__name__)


class MNIST1DDataModule(ArrayDataModule):
    """Sequences of length 40, ten classes; `num_transfer` extra samples serve as unlabelled transfer set."""

    source = "mnist1d"

    def __init__(
        self,
        data_dir: str,
        num_train: int = 4000,
        num_val: int = 1000,
        num_test: int = 1000,
        num_transfer: int = 50000,
        generator_seed: int = 42,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test, "transfer": num_transfer}
        self.generator_seed = generator_seed

    def _cache_file(self) -> Path:
        key = json.dumps({"sizes": self.sizes, "seed": self.generator_seed, "version": 1}, sort_keys=True)
        return self.data_dir / "mnist1d" / f"mnist1d-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"

    def prepare_data(self) -> None:
        path = self._cache_file()
        if path.exists():
            return
        from mnist1d.data import get_dataset_args, make_dataset

        total = sum(self.sizes.values())
        args = get_dataset_args()
        args.num_samples = -(-total // 10) * 10  # the generator makes the same count of each class
        args.train_split = 1.0
        args.seed = self.generator_seed
        log.info(
            "Generating MNIST-1D: %d samples (about %.0f s, cached in %s)",
            args.num_samples,
            args.num_samples / 4500,
            path.parent,
        )
        data = make_dataset(args)
        remove_stale_temporaries(path.parent)
        with atomic_write(path) as f:  # a concurrent run sees the whole file or none
            np.savez(f, x=data["x"].astype(np.float32), y=data["y"].astype(np.int64))

    def load_splits(self) -> Splits:
        self.prepare_data()
        with np.load(self._cache_file()) as data:
            x, y = data["x"], data["y"]
        bounds = np.cumsum([0] + [self.sizes[k] for k in ("train", "val", "test", "transfer")])
        part = lambda a, i: a[bounds[i] : bounds[i + 1]]  # noqa: E731
        return Splits(part(x, 0), part(y, 0), part(x, 1), part(y, 1), part(x, 2), part(y, 2), x_transfer=part(x, 3))
