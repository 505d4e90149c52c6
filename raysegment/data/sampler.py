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

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.size // self.world_size)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        total = len(self) * self.world_size
        order = torch.cat([order, order[: total - self.size]]) if total > self.size else order
        return iter(order[self.rank :: self.world_size].tolist())


class RareClassSampler(EpochSampler):
    """Rare-class sampling (DAFormer): draw classes with P(c) ~ exp((1 - f_c) / T), f_c the share
    of images containing class c, then an image containing that class. Rare classes are seen
    more often, so self-training does not forget them. Order depends on (seed, epoch) only.
    """

    def __init__(
        self, image_classes: list[set[int]], temperature: float, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        super().__init__(len(image_classes), seed, rank, world_size)
        classes = sorted(set().union(*image_classes)) if image_classes else []
        freq = torch.tensor([sum(c in s for s in image_classes) / len(image_classes) for c in classes])
        self.class_probs = torch.softmax((1 - freq) / temperature, 0) if classes else torch.ones(0)
        self.images_of = [[i for i, s in enumerate(image_classes) if c in s] for c in classes]

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        total = len(self) * self.world_size
        if not self.images_of:
            return iter([])
        picks = torch.multinomial(self.class_probs, total, replacement=True, generator=g).tolist()
        order = [self.images_of[c][int(torch.randint(len(self.images_of[c]), (1,), generator=g))] for c in picks]
        return iter(order[self.rank :: self.world_size])
