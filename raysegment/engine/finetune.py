"""`Finetune`, the supervised method: cross-entropy on labelled images (the source, or the few
labelled target images of an adaptation), optionally replaying source batches beside the target's."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from raysegment.augment import match_batch
from raysegment.config import RunConfig
from raysegment.data import Batch, EpochSampler, SegmentationDataset
from raysegment.engine.loss import segmentation_loss
from raysegment.engine.method import Compute, Method, Paired, Placement, endless
from raysegment.models.segmenter import Segmenter


class Finetune(Method):
    """Supervised cross-entropy on `train_set`; with `replay` (the labelled source), every step also
    trains on a source batch, so a few target labels adapt the model without it forgetting the
    source. With replay an epoch is a pass over the larger of the two sets, the smaller one cycled."""

    name = "finetune"

    def __init__(
        self,
        cfg: RunConfig,
        *,
        model: Segmenter,
        train_set: SegmentationDataset,
        placement: Placement,
        replay: SegmentationDataset | None = None,
    ) -> None:
        super().__init__(cfg, model=model, train_set=train_set, placement=placement)
        self.replay_loader = None
        if replay is not None:
            p = placement
            self.replay_sampler = EpochSampler(len(replay), cfg.optim.seed + 1, p.rank, p.world_size)
            self.replay_loader = p.loader_for(replay, cfg, self.replay_sampler)

    @property
    def steps_per_epoch(self) -> int:
        if self.replay_loader is None:
            return len(self.loader)
        return max(len(self.loader), len(self.replay_loader))

    def batches(self, epoch: int) -> Iterable[Batch | Paired]:
        self.sampler.set_epoch(epoch)
        if self.replay_loader is None:
            return self.loader
        self.replay_sampler.set_epoch(epoch)
        targets, sources = endless(self.loader), endless(self.replay_loader)
        return (Paired(source=next(sources), target=next(targets)) for _ in range(self.steps_per_epoch))

    @staticmethod
    def images_in(batch: Batch | Paired) -> int:
        """The target's labelled images of a replay step (the source's ride along)."""
        return (batch.target if isinstance(batch, Paired) else batch).images.shape[0]

    def loss(self, batch: Batch | Paired, compute: Compute) -> torch.Tensor:
        ignore, weights = self.info.ignore_index, compute.class_weights
        if isinstance(batch, Batch):
            images, masks = compute.augment(*compute.to_device(batch))
            return segmentation_loss(compute.forward(images), masks, ignore, weights)
        xt, yt = compute.augment(*compute.to_device(batch.target))
        xs, ys = compute.augment(*compute.to_device(batch.source))
        xs, ys = match_batch(xs, ys, xs.shape[0], (xt.shape[-2], xt.shape[-1]))
        logits = compute.forward(torch.cat([xt, xs]))  # one forward: DDP expects one per backward
        target_logits, source_logits = logits.split([xt.shape[0], xs.shape[0]])
        return segmentation_loss(target_logits, yt, ignore, weights) + segmentation_loss(
            source_logits, ys, ignore, weights
        )
