"""Text data for causal-LM distillation: documents -> tokenizer -> fixed-length token tensors in memory.

`TextDataModule` reads documents from one of four local sources, splits them into train/val/test,
tokenizes them and holds each split as three `[N, L]` LongTensors (`input_ids`, `attention_mask`,
`labels`). Nothing is downloaded: every file, tokenizer and dataset is local.

Sources (`source`):
  * `stdlib`: the default corpus, needing no network: the `.py` files of Python's own standard
    library (skipping `test`/`tests`/`idlelib`/`site-packages`), sorted by relative path and cut at
    `max_chars`; each file goes to one split, chosen by a hash of its relative path.
  * `text`: local text files (`paths`), one document each.
  * `jsonl`: JSON-lines files, one object a line: `text_field` holds a document, or
    `prompt_field` + `completion_field` hold an instruction pair.
  * `hf`: local files read with Hugging Face `datasets.load_dataset(hf_format, data_files=paths)`
    (`hf_format` json, csv, parquet or text), then fields as for `jsonl`. Never a hub name.

A folder in `paths` stands for the files under it, sorted by relative path (hidden ones left out):
every file for `text`, `*.jsonl` and `*.json` for `jsonl`, the format's suffixes for `hf`.

Documents (text/jsonl/hf) are split by document when there are at least 3 (a seeded shuffle gives
each split round(n * fraction) documents, at least one), else by character ranges (the last
`val_fraction` and `test_fraction` of the text). Prompt/completion pairs are always split by pair.

Modes (`mode`):
  * `pack`: every document's tokens followed by eos, concatenated per split and cut into blocks of
    exactly `seq_len` tokens (the remainder is dropped); attention_mask all ones, labels = input_ids.
  * `pad`: one example per document, truncated to `seq_len`, right-padded with the pad id;
    attention_mask and labels (-100) mask the padding.
  Prompt/completion pairs are always one padded example each: prompt + completion + eos, with the
  prompt's labels -100, so only the completion is learned.

Labels are NOT shifted: the model shifts (logits[:, :-1] predict labels[:, 1:]); -100 marks a
position that no loss counts.

Tokenizer (`tokenizer`): `bpe` trains a byte-level BPE (`vocab_size`, special tokens `<|pad|>` and
`<|endoftext|>`) on the training split only and caches it in `cache_dir`; any other value is a local
directory holding a pretrained tokenizer (`save_pretrained`), loaded with `local_files_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import sys
import sysconfig
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from distill.atomic import remove_stale_temporaries, write_text
from distill.data.batches import TensorBatches
from distill.errors import DistillError
from distill.fingerprint import digest_arrays, digest_text

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of a position no loss counts (padding, prompt)
PAD_TOKEN, EOS_TOKEN = "<|pad|>", "<|endoftext|>"
SPLITS = ("train", "val", "test")
SOURCES = ("stdlib", "text", "jsonl", "hf")
MODES = ("pack", "pad")
HF_FORMATS = ("json", "csv", "parquet", "text")
# The files read from a folder given in `paths`, by source (text: every non-hidden file) and hf_format.
FOLDER_SUFFIXES = {
    "jsonl": (".jsonl", ".json"),
    "json": (".json", ".jsonl"),
    "csv": (".csv",),
    "parquet": (".parquet",),
    "text": (".txt",),
}
STDLIB_SKIP = frozenset({"test", "tests", "idlelib", "site-packages"})


STDLIB_MAX_FILE_CHARS = 40_000  # the part of each standard-library file the corpus keeps


@dataclass
class Document:
    """A piece of text; `complete` is False when it was cut (at max_chars or a split boundary): no eos follows it."""

    text: str
    complete: bool = True
    name: str = ""  # where it came from: a stdlib file's relative path, a file path, "file, line N"

    @property
    def chars(self) -> int:
        return len(self.text)


@dataclass
class Pair:
    """An instruction example: the loss covers the completion only."""

    prompt: str
    completion: str
    name: str = ""

    @property
    def chars(self) -> int:
        return len(self.prompt) + len(self.completion)


class SequenceBatches(TensorBatches):
    """`{"input_ids", "attention_mask", "labels", "index"}` batches sliced from in-memory tensors.

    Behaves like `TensorBatches` (shuffled order from (seed, epoch), `set_epoch`, `sharded` for DDP,
    `deterministic`); `index` is each sequence's row in its split (`rows` maps a subset's rows back).
    """

    def __init__(self, tensors: dict[str, Tensor], batch_size: int, rows: Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(tensors["input_ids"], tensors["labels"], batch_size, **kwargs)
        self.attention_mask = tensors["attention_mask"]
        self.rows = rows

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for batch in super().__iter__():
            index = batch["index"]
            yield {
                "input_ids": batch["x"],
                "attention_mask": self.attention_mask[index],
                "labels": batch["y"],
                "index": index if self.rows is None else self.rows[index],
            }


class TextDataModule(L.LightningDataModule):
    """Token sequences for a causal LM, built once per split in `setup()` (see the module docstring)."""

    def __init__(
        self,
        source: str = "stdlib",
        paths: str | Sequence[str] | None = None,
        text_field: str = "text",
        prompt_field: str | None = None,
        completion_field: str | None = None,
        tokenizer: str = "bpe",
        vocab_size: int = 1024,
        seq_len: int = 128,
        mode: str = "pack",
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        max_chars: int | None = 2_000_000,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        seed: int = 0,
        cache_dir: str = "data/lm",
        hf_format: str | None = None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise DistillError(f"unknown text source '{source}'; use one of {', '.join(SOURCES)}")
        if mode not in MODES:
            raise DistillError(
                f"unknown mode '{mode}'; use 'pack' (blocks of seq_len tokens) or 'pad' (one per document)"
            )
        if (prompt_field is None) != (completion_field is None):
            raise DistillError("prompt_field and completion_field go together: set both (instruction data) or neither")
        if prompt_field is not None and source not in ("jsonl", "hf"):
            raise DistillError(f"prompt/completion fields need source jsonl or hf, not '{source}'")
        if int(seq_len) < 2:
            raise DistillError(f"seq_len must be >= 2 (a causal LM predicts token i+1 from token i), got {seq_len}")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= float(value) < 1:
                raise DistillError(f"{name} must be in [0, 1), got {value}")
        if float(val_fraction) + float(test_fraction) >= 1:
            raise DistillError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
        if batch_size < 1 or eval_batch_size < 1:
            raise DistillError(
                f"batch sizes must be >= 1, got batch_size={batch_size}, eval_batch_size={eval_batch_size}"
            )
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        self.paths = [str(p) for p in paths] if paths is not None else None
        if source == "stdlib" and self.paths:
            raise DistillError(
                "source=stdlib reads Python's standard library; give paths with source text, jsonl or hf"
            )
        if source != "stdlib" and not self.paths:
            raise DistillError(f"source={source} needs paths: one or more local files or folders")
        if source == "hf":
            hf_format = {"jsonl": "json", "txt": "text"}.get(hf_format, hf_format)
            if hf_format not in HF_FORMATS:
                raise DistillError(
                    f"hf_format must be one of {', '.join(HF_FORMATS)} (local files only), got {hf_format!r}"
                )
        self.source, self.mode, self.hf_format = source, mode, hf_format
        self.text_field, self.prompt_field, self.completion_field = text_field, prompt_field, completion_field
        self.tokenizer_name, self.requested_vocab_size = str(tokenizer), int(vocab_size)
        self.seq_len = int(seq_len)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.max_chars = int(max_chars) if max_chars else None
        self.batch_size, self.eval_batch_size, self.seed = int(batch_size), int(eval_batch_size), int(seed)
        self.cache_dir = Path(cache_dir).expanduser()
        self.tensors: dict[str, dict[str, Tensor]] = {}
        self.prompt_lengths: dict[str, Tensor] = {}  # prompt/completion data: prompt tokens of each row
        self.tokenizer_path: Path | None = None  # the cached BPE file, once setup() ran
        self.documents: dict[str, list[Document | Pair]] = {}  # the text of each split, before tokenizing
        self.corpus_stats: dict[str, Any] = {}
        self._tokenizer: Any = None
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ properties

    @property
    def pairs(self) -> bool:
        """Whether the data are prompt/completion pairs (instruction data)."""
        return self.prompt_field is not None

    @property
    def tokenizer(self) -> Any:
        """The `transformers` tokenizer (runs `setup()` first if needed: the BPE is trained on the data)."""
        if self._tokenizer is None:
            self.setup()
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def num_tokens(self, split: str, fraction: float | None = None) -> int:
        """Tokens a loss counts in `split` (labels != -100); for train, in `train_subset(fraction)`."""
        tensors = self.train_subset(fraction) if split == "train" else self._split(split)
        return int((tensors["labels"] != IGNORE_INDEX).sum())

    def num_sequences(self, split: str) -> int:
        return len(self._split(split)["input_ids"])

    def describe(self) -> str:
        """One line for the log: split sizes, sequence length, vocabulary, training tokens."""
        n = {s: self.num_sequences(s) for s in SPLITS}
        return (
            f"{n['train']} train / {n['val']} val / {n['test']} test sequences of {self.seq_len} tokens, "
            f"vocabulary {self.vocab_size}, {self.num_tokens('train')} training tokens"
        )

    # ------------------------------------------------------------------ loaders

    def train_rows(self, fraction: float | None = None) -> Tensor | None:
        """Rows of a fixed random share of the training sequences (drawn from `seed`); None for all of them.

        A student's transfer set: the teacher learns from the whole split, the students (alone and
        distilled) from the same `fraction` of it.
        """
        if fraction is None or float(fraction) == 1.0:
            return None
        if not 0 < float(fraction) <= 1:
            raise DistillError(f"train_fraction must be in (0, 1], got {fraction}")
        n = self.num_sequences("train")
        keep = max(1, round(n * float(fraction)))
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))[:keep].sort().values

    def train_subset(self, fraction: float | None = None) -> dict[str, Tensor]:
        """The training tensors, or those of `train_rows(fraction)`."""
        rows, tensors = self.train_rows(fraction), self._split("train")
        return tensors if rows is None else {k: v[rows] for k, v in tensors.items()}

    def train_dataloader(self, batch_size: int | None = None, fraction: float | None = None) -> SequenceBatches:
        """The training sequences (all, or `train_rows(fraction)`), shuffled by (seed, epoch); `batch_size`
        defaults to the data config's."""
        rows = self.train_rows(fraction)
        return SequenceBatches(
            self.train_subset(fraction), batch_size or self.batch_size, rows=rows, shuffle=True, seed=self.seed
        )

    def val_dataloader(self) -> SequenceBatches:
        return SequenceBatches(self._split("val"), self.eval_batch_size)

    def test_dataloader(self) -> SequenceBatches:
        return SequenceBatches(self._split("test"), self.eval_batch_size)

    def prompts(self, split: str, n: int, prompt_len: int | None = None) -> tuple[Tensor, Tensor]:
        """Prompts for generation from the first `n` sequences of `split`: (input_ids, attention_mask), left-padded.

        Plain text: the first `prompt_len` tokens of each sequence (default seq_len // 2; in pad mode a
        shorter document gives its real tokens only). Prompt/completion data: the prompts themselves
        (their last `prompt_len` tokens when given). Rows shorter than the longest are left-padded with
        the pad id and attention_mask 0, as generation needs.
        """
        t = self._split(split)
        n = min(int(n), len(t["input_ids"]))
        if n < 1:
            raise DistillError(f"no prompts to take from split '{split}' (n={n})")
        if not self.pairs and prompt_len is None:
            prompt_len = self.seq_len // 2
        if prompt_len is not None and prompt_len < 1:
            raise DistillError(f"prompt_len must be >= 1, got {prompt_len}")
        rows = []
        for i in range(n):
            ids = t["input_ids"][i]
            if self.pairs:
                ids = ids[: int(self.prompt_lengths[split][i])]
                rows.append(ids[-prompt_len:] if prompt_len else ids)
            else:
                real = int(t["attention_mask"][i].sum())  # right padding only: the real tokens come first
                rows.append(ids[: min(prompt_len, real)])
        width = max(len(r) for r in rows)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(rows):
            if len(r):
                input_ids[i, width - len(r) :] = r
                attention_mask[i, width - len(r) :] = 1
        return input_ids, attention_mask

    def decode(self, ids: Tensor | Sequence[int] | Sequence[Sequence[int]], skip_special_tokens: bool = False) -> Any:
        """Text of a token sequence (a str) or of a batch of them (a list).

        Negative ids (-100 labels) and padding (the pad id, where it is not also eos) are dropped, so
        labels and left-padded prompts decode to their text.
        """
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        if len(ids) and isinstance(ids[0], list | tuple | Tensor):  # a batch (a 2-D tensor or a list of rows)
            return [self.decode(row, skip_special_tokens) for row in ids]
        pad = self.pad_token_id if self.pad_token_id != self.eos_token_id else -1
        kept = [int(i) for i in ids if int(i) >= 0 and int(i) != pad]
        return self.tokenizer.decode(kept, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    def _split(self, split: str) -> dict[str, Tensor]:
        if split not in SPLITS:
            raise DistillError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        if not self.tensors:
            self.setup()
        return self.tensors[split]

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str | None = None) -> None:
        if self.tensors:
            return
        start = time.perf_counter()
        splits = self.documents = self._load_splits()
        self._tokenizer = self._load_tokenizer(splits["train"])
        if self._tokenizer.eos_token_id is None:
            raise DistillError(f"tokenizer '{self.tokenizer_name}' has no eos token; documents need one to end them")
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        if self.pairs and self.mode == "pack":
            log.info("Prompt/completion pairs are never packed: one padded sequence of %d tokens each", self.seq_len)
        tensors = {}
        for split in SPLITS:
            if self.pairs:
                tensors[split] = self._build_pairs(split, splits[split])
            elif self.mode == "pack":
                tensors[split] = self._build_packed(split, splits[split])
            else:
                tensors[split] = self._build_padded(split, splits[split])
        self.tensors = tensors
        log.info("Text data (%s, %.1f s): %s", self.source, time.perf_counter() - start, self.describe())

    # ------------------------------------------------------------------ reading the sources

    def _load_splits(self) -> dict[str, list]:
        if self.source == "stdlib":
            return self._stdlib_splits()
        if self.source == "text":
            items = [Document(self._read_text(p), name=str(p)) for p in self._existing_files()]
        elif self.source == "jsonl":
            items = [item for p in self._existing_files() for item in self._read_jsonl(p)]
        else:
            items = self._read_hf()
        items = self._cap(items)
        if self.pairs:
            if len(items) < 3:
                raise DistillError(
                    f"{len(items)} prompt/completion pairs are too few to split into train/val/test (need at least 3)"
                )
            return self._split_items(items)
        if len(items) >= 3:
            return self._split_items(items)
        return self._split_by_chars(items)

    def _existing_files(self) -> list[Path]:
        """The files of `paths`, a folder standing for the files under it (see `_folder_files`)."""
        files = []
        for p in self.paths or []:
            path = Path(p).expanduser()
            found = self._folder_files(path) if path.is_dir() else [path]
            for file in found:
                if not file.is_file():
                    hint = " (local files only: hub dataset names are not supported)" if self.source == "hf" else ""
                    raise DistillError(f"{self.source} data file not found: {p}{hint}")
                if file.stat().st_size == 0:
                    raise DistillError(f"{self.source} data file is empty: {file}")
            files += found
        return files

    def _folder_files(self, folder: Path) -> list[Path]:
        """The files under `folder` (hidden ones left out), sorted by relative path: every file for source
        text, else those with the format's suffixes (jsonl: .jsonl and .json; hf: those of hf_format)."""
        suffixes = (
            None if self.source == "text" else FOLDER_SUFFIXES[self.hf_format if self.source == "hf" else "jsonl"]
        )
        found = []
        for directory, subdirs, names in os.walk(folder):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            for name in names:
                if not name.startswith(".") and (suffixes is None or name.lower().endswith(suffixes)):
                    found.append(Path(directory) / name)
        if not found:
            wanted = "no file" if suffixes is None else f"no {' or '.join('*' + s for s in suffixes)} file"
            raise DistillError(f"{self.source} data folder {folder} holds {wanted}")
        return sorted(found, key=lambda f: f.relative_to(folder).as_posix())

    def _read_text(self, path: Path) -> str:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DistillError(f"{path}: not UTF-8 text ({err})") from None
        if not text.strip():
            raise DistillError(f"{path}: file is empty (whitespace only)")
        return text

    def _read_jsonl(self, path: Path) -> list[Document | Pair]:
        items: list[Document | Pair] = []
        for number, line in enumerate(self._read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DistillError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DistillError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            items.append(self._item(row, f"{path}, line {number}"))
        if not items:
            raise DistillError(f"{path}: no JSON lines in the file")
        return items

    def _item(self, row: dict, where: str) -> Document | Pair:
        """One document (text_field) or prompt/completion pair from a row; `where` names it in errors."""
        fields = [self.prompt_field, self.completion_field] if self.pairs else [self.text_field]
        values = []
        for field in fields:
            if field not in row:
                raise DistillError(f"{where}: no field '{field}' (fields: {', '.join(map(str, row)) or 'none'})")
            value = row[field]
            if not isinstance(value, str):
                raise DistillError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
            values.append(value)
        return Pair(*values, name=where) if self.pairs else Document(values[0], name=where)

    def _read_hf(self) -> list[Document | Pair]:
        files = [str(p) for p in self._existing_files()]
        import datasets  # noqa: PLC0415  (heavy: only this source needs it)

        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            loaded = datasets.load_dataset(
                self.hf_format, data_files=files, split="train", cache_dir=str(self.cache_dir / "hf")
            )
        except Exception as err:  # noqa: BLE001  (datasets raises many kinds: report them as one)
            raise DistillError(f"cannot read {files} as {self.hf_format} with datasets: {err}") from None
        finally:
            if bars:
                datasets.enable_progress_bars()
        fields = [self.prompt_field, self.completion_field] if self.pairs else [self.text_field]
        for field in fields:
            if field not in loaded.column_names:
                raise DistillError(
                    f"{', '.join(files)}: no column '{field}' (columns: {', '.join(loaded.column_names)})"
                )
        items = []
        for number, row in enumerate(loaded.select_columns(fields), start=1):
            items.append(self._item(row, f"{', '.join(files)}, row {number}"))
        if not items:
            raise DistillError(f"{', '.join(files)}: no rows")
        return items

    def _stdlib_files(self) -> tuple[Path, list[str]]:
        root = Path(sysconfig.get_paths()["stdlib"])
        found = []
        for directory, subdirs, names in os.walk(root):
            subdirs[:] = [d for d in subdirs if d not in STDLIB_SKIP and d != "__pycache__"]
            rel_dir = Path(directory).relative_to(root)
            found += [(rel_dir / name).as_posix() for name in names if name.endswith(".py")]
        # In the order of a hash of each path: a corpus cut at max_chars samples the whole library
        # instead of its alphabetical start, so each split gets about its share of the text.
        return root, sorted(found, key=lambda name: hashlib.sha256(f"order:{name}".encode()).hexdigest())

    def _stdlib_splits(self) -> dict[str, list]:
        root, names = self._stdlib_files()
        splits: dict[str, list] = {s: [] for s in SPLITS}
        files = {s: 0 for s in SPLITS}
        chars, skipped = 0, 0
        for name in names:
            if self.max_chars is not None and chars >= self.max_chars:
                break
            try:
                text = (root / name).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                skipped += 1
                continue
            if not text.strip():
                continue
            if len(text) > STDLIB_MAX_FILE_CHARS:  # a few huge files would otherwise weigh on one split
                text = text[:STDLIB_MAX_FILE_CHARS]
            doc = Document(text, name=name, complete=len(text) < STDLIB_MAX_FILE_CHARS)
            if self.max_chars is not None and chars + len(text) > self.max_chars:
                doc = Document(text[: self.max_chars - chars], complete=False, name=name)
            chars += len(doc.text)
            split = self._hash_split(name)
            splits[split].append(doc)
            files[split] += 1
        self.corpus_stats = {"root": str(root), "files": files, "chars": chars, "skipped": skipped}
        log.info(
            "Python stdlib corpus from %s: %d files (%d train / %d val / %d test), %d characters%s",
            root,
            sum(files.values()),
            files["train"],
            files["val"],
            files["test"],
            chars,
            f", {skipped} files skipped (not UTF-8)" if skipped else "",
        )
        return splits

    def _hash_split(self, name: str) -> str:
        """The split of a stdlib file: a stable hash of its relative path, mod 1000, against the fractions."""
        bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 1000
        if bucket < self.val_fraction * 1000:
            return "val"
        if bucket < (self.val_fraction + self.test_fraction) * 1000:
            return "test"
        return "train"

    def _cap(self, items: list[Document | Pair]) -> list[Document | Pair]:
        """The items up to `max_chars` characters in all (the document crossing the limit is cut; a pair is dropped)."""
        if self.max_chars is None:
            return items
        kept, chars = [], 0
        for item in items:
            if chars + item.chars > self.max_chars:
                if isinstance(item, Document) and self.max_chars > chars:
                    kept.append(Document(item.text[: self.max_chars - chars], complete=False, name=item.name))
                total = sum(i.chars for i in items)
                log.info("Keeping the first %d of %d characters (data.max_chars)", self.max_chars, total)
                break
            kept.append(item)
            chars += item.chars
        return kept

    def _split_items(self, items: list) -> dict[str, list]:
        """Whole documents (or pairs) to each split: a seeded shuffle, round(n * fraction) each, at least one."""
        n = len(items)
        sizes = {
            f: (max(1, round(n * getattr(self, f"{f}_fraction"))) if getattr(self, f"{f}_fraction") else 0)
            for f in ("val", "test")
        }
        if n - sizes["val"] - sizes["test"] < 1:
            raise DistillError(f"{n} documents leave none for training after the val/test fractions")
        order = list(range(n))
        random.Random(self.seed).shuffle(order)
        val = sorted(order[: sizes["val"]])
        test = sorted(order[sizes["val"] : sizes["val"] + sizes["test"]])
        train = sorted(order[sizes["val"] + sizes["test"] :])
        return {s: [items[i] for i in idx] for s, idx in zip(SPLITS, (train, val, test), strict=True)}

    def _split_by_chars(self, docs: list[Document]) -> dict[str, list]:
        """Fewer than 3 documents: the last val_fraction and test_fraction of the characters go to val and test."""
        total = sum(len(d.text) for d in docs)
        cut_val = math.floor(total * (1 - self.val_fraction - self.test_fraction))
        cut_test = math.floor(total * (1 - self.test_fraction))
        bounds = {"train": (0, cut_val), "val": (cut_val, cut_test), "test": (cut_test, total)}
        splits: dict[str, list] = {s: [] for s in SPLITS}
        offset = 0
        for doc in docs:
            end = offset + len(doc.text)
            for split, (a, b) in bounds.items():
                lo, hi = max(a, offset), min(b, end)
                if lo < hi:
                    splits[split].append(
                        Document(doc.text[lo - offset : hi - offset], doc.complete and hi == end, doc.name)
                    )
            offset = end
        return splits

    # ------------------------------------------------------------------ tokenizer

    def fingerprint(self) -> str:
        """A digest of what a model learns from here (after `setup`): the token tensors of every split and
        the tokenizer's identity (its vocabulary and merges), so that other text or another
        tokenizer under the same paths gives another fingerprint."""
        if self._fingerprint is None:
            arrays = {f"{split}.{name}": t for split in SPLITS for name, t in self._split(split).items()}
            self._fingerprint = digest_text([digest_arrays(arrays), self._tokenizer_digest()])
        return self._fingerprint

    def _tokenizer_digest(self) -> str:
        tokenizer = self.tokenizer
        special = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:  # a fast tokenizer: its whole JSON (model, vocabulary, merges, normalisers)
            return digest_text([backend.to_str(), special])
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        return digest_text([json.dumps(vocab), special])

    @staticmethod
    def _bpe_texts(train: list) -> list[str]:
        """The strings a BPE learns from: each document, or each pair's prompt and completion."""
        return [
            t
            for item in train
            for t in ((item.text,) if isinstance(item, Document) else (item.prompt, item.completion))
        ]

    def _cache_key(self, train: list | None = None) -> str:
        """The BPE's cache key: the settings and a digest of the training text (`train`: the training split's
        documents; read from the source when not given)."""
        if train is None:
            train = self.documents.get("train") or self._load_splits()["train"]
        paths = [str(Path(p).expanduser().resolve()) for p in self.paths or []]
        if self.source == "stdlib":
            paths = [sysconfig.get_paths()["stdlib"], f"python{sys.version_info[0]}.{sys.version_info[1]}"]
        key = {
            "source": self.source,
            "paths": paths,
            "max_chars": self.max_chars,
            "vocab_size": self.requested_vocab_size,
            "seed": self.seed,
            "fractions": [self.val_fraction, self.test_fraction],
            "fields": [self.text_field, self.prompt_field, self.completion_field, self.hf_format],
            "text": digest_text(self._bpe_texts(train)),
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def _load_tokenizer(self, train: list) -> Any:
        from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: PLC0415  (heavy import)

        if self.tokenizer_name != "bpe":
            path = Path(self.tokenizer_name).expanduser()
            if not path.is_dir():
                raise DistillError(
                    f"tokenizer directory not found: {self.tokenizer_name} "
                    "(data.tokenizer is 'bpe' or a local directory written by save_pretrained; nothing is downloaded)"
                )
            try:
                return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            except (OSError, ValueError, TypeError) as err:
                raise DistillError(f"cannot load a tokenizer from {path}: {err}") from None
        from tokenizers import Tokenizer  # noqa: PLC0415

        if self.requested_vocab_size < 258:
            raise DistillError(
                f"vocab_size must be >= 258 (256 bytes + 2 special tokens), got {self.requested_vocab_size}"
            )
        path = self.cache_dir / f"tokenizer-{self._cache_key(train)}.json"
        self.tokenizer_path = path
        if path.is_file():
            log.info("Reusing tokenizer %s", path)
            backend = Tokenizer.from_file(str(path))
        else:
            backend = self._train_bpe(train)
            remove_stale_temporaries(path.parent)
            write_text(path, backend.to_str())  # atomic: a concurrent run sees the whole file or none
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, clean_up_tokenization_spaces=False
        )

    def _train_bpe(self, train: list) -> Any:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415

        texts = self._bpe_texts(train)
        start = time.perf_counter()
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.requested_vocab_size,
            special_tokens=[PAD_TOKEN, EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        self.corpus_stats["tokenizer_train_s"] = time.perf_counter() - start
        log.info(
            "Trained a byte-level BPE tokenizer (vocabulary %d) on %d training characters in %.1f s",
            backend.get_vocab_size(),
            sum(map(len, texts)),
            self.corpus_stats["tokenizer_train_s"],
        )
        return backend

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self._tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    # ------------------------------------------------------------------ tensors

    def _too_little(self, split: str, detail: str) -> DistillError:
        return DistillError(
            f"split '{split}' is empty: {detail}; give more text (or a larger max_chars), "
            f"or lower seq_len or the val/test fractions ({self.val_fraction}/{self.test_fraction})"
        )

    def _build_packed(self, split: str, docs: list[Document]) -> dict[str, Tensor]:
        eos = self.eos_token_id
        stream: list[int] = []
        for doc, ids in zip(docs, self._encode([d.text for d in docs]), strict=True):
            stream += ids
            if doc.complete:
                stream.append(eos)
        blocks = len(stream) // self.seq_len
        if blocks == 0:
            raise self._too_little(split, f"{len(stream)} tokens, and one sequence needs seq_len={self.seq_len}")
        ids = torch.tensor(stream[: blocks * self.seq_len], dtype=torch.long).view(blocks, self.seq_len)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def _build_padded(self, split: str, docs: list[Document]) -> dict[str, Tensor]:
        rows = [
            ids + [self.eos_token_id] if doc.complete else ids
            for doc, ids in zip(docs, self._encode([d.text for d in docs]), strict=True)
        ]
        rows = [r for r in rows if r]
        if not rows:
            raise self._too_little(split, "0 tokens (no documents)")
        return self._pad(rows, [0] * len(rows))

    def _build_pairs(self, split: str, pairs: list[Pair]) -> dict[str, Tensor]:
        if not pairs:
            raise self._too_little(split, "0 prompt/completion pairs")
        prompts = self._encode([p.prompt for p in pairs])
        completions = self._encode([p.completion for p in pairs])
        rows = [p + c + [self.eos_token_id] for p, c in zip(prompts, completions, strict=True)]
        tensors = self._pad(rows, [len(p) for p in prompts])
        self.prompt_lengths[split] = torch.tensor([min(len(p), self.seq_len) for p in prompts], dtype=torch.long)
        learned = (tensors["labels"] != IGNORE_INDEX).sum(1)
        if int((learned == 0).sum()):
            log.warning(
                "%s: %d of %d prompts fill seq_len=%d: their completions are cut off entirely",
                split,
                int((learned == 0).sum()),
                len(rows),
                self.seq_len,
            )
        if int(learned.sum()) == 0:
            raise self._too_little(split, f"no completion token fits in seq_len={self.seq_len} after the prompts")
        return tensors

    def _pad(self, rows: list[list[int]], masked_prefix: list[int]) -> dict[str, Tensor]:
        """Rows truncated to seq_len and right-padded; labels -100 on padding and on each row's first masked_prefix tokens."""
        n, length = len(rows), self.seq_len
        input_ids = torch.full((n, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, length), dtype=torch.long)
        labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        for i, (row, prefix) in enumerate(zip(rows, masked_prefix, strict=True)):
            row = row[:length]
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
            labels[i, prefix : len(row)] = input_ids[i, prefix : len(row)]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
