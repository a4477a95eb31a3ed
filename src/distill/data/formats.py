"""CIFAR's pickled-batch format written from arrays (`write_cifar`), and `cifar_like`, a small CIFAR-shaped
task generated here. The `cifar_like` data module writes that task in CIFAR-10's format, so that it goes
through exactly the loading code a downloaded dataset goes through.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def write_cifar(
    root: Path,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    variant: str = "cifar10",
    class_names: list[str] | None = None,
) -> Path:
    """Write uint8 [N, 3, 32, 32] images in CIFAR-10's (5 training batches) or CIFAR-100's python format."""
    root = Path(root)
    classes = class_names or [f"class_{i}" for i in range(int(max(y_train.max(), y_test.max())) + 1)]

    def dump(path: Path, x: np.ndarray, y: np.ndarray, label_key: str) -> None:
        entry = {"data": x.reshape(len(x), -1).astype(np.uint8), label_key: [int(v) for v in y]}
        path.write_bytes(pickle.dumps(entry))

    if variant == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for i, part in enumerate(np.array_split(np.arange(len(x_train)), 5), start=1):
            dump(folder / f"data_batch_{i}", x_train[part], y_train[part], "labels")
        dump(folder / "test_batch", x_test, y_test, "labels")
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": classes}))
    elif variant == "cifar100":
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        dump(folder / "train", x_train, y_train, "fine_labels")
        dump(folder / "test", x_test, y_test, "fine_labels")
        (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": classes}))
    else:
        raise ValueError(f"variant must be cifar10 or cifar100, got {variant!r}")
    return folder


def cifar_like(num_train: int, num_test: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A small CIFAR-shaped task generated here: scikit-learn's digits drawn in colour on 32x32 noise.

    Each image is one of the 1,797 8x8 digits, scaled 2x or 3x, placed at a random position,
    in a random bright colour over a random darker colour with pixel noise: ten classes
    that need a convolutional network, learnable in minutes on a CPU. Returns uint8
    x_train [N, 3, 32, 32], y_train, x_test, y_test.
    """
    from sklearn.datasets import load_digits

    digits, labels = load_digits(return_X_y=True)
    digits = (digits.reshape(-1, 8, 8) / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        pick = rng.integers(0, len(digits), n)
        images = np.empty((n, 3, 32, 32), dtype=np.uint8)
        for k, i in enumerate(pick):
            scale = int(rng.integers(2, 4))
            glyph = np.kron(digits[i], np.ones((scale, scale), dtype=np.float32))
            size = glyph.shape[0]
            top, left = rng.integers(0, 32 - size + 1, 2)
            fg, bg = rng.uniform(140, 255, 3), rng.uniform(0, 110, 3)  # a bright glyph on a darker ground
            canvas = np.zeros((32, 32), dtype=np.float32)
            canvas[top : top + size, left : left + size] = glyph
            image = bg[:, None, None] * (1 - canvas) + fg[:, None, None] * canvas
            image += rng.normal(0, 15, image.shape)
            images[k] = np.clip(image, 0, 255).astype(np.uint8)
        return images, labels[pick].astype(np.int64)

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(num_test)
    return x_train, y_train, x_test, y_test
