"""Writers for the on-disk formats the vision data modules read, used by the tests: MNIST's IDX files and
ImageFolder trees (CIFAR's pickled batches: `distill.data.formats.write_cifar`)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def _idx(array: np.ndarray) -> bytes:
    kind = {1: 0x08}[array.dtype.itemsize]  # unsigned bytes
    header = struct.pack(">HBB", 0, kind, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(
    root: Path, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
    folder: str = "MNIST", compress: bool = False,
) -> Path:  # fmt: skip
    """Write uint8 [N, 28, 28] images in MNIST's IDX format under `root/<folder>/raw/` (Fashion-MNIST: folder=FashionMNIST)."""
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, x, y in (("train", x_train, y_train), ("t10k", x_test, y_test)):
        for name, array in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
            data = _idx(np.asarray(array, dtype=np.uint8))
            (raw / name).write_bytes(data)
            if compress:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data))
    return raw


def write_image_folder(root: Path, split: str, x: np.ndarray, y: np.ndarray, class_names: list[str]) -> Path:
    """Write uint8 [N, C, H, W] images as PNG files in `root/<split>/<class name>/<i>.png`."""
    from PIL import Image

    folder = Path(root) / split
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        target = folder / class_names[int(label)]
        target.mkdir(parents=True, exist_ok=True)
        hwc = np.asarray(image, dtype=np.uint8).transpose(1, 2, 0)
        Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc).save(target / f"{i:06d}.png")
    return folder
