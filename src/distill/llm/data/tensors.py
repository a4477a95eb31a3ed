"""Token tensors: documents packed into blocks of seq_len tokens or padded one per row, and prompt/completion
pairs padded with the prompt masked (see `distill.llm.data`)."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from distill.errors import DistillError
from distill.llm.data.sources import Document, Pair

log = logging.getLogger("distill.llm.data")  # one logger for the whole package

IGNORE_INDEX = -100  # label of a position no loss counts (padding, prompt)
MODES = ("pack", "pad")


class TensorsMixin:
    """`TextDataModule`'s `[N, seq_len]` input_ids, attention_mask and labels of one split."""

    seq_len: int
    val_fraction: float
    test_fraction: float
    prompt_lengths: dict[str, Tensor]
    pad_token_id: int
    eos_token_id: int

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
