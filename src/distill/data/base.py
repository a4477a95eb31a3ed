"""The data module shared by every in-memory dataset: splits, checks, batch iterables, and the
standardising input step that networks of standardised data carry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from distill.data.batches import TensorBatches
from distill.errors import DistillError
from distill.fingerprint import digest_arrays

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
    counts = np.unique(y, return_counts=True)[1]  # not bincount: a label of 10^9 would allocate 8 GB
    stratify = y if len(counts) and counts.min() >= 2 else None
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
    if x.ndim < 2:
        raise DistillError(
            f"{source}: features of '{name}' have shape {list(x.shape)}: samples need at least one feature axis "
            "(shape [N, features]; one feature per sample is x[:, None])"
        )
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


def feature_statistics(x_train: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of every feature (every element of the sample shape) over `x_train`.

    Computed in float64, returned as float32. A feature whose standard deviation is zero (within
    float32 rounding of its mean) gets a divisor of 1: it is centred but left unscaled.
    """
    x = x_train.detach().cpu().double()
    mean, std = x.mean(0), x.std(0, correction=0)
    constant = std <= torch.finfo(torch.float32).eps * mean.abs()
    return mean.float(), torch.where(constant, torch.ones_like(std), std).float()


STANDARDIZE_BUFFERS = ("input_mean", "input_std")


def _standardize_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the network's first argument, standardised with the network's own statistics."""
    return ((args[0] - module.input_mean) / module.input_std, *args[1:])


def has_standardization(net: nn.Module) -> bool:
    """Whether `attach_standardization` gave `net` its input step."""
    return any(hook is _standardize_input for hook in net._forward_pre_hooks.values())


def attach_standardization(net: nn.Module, mean: Tensor, std: Tensor) -> nn.Module:
    """Make `net` standardise its input, `(x - mean) / std`, before its own forward pass; returns `net`.

    The statistics are buffers of the network itself (`input_mean`, `input_std`), applied by a
    forward pre-hook:

    - they are in its `state_dict`, so every file that holds the network's weights (student.ckpt,
      the model cache, Lightning's stage checkpoints) holds the transform it was trained with, and
      loading those weights restores it: the statistics travel with the model, never recomputed;
    - the ONNX exporter traces the hook (a `Sub` and a `Div` in front of the graph), so the
      exported model, and its int8 versions, take the same raw features as the PyTorch one;
    - no submodule is added, so feature-tap paths (`features.2`, ...) stay what they were, and
      parameter and FLOP counts are unchanged.

    Every network of such data (teachers, baseline, student) gets the step, so all of them take
    the data's raw features and are measured on the same inputs. Calling it again updates the values.
    """
    mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
    if mean.shape != std.shape:
        raise DistillError(f"input standardisation: mean has shape {list(mean.shape)} but std {list(std.shape)}")
    if has_standardization(net):
        net.input_mean, net.input_std = mean.to(net.input_mean.device), std.to(net.input_std.device)
        return net
    for name in STANDARDIZE_BUFFERS:
        if hasattr(net, name):
            raise DistillError(f"{type(net).__name__} has an attribute '{name}' already: cannot standardise its input")
    net.register_buffer("input_mean", mean.clone())
    net.register_buffer("input_std", std.clone())
    net.register_forward_pre_hook(_standardize_input)
    return net


def _name(value: int, class_names: Sequence[str] | None) -> str:
    """A class as the messages name it: its label, and its name when the labels were names."""
    return f"{value} ('{class_names[value]}')" if class_names and 0 <= value < len(class_names) else str(value)


def check_labels(splits: Splits, declared: int | None, source: str, class_names: Sequence[str] | None = None) -> int:
    """The number of classes, after refusing labels no model can learn from; one line per problem.

    Refused: a label beyond a declared `num_classes`; a class in validation or test that training
    lacks; a single class in training; and, when the class count is inferred, labels other than
    0..K-1 with every class in training (a stray label of 10^9 would otherwise size the output layer).
    """
    train = np.unique(splits.y_train)
    largest = int(max(splits.y_train.max(), splits.y_val.max(), splits.y_test.max()))
    if declared and largest >= declared:
        raise DistillError(f"{source}: data.num_classes={declared} but a label is {largest}")
    for split in ("val", "test"):
        unseen = np.setdiff1d(np.unique(getattr(splits, f"y_{split}")), train)
        if len(unseen):
            what = "validation" if split == "val" else "test"
            raise DistillError(
                f"{source}: class {_name(int(unseen[0]), class_names)} occurs in the {what} split but not in "
                "training: no model can learn it"
            )
    if len(train) < 2:
        raise DistillError(
            f"{source}: the training split holds a single class ({_name(int(train[0]), class_names)}): "
            "classification needs at least two"
        )
    if not declared:
        missing = np.setdiff1d(np.arange(min(largest + 1, len(train) + 1)), train)
        if len(missing):
            raise DistillError(
                f"{source}: labels must be 0..K-1 with every class in training when data.num_classes is not set, "
                f"but class {int(missing[0])} has no training sample (largest label {largest}); "
                "set data.num_classes, or give the classes as names (string labels)"
            )
    return declared or largest + 1


class ArrayDataModule(L.LightningDataModule):
    """A classification dataset held in memory as tensors.

    Subclasses implement `load_splits`. `train_dataloader` gives the labelled training set
    (teacher and baseline training); `distill_dataloader` adds the unlabelled transfer set,
    whose targets are `UNLABELLED`.

    The tensors hold the features as read. `input_stats` (mean, std per feature of the training
    split) is set by data whose networks standardise their input (`attach_standardization`);
    `class_names` by data labelled with names (label i is `class_names[i]`).
    """

    source = "dataset"
    #: keep uint8 samples (images) as uint8 in memory; the loaders turn them into model inputs
    keep_uint8 = False
    input_stats: tuple[Tensor, Tensor] | None = None
    class_names: list[str] | None = None

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
        self.num_classes = check_labels(splits, self._declared_classes, self.source, self.class_names)
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

    def fingerprint(self) -> str:
        """A digest of the content: every tensor held, the standardisation statistics and the class names.

        Equal data give equal fingerprints; a change of any value changes it (sets the data up first).
        """
        if not self.tensors:
            self.setup()
        arrays: dict[str, object] = dict(self.tensors)
        if self.input_stats is not None:
            arrays["input_mean"], arrays["input_std"] = self.input_stats
        if self.class_names:
            arrays["class_names"] = np.array(self.class_names, dtype=str)
        return digest_arrays(arrays)

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
