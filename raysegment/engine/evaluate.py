"""mIoU and per-class IoU (torchmetrics confusion matrix), whole-image or sliding-window."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics.classification import MulticlassConfusionMatrix

from raysegment.augment import to_float
from raysegment.config import EvalConfig
from raysegment.data.dataset import pad_collate


@dataclass
class EvalResult:
    miou: float
    per_class: dict[str, float]
    pixel_accuracy: float
    images: int = 0
    confusion: list[list[int]] = field(default_factory=list, repr=False)

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}miou": self.miou, f"{prefix}pixel_accuracy": self.pixel_accuracy}
        out.update({f"{prefix}iou/{name}": v for name, v in self.per_class.items()})
        return out


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, cfg: EvalConfig,
                   window: tuple[int, int] | None = None) -> torch.Tensor:
    """images (B,3,H,W) float [0,1] -> logits (B,C,H,W). Sliding windows average overlapping logits."""
    win = cfg.window or window
    h, w = images.shape[-2:]
    if cfg.mode == "whole" or win is None or (h <= win[0] and w <= win[1]):
        return model(images).float()
    wh, ww = min(win[0], h), min(win[1], w)
    sh, sw = max(1, int(wh * (1 - cfg.overlap))), max(1, int(ww * (1 - cfg.overlap)))
    ys = _starts(h, wh, sh)
    xs = _starts(w, ww, sw)
    logits = counts = None
    for y in ys:
        for x in xs:
            out = model(images[..., y:y + wh, x:x + ww]).float()
            if logits is None:
                logits = images.new_zeros(images.shape[0], out.shape[1], h, w, dtype=torch.float32)
                counts = images.new_zeros(1, 1, h, w, dtype=torch.float32)
            logits[..., y:y + wh, x:x + ww] += out
            counts[..., y:y + wh, x:x + ww] += 1
    return logits / counts


def _starts(size: int, window: int, stride: int) -> list[int]:
    n = max(1, math.ceil((size - window) / stride) + 1)
    return sorted({min(i * stride, size - window) for i in range(n)})


def evaluate(model: torch.nn.Module, dataset: Dataset, cfg: EvalConfig, device: torch.device | str | None = None,
             window: tuple[int, int] | None = None, rank: int = 0, world_size: int = 1) -> EvalResult:
    """Score `model` on `dataset` (its `.info` names the classes). Under torch.distributed each
    rank scores its shard and the confusion matrices are summed across ranks."""
    info = dataset.info
    device = torch.device(device) if device is not None else next(model.parameters()).device
    shard = Subset(dataset, list(range(rank, len(dataset), world_size))) if world_size > 1 else dataset
    loader = DataLoader(shard, batch_size=cfg.batch_size, shuffle=False,
                        collate_fn=lambda b: pad_collate(b, info.ignore_index))
    metric = MulticlassConfusionMatrix(num_classes=info.num_classes, ignore_index=info.ignore_index).to(device)
    was_training = model.training
    model.eval()
    for images, masks in loader:
        images, masks = to_float(images.to(device)), masks.to(device)
        preds = predict_logits(model, images, cfg, window).argmax(1)
        metric.update(preds, masks)
    model.train(was_training)
    conf = metric.compute().double().cpu()
    tp = conf.diag()
    denom = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))
    valid = ~torch.isnan(iou)
    miou = float(iou[valid].mean()) if valid.any() else float("nan")
    acc = float(tp.sum() / conf.sum().clamp(min=1))
    per_class = {name: float(v) for name, v in zip(info.classes, iou)}
    return EvalResult(miou, per_class, acc, len(dataset), conf.long().tolist())
