"""Image datasets in torchvision's on-disk formats: CIFAR-10/100, MNIST, Fashion-MNIST (held in memory
as uint8 and augmented per batch, on whichever device holds them) and ImageFolder trees (ImageNet
layout, streamed from disk by DataLoader workers).

Nothing is downloaded unless `download=true`; missing files give one line saying where they go.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from distill.data.base import ArrayDataModule, Splits, split_off
from distill.data.batches import TensorBatches
from distill.errors import DistillError

log = logging.getLogger(__name__)

# Per-channel mean and std of each training set (the values the published recipes normalise with).
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# What each dataset looks like on disk under data_dir, and where it comes from.
LAYOUT = {
    "cifar10": ("cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}",
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python/{train, test, meta}", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    "mnist": ("MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte", "https://yann.lecun.com/exdb/mnist/"),
    "fashion_mnist": ("FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
                      "https://github.com/zalandoresearch/fashion-mnist"),
}  # fmt: skip


def _torchvision_dataset(name: str, verify: bool) -> type:
    """torchvision's class for `name`; with `verify=False` the CIFAR files are not checked against their MD5."""
    from torchvision import datasets

    cls = {
        "cifar10": datasets.CIFAR10,
        "cifar100": datasets.CIFAR100,
        "mnist": datasets.MNIST,
        "fashion_mnist": datasets.FashionMNIST,
    }[name]
    if verify or not hasattr(cls, "_check_integrity"):
        return cls

    class Unverified(cls):  # type: ignore[misc, valid-type]
        def _check_integrity(self) -> bool:
            root = Path(self.root) / self.base_folder
            return all((root / entry[0]).is_file() for entry in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            path = Path(self.root) / self.base_folder / self.meta["filename"]
            if not path.is_file():
                raise RuntimeError(f"Dataset metadata file not found: {path}")
            with open(path, "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    return Unverified


def augment_batch(x: Tensor, pad: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random crop after zero-padding by `pad` pixels, and random horizontal flip, for a [B, C, H, W] batch.

    One offset and one flip per image, drawn on the batch's device: the usual CIFAR augmentation,
    done for the whole batch at once instead of image by image.
    """
    b, _, h, w = x.shape
    if pad:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, channel, rows, cols]
    if flip:
        mirrored = torch.rand(b, device=x.device, generator=generator) < 0.5
        x = torch.where(mirrored[:, None, None, None], x.flip(-1), x)
    return x


class ImageBatches(TensorBatches):
    """Batches of uint8 images, turned into normalised float inputs (augmented for training) where they live.

    With `augment`, each image is randomly cropped (after `pad` pixels of zero padding) and
    flipped; the draws depend on (seed, epoch) only, so a resumed run sees the same images.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: bool = False,
        pad: int = 4,
        flip: bool = True,
        channels_last: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(x, y, batch_size, **kwargs)
        self.mean = torch.tensor(mean, device=x.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=x.device).view(1, -1, 1, 1) * 255
        self.augment, self.pad, self.flip, self.channels_last = augment, pad, flip, channels_last

    @property
    def deterministic(self) -> bool:  # teacher outputs may be cached only when an index always gives the same input
        return not self.augment

    def inputs(self, start: int, stop: int) -> Tensor:
        """Rows `start:stop` as model inputs, without augmentation."""
        return self._normalise(self.x[start:stop])

    def _normalise(self, x: Tensor) -> Tensor:
        x = (x.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        generator = torch.Generator(device=self.x.device).manual_seed(self.seed * 100_003 + self.epoch)
        for batch in super().__iter__():
            x = batch["x"]
            if self.augment:
                x = augment_batch(x, self.pad, self.flip, generator)
            batch["x"] = self._normalise(x)
            yield batch


class TorchvisionDataModule(ArrayDataModule):
    """CIFAR-10, CIFAR-100, MNIST or Fashion-MNIST from their torchvision files under `data_dir`.

    `val_size` training images (stratified) are held out for validation; with `val_size=0` the
    whole training set is used and the test set doubles as the validation set, as the published
    CIFAR recipes do. `device=cuda` keeps the images on the GPU (CIFAR-100: 150 MB as uint8),
    where batches are also augmented.
    """

    keep_uint8 = True

    def __init__(
        self,
        dataset: str,
        data_dir: str,
        download: bool = False,
        verify: bool = True,
        val_size: int = 5000,
        augment: bool = True,
        pad: int = 4,
        flip: bool = True,
        device: str = "cpu",
        channels_last: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if dataset not in LAYOUT:
            raise DistillError(f"unknown torchvision dataset '{dataset}'; valid: {', '.join(LAYOUT)}")
        if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0:
            raise DistillError(f"data.val_size must be a non-negative integer, got {val_size!r}")
        self.dataset, self.data_dir, self.download, self.verify = dataset, Path(data_dir).expanduser(), download, verify
        self.val_size, self.augment, self.pad, self.flip = val_size, augment, pad, flip
        self.device, self.channels_last = torch.device(device), channels_last
        self.source = f"{dataset} in {self.data_dir}"
        self.mean, self.std = STATS[dataset]

    def _read(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        cls = _torchvision_dataset(self.dataset, self.verify)
        layout, url = LAYOUT[self.dataset]
        try:
            ds = cls(str(self.data_dir), train=train, download=self.download)
        except RuntimeError as err:
            if "not found" not in str(err).lower() and "download=true" not in str(err).lower():
                raise DistillError(f"{self.dataset}: cannot read {self.data_dir}: {err}") from None
            folder = self.data_dir / layout.split("/")[0]
            if folder.is_dir() and any(folder.rglob("*")):
                raise DistillError(
                    f"{self.dataset}: the files in {folder} are incomplete or fail their MD5 check "
                    f"(expected {layout}); data.verify=false reads them unchecked"
                ) from None
            raise DistillError(
                f"{self.dataset} not found in {self.data_dir}: put {layout} there (from {url}), "
                "or run with data.download=true"
            ) from None
        except OSError as err:  # a download without network, a truncated file, ...
            raise DistillError(
                f"{self.dataset}: {' '.join(str(err).split())[:200]}; put {layout} in {self.data_dir} (from {url})"
            ) from None
        images = np.asarray(ds.data)
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)  # -> N, C, H, W
        return np.ascontiguousarray(images, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)

    def load_splits(self) -> Splits:
        x_rest, y_rest = self._read(train=True)
        x_test, y_test = self._read(train=False)
        if self.val_size == 0:
            log.info("%s: validating on the test set (val_size=0), as the published recipes do", self.dataset)
            return Splits(x_rest, y_rest, x_test, y_test, x_test, y_test)
        if self.val_size >= len(y_rest):
            raise DistillError(f"data.val_size={self.val_size} leaves no training image (there are {len(y_rest)})")
        x_train, x_val, y_train, y_val = split_off(x_rest, y_rest, self.val_size / len(y_rest), self.seed)
        return Splits(x_train, y_train, x_val, y_val, x_test, y_test)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.device.type != "cpu":
            self.tensors = {k: v.to(self.device) for k, v in self.tensors.items()}

    def _batches(self, x: Tensor, y: Tensor, batch_size: int, train: bool) -> ImageBatches:
        return ImageBatches(
            x, y, batch_size, self.mean, self.std,
            augment=train and self.augment, pad=self.pad, flip=self.flip, channels_last=self.channels_last,
            shuffle=train, seed=self.seed,
        )  # fmt: skip

    def train_dataloader(self, batch_size: int | None = None) -> ImageBatches:
        t = self.tensors
        return self._batches(t["x_train"], t["y_train"], batch_size or self.batch_size, train=True)

    def distill_dataloader(self, batch_size: int | None = None) -> ImageBatches:
        return self.train_dataloader(batch_size)  # no transfer set

    def val_dataloader(self) -> ImageBatches:
        return self._batches(self.tensors["x_val"], self.tensors["y_val"], self.eval_batch_size, train=False)

    def test_dataloader(self) -> ImageBatches:
        return self._batches(self.tensors["x_test"], self.tensors["y_test"], self.eval_batch_size, train=False)

    def model_inputs(self, split: str, n: int) -> Tensor:
        loader = self._batches(self.tensors[f"x_{split}"], self.tensors[f"y_{split}"], n, train=False)
        return loader.inputs(0, n).cpu()


class _Indexed(torch.utils.data.Dataset):
    """A (image, target) dataset as `{"x", "y", "index"}` samples."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x, y = self.dataset[i]
        return {"x": x, "y": y, "index": i}


def _folder_with_classes(path: Path, classes: list[str], transform: Any) -> Any:
    """An ImageFolder of `path` labelled with the training folder's class indices (a split may lack classes)."""
    from torchvision import datasets

    present = sorted(p.name for p in path.iterdir() if p.is_dir())
    unknown = [c for c in present if c not in classes]
    if unknown:
        raise FileNotFoundError(f"{path} has classes that 'train' lacks: {', '.join(unknown[:5])}")

    class Folder(datasets.ImageFolder):
        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            return classes, {c: i for i, c in enumerate(classes)}

    return Folder(str(path), transform=transform, allow_empty=True)


class ImageFolderDataModule(L.LightningDataModule):
    """An ImageNet-layout tree: `root/train/<class>/*.jpg`, `root/val/<class>/*.jpg` (and optionally `root/test/`).

    Images are decoded by DataLoader workers with torchvision's transforms: random-resized crop and
    flip for training; resize and centre crop for evaluation. Without a `test` folder, `val`
    is also the test set (as ImageNet results are reported).
    """

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        resize: int = 256,
        batch_size: int = 256,
        eval_batch_size: int = 256,
        num_workers: int = 4,
        seed: int = 0,
        num_classes: int | None = None,
        input_shape: list[int] | None = None,
        **_: Any,
    ) -> None:
        super().__init__()
        self.root, self.image_size, self.resize = Path(root).expanduser(), image_size, resize
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = (
            batch_size,
            eval_batch_size,
            num_workers,
            seed,
        )
        self._declared_classes = num_classes
        self.mean, self.std = STATS["imagenet"]
        self.sets: dict[str, Any] = {}

    def prepare_data(self) -> None:
        for split in ("train", "val"):
            if not (self.root / split).is_dir():
                raise DistillError(
                    f"image folder {self.root} has no '{split}' folder: expected {self.root}/{split}/<class>/<image>"
                )

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        from torchvision import datasets, transforms

        norm = transforms.Normalize(self.mean, self.std)
        train_tf = transforms.Compose([
            transforms.RandomResizedCrop(self.image_size), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), norm,
        ])  # fmt: skip
        eval_tf = transforms.Compose([
            transforms.Resize(self.resize), transforms.CenterCrop(self.image_size), transforms.ToTensor(), norm,
        ])  # fmt: skip
        try:
            self.sets["train"] = datasets.ImageFolder(str(self.root / "train"), transform=train_tf)
            classes = self.sets["train"].classes
            self.sets["val"] = _folder_with_classes(self.root / "val", classes, eval_tf)
            test = self.root / "test"
            self.sets["test"] = _folder_with_classes(test, classes, eval_tf) if test.is_dir() else self.sets["val"]
        except (FileNotFoundError, RuntimeError) as err:
            raise DistillError(f"image folder {self.root}: {' '.join(str(err).split())[:200]}") from None
        self.num_classes = self._declared_classes or len(classes)
        if len(classes) > self.num_classes:
            raise DistillError(
                f"image folder {self.root}: {len(classes)} classes but data.num_classes={self.num_classes}"
            )
        channels = self.sets["val"][0][0].shape[0]
        self.input_shape = (channels, self.image_size, self.image_size)
        self.num_transfer = 0

    def fingerprint(self) -> str:
        """A digest of the image tree under `root`: every file's relative path, size and modification time."""
        from distill.fingerprint import folder_fingerprint

        return folder_fingerprint(self.root)

    @property
    def num_train(self) -> int:
        return len(self.sets["train"])

    def describe(self) -> str:
        return (
            f"{len(self.sets['train'])} train, 0 transfer, {len(self.sets['val'])} val, {len(self.sets['test'])} test "
            f"images of shape {list(self.input_shape)}, {self.num_classes} classes"
        )

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            _Indexed(self.sets[split]), batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.seed), drop_last=False,
        )  # fmt: skip

    def train_dataloader(self, batch_size: int | None = None) -> torch.utils.data.DataLoader:
        return self._loader("train", batch_size or self.batch_size, shuffle=True)

    def distill_dataloader(self, batch_size: int | None = None) -> torch.utils.data.DataLoader:
        return self.train_dataloader(batch_size)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def model_inputs(self, split: str, n: int) -> Tensor:
        data = self.sets[split]
        return torch.stack([data[i][0] for i in range(min(n, len(data)))])


class CifarLikeDataModule(TorchvisionDataModule):
    """The `cifar_like` task (distill.data.formats.cifar_like) written once in CIFAR-10's format, then read
    back through the CIFAR-10 loader: a CIFAR-shaped run with no download."""

    #: bumped whenever `cifar_like` draws different images (the version is part of the folder and cache keys)
    GENERATOR_VERSION = 2

    def __init__(
        self,
        data_dir: str,
        num_train: int = 10000,
        num_test: int = 2000,
        generator_seed: int = 0,
        generator_version: int = GENERATOR_VERSION,
        **kwargs: Any,
    ) -> None:
        if generator_version != self.GENERATOR_VERSION:
            raise DistillError(
                f"data.generator_version={generator_version}: this version of distill draws version {self.GENERATOR_VERSION}"
            )
        folder = (
            Path(data_dir).expanduser() / f"cifar_like_v{generator_version}_{num_train}_{num_test}_{generator_seed}"
        )
        kwargs.pop("dataset", None)
        super().__init__("cifar10", str(folder), download=False, verify=False, **kwargs)
        self.num_train_images, self.num_test_images, self.generator_seed = num_train, num_test, generator_seed
        self.source = f"cifar_like in {folder}"

    def prepare_data(self) -> None:
        import shutil
        import tempfile

        from filelock import FileLock

        from distill.data.formats import cifar_like, write_cifar

        target = self.data_dir / "cifar-10-batches-py"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.data_dir / ".lock")):
            if target.is_dir():
                return
            log.info("Generating cifar_like: %d + %d images in %s", self.num_train_images, self.num_test_images, target)
            arrays = cifar_like(self.num_train_images, self.num_test_images, self.generator_seed)
            with tempfile.TemporaryDirectory(dir=self.data_dir) as tmp:
                written = write_cifar(Path(tmp), *arrays, variant="cifar10", class_names=[str(i) for i in range(10)])
                shutil.move(str(written), target)  # appears whole or not at all
