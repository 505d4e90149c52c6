"""What an adaptation method is: how a batch becomes a loss, which parameters train, and the
hooks around an epoch. Everything else (devices, precision, the optimiser, the epoch loop,
checkpoints, choosing the best epoch) belongs to the `Runner` (`engine.runner`), which drives
every method the same way, in one process and on every Ray Train rank alike.

A method sees its batches as uint8 `Batch`es (or `Paired` ones) and turns them into a loss with
the runner's `Compute`: the copy to the device at working scale, the Kornia augmentation and the
(DDP-wrapped, AMP) forward.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Protocol

import torch
from torch.utils.data import DataLoader

from raysegment.augment import SegmentationAugment, resize_batch, to_float
from raysegment.config import RunConfig
from raysegment.data import Batch, EpochSampler, SegmentationDataset, pad_collate
from raysegment.models.segmenter import Segmenter

Wrap = Callable[[torch.nn.Module], torch.nn.Module] | None


class Loader(Protocol):
    """This rank's batches of one epoch, in its sampler's order (a torch DataLoader is one)."""

    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...


LoaderFactory = Callable[[SegmentationDataset, RunConfig, EpochSampler, torch.device], Loader]


@dataclass(frozen=True)
class Placement:
    """Where a method runs: its device, its rank among `world_size` data-parallel ranks, and how
    it reads its training batches (`loader`; None: a torch DataLoader in this process; the Ray shell
    may hand in one that decodes with Ray Data)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    loader: LoaderFactory | None = None

    @classmethod
    def of(
        cls, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1, loader: LoaderFactory | None = None
    ) -> Placement:
        return cls(torch.device(device), rank, world_size, loader)

    def loader_for(self, dataset: SegmentationDataset, cfg: RunConfig, sampler: EpochSampler) -> Loader:
        """The loader of `dataset` on this rank, drawing in `sampler`'s order."""
        return (self.loader or make_loader)(dataset, cfg, sampler, self.device)


@dataclass(frozen=True)
class Paired:
    """One step's batches from a labelled source set and a target set (the one a method adapts to).
    Which of the two sets an epoch's steps follow, and so how many steps it has, is the method's
    choice (`Method.steps_per_epoch`); the other set is cycled."""

    source: Batch
    target: Batch
    labelled: Batch | None = None  # self-training with a few target labels: a batch of those


def loader_workers(cfg: RunConfig, device: torch.device) -> int:
    """Decoding processes per loader: the configured number, else what this process's CPU share allows
    (none on <= 2 threads, where a decoder process would only take cores from the step)."""
    if cfg.data.num_workers is not None:
        return cfg.data.num_workers
    threads = torch.get_num_threads()
    return 0 if threads <= 2 else min(8, threads // 2 if device.type == "cpu" else threads)


def make_loader(
    dataset: SegmentationDataset, cfg: RunConfig, sampler: EpochSampler, device: torch.device
) -> DataLoader:
    workers = loader_workers(cfg, device)
    return DataLoader(
        dataset,
        batch_size=cfg.optim.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        collate_fn=partial(pad_collate, ignore_index=dataset.info.ignore_index),
        # Its own generator: a DataLoader otherwise draws its workers' base seed from torch's global
        # RNG each epoch, moving the augmentation stream (and making it differ from Ray Data ingest's).
        generator=torch.Generator().manual_seed(cfg.optim.seed),
    )


def endless(loader: Loader) -> Iterator[Batch]:
    """Re-iterate a loader (unlike itertools.cycle, which would replay the first pass's tensors)."""
    while True:
        yield from loader


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Compute:
    """How a method's batch is computed on this rank: to the device at working scale, augmented
    there with Kornia, and through the (DDP-wrapped, compiled) model with channels-last and AMP on CUDA;
    `class_weights` weigh the supervised loss."""

    def __init__(self, cfg: RunConfig, ignore_index: int, device: torch.device, module: torch.nn.Module) -> None:
        self.cfg, self.ignore_index, self.device, self.module = cfg, ignore_index, device, module
        self.augment = SegmentationAugment(cfg.augment, ignore_index).to(device)
        weights = cfg.optim.class_weights
        self.class_weights = torch.tensor(weights, device=device) if weights else None
        use_amp = device.type == "cuda" and cfg.optim.amp != "none"
        self.amp_dtype = AMP_DTYPES.get(cfg.optim.amp) if use_amp else None

    def to_device(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 batch -> (images (B,3,h,w) float [0,1], masks (B,h,w)) on the device at working scale."""
        moved = batch.to(self.device, non_blocking=True)
        return resize_batch(to_float(moved.images), moved.masks, batch.sizes, self.cfg.data.resize, self.ignore_index)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        )
        with autocast:
            return self.module(images)


class Method:
    """One adaptation method: the model it trains, the batches of an epoch, the loss of a batch.

    `model` is what the optimiser steps (its parameters with `requires_grad` train);
    `deployable` is what a checkpoint serves (the mean teacher's EMA model, say); `reference`,
    kept when the label-free proxy judges, is the model the method started from.
    """

    name: ClassVar[str]

    def __init__(
        self,
        cfg: RunConfig,
        *,
        model: Segmenter,
        train_set: SegmentationDataset,
        placement: Placement,
        sampler: EpochSampler | None = None,
    ) -> None:
        self.cfg, self.info, self.placement = cfg, train_set.info, placement
        self.model = model.to(placement.device)
        self.reference: torch.nn.Module | None = None
        if cfg.judge == "proxy":
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        p = placement
        self.sampler = sampler or EpochSampler(len(train_set), cfg.optim.seed, p.rank, p.world_size)
        self.loader = p.loader_for(train_set, cfg, self.sampler)

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def epochs(self) -> int:
        return self.cfg.optim.epochs

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def batches(self, epoch: int) -> Iterable[Any]:
        """This rank's batches of `epoch` (0-based)."""
        self.sampler.set_epoch(epoch)
        return self.loader

    def loss(self, batch: Any, compute: Compute) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def images_in(batch: Any) -> int:
        """Images one step consumed (its labelled set's, for a paired step): the throughput count."""
        return (batch.source if isinstance(batch, Paired) else batch).images.shape[0]

    @property
    def deployable(self) -> torch.nn.Module:
        return self.model

    def after_step(self, step: int) -> None:
        """Run after optimiser step `step` (1-based): the mean teacher's EMA update."""

    def after_epoch(self, epoch: int) -> None:
        """Run after epoch `epoch` (1-based) has trained: the teacher's BatchNorm refresh, AdaBN itself."""

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors beyond the deployable model that an exact resume needs (e.g. the student)."""
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of `extra_state`."""
