"""`TextDataModule`: a source's text, tokenized into fixed-length token tensors per split (see `distill.llm.data`)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from distill.errors import DistillError
from distill.fingerprint import digest_arrays, digest_text
from distill.llm.data.batches import SequenceBatches
from distill.llm.data.sources import HF_FORMATS, SOURCES, SPLITS, Document, Pair, SourcesMixin
from distill.llm.data.tensors import IGNORE_INDEX, MODES, TensorsMixin
from distill.llm.data.tokenizer import TokenizerMixin

log = logging.getLogger("distill.llm.data")  # one logger for the whole package


class TextDataModule(SourcesMixin, TokenizerMixin, TensorsMixin, L.LightningDataModule):
    """Token sequences for a causal LM, built once per split in `setup()` (see the `distill.llm.data` docstring)."""

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

    def generation_examples(self, split: str, n: int | None = None) -> tuple[Tensor, Tensor, list[str]]:
        """The first `n` (None: all) examples of `split` to complete by generation: (prompt input_ids,
        attention_mask, reference completions). Prompts are left-padded (see `prompts`); a reference is
        the text the model should produce after its prompt (a pair's completion).

        Only for data with prompts and answers (prompt/completion pairs); plain text has none.
        """
        if not self.pairs:
            raise DistillError(
                "evaluation by generation needs prompts with reference answers: prompt/completion pairs "
                "(lm_data.prompt_field and completion_field)"
            )
        total = len(self._split(split)["input_ids"])
        n = total if n is None else min(int(n), total)
        ids, mask = self.prompts(split, n)
        references = [item.completion for item in self.documents[split][:n]]
        return ids, mask, references

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

    # ------------------------------------------------------------------ fingerprint

    def fingerprint(self) -> str:
        """A digest of what a model learns from here (after `setup`): the token tensors of every split and
        the tokenizer's identity (its vocabulary and merges), so that other text or another
        tokenizer under the same paths gives another fingerprint."""
        if self._fingerprint is None:
            arrays = {f"{split}.{name}": t for split in SPLITS for name, t in self._split(split).items()}
            self._fingerprint = digest_text([digest_arrays(arrays), self._tokenizer_digest()])
        return self._fingerprint
