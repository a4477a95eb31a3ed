"""The data module shared by every in-memory dataset: splits, checks, and batch iterables."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from sklearn.model_selection import train_test_split

from distill.data.batches import TensorBatches
from distill.errors import DistillError

UNLABELLED = -1  # target of a transfer-set sample: the teacher labels it, the hard loss skips it


@dataclass
class Splits:
    """Arrays of one dataset; `x_transfer` is an optional unlabelled set for distillation only."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_transfer: np.ndarray | None = None


def split_off(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Split `fraction` of the rows off (stratified when every class has two samples)."""
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    try:
        return tuple(train_test_split(x, y, test_size=fraction, random_state=seed, stratify=stratify))
    except ValueError as err:
        raise DistillError(f"cannot split {len(y)} samples with fraction {fraction}: {err}") from None


def check_arrays(name: str, x: np.ndarray, y: np.ndarray | None, source: str) -> None:
    """Refuse empty, non-finite or mislabelled arrays with a message naming the source."""
    if x.size == 0 or len(x) == 0:
        raise DistillError(f"{source}: split '{name}' is empty")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DistillError(f"{source}: features of '{name}' are not numeric (dtype {x.dtype})")
    if not np.isfinite(x).all():
        raise DistillError(f"{source}: features of '{name}' contain NaN or infinite values")
    if y is None:
        return
    if len(y) != len(x):
        raise DistillError(f"{source}: '{name}' has {len(x)} feature rows but {len(y)} labels")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.number) or not np.isfinite(y).all() or (y != np.round(y)).any():
        raise DistillError(f"{source}: labels of '{name}' must be a 1-D array of integers")
    if (y < 0).any():
        raise DistillError(f"{source}: labels of '{name}' must be >= 0, found {int(y.min())}")


class ArrayDataModule(L.LightningDataModule):
    """A classification dataset held in memory as tensors.

    Subclasses implement `load_splits`. `train_dataloader` gives the labelled training set
    (teacher and baseline training); `distill_dataloader` adds the unlabelled transfer set,
    whose targets are `UNLABELLED`.
    """

    source = "dataset"
    #: keep uint8 samples (images) as uint8 in memory; the loaders turn them into model inputs
    keep_uint8 = False

    def __init__(
        self,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        seed: int = 0,
        num_classes: int | None = None,
        input_shape: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self._declared_classes = num_classes
        self._declared_shape = tuple(input_shape) if input_shape else None
        self.tensors: dict[str, torch.Tensor] = {}

    def load_splits(self) -> Splits:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.tensors:
            return
        splits = self.load_splits()
        for name in ("train", "val", "test"):
            check_arrays(name, getattr(splits, f"x_{name}"), getattr(splits, f"y_{name}"), self.source)
        if splits.x_transfer is not None and len(splits.x_transfer):
            check_arrays("transfer", splits.x_transfer, None, self.source)
        shapes = {x.shape[1:] for x in (splits.x_train, splits.x_val, splits.x_test)}
        if splits.x_transfer is not None and len(splits.x_transfer):
            shapes.add(splits.x_transfer.shape[1:])
        if len(shapes) != 1:
            raise DistillError(f"{self.source}: splits have different sample shapes {sorted(shapes)}")
        largest = int(max(splits.y_train.max(), splits.y_val.max(), splits.y_test.max()))
        classes = self._declared_classes or largest + 1
        if largest >= classes:
            raise DistillError(f"{self.source}: data.num_classes={classes} but a label is {largest}")
        self.num_classes = classes
        self.input_shape = tuple(int(d) for d in splits.x_train.shape[1:])
        if self._declared_shape and self._declared_shape != self.input_shape:
            raise DistillError(
                f"{self.source}: data.input_shape={list(self._declared_shape)} but samples have shape {list(self.input_shape)}"
            )

        def as_x(a: np.ndarray) -> torch.Tensor:
            dtype = torch.uint8 if self.keep_uint8 and a.dtype == np.uint8 else torch.float32
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)

        as_y = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long)  # noqa: E731
        self.tensors = {
            "x_train": as_x(splits.x_train), "y_train": as_y(splits.y_train),
            "x_val": as_x(splits.x_val), "y_val": as_y(splits.y_val),
            "x_test": as_x(splits.x_test), "y_test": as_y(splits.y_test),
        }  # fmt: skip
        transfer = splits.x_transfer if splits.x_transfer is not None else np.zeros((0, *self.input_shape))
        self.tensors["x_transfer"] = as_x(transfer)

    @property
    def num_transfer(self) -> int:
        return len(self.tensors["x_transfer"])

    @property
    def num_train(self) -> int:
        return len(self.tensors["x_train"])

    def describe(self) -> str:
        """One line for the log: split sizes, sample shape, classes."""
        t = self.tensors
        return (
            f"{len(t['x_train'])} train, {self.num_transfer} transfer, {len(t['x_val'])} val, {len(t['x_test'])} test "
            f"samples of shape {list(self.input_shape)}, {self.num_classes} classes"
        )

    def model_inputs(self, split: str, n: int) -> torch.Tensor:
        """The first `n` samples of `split` ("train", "val", "test") as a model takes them, on the CPU."""
        return self.tensors[f"x_{split}"][:n]

    def train_dataloader(self, batch_size: int | None = None) -> TensorBatches:
        """The labelled training set, shuffled; `batch_size` defaults to the data config's."""
        t = self.tensors
        return TensorBatches(t["x_train"], t["y_train"], batch_size or self.batch_size, shuffle=True, seed=self.seed)

    def distill_dataloader(self, batch_size: int | None = None) -> TensorBatches:
        """Labelled training set followed by the transfer set (targets `UNLABELLED`), shuffled."""
        t = self.tensors
        x = torch.cat([t["x_train"], t["x_transfer"]])
        y = torch.cat([t["y_train"], torch.full((self.num_transfer,), UNLABELLED, dtype=torch.long)])
        return TensorBatches(x, y, batch_size or self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> TensorBatches:
        return TensorBatches(self.tensors["x_val"], self.tensors["y_val"], self.eval_batch_size)

    def test_dataloader(self) -> TensorBatches:
        return TensorBatches(self.tensors["x_test"], self.tensors["y_test"], self.eval_batch_size)
