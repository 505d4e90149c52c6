"""Epoch-seeded, rank-sharded ordering so a resumed or distributed run sees the same batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Shuffle with `seed + epoch`, then give rank r every world-th index.

    The order depends only on (seed, epoch), never on RNG state consumed elsewhere, which is what
    makes resume-from-checkpoint exact and DDP ranks disjoint. Pads by wrapping so every rank gets
    the same number of samples (DDP needs equal step counts).
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.size // self.world_size)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(self.size)
        total = len(self) * self.world_size
        order = torch.cat([order, order[: total - self.size]]) if total > self.size else order
        return iter(order[self.rank::self.world_size].tolist())
