"""Ray Data ingest for Ray Train ranks: training images read and decoded by Ray Data tasks on any
node with CPUs to spare, streamed to the rank that trains on them.

A rank turns its sampler's share (the same `EpochSampler` / `RareClassSampler` order the
one-process engine uses: seeded by (seed, epoch), rank r taking every world-th index, padded to
equal steps) into a Ray Data stream, one row per training batch: `from_items` over the files'
locations -> `map` (read the objects, decode, check each pair as `SegmentationDataset.decode` does,
pad like `pad_collate`) -> `iter_torch_batches` (prefetch, pinned memory on CUDA) -> the engine's
`Batch`. Order is preserved, so a rank's batches are the DataLoader's batches, byte for byte: a
resumed epoch, `labelled_limit`, rare-class sampling and unlabelled targets keep their guarantees.
The decoded images live in Ray's object store (memory) on their way to the rank; nothing is written
to a node's disk.

Why not `get_dataset_shard`: Ray Train splits a dataset among ranks dynamically
(`streaming_split`), so which rank sees which image would no longer follow the seeded sampler, and
an epoch resumed after a failure could not be replayed exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import ray.data
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from raysegment.config import RunConfig
from raysegment.data import Batch, EpochSampler, SegmentationDataset, pad_collate
from raysegment.data.info import DatasetInfo
from raysegment.engine.method import LoaderFactory, make_loader
from raysegment.storage import is_uri

PREFETCH_BATCHES = 2


def uses_ray_data(cfg: RunConfig) -> bool:
    """`data.ingest`, with `auto` meaning Ray Data for a dataset in object storage."""
    if cfg.data.ingest == "auto":
        return is_uri(cfg.data.root) and not cfg.data.root.startswith("file://")
    return cfg.data.ingest == "ray_data"


def loader_factory(cfg: RunConfig) -> LoaderFactory:
    """What a Ray Train rank reads its training batches with (`data.ingest`)."""
    return RayDataLoader if uses_ray_data(cfg) else make_loader


def decode_batch(row: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """One training batch from its files' locations: read, decoded, checked and padded like
    `pad_collate` (a Ray Data task: runs on whichever node has the CPUs, not in the rank)."""
    from raysegment.data import files

    view = SegmentationDataset([], DatasetInfo.model_validate(info))
    items = []
    for image, mask in zip(row["images"], row["masks"]):
        image_at, mask_at = files.location(image), files.location(mask) if mask else None
        items.append(view.decode(files.read(image_at), files.read(mask_at) if mask_at else None, image_at, mask_at))
    batch = pad_collate(items, view.info.ignore_index)
    return {
        "epoch": row["epoch"],
        "images": batch.images.numpy(),
        "masks": batch.masks.to(torch.uint8).numpy(),  # ids and the ignore index fit a byte (DatasetInfo)
        "sizes": batch.sizes.numpy(),
    }


class OneBatch(NumpyBatchCollateFn):
    """Ray Data's one-row numpy batch (a whole training batch) -> (images, masks, sizes, epoch)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:  # a tuple of tensors Ray can pin
        def tensor(column: str) -> torch.Tensor:  # Ray hands read-only arrays; torch wants writable memory
            return torch.from_numpy(np.require(batch[column][0], requirements=["C", "W"]))

        return tensor("images"), tensor("masks").long(), tensor("sizes"), torch.tensor(int(batch["epoch"][0]))


class RayDataLoader:
    """A rank's epochs of `dataset` in `sampler`'s order, decoded by Ray Data (a `Loader`).

    The sampler's order for every epoch is known in advance (it depends on (seed, epoch) only), so
    the first pass starts one stream over this and every later epoch of the run, one row per batch:
    decode tasks work ahead across epoch boundaries instead of a pipeline starting cold each epoch.
    A pass that asks for another epoch than the stream's next, or follows a pass left unfinished (a
    cycled set re-read within an epoch, a restored run), starts a new stream from its epoch.
    """

    def __init__(
        self, dataset: SegmentationDataset, cfg: RunConfig, sampler: EpochSampler, device: torch.device
    ) -> None:
        self.dataset, self.sampler, self.device = dataset, sampler, device
        self.batch_size, self.decode_cpus = cfg.optim.batch_size, cfg.data.decode_cpus
        self.last_epoch = cfg.optim.epochs - 1
        self._stream: Iterator[tuple[torch.Tensor, ...]] | None = None
        self._next_epoch = -1

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def rows(self, first: int, last: int) -> list[dict[str, Any]]:
        """Epochs first..last of this rank's share as rows of one batch each, in the sampler's order."""
        samples, rows, walker = self.dataset.samples, [], copy.copy(self.sampler)  # the method's stays put
        for epoch in range(first, last + 1):
            walker.set_epoch(epoch)
            order = list(walker)
            for start in range(0, len(order), self.batch_size):
                picked = [samples[i] for i in order[start : start + self.batch_size]]
                rows.append(
                    {
                        "epoch": epoch,
                        "images": [str(image) for image, _ in picked],
                        "masks": ["" if mask is None else str(mask) for _, mask in picked],
                    }
                )
        return rows

    def _start(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        rows = self.rows(epoch, max(epoch, self.last_epoch))
        decode = partial(decode_batch, info=self.dataset.info.model_dump(mode="json"))
        data = ray.data.from_items(rows, override_num_blocks=len(rows)).map(decode, num_cpus=self.decode_cpus)
        data.context.execution_options.preserve_order = True
        batches: Any = data.iter_torch_batches(
            batch_size=1,
            collate_fn=OneBatch(),
            prefetch_batches=PREFETCH_BATCHES,
            pin_memory=self.device.type == "cuda",
            device="cpu",  # the engine moves batches to its device itself (`Compute.to_device`)
        )
        return iter(batches)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.sampler.epoch
        if not len(self):
            return
        if self._stream is None or epoch != self._next_epoch:
            self.close()
            self._stream = self._start(epoch)
        stream, self._next_epoch = self._stream, -1  # -1: until this pass has taken its whole epoch
        for _ in range(len(self)):
            images, masks, sizes, streamed = next(stream)
            assert int(streamed) == epoch, f"ingest stream out of step: epoch {int(streamed)}, expected {epoch}"
            yield Batch(images, masks, sizes)
        self._next_epoch = epoch + 1
        if epoch >= self.last_epoch:  # the run's last epoch: let Ray Data wind the stream down now
            self.close()

    def close(self) -> None:
        """Stop the stream's decode tasks (a stream given up on would otherwise work ahead for nothing)."""
        if self._stream is not None:
            getattr(self._stream, "close", lambda: None)()
            self._stream = None
