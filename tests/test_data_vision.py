"""Vision data modules read the real on-disk formats (written here, tiny) and augment on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")

from tests.formats import write_image_folder, write_mnist  # noqa: E402

from distill.data.formats import cifar_like, write_cifar  # noqa: E402
from distill.data.vision import ImageBatches, ImageFolderDataModule, TorchvisionDataModule, augment_batch  # noqa: E402
from distill.errors import DistillError  # noqa: E402


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, ...]:
    return cifar_like(120, 40, seed=1)


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_files_load_with_their_labels(tmp_path: Path, images, variant: str) -> None:
    xt, yt, xs, ys = images
    write_cifar(tmp_path, xt, yt, xs, ys, variant)
    dm = TorchvisionDataModule(variant, str(tmp_path), verify=False, val_size=0)
    dm.setup()
    assert dm.tensors["x_train"].dtype == torch.uint8  # held as bytes, 4x less memory than floats
    assert torch.equal(dm.tensors["x_train"], torch.from_numpy(xt))  # every pixel where it was written
    assert torch.equal(dm.tensors["y_test"], torch.from_numpy(ys))
    assert torch.equal(dm.tensors["x_val"], dm.tensors["x_test"])  # val_size=0: validate on the test set
    assert dm.input_shape == (3, 32, 32) and dm.num_classes == 10


def test_cifar_val_split_is_stratified_and_disjoint(tmp_path: Path, images) -> None:
    xt, yt, xs, ys = images
    write_cifar(tmp_path, xt, yt, xs, ys)
    dm = TorchvisionDataModule("cifar10", str(tmp_path), verify=False, val_size=30)
    dm.setup()
    assert len(dm.tensors["x_train"]) == 90 and len(dm.tensors["x_val"]) == 30
    flat = lambda t: {bytes(row) for row in t.reshape(len(t), -1).numpy()}  # noqa: E731
    assert not flat(dm.tensors["x_train"]) & flat(dm.tensors["x_val"])


def test_mnist_and_fashion_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), rng.integers(0, 10, 60)
    for folder, name in (("MNIST", "mnist"), ("FashionMNIST", "fashion_mnist")):
        write_mnist(tmp_path, x[:40], y[:40], x[40:], y[40:], folder=folder)
        dm = TorchvisionDataModule(name, str(tmp_path), val_size=10, augment=False)
        dm.setup()
        assert dm.input_shape == (1, 28, 28)
        assert torch.equal(dm.tensors["x_test"][:, 0], torch.from_numpy(x[40:]))
        batch = next(iter(dm.test_dataloader()))
        mean, std = (0.1307, 0.3081) if name == "mnist" else (0.2860, 0.3530)
        expected = (torch.from_numpy(x[40:]).float() / 255 - mean) / std
        assert torch.allclose(batch["x"][:, 0], expected, atol=1e-5)


def test_image_folder_tree(tmp_path: Path, images) -> None:
    xt, yt, xs, ys = images
    classes = [f"n{i:08d}" for i in range(10)]
    write_image_folder(tmp_path, "train", xt[:30], yt[:30], classes)
    write_image_folder(tmp_path, "val", xs[:20], ys[:20], classes)
    dm = ImageFolderDataModule(str(tmp_path), image_size=24, resize=28, num_workers=0, batch_size=8, eval_batch_size=8)
    dm.prepare_data()
    dm.setup()
    assert dm.num_classes == len(set(yt[:30].tolist())) and dm.input_shape == (3, 24, 24)
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"x", "y", "index"} and batch["x"].shape == (8, 3, 24, 24)
    assert batch["index"].tolist() == list(range(8))
    # a class missing from val keeps the training folder's numbering
    val = dm.sets["val"]
    assert val.classes == classes and all(classes[label] in path for path, label in val.samples)
    assert dm.model_inputs("test", 3).shape == (3, 3, 24, 24)  # no test folder: val is the test set


def test_missing_or_unchecked_files_say_where_they_go(tmp_path: Path, images) -> None:
    with pytest.raises(
        DistillError, match=r"cifar100 not found in .*: put cifar-100-python/\{train, test, meta\} there"
    ):
        TorchvisionDataModule("cifar100", str(tmp_path)).setup()
    with pytest.raises(DistillError, match="MNIST/raw/"):
        TorchvisionDataModule("mnist", str(tmp_path)).setup()
    xt, yt, xs, ys = images
    write_cifar(tmp_path, xt, yt, xs, ys)
    with pytest.raises(DistillError, match="fail their MD5 check .* data.verify=false"):
        TorchvisionDataModule("cifar10", str(tmp_path), verify=True).setup()
    with pytest.raises(DistillError, match="has no 'train' folder"):
        ImageFolderDataModule(str(tmp_path / "nothing")).prepare_data()
    with pytest.raises(DistillError, match="unknown torchvision dataset 'svhn'"):
        TorchvisionDataModule("svhn", str(tmp_path))


def test_augmentation_crops_and_flips_each_image_on_its_own() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, pad=0, flip=True, generator=gen)
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    shifted = augment_batch(x, pad=2, flip=False, generator=torch.Generator().manual_seed(3))
    for i in range(2):  # every crop is a window of the zero-padded image
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        windows = [padded[:, r : r + 4, c : c + 4] for r in range(5) for c in range(5)]
        assert any(torch.equal(shifted[i], w) for w in windows)
    many = augment_batch(torch.randint(0, 255, (256, 3, 8, 8), dtype=torch.uint8), 4, True, gen)
    assert many.shape == (256, 3, 8, 8)


def test_image_batches_are_reproducible_by_epoch_and_cacheable_without_augmentation() -> None:
    x = torch.randint(0, 255, (64, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(64) % 10
    a = ImageBatches(x, y, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), augment=True, shuffle=True, seed=1)
    b = ImageBatches(x, y, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), augment=True, shuffle=True, seed=1)
    a.set_epoch(2)
    b.set_epoch(2)
    assert all(torch.equal(p["x"], q["x"]) for p, q in zip(a, b, strict=True))
    assert not a.deterministic
    plain = ImageBatches(x, y, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), channels_last=True)
    assert plain.deterministic
    first = next(iter(plain))["x"]
    assert first.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(first, (x[:16].float() / 255 - 0.5) / 0.25, atol=1e-5)
    assert torch.allclose(plain.inputs(0, 16), first)
