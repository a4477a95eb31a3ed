"""Data modules: digits splits, in-memory batches, the user's own files, and generated MNIST-1D."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from distill.data import (
    UNLABELLED,
    DigitsDataModule,
    FileDataModule,
    MNIST1DDataModule,
    TensorBatches,
)
from distill.errors import DistillError


def sorted_rows(a: np.ndarray) -> np.ndarray:
    """Rows in lexicographic order, so two arrays compare as multisets of rows."""
    a = np.asarray(a).reshape(len(a), -1)
    return a[np.lexsort(a.T[::-1])]


# -- TensorBatches -----------------------------------------------------------------------------


def make_batches(n: int = 23, batch_size: int = 5, **kwargs) -> TensorBatches:
    x = torch.arange(n * 2, dtype=torch.float32).reshape(n, 2)
    y = torch.arange(n) % 3
    return TensorBatches(x, y, batch_size, **kwargs)


def epoch_order(batches: TensorBatches) -> torch.Tensor:
    return torch.cat([b["index"] for b in batches])


@pytest.mark.parametrize("n,batch_size", [(23, 5), (20, 5), (7, 10), (1, 1)])
def test_shuffled_epoch_covers_every_row_once(n: int, batch_size: int) -> None:
    batches = make_batches(n, batch_size, shuffle=True, seed=3)
    order = epoch_order(batches)
    assert sorted(order.tolist()) == list(range(n))


@pytest.mark.parametrize("n,batch_size,expected", [(23, 5, 5), (20, 5, 4), (7, 10, 1), (1, 1, 1)])
def test_len_matches_number_of_batches(n: int, batch_size: int, expected: int) -> None:
    batches = make_batches(n, batch_size, shuffle=True)
    assert len(batches) == expected
    assert len(list(batches)) == expected
    sizes = [len(b["index"]) for b in batches]
    assert sum(sizes) == n and all(s == batch_size for s in sizes[:-1])


def test_drop_last_drops_the_partial_batch() -> None:
    batches = make_batches(23, 5, shuffle=True, drop_last=True)
    assert len(batches) == 4
    got = list(batches)
    assert len(got) == 4
    assert all(len(b["index"]) == 5 for b in got)
    rows = torch.cat([b["index"] for b in got])
    assert len(set(rows.tolist())) == 20  # no row twice within the epoch
    assert len(make_batches(7, 10, drop_last=True)) == 0
    assert list(make_batches(7, 10, drop_last=True)) == []


def test_reshuffles_between_epochs_deterministically() -> None:
    batches = make_batches(50, 8, shuffle=True, seed=1)
    first, second = epoch_order(batches), epoch_order(batches)
    assert sorted(second.tolist()) == list(range(50))
    assert not torch.equal(first, second)
    again = make_batches(50, 8, shuffle=True, seed=1)  # same seed: the same sequence of epochs
    assert torch.equal(epoch_order(again), first)
    assert torch.equal(epoch_order(again), second)
    other = make_batches(50, 8, shuffle=True, seed=2)
    assert not torch.equal(epoch_order(other), first)


def test_unshuffled_order_is_the_row_order() -> None:
    batches = make_batches(23, 5)
    assert epoch_order(batches).tolist() == list(range(23))
    assert epoch_order(batches).tolist() == list(range(23))


@pytest.mark.parametrize("shuffle", [False, True])
def test_index_field_matches_the_rows(shuffle: bool) -> None:
    batches = make_batches(23, 4, shuffle=shuffle)
    for batch in batches:
        assert set(batch) == {"x", "y", "index"}
        assert torch.equal(batch["x"], batches.x[batch["index"]])
        assert torch.equal(batch["y"], batches.y[batch["index"]])
        assert torch.equal(batch["x"][:, 0], batch["index"].float() * 2)  # row i holds 2i, 2i+1


def test_tensor_batches_refuse_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rows"):
        TensorBatches(torch.zeros(3, 2), torch.zeros(4), 2)
    with pytest.raises(ValueError, match="batch_size"):
        TensorBatches(torch.zeros(3, 2), torch.zeros(3), 0)


# -- digits ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(seed=0, batch_size=64)
    dm.setup()
    return dm


def test_digits_shapes_and_classes(digits: DigitsDataModule) -> None:
    assert digits.num_classes == 10
    assert digits.input_shape == (64,)
    t = digits.tensors
    assert t["x_train"].dtype == torch.float32 and t["y_train"].dtype == torch.long
    assert t["x_train"].shape[1:] == (64,)
    assert 0.0 <= t["x_train"].min() and t["x_train"].max() <= 1.0
    assert digits.num_transfer == 0


def test_digits_split_sizes(digits: DigitsDataModule) -> None:
    t = digits.tensors
    sizes = {name: len(t[f"x_{name}"]) for name in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes == {"train": 1077, "val": 360, "test": 360}  # 60/20/20
    for name in ("train", "val", "test"):
        assert len(t[f"y_{name}"]) == sizes[name]
        assert set(t[f"y_{name}"].tolist()) == set(range(10))  # stratified: every class everywhere


def test_digits_splits_partition_the_dataset(digits: DigitsDataModule) -> None:
    """Together the splits are exactly the dataset's rows (each once), so they are disjoint."""
    x, y = load_digits(return_X_y=True)
    original = np.hstack([x.astype("float32") / 16.0, y[:, None]])
    t = digits.tensors
    parts = [np.hstack([t[f"x_{n}"].numpy(), t[f"y_{n}"].numpy()[:, None]]) for n in ("train", "val", "test")]
    np.testing.assert_array_equal(sorted_rows(np.vstack(parts)), sorted_rows(original))


