"""mIoU and per-class IoU (torchmetrics), whole-image or sliding-window, at the model's working scale.

Images are resized to the working scale (`data.resize`) for the forward pass and the logits are
resized back, so scores are always against the full-resolution labels. Items of one size run
together, unpadded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics.classification import MulticlassJaccardIndex

from raysegment.augment import same_size_groups, to_float
from raysegment.config import EvalConfig, ResizeConfig
from raysegment.data.dataset import SegmentationDataset, pad_collate
from raysegment.models.outputs import class_map


@dataclass
class EvalResult:
    miou: float
    per_class: dict[str, float]
    images: int = 0


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, images: torch.Tensor, cfg: EvalConfig, window: tuple[int, int] | None = None
) -> torch.Tensor:
    """images (B,3,H,W) float [0,1] -> logits (B,C,H,W). Sliding windows average overlapping logits."""
    win = cfg.window or window
    h, w = images.shape[-2:]
    if cfg.mode == "whole" or win is None or (h <= win[0] and w <= win[1]):
        return model(images).float()
    wh, ww = min(win[0], h), min(win[1], w)
    sh, sw = max(1, int(wh * (1 - cfg.overlap))), max(1, int(ww * (1 - cfg.overlap)))
    ys = _starts(h, wh, sh)
    xs = _starts(w, ww, sw)
    counts = images.new_zeros(1, 1, h, w, dtype=torch.float32)
    logits: torch.Tensor | None = None
    for y in ys:
        for x in xs:
            out = model(images[..., y : y + wh, x : x + ww]).float()
            if logits is None:  # the class count is known from the first window
                logits = images.new_zeros(images.shape[0], out.shape[1], h, w, dtype=torch.float32)
            logits[..., y : y + wh, x : x + ww] += out
            counts[..., y : y + wh, x : x + ww] += 1
    assert logits is not None  # _starts gives at least one window per axis
    return logits / counts


def _starts(size: int, window: int, stride: int) -> list[int]:
    n = max(1, math.ceil((size - window) / stride) + 1)
    return sorted({min(i * stride, size - window) for i in range(n)})


@torch.no_grad()
def predict_full_size(
    model: torch.nn.Module,
    images: torch.Tensor,
    full_size: tuple[int, int],
    cfg: EvalConfig,
    window: tuple[int, int] | None = None,
) -> torch.Tensor:
    """images (B,3,h,w) at working scale -> logits (B,C,*full_size)."""
    logits = predict_logits(model, images, cfg, window)
    if tuple(logits.shape[-2:]) != tuple(full_size):
        logits = F.interpolate(logits, size=full_size, mode="bilinear", align_corners=False)
    return logits


def scaled_batches(
    dataset: Dataset, batch_size: int, resize: ResizeConfig | None, device: torch.device, ignore_index: int = 255
) -> Iterator[tuple[torch.Tensor, torch.Tensor, tuple[int, int]]]:
    """(images (b,3,h,w) float at working scale, masks (b,H,W) at full size, (H,W)) per same-size group."""
    # A private generator: iterating a loader draws a seed, and scoring must not shift the global
    # RNG stream that training's augmentation follows (resume exactness with eval_every).
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        generator=torch.Generator(),
        collate_fn=lambda items: pad_collate(items, ignore_index),
    )
    for batch in loader:
        images = to_float(batch.images.to(device))
        for index, scaled, (h, w) in same_size_groups(images, batch.sizes, resize):
            yield scaled, batch.masks[index, :h, :w].to(device), (h, w)


def evaluate(
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    cfg: EvalConfig,
    device: torch.device | str | None = None,
    window: tuple[int, int] | None = None,
    resize: ResizeConfig | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> EvalResult:
    """Score `model` on the labelled images of `dataset` (its `.info` names the classes). Under
    torch.distributed each rank scores its shard and torchmetrics sums the counts across ranks."""
    info = dataset.info
    labelled = dataset.labelled()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    shard = Subset(labelled, list(range(rank, len(labelled), world_size))) if world_size > 1 else labelled
    # Classes absent from both labels and predictions have no IoU (NaN, left out of the mean), not 0.
    # No torchmetrics input check (a sort of every pixel of every batch, a fifth of a study's time on
    # real images): predictions are in range by construction, and every mask's values were checked
    # when the dataset was opened (`SegmentationDataset._check_pair`).
    metric = MulticlassJaccardIndex(
        num_classes=info.num_classes,
        ignore_index=info.ignore_index,
        average="none",
        zero_division=float("nan"),
        validate_args=False,
    ).to(device)
    was_training = model.training
    model.eval()
    for images, masks, size in scaled_batches(shard, cfg.batch_size, resize, device, info.ignore_index):
        metric.update(class_map(predict_full_size(model, images, size, cfg, window)), masks)
    model.train(was_training)
    iou = metric.compute().double().cpu()
    valid = ~torch.isnan(iou)
    miou = float(iou[valid].mean()) if valid.any() else float("nan")
    return EvalResult(miou, {name: float(v) for name, v in zip(info.classes, iou)}, len(labelled))
