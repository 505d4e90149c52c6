"""Ray Data ingest for Ray Train ranks: training images read and decoded by Ray Data tasks on any
node with CPUs to spare, streamed to the rank that trains on them.

Each epoch a rank turns its sampler's share (the same `EpochSampler` / `RareClassSampler` order the
one-process engine uses: seeded by (seed, epoch), rank r taking every world-th index, padded to
equal steps) into a Ray Data pipeline: `from_items` over the files' locations -> `map` (read the
object, decode it, check the pair: `SegmentationDataset.decode`) -> `iter_torch_batches` (prefetch,
pinned memory on CUDA) -> the engine's padded `Batch`. Order is preserved, so a rank's batches are
the DataLoader's batches, byte for byte: a resumed epoch, `labelled_limit`, rare-class sampling and
unlabelled targets keep their guarantees. The decoded images live in Ray's object store (memory)
on their way to the rank; nothing is written to a node's disk.

Why not `get_dataset_shard`: Ray Train splits a dataset among ranks dynamically
(`streaming_split`), so which rank sees which image would no longer follow the seeded sampler, and
an epoch resumed after a failure could not be replayed exactly.
"""

from __future__ import annotations

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

PREFETCH_BATCHES = 2


def uses_ray_data(cfg: RunConfig) -> bool:
    """`data.ingest`, with `auto` meaning Ray Data for a dataset in object storage."""
    if cfg.data.ingest == "auto":
        return "://" in cfg.data.root and not cfg.data.root.startswith("file://")
    return cfg.data.ingest == "ray_data"


def loader_factory(cfg: RunConfig) -> LoaderFactory:
    """What a Ray Train rank reads its training batches with (`data.ingest`)."""
    return RayDataLoader if uses_ray_data(cfg) else make_loader


def decode_row(row: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """One sample from its locations to uint8 arrays (a Ray Data task: runs wherever Ray puts it)."""
    from raysegment.data import files

    view = SegmentationDataset([], DatasetInfo.model_validate(info))
    image_at = files.location(row["image"])
    mask_at = files.location(row["mask"]) if row["mask"] else None
    image, mask = view.decode(files.read(image_at), files.read(mask_at) if mask_at else None, image_at, mask_at)
    return {"position": row["position"], "image": image.numpy(), "mask": mask.to(torch.uint8).numpy()}


class PaddedBatch(NumpyBatchCollateFn):
    """Ray Data's numpy batch -> the engine's (images, masks, sizes), padded like `pad_collate`."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = ignore_index

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:  # (images, masks, sizes): a tensor tuple Ray can pin
        items = [  # Ray hands read-only arrays: `require` copies them once, as torch wants writable memory
            (
                torch.from_numpy(np.require(image, requirements=["C", "W"])),
                torch.from_numpy(np.require(mask, requirements=["C", "W"])).long(),
            )
            for image, mask in zip(batch["image"], batch["mask"])
        ]
        return tuple(pad_collate(items, self.ignore_index))  # type: ignore[return-value]


class RayDataLoader:
    """A rank's epoch of `dataset` in `sampler`'s order, decoded by Ray Data (a `Loader`)."""

    def __init__(
        self, dataset: SegmentationDataset, cfg: RunConfig, sampler: EpochSampler, device: torch.device
    ) -> None:
        self.dataset, self.sampler, self.device = dataset, sampler, device
        self.batch_size, self.decode_cpus = cfg.optim.batch_size, cfg.data.decode_cpus

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def rows(self) -> list[dict[str, Any]]:
        """This epoch's share as rows of locations, in the sampler's order."""
        samples = self.dataset.samples
        return [
            {"position": k, "image": str(samples[i][0]), "mask": "" if samples[i][1] is None else str(samples[i][1])}
            for k, i in enumerate(self.sampler)
        ]

    def __iter__(self) -> Iterator[Batch]:
        rows = self.rows()
        if not rows:
            return
        blocks = min(len(rows), max(1, math.ceil(len(rows) / self.batch_size)))
        decode = partial(decode_row, info=self.dataset.info.model_dump(mode="json"))
        data = ray.data.from_items(rows, override_num_blocks=blocks).map(decode, num_cpus=self.decode_cpus)
        data.context.execution_options.preserve_order = True
        for images, masks, sizes in data.iter_torch_batches(
            batch_size=self.batch_size,
            collate_fn=PaddedBatch(self.dataset.info.ignore_index),
            prefetch_batches=PREFETCH_BATCHES,
            pin_memory=self.device.type == "cuda",
            device="cpu",  # the engine moves batches to its device itself (`Compute.to_device`)
        ):
            yield Batch(images, masks, sizes)  # type: ignore[arg-type]  # what PaddedBatch returned
