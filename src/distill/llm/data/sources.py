"""Reading the text sources (stdlib, text, jsonl, hf, arithmetic) into documents, prompt/completion pairs or
conversations, and splitting them into train/val/test (see `distill.llm.data`)."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.errors import DistillError
from distill.jsonlines import json_objects
from distill.llm.data.arithmetic import arithmetic_problems

log = logging.getLogger("distill.llm.data")  # one logger for the whole package

SPLITS = ("train", "val", "test")
SOURCES = ("stdlib", "text", "jsonl", "hf", "arithmetic")
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


@dataclass
class Conversation:
    """A list of chat messages (`{"role": ..., "content": ...}` dicts, other keys kept for the template).

    The loss covers the assistant messages from `learn_from` on (a conversational prompt-completion row:
    those of the completion; the prompt's own assistant turns are context). `text` and `spans` are the
    chat template's rendering and the character ranges of it that are learned, set when it is rendered.
    """

    messages: list[dict[str, Any]]
    name: str = ""
    learn_from: int = 0
    text: str | None = field(default=None, repr=False, compare=False)
    spans: list[tuple[int, int]] = field(default_factory=list, repr=False, compare=False)

    @property
    def chars(self) -> int:
        return sum(len(m["content"]) for m in self.messages)

    @property
    def last_assistant(self) -> int:
        """The index of the last assistant message (reading checks that there is one)."""
        return max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")


def parse_messages(value: Any, where: str, field_name: str) -> list[dict[str, Any]]:
    """A row's list of messages, checked: objects with 'role' and 'content' strings (keys holding null dropped)."""
    if not isinstance(value, list) or not value:
        got = "an empty list" if isinstance(value, list) else type(value).__name__
        raise DistillError(f"{where}: field '{field_name}' must be a non-empty list of messages, got {got}")
    messages = []
    for number, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise DistillError(
                f"{where}: message {number} must be an object with 'role' and 'content' strings, "
                f"got {type(message).__name__}"
            )
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = "none" if message.get(key) is None else type(message[key]).__name__
                raise DistillError(f"{where}: message {number} needs a '{key}' string, got {got}")
        messages.append({k: v for k, v in message.items() if v is not None})
    return messages


def conversation_from_row(
    row: dict, where: str, messages_field: str | None, prompt_field: str | None, completion_field: str | None
) -> Conversation:
    """One conversation from a row: a list of messages (`messages_field`), a conversational prompt-completion
    row (two lists of messages: the completion's assistant turns are learned), or a prompt/completion string
    pair (a user message and the assistant's answer)."""
    fields = [messages_field] if messages_field else [prompt_field, completion_field]
    for name in fields:
        if name not in row:
            raise DistillError(f"{where}: no field '{name}' (fields: {', '.join(map(str, row)) or 'none'})")
    if messages_field:
        messages, learn_from = parse_messages(row[messages_field], where, messages_field), 0
    else:
        prompt, completion = row[prompt_field], row[completion_field]
        if isinstance(prompt, str) and isinstance(completion, str):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            learn_from = 1
        elif isinstance(prompt, list) and isinstance(completion, list):
            messages = parse_messages(prompt, where, prompt_field) + parse_messages(completion, where, completion_field)
            learn_from = len(prompt)
        else:
            raise DistillError(
                f"{where}: fields '{prompt_field}' and '{completion_field}' must both be strings or both lists of "
                f"messages, got {type(prompt).__name__} and {type(completion).__name__}"
            )
    if not any(m["role"] == "assistant" for m in messages[learn_from:]):
        part = "" if learn_from == 0 else f" in '{completion_field}'"
        raise DistillError(f"{where}: no assistant message{part}: a conversation needs one to learn from")
    return Conversation(messages, name=where, learn_from=learn_from)


def pair_conversation(pair: Pair) -> Conversation:
    """A prompt/completion pair as a conversation: the prompt as a user message, the completion as the answer."""
    messages = [{"role": "user", "content": pair.prompt}, {"role": "assistant", "content": pair.completion}]
    return Conversation(messages, name=pair.name, learn_from=1)


class TextSettings:
    """The settings of `TextDataModule` its mixins read (annotations only: the module sets them)."""

    source: str
    paths: list[str] | None
    hf_format: str | None
    text_field: str
    prompt_field: str | None
    completion_field: str | None
    messages_field: str | None
    chat: bool
    num_examples: int
    digits: tuple[int, int]
    operations: tuple[str, ...]
    val_fraction: float
    test_fraction: float
    max_chars: int | None
    seed: int
    cache_dir: Path
    corpus_stats: dict[str, Any]


class SourcesMixin(TextSettings):
    """`TextDataModule`'s reading of its source and splitting of the text, from the settings it holds."""

    pairs: bool
    _render_all: Callable[[dict[str, list]], None]  # ChatMixin

    def _load_splits(self) -> dict[str, list]:
        if self.source == "stdlib":
            return self._stdlib_splits()
        if self.source == "arithmetic":
            items = [
                Pair(prompt, completion, name=f"arithmetic example {number} ({prompt!r})")
                for number, (prompt, completion) in enumerate(
                    arithmetic_problems(self.num_examples, self.digits, self.operations, self.seed), start=1
                )
            ]
            if self.chat:
                items = [pair_conversation(p) for p in items]
        elif self.source == "text":
            items = [Document(self._read_text(p), name=str(p)) for p in self._existing_files()]
        elif self.source == "jsonl":
            items = [item for p in self._existing_files() for item in self._read_jsonl(p)]
        else:
            items = self._read_hf()
        items = self._cap(items)
        if self.chat:
            self._render_all({"all": items})  # in file order: the first bad conversation is the one reported
        if self.pairs or self.chat:
            if len(items) < 3:
                what = "conversations" if self.chat else "prompt/completion pairs"
                raise DistillError(f"{len(items)} {what} are too few to split into train/val/test (need at least 3)")
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

    def _read_jsonl(self, path: Path) -> list[Document | Pair | Conversation]:
        items: list[Document | Pair | Conversation] = []
        for where, row in json_objects(self._read_text(path), path):
            items.append(self._item(row, where))
        if not items:
            raise DistillError(f"{path}: no JSON lines in the file")
        return items

    def _row_fields(self) -> list[str]:
        """The fields a row's example is read from."""
        if self.chat and self.messages_field:
            return [self.messages_field]
        return [self.prompt_field, self.completion_field] if self.pairs else [self.text_field]

    def _item(self, row: dict, where: str) -> Document | Pair | Conversation:
        """One document (text_field), prompt/completion pair or, with chat, conversation from a row; `where`
        names it in errors."""
        if self.chat:
            return conversation_from_row(row, where, self.messages_field, self.prompt_field, self.completion_field)
        fields = self._row_fields()
        values = []
        for name in fields:
            if name not in row:
                raise DistillError(f"{where}: no field '{name}' (fields: {', '.join(map(str, row)) or 'none'})")
            value = row[name]
            if not isinstance(value, str):
                raise DistillError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
            values.append(value)
        return Pair(*values, name=where) if self.pairs else Document(values[0], name=where)

    def _read_hf(self) -> list[Document | Pair | Conversation]:
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
        fields = self._row_fields()
        for name in fields:
            if name not in loaded.column_names:
                raise DistillError(
                    f"{', '.join(files)}: no column '{name}' (columns: {', '.join(loaded.column_names)})"
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

    def _cap(self, items: list) -> list:
        """The items up to `max_chars` characters in all (the document crossing the limit is cut; a pair or a
        conversation is dropped)."""
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
