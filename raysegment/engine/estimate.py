"""Target mIoU estimated without target labels, per class, with an interval.

Average thresholded confidence (ATC, Garg et al., ICLR 2022) made per class for segmentation:

- On the source's labelled val images, each class c gets the confidence threshold t_c above which
  the share of pixels predicted c equals the class's true precision there.
- On target images, a pixel predicted c counts as a true positive when its confidence passes t_c;
  the pixels that do not pass are the estimated errors, and each one's probability mass on the other
  classes (renormalised without the predicted class) is counted as those classes' false negatives.
  IoU_c = TP_c / (predicted_c + FN_c).
- The same computation on the source val images, against their labels, gives each class's bias
  (true IoU minus estimate; it absorbs, e.g., the unlabelled border of a fundus image, which the
  estimate cannot tell from background), added to the target estimate.
- The interval: a bootstrap over the target images (sampling spread) widened by the estimator's
  per-image error on the source (`fit.spread`), since a shift adds error a bootstrap cannot see.

Counts are kept per image, so the bootstrap is arithmetic on a (images, classes, 3) tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from raysegment.config import EvalConfig, ResizeConfig
from raysegment.data import SegmentationDataset
from raysegment.engine.evaluate import predict_full_size, scaled_batches

COVERAGE = 0.9  # the interval's nominal coverage
BOOTSTRAP = 400


@dataclass(frozen=True)
class ConfidenceFit:
    """What the source's labelled val images say about the model's confidence, per class."""

    thresholds: list[float]
    bias: list[float]  # true IoU - estimated IoU per class, on the source val images
    spread: float  # the estimator's mean absolute per-image mIoU error on the source val images
    classes: list[str]
    present: list[bool]  # the class occurs in the source val labels: expected on the target too

    def complete(self, iou: torch.Tensor) -> torch.Tensor:
        """(..., C) estimated IoU with an expected class that nothing is predicted as (or missed) at 0,
        not left out of the mean: a model that never predicts it has IoU 0 there."""
        present = torch.tensor(self.present)
        return torch.where(torch.isnan(iou) & present, torch.zeros_like(iou), iou)


@dataclass(frozen=True)
class Estimate:
    """Estimated mIoU (and per-class IoU) in [0, 1], with a `COVERAGE` interval."""

    miou: float
    low: float
    high: float
    per_class: dict[str, float]
    images: int

    def as_metrics(self) -> dict[str, float]:
        return {"estimated_miou": self.miou, "estimated_miou_low": self.low, "estimated_miou_high": self.high}


@torch.no_grad()
def _pixels(
    model: torch.nn.Module, data: SegmentationDataset, resize: ResizeConfig | None, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: probabilities (C, P) at full resolution and its labels (P,) (all ignore if none)."""
    model.eval()
    device = next(model.parameters()).device
    ignore = data.info.ignore_index
    for images, masks, size in scaled_batches(data, batch_size, resize, device, ignore):
        probs = predict_full_size(model, images, size, EvalConfig()).softmax(1)
        for p, m in zip(probs, masks):
            yield p.flatten(1).cpu(), m.flatten().cpu()


