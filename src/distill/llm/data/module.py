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
from distill.llm.data.arithmetic import check_arithmetic
from distill.llm.data.batches import SequenceBatches
from distill.llm.data.chat import ChatTemplate
from distill.llm.data.sources import HF_FORMATS, SOURCES, SPLITS, Conversation, Document, Pair, SourcesMixin
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
        messages_field: str | None = None,
        chat: bool = False,
        chat_template: str | None = None,
        split_digits: bool = False,
        num_examples: int = 20_000,
        digits: int | Sequence[int] = (1, 2),
        operations: str | Sequence[str] = ("+", "-"),
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise DistillError(f"unknown text source '{source}'; use one of {', '.join(SOURCES)}")
        if mode not in MODES:
            raise DistillError(
                f"unknown mode '{mode}'; use 'pack' (blocks of seq_len tokens), 'pad' (one per document) or "
                "'pack_documents' (whole documents packed into rows, kept apart)"
            )
        if (prompt_field is None) != (completion_field is None):
            raise DistillError("prompt_field and completion_field go together: set both (instruction data) or neither")
        if prompt_field is not None and source not in ("jsonl", "hf"):
            raise DistillError(f"prompt/completion fields need source jsonl or hf, not '{source}'")
        self._check_chat(source, chat, chat_template, messages_field, prompt_field, str(tokenizer))
        if not isinstance(split_digits, bool):
            raise DistillError(f"split_digits must be true or false, got {split_digits!r}")
        if split_digits and str(tokenizer) != "bpe":
            raise DistillError(
                "split_digits applies to the trained BPE (tokenizer: bpe), not to a pretrained tokenizer"
            )
        digits = (int(digits), int(digits)) if isinstance(digits, int) else tuple(int(d) for d in digits)
        operations = (operations,) if isinstance(operations, str) else tuple(str(op) for op in operations)
        if len(digits) != 2:
            raise DistillError(f"digits must be [min, max] (numbers of digits of the operands), got {list(digits)}")
        if source == "arithmetic":
            check_arithmetic(num_examples, digits, operations)
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
        if source in ("stdlib", "arithmetic") and self.paths:
            what = "reads Python's standard library" if source == "stdlib" else "generates its examples"
            raise DistillError(f"source={source} {what}; give paths with source text, jsonl or hf")
        if source not in ("stdlib", "arithmetic") and not self.paths:
            raise DistillError(f"source={source} needs paths: one or more local files or folders")
        if source == "hf":
            hf_format = {"jsonl": "json", "txt": "text"}.get(hf_format, hf_format)
            if hf_format not in HF_FORMATS:
                raise DistillError(
                    f"hf_format must be one of {', '.join(HF_FORMATS)} (local files only), got {hf_format!r}"
                )
        self.source, self.mode, self.hf_format = source, mode, hf_format
        self.text_field, self.prompt_field, self.completion_field = text_field, prompt_field, completion_field
        self.messages_field, self.chat, self.chat_template = messages_field, chat, chat_template
        self.split_digits = split_digits
        self.num_examples, self.digits, self.operations = num_examples, digits, operations
        self.tokenizer_name, self.requested_vocab_size = str(tokenizer), int(vocab_size)
        self.seq_len = int(seq_len)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.max_chars = int(max_chars) if max_chars else None
        self.batch_size, self.eval_batch_size, self.seed = int(batch_size), int(eval_batch_size), int(seed)
        self.cache_dir = Path(cache_dir).expanduser()
        self.tensors: dict[str, dict[str, Tensor]] = {}
        self.prompt_lengths: dict[str, Tensor] = {}  # prompt/completion data: prompt tokens of each row
        self.tokenizer_path: Path | None = None  # the cached BPE file, once setup() ran
        self.documents: dict[str, list[Document | Pair | Conversation]] = {}  # each split's items, before tokenizing
        self.corpus_stats: dict[str, Any] = {}
        self._tokenizer: Any = None
        self._template: ChatTemplate | None = None  # the chat template in use (chat data), once needed
        self._fingerprint: str | None = None

    @staticmethod
    def _check_chat(
        source: str,
        chat: Any,
        chat_template: Any,
        messages_field: str | None,
        prompt_field: str | None,
        tokenizer: str,
    ) -> None:
        """Chat settings that cannot work together, refused before anything is read."""
        if not isinstance(chat, bool):
            raise DistillError(f"chat must be true or false, got {chat!r}")
        if chat_template is not None and (not isinstance(chat_template, str) or not chat_template.strip()):
            raise DistillError(f"chat_template must be a Jinja template string or null, got {chat_template!r}")
        if not chat:
            if messages_field is not None:
                raise DistillError(
                    f"messages_field={messages_field} holds conversations, which need the chat template: set chat=true"
                )
            if chat_template is not None:
                raise DistillError("chat_template is set but chat is false: set chat=true to render the data with it")
            return
        if source not in ("jsonl", "hf", "arithmetic"):
            raise DistillError(f"chat data need source jsonl, hf or arithmetic, not '{source}'")
        if messages_field is not None and prompt_field is not None:
            raise DistillError(
                "set messages_field (a list of messages a row) or prompt_field/completion_field, not both"
            )
        if source != "arithmetic" and messages_field is None and prompt_field is None:
            raise DistillError(
                "chat=true needs conversations: set messages_field (rows with a list of messages) or "
                "prompt_field and completion_field (prompt/completion rows, strings or lists of messages)"
            )
        if tokenizer == "bpe" and chat_template is None:
            raise DistillError(
                "chat=true with tokenizer bpe: the trained BPE has no chat template of its own; set "
                "lm_data.chat_template to a Jinja template (configs/lm_data/chat.yaml has one)"
            )

    # ------------------------------------------------------------------ properties

    @property
    def pairs(self) -> bool:
        """Whether the data are prompt/completion pairs (instruction data; with chat, rendered as conversations)."""
        return self.prompt_field is not None or self.source == "arithmetic"

    @property
    def unpacked_prompts(self) -> bool:
        """Whether prompts come from the split's items rather than its rows (chat data, or several documents a row)."""
        return self.chat or self.mode == "pack_documents"

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
        (their last `prompt_len` tokens when given). Chat data: each conversation rendered up to its last
        assistant message with the template's generation prompt (its last `prompt_len` tokens when given,
        at most seq_len). With mode pack_documents (rows holding several documents) the prompts come from
        the split's documents, pairs or conversations, one each, as they would in pad mode. Rows shorter
        than the longest are left-padded with the pad id and attention_mask 0, as generation needs.
        """
        t = self._split(split)
        n = min(int(n), len(self.documents[split]) if self.unpacked_prompts else len(t["input_ids"]))
        if n < 1:
            raise DistillError(f"no prompts to take from split '{split}' (n={n})")
        if not self.pairs and not self.chat and prompt_len is None:
            prompt_len = self.seq_len // 2
        if prompt_len is not None and prompt_len < 1:
            raise DistillError(f"prompt_len must be >= 1, got {prompt_len}")
        if self.unpacked_prompts:
            rows = self._item_prompts(split, n, prompt_len)
            n = len(rows)
            if n < 1:
                raise DistillError(f"no prompts to take from split '{split}' (its documents have no tokens)")
        else:
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

    def _item_prompts(self, split: str, n: int, prompt_len: int | None) -> list[Tensor]:
        """The prompts of the split's first `n` items (documents with tokens, pairs or conversations)."""
        items = self.documents[split]
        if isinstance(items[0], Conversation):
            texts = [self._chat().prompt(c)[0] for c in items[:n]]
            keep = min(prompt_len or self.seq_len, self.seq_len)  # the end: it holds the generation prompt
            return [torch.tensor(ids[-keep:], dtype=torch.long) for ids in self._encode(texts)]
        if isinstance(items[0], Pair):
            prompts = [ids[: self.seq_len] for ids in self._encode([p.prompt for p in items[:n]])]
            return [torch.tensor(ids[-prompt_len:] if prompt_len else ids, dtype=torch.long) for ids in prompts]
        rows: list[Tensor] = []
        for start in range(0, len(items), n):  # as in pad mode: a document's tokens (and eos), the first prompt_len
            for ids, _ in self._units(items[start : start + n]):
                if ids and len(rows) < n:
                    rows.append(torch.tensor(ids[: min(prompt_len, self.seq_len)], dtype=torch.long))
            if len(rows) == n:
                break
        return rows

    def generation_examples(self, split: str, n: int | None = None) -> tuple[Tensor, Tensor, list[str]]:
        """The first `n` (None: all) examples of `split` to complete by generation: (prompt input_ids,
        attention_mask, reference completions). Prompts are left-padded (see `prompts`); a reference is
        the text the model should produce after its prompt: a pair's completion, or a conversation's last
        assistant message (its prompt: the conversation before it, rendered with the generation prompt).

        Only for data with prompts and answers (prompt/completion pairs, conversations); plain text has none.
        """
        if not self.pairs and not self.chat:
            raise DistillError(
                "evaluation by generation needs prompts with reference answers: prompt/completion pairs "
                "(lm_data.prompt_field and completion_field) or conversations (lm_data.chat)"
            )
        rows = len(self._split(split)["input_ids"])
        total = len(self.documents[split]) if self.unpacked_prompts else rows
        n = total if n is None else min(int(n), total)
        ids, mask = self.prompts(split, n)
        items = self.documents[split][:n]
        if self.chat:
            references = [c.messages[c.last_assistant]["content"] for c in items]
        else:
            references = [item.completion for item in items]
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
        # Conversations are rendered (and checked) as they are read, in file order, with the pretrained
        # tokenizer's special tokens (loaded then) or the BPE's (known before it is trained on them).
        splits = self.documents = self._load_splits()
        if self._tokenizer is None:
            self._tokenizer = self._ready(self._load_tokenizer(splits["train"]))
        if (self.pairs or self.chat) and self.mode == "pack":
            what = "Conversations" if self.chat else "Prompt/completion pairs"
            log.info("%s are not packed in mode pack: one padded sequence of %d tokens each", what, self.seq_len)
        tensors = {}
        for split in SPLITS:
            if self.mode == "pack_documents":
                tensors[split] = self._build_documents(split, splits[split])
            elif self.chat:
                tensors[split] = self._build_chat(split, splits[split])
            elif self.pairs:
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
        tokenizer under the same paths gives another fingerprint; with chat data, the chat template too
        (it also writes the generation prompts)."""
        if self._fingerprint is None:
            arrays = {f"{split}.{name}": t for split in SPLITS for name, t in self._split(split).items()}
            parts = [digest_arrays(arrays), self._tokenizer_digest()]
            self._fingerprint = digest_text(parts + ([self._chat().digest] if self.chat else []))
        return self._fingerprint
