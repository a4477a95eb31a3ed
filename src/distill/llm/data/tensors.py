"""Token tensors: documents packed into blocks of seq_len tokens or padded one per row, prompt/completion
pairs and conversations padded with what is not learned masked, or whole documents of any kind packed
apart (`pack_documents`: position ids restarting at each one; see `distill.llm.data`)."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable

import torch
from torch import Tensor

from distill.errors import DistillError
from distill.llm.data.sources import Conversation, Document, Pair

log = logging.getLogger("distill.llm.data")  # one logger for the whole package

IGNORE_INDEX = -100  # label of a position no loss counts (padding, prompt)
MODES = ("pack", "pad", "pack_documents")


class TensorsMixin:
    """`TextDataModule`'s `[N, seq_len]` input_ids, attention_mask and labels of one split."""

    seq_len: int
    val_fraction: float
    test_fraction: float
    prompt_lengths: dict[str, Tensor]
    pad_token_id: int
    eos_token_id: int
    _chat_units: Callable[[list[Conversation]], list[tuple[list[int], list[int]]]]  # ChatMixin
    _encode: Callable[[list[str]], list[list[int]]]  # TokenizerMixin

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

    # ------------------------------------------------------------------ conversations, whole documents packed apart

    def _units(self, items: list) -> list[tuple[list[int], list[int]]]:
        """Each item's token ids and labels, unpadded: a document's tokens (and eos where it ends), all learned;
        a pair's prompt (-100) + completion + eos; a conversation's rendering with its assistant spans learned."""
        if not items:
            return []
        if isinstance(items[0], Conversation):
            return self._chat_units(items)
        eos = self.eos_token_id
        if isinstance(items[0], Pair):
            prompts = self._encode([p.prompt for p in items])
            completions = self._encode([p.completion for p in items])
            return [
                (p + c + [eos], [IGNORE_INDEX] * len(p) + c + [eos]) for p, c in zip(prompts, completions, strict=True)
            ]
        units = []
        for doc, ids in zip(items, self._encode([d.text for d in items]), strict=True):
            row = ids + [eos] if doc.complete else ids
            units.append((row, list(row)))
        return units

    @staticmethod
    def _kind(items: list) -> str:
        if items and isinstance(items[0], Conversation):
            return "conversations"
        return "prompt/completion pairs" if items and isinstance(items[0], Pair) else "documents"

    def _build_chat(self, split: str, conversations: list[Conversation]) -> dict[str, Tensor]:
        """One conversation a row, cut to seq_len and right-padded; labels only on its assistant spans."""
        if not conversations:
            raise self._too_little(split, "0 conversations")
        units = self._chat_units(conversations)
        tensors = self._pad_units(units)
        cut = sum(len(ids) > self.seq_len for ids, _ in units)
        if cut:
            log.warning("%s: %d of %d conversations are longer than seq_len=%d and cut to it", split, cut,
                        len(units), self.seq_len)  # fmt: skip
        learned = (tensors["labels"] != IGNORE_INDEX).sum(1)
        if int((learned == 0).sum()):
            log.warning(
                "%s: %d of %d conversations have no assistant token within seq_len=%d: nothing is learned from them",
                split, int((learned == 0).sum()), len(units), self.seq_len,
            )  # fmt: skip
        if int(learned.sum()) == 0:
            raise self._too_little(split, f"no assistant token fits in seq_len={self.seq_len}")
        return tensors

    def _pad_units(self, units: list[tuple[list[int], list[int]]]) -> dict[str, Tensor]:
        """(ids, labels) rows truncated to seq_len and right-padded (pad id, attention_mask 0, label -100)."""
        n, length = len(units), self.seq_len
        input_ids = torch.full((n, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, length), dtype=torch.long)
        labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, row_labels) in enumerate(units):
            ids, row_labels = ids[:length], row_labels[:length]
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, : len(ids)] = 1
            labels[i, : len(ids)] = torch.tensor(row_labels, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _build_documents(self, split: str, items: list) -> dict[str, Tensor]:
        """Whole documents (or pairs, or conversations) packed into rows of seq_len tokens, never split across rows.

        Best fit, in the items' order: each goes into the open row with the least room that holds it, else
        starts a new row; one longer than seq_len is cut to its first seq_len tokens (a warning counts them).
        The rest of a row is padding (pad id, label -100, attention_mask 0). `position_ids` restart at 0 at
        each document's start and at the padding's, so a model given them without an attention mask
        attends within each document only; the first label of each document is -100 (the token before it
        belongs to another one).
        """
        what = self._kind(items)
        units = [(ids, labels) for ids, labels in self._units(items) if ids]
        if not units:
            raise self._too_little(split, f"0 tokens (no {what})")
        length, cut, kept = self.seq_len, 0, []
        for ids, labels in units:
            if len(ids) > length:
                ids, labels, cut = ids[:length], labels[:length], cut + 1
            kept.append((ids, [IGNORE_INDEX] + labels[1:]))
        if cut:
            log.warning("%s: %d of %d %s are longer than seq_len=%d: each is cut to its first %d tokens",
                        split, cut, len(kept), what, length, length)  # fmt: skip
        rows: list[list[int]] = []
        room: list[tuple[int, int]] = []  # (free tokens, row) of rows not yet full, sorted
        for k, (ids, _) in enumerate(kept):
            at = bisect.bisect_left(room, (len(ids), -1))
            if at < len(room):
                free, row = room.pop(at)
            else:
                free, row = length, len(rows)
                rows.append([])
            rows[row].append(k)
            if free - len(ids) > 0:
                bisect.insort(room, (free - len(ids), row))
        n = len(rows)
        input_ids = torch.full((n, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, length), dtype=torch.long)
        labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((n, length), dtype=torch.long)
        for r, members in enumerate(rows):
            at = 0
            for k in members:
                ids, row_labels = kept[k]
                end = at + len(ids)
                input_ids[r, at:end] = torch.tensor(ids, dtype=torch.long)
                labels[r, at:end] = torch.tensor(row_labels, dtype=torch.long)
                attention_mask[r, at:end] = 1
                position_ids[r, at:end] = torch.arange(len(ids))
                at = end
            position_ids[r, at:] = torch.arange(length - at)
        if not bool((labels != IGNORE_INDEX).any()):
            raise self._too_little(split, f"no token to learn in seq_len={length} (no labelled {what} token fits)")
        log.info("%s: %d %s packed into %d rows of %d tokens (%.0f%% padding)", split, len(kept), what, n, length,
                 100 * (1 - float(attention_mask.float().mean())))  # fmt: skip
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "position_ids": position_ids,
        }