def _counts(probs: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(C, 3) per class: predicted pixels, estimated true positives, estimated false negatives."""
    c = probs.shape[0]
    conf, pred = probs.max(0)
    sure = conf > thresholds[pred]
    predicted = torch.bincount(pred, minlength=c).double()
    tp = torch.bincount(pred[sure], minlength=c).double()
    unsure = ~sure
    others = probs[:, unsure].double() / (1 - conf[unsure].double()).clamp_min(1e-6)
    others[pred[unsure], torch.arange(int(unsure.sum()))] = 0  # not its own predicted class
    fn = others.sum(1)
    return torch.stack([predicted, tp, fn], 1)


def _iou(counts: torch.Tensor) -> torch.Tensor:
    """(..., C, 3) counts -> (..., C) estimated IoU (NaN for a class nobody predicts or misses)."""
    union = counts[..., 0] + counts[..., 2]
    return torch.where(union > 0.5, counts[..., 1] / union.clamp_min(1e-9), torch.full_like(union, math.nan))


def _true_counts(probs: torch.Tensor, labels: torch.Tensor, ignore: int) -> torch.Tensor:
    """(C, 2) per class: intersection and union against `labels`."""
    c = probs.shape[0]
    keep = labels != ignore
    pred, truth = probs.argmax(0)[keep], labels[keep]
    inter = torch.bincount(pred[pred == truth], minlength=c).double()
    union = torch.bincount(pred, minlength=c).double() + torch.bincount(truth, minlength=c).double() - inter
    return torch.stack([inter, union], 1)


def fit_confidence(
    model: torch.nn.Module, source_val: SegmentationDataset, resize: ResizeConfig | None, batch_size: int = 8
) -> ConfidenceFit:
    """Thresholds, biases and spread from the source's labelled val images."""
    info = source_val.info
    images = list(_pixels(model, source_val.labelled(), resize, batch_size))
    c = info.num_classes
    thresholds = torch.zeros(c)
    for k in range(c):
        conf_k, right_k = [], []
        for probs, labels in images:
            conf, pred = probs.max(0)
            take = (pred == k) & (labels != info.ignore_index)
            conf_k.append(conf[take])
            right_k.append(labels[take] == k)
        conf_all, right = torch.cat(conf_k), torch.cat(right_k)
        if conf_all.numel():
            precision = float(right.float().mean())
            thresholds[k] = float(torch.quantile(conf_all.float(), 1 - precision)) if precision < 1 else 0.0
    estimated = torch.stack([_counts(p, thresholds) for p, _ in images])  # (N, C, 3)
    truth = torch.stack([_true_counts(p, y, info.ignore_index) for p, y in images])  # (N, C, 2)
    true_iou = truth[..., 0].sum(0) / truth[..., 1].sum(0).clamp_min(1e-9)
    bias = torch.nan_to_num(true_iou - _iou(estimated.sum(0)), nan=0.0)
    per_image_true = torch.where(truth[..., 1] > 0, truth[..., 0] / truth[..., 1].clamp_min(1e-9), math.nan)
    per_image_est = (_iou(estimated) + bias).clamp(0, 1)
    errors = (per_image_true.nanmean(1) - per_image_est.nanmean(1)).abs()
    present = (truth[..., 1].sum(0) > 0).tolist()
    return ConfidenceFit(thresholds.tolist(), bias.tolist(), float(errors.nanmean()), list(info.classes), present)


def estimate_miou(
    model: torch.nn.Module,
    fit: ConfidenceFit,
    target: SegmentationDataset,
    resize: ResizeConfig | None,
    batch_size: int = 8,
    seed: int = 0,
) -> Estimate:
    """The target's mIoU under `model`, from its images only (their masks are never opened)."""
    thresholds, bias = torch.tensor(fit.thresholds), torch.tensor(fit.bias, dtype=torch.float64)
    counts = torch.stack(
        [_counts(p, thresholds) for p, _ in _pixels(model, target.without_labels(), resize, batch_size)]
    )
    per_class = fit.complete((_iou(counts.sum(0)) + bias).clamp(0, 1))
    miou = float(per_class.nanmean())
    draws = torch.randint(
        0, counts.shape[0], (BOOTSTRAP, counts.shape[0]), generator=torch.Generator().manual_seed(seed)
    )
    sampled = fit.complete((_iou(counts[draws].sum(1)) + bias).clamp(0, 1)).nanmean(1)
    tail = (1 - COVERAGE) / 2
    low, high = (float(torch.quantile(sampled, q)) for q in (tail, 1 - tail))
    return Estimate(
        miou,
        max(0.0, min(low, miou) - fit.spread),
        min(1.0, max(high, miou) + fit.spread),
        {name: float(v) for name, v in zip(fit.classes, per_class)},
        int(counts.shape[0]),
    )
