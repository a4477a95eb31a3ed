"""Data modules, one file per data family. Each gives dict batches `{"x", "y", "index"}`."""

from distill.data.base import UNLABELLED, ArrayDataModule, Splits
from distill.data.batches import TensorBatches
from distill.data.digits import DigitsDataModule
from distill.data.files import FileDataModule
from distill.data.mnist1d import MNIST1DDataModule

__all__ = [
    "UNLABELLED",
    "ArrayDataModule",
    "DigitsDataModule",
    "FileDataModule",
    "MNIST1DDataModule",
    "Splits",
    "TensorBatches",
]
