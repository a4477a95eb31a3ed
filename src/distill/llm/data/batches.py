"""Batches of token sequences for the text data modules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor

from distill.data.batches import TensorBatches


class SequenceBatches(TensorBatches):
    """`{"input_ids", "attention_mask", "labels", "index"}` batches sliced from in-memory tensors, and
    `position_ids` where the tensors have them (rows packing several documents apart: `pack_documents`).

    Behaves like `TensorBatches` (shuffled order from (seed, epoch), `set_epoch`, `sharded` for DDP,
    `deterministic`); `index` is each sequence's row in its split (`rows` maps a subset's rows back).
    """

    def __init__(self, tensors: dict[str, Tensor], batch_size: int, rows: Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(tensors["input_ids"], tensors["labels"], batch_size, **kwargs)
        self.attention_mask = tensors["attention_mask"]
        self.position_ids = tensors.get("position_ids")
        self.rows = rows

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for batch in super().__iter__():
            index = batch["index"]
            out = {
                "input_ids": batch["x"],
                "attention_mask": self.attention_mask.index_select(0, index),
                "labels": batch["y"],
                "index": index if self.rows is None else self.rows[index],
            }
            if self.position_ids is not None:
                out["position_ids"] = self.position_ids.index_select(0, index)
            yield out
