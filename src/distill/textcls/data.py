"""`TextClassificationData`: labelled texts (or sentence pairs) tokenized once per split in `setup()`,
served as dynamically padded batches (see `distill.textcls`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from distill.data.base import split_off
from distill.data.batches import TensorBatches
from distill.errors import DistillError
from distill.fingerprint import digest_arrays, digest_text, tokenizer_digest
from distill.textcls.rows import HF_FORMATS, SPLITS, Example, read_file
from distill.textcls.stdlib import stdlib_docstrings
from distill.textcls.tokenizer import TRAINED, load_pretrained, trained_tokenizer

log = logging.getLogger("distill.textcls")

SOURCES = ("stdlib_docstrings", "files")
ROW_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def pack(tensors: dict[str, Tensor], index: Tensor | slice, width: int) -> Tensor:
    """Rows `index` of a split as one `[batch, 3, width]` integer tensor: token ids, attention mask and
    token types (zeros without pairs), the input `distill.textcls.models.SequenceClassifier` takes."""
    ids = tensors["input_ids"][index, :width]
    types = tensors["token_type_ids"][index, :width] if "token_type_ids" in tensors else torch.zeros_like(ids)
    return torch.stack([ids, tensors["attention_mask"][index, :width], types], dim=1)


def padded(x: Tensor, width: int, pad_token_id: int) -> Tensor:
    """`[batch, 3, length]` inputs (`pack`) padded (mask 0) or cut to `width` tokens."""
    if x.shape[-1] >= width:
        return x[..., :width]
    pad = x.new_zeros(x.shape[0], 3, width - x.shape[-1])
    pad[:, 0] = pad_token_id
    return torch.cat([x, pad], dim=-1)


class PaddedBatches(TensorBatches):
    """`{"x", "y", "index", "attention_mask"}` batches of a split's rows, each batch cut to its longest row
    (rows are stored right-padded to the split's longest).

    `x` is `[batch, 3, width]`: token ids, attention mask and token types (`pack`); `y` the labels;
    `index` each example's row in its split; `attention_mask` (`x[:, 1]`) tells the loss terms which
    positions are padding. Behaves like `TensorBatches` (order from (seed, epoch), `set_epoch`, `sharded`,
    `deterministic`); `inputs(start, stop)` gives rows at the split's full width, so that outputs computed
    once over the split (cached teacher outputs) line up: a BERT-style model's outputs at the real
    positions do not depend on how much padding follows them.
    """

    def __init__(self, tensors: dict[str, Tensor], batch_size: int, **kwargs: Any) -> None:
        super().__init__(torch.arange(len(tensors["labels"])), tensors["labels"], batch_size, **kwargs)
        self.tensors = tensors

    def rows(self, index: Tensor) -> dict[str, Tensor]:
        """The batch of rows `index`, as wide as its longest row."""
        width = int(self.tensors["lengths"][index].max()) if len(index) else 0
        x = pack(self.tensors, index, width)
        return {"x": x, "y": self.tensors["labels"][index], "index": index, "attention_mask": x[:, 1]}

    def inputs(self, start: int, stop: int) -> Tensor:  # type: ignore[override]
        """Rows `start:stop` (unshuffled) at the split's full width: for computing teacher outputs once."""
        return pack(self.tensors, slice(start, min(stop, len(self.x))), self.tensors["input_ids"].shape[1])

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for batch in super().__iter__():
            yield self.rows(batch["index"])


def _label_kind(value: int | str) -> str:
    return "an integer" if isinstance(value, int) else "a class name"


def check_labels(splits: dict[str, list[Example]]) -> list[str]:
    """The class names (integers 0..K-1 as their digits, or the training split's names in sorted order),
    after checking that labels are all of one kind, integers are 0..K-1 and every label is a training one."""
    first = next(e for s in SPLITS for e in splits[s])
    for split in SPLITS:
        for e in splits[split]:
            if isinstance(e.label, int) != isinstance(first.label, int):
                raise DistillError(
                    f"{e.where}: label {e.label!r} is {_label_kind(e.label)} but {first.where} has "
                    f"{_label_kind(first.label)}: labels are all integers or all class names"
                )
    train = sorted({e.label for e in splits["train"]})
    if isinstance(first.label, int) and train != list(range(len(train))):
        bad = next(e for e in splits["train"] if not 0 <= e.label < len(train))
        shown = ", ".join(map(str, train[:10])) + (", ..." if len(train) > 10 else "")
        raise DistillError(
            f"{bad.where}: integer label {bad.label} is outside 0..{len(train) - 1} (integer labels must be 0..K-1; "
            f"the training split has {len(train)} classes: {shown})"
        )
    if len(train) < 2:
        raise DistillError(f"the training split has a single class ({train[0]!r}): classification needs 2 or more")
    known = set(train)
    for split in ("val", "test"):
        for e in splits[split]:
            if e.label not in known:
                raise DistillError(
                    f"{e.where}: label {e.label!r} ({split}) is not in the training split "
                    f"(classes: {', '.join(map(str, train[:20]))})"
                )
    return [str(c) for c in train]


class TextClassificationData(L.LightningDataModule):
    """Labelled texts for sequence classification, tokenized into per-split tensors in `setup()`.

    Sources (`source`):
      * `stdlib_docstrings` (default, offline): docstrings of Python's standard library labelled by area
        (`distill.textcls.stdlib`), split by file.
      * `files`: local files, `train` and optionally `val` and `test` (a split without a file is split off
        the training file: `test_fraction` of it, then `val_fraction`, seeded and stratified by label when
        every class has two examples). CSV (a header row; labels that are integer literals are integers)
        and JSON lines by suffix; with `hf_format` (json, csv, parquet) any of them through
        `datasets.load_dataset(hf_format, data_files=...)`.

    Each example has `text_field`, optionally `text_pair_field` (sentence pairs, as NLI) and `label_field`:
    integers 0..K-1, or class names numbered 0..K-1 in sorted order (`class_names`). Labels are all of
    one kind, and every val/test label is a training one.

    Tokenizer (`tokenizer`): `wordpiece` or `bpe` (byte-level), trained on the training split's texts
    (`vocab_size`, `lowercase`) and cached in `cache_dir` under a key of that text and the settings,
    with special tokens [PAD] [UNK] [CLS] [SEP] [MASK] and rows `[CLS] a [SEP] (b [SEP])`; or a local
    folder written by `save_pretrained`, with its own special tokens. Rows are cut to `max_length`
    tokens (pairs: the longer text first). Batches are right-padded to their longest row;
    `token_type_ids` are given with pairs (where the tokenizer makes them).
    """

    def __init__(
        self,
        source: str = "stdlib_docstrings",
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        hf_format: str | None = None,
        text_field: str = "text",
        text_pair_field: str | None = None,
        label_field: str = "label",
        tokenizer: str = "wordpiece",
        vocab_size: int = 8000,
        lowercase: bool = True,
        max_length: int = 128,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        seed: int = 0,
        cache_dir: str = "data/textcls",
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise DistillError(f"unknown text classification source '{source}'; use one of {', '.join(SOURCES)}")
        if source == "files" and not train:
            raise DistillError("source=files needs train: a local CSV, JSON lines or (with hf_format) datasets file")
        if source == "stdlib_docstrings" and (train or val or test):
            raise DistillError("source=stdlib_docstrings reads Python's standard library; give files with source=files")
        if hf_format is not None:
            hf_format = {"jsonl": "json"}.get(hf_format, hf_format)
            if hf_format not in HF_FORMATS:
                raise DistillError(f"hf_format must be one of {', '.join(HF_FORMATS)} (local files), got {hf_format!r}")
        if int(max_length) < 4:
            raise DistillError(f"max_length must be >= 4 ([CLS] a [SEP] b [SEP] needs room), got {max_length}")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= float(value) < 1:
                raise DistillError(f"{name} must be in [0, 1), got {value}")
        if float(val_fraction) + float(test_fraction) >= 1:
            raise DistillError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
        if int(batch_size) < 1 or int(eval_batch_size) < 1:
            raise DistillError(
                f"batch sizes must be >= 1, got batch_size={batch_size}, eval_batch_size={eval_batch_size}"
            )
        if not isinstance(lowercase, bool):
            raise DistillError(f"lowercase must be true or false, got {lowercase!r}")
        self.source, self.hf_format = source, hf_format
        self.paths = {"train": train, "val": val, "test": test}
        self.fields = (text_field, text_pair_field, label_field)
        self.tokenizer_name, self.requested_vocab_size, self.lowercase = str(tokenizer), int(vocab_size), lowercase
        self.max_length = int(max_length)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.batch_size, self.eval_batch_size, self.seed = int(batch_size), int(eval_batch_size), int(seed)
        self.cache_dir = Path(cache_dir).expanduser()
        self.examples: dict[str, list[Example]] = {}
        self.tensors: dict[str, dict[str, Tensor]] = {}
        self.tokenizer_path: Path | None = None  # the cached trained tokenizer, once setup() ran
        self._class_names: list[str] = []
        self._tokenizer: Any = None
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ properties

    @property
    def pairs(self) -> bool:
        return self.fields[1] is not None

    @property
    def tokenizer(self) -> Any:
        """The `transformers` tokenizer (runs `setup()` first if needed: a trained one learns from the data)."""
        if self._tokenizer is None:
            self.setup()
        return self._tokenizer

    @property
    def class_names(self) -> list[str]:
        if not self.tensors:
            self.setup()
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def num_examples(self, split: str) -> int:
        return len(self._split(split)["labels"])

    def describe(self) -> str:
        """One line for the log: split sizes, classes, vocabulary, length."""
        n = {s: self.num_examples(s) for s in SPLITS}
        names = ", ".join(self.class_names[:8]) + (", ..." if self.num_classes > 8 else "")
        what = "sentence pairs" if self.pairs else "texts"
        return (
            f"{n['train']} train / {n['val']} val / {n['test']} test {what}, {self.num_classes} classes ({names}), "
            f"tokenizer {self.tokenizer_name} with vocabulary {self.vocab_size}, at most {self.max_length} tokens"
        )

    # ------------------------------------------------------------------ loaders

    def train_dataloader(self, batch_size: int | None = None) -> PaddedBatches:
        """The training examples, shuffled by (seed, epoch); `batch_size` defaults to the data config's."""
        return PaddedBatches(self._split("train"), batch_size or self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> PaddedBatches:
        return PaddedBatches(self._split("val"), self.eval_batch_size)

    def test_dataloader(self) -> PaddedBatches:
        return PaddedBatches(self._split("test"), self.eval_batch_size)

    # what classification's modules ask of their data (distill.tasks.classification.ClassificationData)
    def distill_dataloader(self, batch_size: int | None = None) -> PaddedBatches:
        """The student's distillation batches: the training examples (there is no separate transfer set)."""
        return self.train_dataloader(batch_size)

    @property
    def num_train(self) -> int:
        return self.num_examples("train")

    num_transfer = 0

    def model_inputs(self, split: str, n: int, width: int | None = None) -> Tensor:
        """The first `n` rows of `split` as a model takes them (`pack`), `width` tokens wide (padded or cut;
        default: their longest row)."""
        tensors = self._split(split)
        n = min(n, len(tensors["labels"]))
        longest = int(tensors["lengths"][:n].max())
        x = pack(tensors, slice(0, n), longest)
        return x if width is None else padded(x, width, self.pad_token_id)

    def _split(self, split: str) -> dict[str, Tensor]:
        if split not in SPLITS:
            raise DistillError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        if not self.tensors:
            self.setup()
        return self.tensors[split]

    # ------------------------------------------------------------------ reading

    def _read_splits(self) -> dict[str, list[Example]]:
        if self.source == "stdlib_docstrings":
            return stdlib_docstrings(self.val_fraction, self.test_fraction)
        hf_cache = self.cache_dir / "hf"
        splits = {s: read_file(p, self.hf_format, self.fields, hf_cache) for s, p in self.paths.items() if p}
        rows = [e for part in splits.values() for e in part]
        kinds = {isinstance(e.label, int) for e in rows}
        if len(kinds) > 1:  # refused before splitting, naming the rows (check_labels gives the message)
            check_labels({"train": rows, "val": [], "test": []})
        train = splits["train"]
        for split, fraction in (("test", self.test_fraction), ("val", self.val_fraction / (1 - self.test_fraction))):
            if split in splits:
                continue
            if fraction == 0:
                raise DistillError(
                    f"split '{split}' is empty: give {split}= a file or {split}_fraction > 0 to split it off {self.paths['train']}"
                )
            keys = sorted({e.label for e in train})
            y = np.array([keys.index(e.label) for e in train])
            keep, taken, _, _ = split_off(np.arange(len(train)), y, fraction, self.seed)
            splits[split] = [train[i] for i in sorted(taken)]
            train = [train[i] for i in sorted(keep)]
        splits["train"] = train
        return {s: splits[s] for s in SPLITS}

    # ------------------------------------------------------------------ setup

    def _encode(self, examples: list[Example]) -> dict[str, Tensor]:
        texts = [e.text for e in examples]
        pairs = [e.pair for e in examples] if self.pairs else None
        encoded = self._tokenizer(
            texts,
            pairs,
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=True,
            return_token_type_ids=self.pairs,
            verbose=False,
        )
        ids = encoded["input_ids"]
        lengths = torch.tensor([len(row) for row in ids], dtype=torch.long)
        width = int(lengths.max())
        out = {"input_ids": torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)}
        out["attention_mask"] = torch.zeros((len(ids), width), dtype=torch.long)
        types = encoded.get("token_type_ids") if self.pairs else None
        if types is not None:
            out["token_type_ids"] = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            out["input_ids"][i, : len(row)] = torch.tensor(row, dtype=torch.long)
            out["attention_mask"][i, : len(row)] = 1
            if types is not None:
                out["token_type_ids"][i, : len(row)] = torch.tensor(types[i], dtype=torch.long)
        out["lengths"] = lengths
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.tensors:
            return
        start = time.perf_counter()
        splits = self._read_splits()
        for split in SPLITS:
            if not splits[split]:
                raise DistillError(f"split '{split}' of the {self.source} data is empty")
        self._class_names = check_labels(splits)
        index = {name: i for i, name in enumerate(self._class_names)}
        if self._tokenizer is None:
            if self.tokenizer_name in TRAINED:
                texts = [e.text for e in splits["train"]] + [e.pair for e in splits["train"] if e.pair is not None]
                self._tokenizer, self.tokenizer_path = trained_tokenizer(
                    self.tokenizer_name, texts, self.requested_vocab_size, self.lowercase, self.cache_dir
                )
            else:
                self._tokenizer = load_pretrained(self.tokenizer_name)
        tensors = {}
        for split in SPLITS:
            tensors[split] = self._encode(splits[split])
            tensors[split]["labels"] = torch.tensor([index[str(e.label)] for e in splits[split]], dtype=torch.long)
        self.examples, self.tensors = splits, tensors
        log.info("Text classification data (%s, %.1f s): %s", self.source, time.perf_counter() - start, self.describe())

    # ------------------------------------------------------------------ fingerprint

    def fingerprint(self) -> str:
        """A digest of what a model learns from here (after `setup`): every split's tokens, masks and labels,
        the class names and the tokenizer's identity, for cache keys."""
        if self._fingerprint is None:
            arrays = {f"{s}.{k}": t for s in SPLITS for k, t in self._split(s).items()}
            parts = [digest_arrays(arrays), json.dumps(self._class_names), tokenizer_digest(self.tokenizer)]
            self._fingerprint = digest_text(parts)
        return self._fingerprint