def test_digits_same_seed_same_split_other_seed_other_split(digits: DigitsDataModule) -> None:
    same = DigitsDataModule(seed=0)
    same.setup()
    other = DigitsDataModule(seed=1)
    other.setup()
    assert torch.equal(same.tensors["x_test"], digits.tensors["x_test"])
    assert not torch.equal(other.tensors["x_test"], digits.tensors["x_test"])


def test_digits_loaders(digits: DigitsDataModule) -> None:
    train = digits.train_dataloader()
    assert train.shuffle and train.batch_size == 64
    assert digits.train_dataloader(batch_size=10).batch_size == 10
    assert sorted(epoch_order(train).tolist()) == list(range(1077))
    val = digits.val_dataloader()
    assert not val.shuffle
    assert torch.equal(torch.cat([b["y"] for b in val]), digits.tensors["y_val"])
    distill = digits.distill_dataloader()
    assert len(distill.x) == 1077 and (distill.y != UNLABELLED).all()


# -- FileDataModule ----------------------------------------------------------------------------


def labelled_arrays(n: int = 60, features: int = 4, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype(np.float32), np.arange(n) % classes


def load_file(path: Path, **kwargs) -> FileDataModule:
    dm = FileDataModule(path=str(path), **kwargs)
    dm.setup()
    return dm


def test_npz_x_y_is_split_by_fractions(tmp_path: Path) -> None:
    x, y = labelled_arrays(60)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    dm = load_file(tmp_path / "data.npz", val_fraction=0.1, test_fraction=0.2)
    t = dm.tensors
    assert (len(t["x_train"]), len(t["x_val"]), len(t["x_test"])) == (42, 6, 12)
    assert dm.num_classes == 3 and dm.input_shape == (4,)
    assert dm.num_transfer == 0
    together = np.vstack(
        [np.hstack([t[f"x_{n}"].numpy(), t[f"y_{n}"].numpy()[:, None]]) for n in ("train", "val", "test")]
    )
    np.testing.assert_array_equal(sorted_rows(together), sorted_rows(np.hstack([x, y[:, None]])))


def test_npz_with_splits_and_transfer(tmp_path: Path) -> None:
    x_train, y_train = labelled_arrays(40, seed=1)
    x_test, y_test = labelled_arrays(15, seed=2)
    x_transfer = np.random.default_rng(3).normal(size=(25, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, x_transfer=x_transfer)
    dm = load_file(tmp_path / "d.npz", val_fraction=0.25)
    t = dm.tensors
    np.testing.assert_array_equal(t["x_test"].numpy(), x_test)  # the file's test set, untouched
    np.testing.assert_array_equal(t["y_test"].numpy(), y_test)
    assert (len(t["x_train"]), len(t["x_val"])) == (30, 10)  # validation split off the training set
    np.testing.assert_array_equal(t["x_transfer"].numpy(), x_transfer)
    assert dm.num_transfer == 25
    loader = dm.distill_dataloader()
    assert len(loader.x) == 55
    assert ((loader.y == UNLABELLED) == (torch.arange(55) >= 30)).all()


def test_npz_with_explicit_validation_set(tmp_path: Path) -> None:
    x_train, y_train = labelled_arrays(30, seed=1)
    x_val, y_val = labelled_arrays(9, seed=4)
    x_test, y_test = labelled_arrays(12, seed=2)
    np.savez(
        tmp_path / "d.npz", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test
    )
    dm = load_file(tmp_path / "d.npz")
    np.testing.assert_array_equal(dm.tensors["x_train"].numpy(), x_train)
    np.testing.assert_array_equal(dm.tensors["x_val"].numpy(), x_val)
    np.testing.assert_array_equal(dm.tensors["y_val"].numpy(), y_val)


def test_npz_float_but_integral_labels_are_accepted(tmp_path: Path) -> None:
    x, y = labelled_arrays(30)
    np.savez(tmp_path / "d.npz", x=x, y=y.astype(np.float64))
    dm = load_file(tmp_path / "d.npz")
    assert dm.tensors["y_train"].dtype == torch.long
    assert dm.num_classes == 3


def test_csv_label_column_is_taken_out(tmp_path: Path) -> None:
    x, y = labelled_arrays(30, features=3)
    rows = ["a,label,b,c"] + [f"{r[0]},{c},{r[1]},{r[2]}" for r, c in zip(x.tolist(), y.tolist(), strict=True)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    dm = load_file(tmp_path / "d.csv")
    assert dm.input_shape == (3,) and dm.num_classes == 3
    t = dm.tensors
    together = np.vstack(
        [np.hstack([t[f"x_{n}"].numpy(), t[f"y_{n}"].numpy()[:, None]]) for n in ("train", "val", "test")]
    )
    np.testing.assert_allclose(sorted_rows(together), sorted_rows(np.hstack([x, y[:, None]])), rtol=1e-6)


def test_csv_custom_label_column(tmp_path: Path) -> None:
    lines = ["f1, f2, target"] + [f"{i}.5,{-i},{i % 2}" for i in range(20)]
    (tmp_path / "d.csv").write_text("\n".join(lines))
    dm = load_file(tmp_path / "d.csv", label_column="target")
    assert dm.num_classes == 2 and dm.input_shape == (2,)
    xs = torch.cat([dm.tensors[f"x_{n}"] for n in ("train", "val", "test")])
    assert sorted(xs[:, 0].tolist()) == [i + 0.5 for i in range(20)]


def test_csv_with_byte_order_mark(tmp_path: Path) -> None:
    lines = ["label,a,b"] + [f"{i % 2},{i},{i * 2}" for i in range(20)]
    (tmp_path / "d.csv").write_text("\n".join(lines), encoding="utf-8-sig")
    dm = load_file(tmp_path / "d.csv")
    assert dm.num_classes == 2 and dm.input_shape == (2,)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def good_csv_rows(n: int = 20) -> list[str]:
    return [f"{i},{i * 2},{i % 2}" for i in range(n)]


BAD_INPUTS = {
    "empty csv": (lambda p: write_csv(p / "d.csv", ""), r"data file is empty: .*d\.csv"),
    "empty npz": (lambda p: write_csv(p / "d.npz", ""), r"data file is empty: .*d\.npz"),
    "header only": (lambda p: write_csv(p / "d.csv", "a,b,label\n"), r"d\.csv: no data rows under the header"),
    "non-numeric cell": (
        lambda p: write_csv(p / "d.csv", "\n".join(["a,b,label", *good_csv_rows(5), "1,oops,0", *good_csv_rows(5)])),
        r"d\.csv: malformed CSV \(.*oops",
    ),
    "no label column": (
        lambda p: write_csv(p / "d.csv", "\n".join(["a,b,c", *good_csv_rows()])),
        r"d\.csv: no label column 'label' in header \['a', 'b', 'c'\]",
    ),
    "column count mismatch": (
        lambda p: write_csv(p / "d.csv", "\n".join(["a,label", *good_csv_rows()])),
        r"rows have 3 columns but the header has 2",
    ),
    "non-integer csv labels": (
        lambda p: write_csv(p / "d.csv", "\n".join(["a,b,label", *[f"{i},{i},{i / 3}" for i in range(20)]])),
        r"'y' must be a 1-D array of integer class labels",
    ),
    "nan csv features": (
        lambda p: write_csv(p / "d.csv", "\n".join(["a,b,label", *good_csv_rows(), "nan,1,0"])),
        r"features of '\w+' contain NaN or infinite values",
    ),
    "unsupported suffix": (
        lambda p: write_csv(p / "d.txt", "a,b,label\n1,2,0\n"),
        r"unsupported data file type '\.txt' .*use \.npz or \.csv",
    ),
    "missing file": (lambda p: p / "nowhere.npz", r"data file not found: .*nowhere\.npz"),
    "directory": (lambda p: p, r"data file not found"),
}


def npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


X, Y = labelled_arrays(30)
BAD_NPZ = {
    "missing keys": (
        lambda p: npz(p / "d.npz", features=X, labels=Y),
        r"must hold arrays 'x' and 'y' \(or x_train/y_train/x_test/y_test\); found \['features', 'labels'\]",
    ),
    "only x_train/y_train": (
        lambda p: npz(p / "d.npz", x_train=X, y_train=Y),
        r"must hold arrays 'x' and 'y'",
    ),
    "non-integer labels": (
        lambda p: npz(p / "d.npz", x=X, y=Y + 0.5),
        r"'y' must be a 1-D array of integer class labels",
    ),
    "non-integer split labels": (
        lambda p: npz(p / "d.npz", x_train=X, y_train=Y, x_test=X, y_test=Y * 0.1),
        r"'y_test' must be a 1-D array of integer class labels",
    ),
    "one-hot labels": (
        lambda p: npz(p / "d.npz", x=X, y=np.eye(3)[Y]),
        r"'y' must be a 1-D array of integer class labels",
    ),
    "nan labels": (
        lambda p: npz(p / "d.npz", x=X, y=np.where(np.arange(30) == 4, np.nan, Y)),
        r"'y' must be a 1-D array of integer class labels",
    ),
    "negative labels": (
        lambda p: npz(p / "d.npz", x_train=X, y_train=Y - 1, x_val=X, y_val=Y, x_test=X, y_test=Y),
        r"labels in 'y_train' must be >= 0, found -1",
    ),
    "nan features": (
        lambda p: npz(p / "d.npz", x=np.where(np.arange(30)[:, None] == 7, np.nan, X), y=Y),
        r"features of '\w+' contain NaN or infinite values",
    ),
    "nan transfer features": (
        lambda p: npz(p / "d.npz", x=X, y=Y, x_transfer=np.full((3, 4), np.inf, dtype=np.float32)),
        r"features of 'transfer' contain NaN or infinite values",
    ),
    "text features": (
        lambda p: npz(p / "d.npz", x=np.array([["a"] * 4] * 30), y=Y),
        r"features of '\w+' are not numeric",
    ),
    "rows and labels differ": (
        lambda p: npz(p / "d.npz", x=X, y=Y[:-1]),
        r"'x' has 30 rows but 'y' has 29",
    ),
    "too few samples": (
        lambda p: npz(p / "d.npz", x=X[:5], y=Y[:5]),
        r"5 samples are too few",
    ),
    "shape mismatch between splits": (
        lambda p: npz(p / "d.npz", x_train=X, y_train=Y, x_test=X[:, :2], y_test=Y),
        r"splits have different sample shapes",
    ),
    "pickled object array": (
        lambda p: npz(p / "d.npz", x=np.array([{"a": 1}] * 30, dtype=object), y=Y),
        r"cannot read .*d\.npz as \.npz",
    ),
    "not a zip": (
        lambda p: write_csv(p / "d.npz", "this is not a zip archive"),
        r"cannot read .*d\.npz as \.npz",
    ),
}


@pytest.mark.filterwarnings("ignore:loadtxt. input contained no data")
@pytest.mark.parametrize("case", list(BAD_INPUTS) + list(BAD_NPZ))
def test_bad_files_raise_clear_errors(case: str, tmp_path: Path) -> None:
    make, message = {**BAD_INPUTS, **BAD_NPZ}[case]
    path = make(tmp_path)
    dm = FileDataModule(path=str(path))
    with pytest.raises(DistillError, match=message):
        dm.setup()
    assert dm.tensors == {}


NEGATIVE_LABELS_TO_SPLIT = {
    "x/y": lambda p: npz(p / "d.npz", x=X, y=Y - 1),
    "x_train without x_val": lambda p: npz(p / "d.npz", x_train=X, y_train=Y - 1, x_test=X, y_test=Y),
}


@pytest.mark.parametrize("case", list(NEGATIVE_LABELS_TO_SPLIT))
def test_negative_labels_in_a_file_to_split_raise_distill_error(case: str, tmp_path: Path) -> None:
    dm = FileDataModule(path=str(NEGATIVE_LABELS_TO_SPLIT[case](tmp_path)))
    with pytest.raises(DistillError, match=r"(>= 0|negative)"):
        dm.setup()


def test_declared_classes_and_shape_are_checked(tmp_path: Path) -> None:
    x, y = labelled_arrays(30)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    assert load_file(tmp_path / "d.npz", num_classes=5).num_classes == 5
    with pytest.raises(DistillError, match="data.num_classes=2 but a label is 2"):
        load_file(tmp_path / "d.npz", num_classes=2)
    with pytest.raises(DistillError, match=r"data.input_shape=\[2, 2\] but samples have shape \[4\]"):
        load_file(tmp_path / "d.npz", input_shape=[2, 2])


# -- MNIST-1D ----------------------------------------------------------------------------------

SIZES = {"num_train": 40, "num_val": 10, "num_test": 10, "num_transfer": 100}


def test_mnist1d_generates_caches_and_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dm = MNIST1DDataModule(data_dir=str(tmp_path), **SIZES)
    dm.setup()
    t = dm.tensors
    assert (len(t["x_train"]), len(t["x_val"]), len(t["x_test"]), len(t["x_transfer"])) == (40, 10, 10, 100)
    assert dm.input_shape == (40,) and dm.num_classes == 10
    assert dm.num_transfer == 100
    files = list((tmp_path / "mnist1d").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary file left behind
    with np.load(files[0]) as cached:
        assert cached["x"].shape == (160, 40) and cached["y"].shape == (160,)
        np.testing.assert_array_equal(cached["x"][:40], t["x_train"].numpy())
        np.testing.assert_array_equal(cached["x"][60:], t["x_transfer"].numpy())

    # A new instance reads the file instead of generating again.
    import mnist1d.data

    def no_generation(*args, **kwargs):
        raise AssertionError("MNIST-1D was generated again instead of read from the cache")

    monkeypatch.setattr(mnist1d.data, "make_dataset", no_generation)
    again = MNIST1DDataModule(data_dir=str(tmp_path), **SIZES)
    again.setup()
    for key, value in t.items():
        assert torch.equal(again.tensors[key], value), key
    assert list((tmp_path / "mnist1d").iterdir()) == files

    # Other settings are another cache entry (which would need generating).
    with pytest.raises(AssertionError, match="generated again"):
        MNIST1DDataModule(data_dir=str(tmp_path), **{**SIZES, "num_transfer": 50}).setup()


def test_mnist1d_distill_loader_marks_transfer_rows(tmp_path: Path) -> None:
    dm = MNIST1DDataModule(data_dir=str(tmp_path), batch_size=32, **SIZES)
    dm.setup()
    loader = dm.distill_dataloader()
    assert len(loader.x) == 140
    seen = []
    for batch in loader:
        is_transfer = batch["index"] >= 40
        assert torch.equal(batch["y"] == UNLABELLED, is_transfer)
        assert (batch["y"][~is_transfer] >= 0).all()
        labelled = batch["index"][~is_transfer]
        assert torch.equal(batch["y"][~is_transfer], dm.tensors["y_train"][labelled])
        assert torch.equal(batch["x"][is_transfer], dm.tensors["x_transfer"][batch["index"][is_transfer] - 40])
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(140))
    assert (dm.train_dataloader().y != UNLABELLED).all()
