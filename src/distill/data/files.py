"""A user's own dataset from an `.npz` or `.csv` file.

`.npz`: arrays `x` and `y` (split by fractions), or `x_train`/`y_train` with `x_test`/`y_test`
(and optionally `x_val`/`y_val`); an optional `x_transfer` holds unlabelled samples.
`.csv`: a header row, one numeric column per feature and a label column (`label_column`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from distill.data.base import ArrayDataModule, Splits, split_off
from distill.errors import DistillError


class FileDataModule(ArrayDataModule):
    """Reads `path`; splits off validation and test sets by fraction when the file has none."""

    def __init__(
        self,
        path: str,
        label_column: str = "label",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.path = Path(path).expanduser()
        self.label_column = label_column
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.source = f"data file {self.path}"

    def load_splits(self) -> Splits:
        if not self.path.is_file():
            raise DistillError(f"data file not found: {self.path}")
        if self.path.stat().st_size == 0:
            raise DistillError(f"data file is empty: {self.path}")
        suffix = self.path.suffix.lower()
        if suffix == ".npz":
            arrays = self._read_npz()
        elif suffix == ".csv":
            arrays = self._read_csv()
        else:
            raise DistillError(f"unsupported data file type '{suffix}' ({self.path}); use .npz or .csv")
        return self._split(arrays)

    def _read_npz(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self.path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise DistillError(f"cannot read {self.path} as .npz: {err}") from None
        has_plain = {"x", "y"} <= arrays.keys()
        has_splits = {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys()
        if not (has_plain or has_splits):
            raise DistillError(
                f"{self.path} must hold arrays 'x' and 'y' (or x_train/y_train/x_test/y_test); found {sorted(arrays) or 'none'}"
            )
        return arrays

    def _read_csv(self) -> dict[str, np.ndarray]:
        with open(self.path, encoding="utf-8-sig", errors="replace") as f:  # -sig: Excel writes a BOM
            header = f.readline().strip().split(",")
        header = [h.strip() for h in header]
        if self.label_column not in header:
            raise DistillError(f"{self.path}: no label column '{self.label_column}' in header {header}")
        try:
            table = np.loadtxt(self.path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
        except ValueError as err:
            raise DistillError(f"{self.path}: malformed CSV ({err})") from None
        if table.size == 0:
            raise DistillError(f"{self.path}: no data rows under the header")
        if table.shape[1] != len(header):
            raise DistillError(f"{self.path}: rows have {table.shape[1]} columns but the header has {len(header)}")
        label = header.index(self.label_column)
        return {"x": np.delete(table, label, axis=1).astype(np.float32), "y": table[:, label]}

    def _split(self, a: dict[str, np.ndarray]) -> Splits:
        def labels(name: str) -> np.ndarray:
            y = a[name]
            if (
                y.ndim != 1
                or not np.issubdtype(y.dtype, np.number)
                or not np.isfinite(y).all()
                or (y != np.round(y)).any()
            ):
                raise DistillError(f"{self.path}: '{name}' must be a 1-D array of integer class labels")
            if (y < 0).any():
                raise DistillError(f"{self.path}: labels in '{name}' must be >= 0, found {int(y.min())}")
            return y.astype(np.int64)

        transfer = a.get("x_transfer")
        if "x_train" in a:
            x_train, y_train, x_test, y_test = a["x_train"], labels("y_train"), a["x_test"], labels("y_test")
            if "x_val" in a and "y_val" in a:
                x_val, y_val = a["x_val"], labels("y_val")
            else:
                x_train, x_val, y_train, y_val = split_off(x_train, y_train, self.val_fraction, self.seed)
        else:
            x, y = a["x"], labels("y")
            if len(x) != len(y):
                raise DistillError(f"{self.path}: 'x' has {len(x)} rows but 'y' has {len(y)}")
            if len(x) < 10:
                raise DistillError(f"{self.path}: {len(x)} samples are too few to split into train/val/test")
            x_rest, x_test, y_rest, y_test = split_off(x, y, self.test_fraction, self.seed)
            val = self.val_fraction / (1 - self.test_fraction)
            x_train, x_val, y_train, y_val = split_off(x_rest, y_rest, val, self.seed)
        return Splits(x_train, y_train, x_val, y_val, x_test, y_test, x_transfer=transfer)
