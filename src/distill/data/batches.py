"""Batches sliced straight out of in-memory tensors.

For datasets that fit in memory, a `DataLoader` that collates one sample at a time costs more
than the model step of a small student; slicing a shuffled index is the cheap way.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


class TensorBatches:
    """Iterable of `{"x", "y", "index"}` batches over tensors held in memory.

    `index` is each sample's row in `x`, so per-sample state (cached teacher outputs, CRD
    memory banks) can be looked up. Once `sharded` is set (the pipeline does so for the loaders
    it hands to a distributed `Trainer.fit`), each rank takes its own shard; evaluation loaders
    stay whole, so a model measured on rank 0 sees every sample.
    """

    #: no augmentation happens here: the same index always gives the same input
    deterministic = True

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.epoch = 0
        self.sharded = False

    def _shard(self) -> tuple[int, int]:
        if self.sharded and torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _num_rows(self) -> int:
        rank, world = self._shard()
        if world == 1:
            return len(self.x)
        if self.shuffle:  # training: equal shards, so every rank runs the same number of steps
            return len(self.x) // world
        return len(range(rank, len(self.x), world))  # evaluation: every sample once, over all ranks

    def inputs(self, start: int, stop: int) -> Tensor:
        """Rows `start:stop` as model inputs (unshuffled, unaugmented): for computing teacher outputs once."""
        return self.x[start:stop]

    def set_epoch(self, epoch: int) -> None:
        """Shuffle for `epoch` next: the order depends on (seed, epoch) alone, so a resumed run sees the same batches."""
        self.epoch = epoch

    def __len__(self) -> int:
        rows = self._num_rows()
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.x), generator=generator)
            self.epoch += 1
        else:
            order = torch.arange(len(self.x))
        order = order.to(self.x.device)  # drawn on the CPU (the same order on any device), cut where the data are
        rank, world = self._shard()
        if world > 1:
            order = order[: self._num_rows() * world][rank::world] if self.shuffle else order[rank::world]
        for batch in range(len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            # index_select, not x[index]: advanced indexing of a 2-D tensor costs several times more per batch
            yield {"x": self.x.index_select(0, index), "y": self.y.index_select(0, index), "index": index}
