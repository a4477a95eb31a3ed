"""A user's own dataset from an `.npz` or `.csv` file.

`.npz`: arrays `x` and `y` (split by fractions), or `x_train`/`y_train` with `x_test`/`y_test`
(and optionally `x_val`/`y_val`); an optional `x_transfer` holds unlabelled samples.
`.csv`: a header row, one numeric column per feature and a label column (`label_column`).

Labels are integers 0..K-1 or class names (strings: a CSV label column with text, or string `y`
arrays), which are numbered 0..K-1 in sorted order and kept as `class_names`. A CSV cell is named
in messages by its column (header name and 1-based position, the label column included) and its
data row (1-based, header and blank lines not counted) with its line in the file.
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from distill.data.base import ArrayDataModule, Splits, feature_statistics, split_off
from distill.errors import DistillError

LABEL_KEYS = ("y", "y_train", "y_val", "y_test")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


class FileDataModule(ArrayDataModule):
    """Reads `path`; splits off validation and test sets by fraction when the file has none.

    With `standardize` (the default) the data also gives the mean and standard deviation of every
    feature over the training split (`input_stats`); every network built for the data applies them
    to its input (`distill.data.base.attach_standardization`), so the features stay as read here.
    """

    def __init__(
        self,
        path: str,
        label_column: str = "label",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        standardize: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(standardize, bool):
            raise DistillError(f"data.standardize must be true or false, got {standardize!r}")
        self.path = Path(path).expanduser()
        self.label_column = label_column
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.standardize = standardize
        self.source = f"data file {self.path}"

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.standardize and self.input_stats is None:
            self.input_stats = feature_statistics(self.tensors["x_train"])

    def describe(self) -> str:
        text = super().describe()
        if self.class_names:
            text += f" ({', '.join(self.class_names[:10])}{', ...' if len(self.class_names) > 10 else ''})"
        if self.input_stats is not None:
            text += "; every network standardises its input with the training split's mean and std per feature"
        return text

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
        return self._split(self._number_class_names(arrays))

    # -- .npz ------------------------------------------------------------------------------------

    def _read_npz(self) -> dict[str, np.ndarray]:
        if not zipfile.is_zipfile(self.path):
            with open(self.path, "rb") as f:
                head = f.read(20)
            raise DistillError(f"cannot read {self.path} as .npz: it is not an .npz (zip) archive (it begins {head!r})")
        arrays: dict[str, np.ndarray] = {}
        try:
            with np.load(self.path, allow_pickle=False) as data:
                for key in data.files:
                    try:
                        arrays[key] = data[key]
                    except ValueError as err:
                        if "allow_pickle" not in str(err):
                            raise
                        raise DistillError(
                            f"cannot read {self.path} as .npz: array '{key}' holds Python objects (dtype object), "
                            "which are not read; store numbers, or strings for class names"
                        ) from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise DistillError(f"cannot read {self.path} as .npz: {' '.join(str(err).split())}") from None
        has_plain = {"x", "y"} <= arrays.keys()
        has_splits = {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys()
        if not (has_plain or has_splits):
            raise DistillError(
                f"{self.path} must hold arrays 'x' and 'y' (or x_train/y_train/x_test/y_test); found {sorted(arrays) or 'none'}"
            )
        return arrays

    # -- .csv ------------------------------------------------------------------------------------

    def _read_csv(self) -> dict[str, np.ndarray]:
        rows: list[list[str]] = []
        lines: list[int] = []  # the file line each data row ends on
        with open(self.path, encoding="utf-8-sig", errors="replace", newline="") as f:  # -sig: Excel writes a BOM
            reader = csv.reader(f)
            try:
                header = [h.strip() for h in next(reader, [])]
                for row in reader:
                    if not row or (len(row) == 1 and not row[0].strip()):
                        continue  # a blank line
                    rows.append([cell.strip() for cell in row])
                    lines.append(reader.line_num)
            except csv.Error as err:
                raise DistillError(f"{self.path}: malformed CSV (line {reader.line_num} of the file: {err})") from None
        if self.label_column not in header:
            raise DistillError(f"{self.path}: no label column '{self.label_column}' in header {header}")
        if len(header) < 2:
            raise DistillError(f"{self.path}: no feature column beside the label column '{self.label_column}'")
        if not rows:
            raise DistillError(f"{self.path}: no data rows under the header")
        for i, row in enumerate(rows):
            if len(row) != len(header):
                raise DistillError(
                    f"{self.path}: rows have {len(row)} columns but the header has {len(header)}, "
                    f"from data row {i + 1} (line {lines[i]} of the file)"
                )

        def where(j: int, i: int) -> str:
            return f"column '{header[j]}' (column {j + 1}), data row {i + 1} (line {lines[i]} of the file)"

        label = header.index(self.label_column)
        columns: dict[int, np.ndarray] = {}
        for j, cells in enumerate(zip(*rows, strict=True)):
            if "" in cells:
                raise DistillError(f"{self.path}: malformed CSV ({where(j, cells.index(''))}: missing value)")
            if j == label:
                continue
            try:
                columns[j] = np.array(cells, dtype=np.float64)
            except ValueError:  # find the cell, or take what Python's float reads and numpy does not
                bad = [i for i, cell in enumerate(cells) if not _is_number(cell)][:1]
                if bad:
                    raise DistillError(
                        f"{self.path}: malformed CSV ({where(j, bad[0])}: '{cells[bad[0]]}' is not a number)"
                    ) from None
                columns[j] = np.array([float(cell) for cell in cells])
            bad = np.flatnonzero(~np.isfinite(columns[j]))
            if len(bad):
                i = int(bad[0])
                raise DistillError(
                    f"{self.path}: features of 'x' contain NaN or infinite values ({where(j, i)}: '{cells[i]}')"
                )
        x = np.stack([columns[j] for j in sorted(columns)], axis=1).astype(np.float32)
        return {"x": x, "y": self._csv_labels([row[label] for row in rows], label, where)}

    def _csv_labels(self, cells: list[str], column: int, where: Any) -> np.ndarray:
        """Numbers when every label cell is a number, else class names (the strings as written)."""
        numeric = [_is_number(cell) for cell in cells]
        if all(numeric):
            return np.array(cells, dtype=np.float64)
        if any(numeric):
            i, k = numeric.index(True), numeric.index(False)
            raise DistillError(
                f"{self.path}: label column '{self.label_column}' mixes numbers ('{cells[i]}' at {where(column, i)}) "
                f"and class names ('{cells[k]}' at {where(column, k)}): use one or the other"
            )
        return np.array(cells, dtype=str)

    # -- labels and splits -----------------------------------------------------------------------

    def _number_class_names(self, a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """String labels replaced by their index among the sorted class names (kept in `class_names`)."""
        keys = [k for k in LABEL_KEYS if k in a]
        named = [k for k in keys if a[k].dtype.kind in "US"]
        if not named:
            return a
        numbered = [k for k in keys if k not in named]
        if numbered:
            raise DistillError(
                f"{self.path}: '{named[0]}' holds class names but '{numbered[0]}' numbers: give every label array the same kind"
            )
        texts = {}
        for k in named:
            if a[k].ndim != 1:
                raise DistillError(
                    f"{self.path}: '{k}' must be a 1-D array of class labels, got shape {list(a[k].shape)}"
                )
            texts[k] = np.char.decode(a[k], "utf-8") if a[k].dtype.kind == "S" else a[k]
            empty = np.flatnonzero(np.char.str_len(texts[k]) == 0)
            if len(empty):
                raise DistillError(f"{self.path}: '{k}' has an empty class name at index {int(empty[0])}")
        names = np.unique(np.concatenate(list(texts.values())))
        self.class_names = [str(n) for n in names]
        return {**a, **{k: np.searchsorted(names, v).astype(np.int64) for k, v in texts.items()}}

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
