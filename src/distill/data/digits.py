"""scikit-learn's 8×8 handwritten digits: 1,797 samples that ship with the package (the quick dataset)."""

from __future__ import annotations

from typing import Any

from sklearn.datasets import load_digits

from distill.data.base import ArrayDataModule, Splits, split_off


class DigitsDataModule(ArrayDataModule):
    """Digits as flat 64-feature vectors scaled to [0, 1], split train/val/test by fractions."""

    source = "digits"

    def __init__(self, val_fraction: float = 0.2, test_fraction: float = 0.2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def load_splits(self) -> Splits:
        x, y = load_digits(return_X_y=True)
        x = x.astype("float32") / 16.0
        x_rest, x_test, y_rest, y_test = split_off(x, y, self.test_fraction, self.seed)
        val = self.val_fraction / (1 - self.test_fraction)
        x_train, x_val, y_train, y_val = split_off(x_rest, y_rest, val, self.seed)
        return Splits(x_train, y_train, x_val, y_val, x_test, y_test)
