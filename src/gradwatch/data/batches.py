"""Batches cut from tensors by index slicing: no per-sample Python, no collation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TensorBatches:
    """An iterable of ``(x, y)`` batches taken from whole-dataset tensors.

    The order of an epoch depends only on ``(seed, epoch)``, so every DDP rank draws the
    same permutation and takes its own interleaved shard of it (padded like
    ``DistributedSampler``): the ranks' batches at one step together form one contiguous
    slice of the permutation, the batch a single process with ``world_size`` times the
    batch size would see. Lightning calls :meth:`set_epoch` through the ``sampler``
    attribute at the start of every epoch.

    It is resumable mid-epoch: Lightning stores :meth:`state_dict` (the epoch and how many
    batches it has handed out) in every checkpoint and calls :meth:`load_state_dict` on
    resume, so the next iteration continues with the first batch not yet trained on.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}.")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self._served = 0  # batches handed out in the current iteration
        self._resume: tuple[int, int] | None = None  # (epoch, batches to skip)

    #: Lightning inspects these DataLoader attributes; ``sampler`` leads it to set_epoch.
    batch_sampler = None

    @property
    def sampler(self) -> TensorBatches:
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.x)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        rank, world = _rank_and_world()
        if world > 1:
            padded = -(-n // world) * world
            order = torch.cat([order, order[: padded - n]])[rank::world]
        return order.to(self.x.device)

    def _rows(self) -> int:
        n = len(self.x)
        _, world = _rank_and_world()
        return -(-n // world)

    def __len__(self) -> int:
        rows = self._rows()
        if self.drop_last:
            return rows // self.batch_size
        return -(-rows // self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "served": self._served}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = (int(state_dict["epoch"]), int(state_dict["served"]))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator: the body runs at the first next(), after Lightning's set_epoch.
        start, self._resume = self._resume, None
        self._served = start[1] if start is not None and start[0] == self.epoch else 0
        order = self._indices()
        for i in range(self._served, len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            self._served = i + 1
            # index_select copies whole rows: 4.7 us against 66 us for x[index] (128 MNIST images).
            yield self.x.index_select(0, index), self.y.index_select(0, index)
