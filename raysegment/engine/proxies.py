"""Unsupervised proxies: how good is an adapted model on a domain nobody labelled?

With zero target labels nothing measures target accuracy, yet adaptation can make a model worse.
These proxies score a candidate on held-back unlabelled target images:

- `entropy`: mean per-pixel prediction entropy / log(C). Lower is more confident (but an
  entropy-minimising method lowers it by construction, so it never decides alone).
- `consistency`: class-mean IoU between the prediction on an image and on a photometrically
  perturbed, mirrored copy (mirrored back), over the classes that the candidate *or the source
  model* predicts. A model that fits the domain is stable under nuisance changes; a collapsed
  model (one class everywhere, perfectly stable) scores 0 on every class it dropped.
- `agreement`: class-mean IoU with the source model on the pixels the source predicts with
  confidence above a threshold (a diagnostic: on a strong shift the source is often confidently
  wrong, so agreement would keep a model from fixing exactly that).

`score = consistency`. A label-free result should replace the source model only when its score
beats the source model's own score on the same held-back images; the callers that register or
pick a result (the Tune search, `raysegment adapt`) compare the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from raysegment.config import ResizeConfig
from raysegment.data.dataset import SegmentationDataset
from raysegment.engine.evaluate import scaled_batches


@dataclass(frozen=True)
class ProxyScores:
    entropy: float
    consistency: float
    agreement: float

    @property
    def score(self) -> float:
        return self.consistency

    def as_metrics(self) -> dict[str, float]:
        return {
            "proxy_entropy": self.entropy,
            "proxy_consistency": self.consistency,
            "proxy_agreement": self.agreement,
            "proxy_score": self.score,
        }


def perturbation(device: torch.device) -> torch.nn.Module:
    """The photometric nuisance the consistency proxy asks a model to be stable under."""
    return K.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=1.0).to(device)


def _iou_metric(num_classes: int, device: torch.device) -> MulticlassJaccardIndex:
    return MulticlassJaccardIndex(num_classes=num_classes, average="none", zero_division=float("nan")).to(device)


def mean_iou_over(iou: torch.Tensor, classes: torch.Tensor | None = None) -> float:
    """Mean of per-class IoU over `classes` (bool mask; an absent class there counts 0), or over the
    classes that occur (not NaN) when `classes` is None."""
    iou = iou.double().cpu()
    if classes is None:
        classes = ~torch.isnan(iou)
    return float(torch.nan_to_num(iou[classes], nan=0.0).mean()) if classes.any() else 0.0


@torch.no_grad()
def proxy_scores(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    images: SegmentationDataset,
    num_classes: int,
    confidence: float = 0.9,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    resize: ResizeConfig | None = None,
    seed: int = 0,
) -> ProxyScores:
    """Score `model` against `reference` (the source model) on the images of `images` (masks never read).

    Deterministic for a given seed: the perturbation is drawn from a private generator state.
    """
    device = torch.device(device)
    images = images.without_labels()
    was_training = model.training
    model.eval()
    reference.eval()
    perturb = perturbation(device)
    consistency, agreement = _iou_metric(num_classes, device), _iou_metric(num_classes, device)
    entropy_sum, pixels = 0.0, 0
    source_classes = torch.zeros(num_classes, dtype=torch.bool)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for x, _, _ in scaled_batches(images, batch_size, resize, device):
            probs = model(x).float().softmax(1)
            pred = probs.argmax(1)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1) / math.log(num_classes)
            entropy_sum += float(entropy.sum())
            pixels += entropy.numel()
            twin = model(perturb(x).flip(-1)).argmax(1).flip(-1)
            consistency.update(twin, pred)
            ref_conf, ref_pred = reference(x).float().softmax(1).max(1)
            sure = ref_conf > confidence
            if sure.any():
                agreement.update(pred[sure], ref_pred[sure])
            source_classes |= torch.bincount(ref_pred.flatten().cpu(), minlength=num_classes) > 0
    model.train(was_training)
    consistency_iou = consistency.compute()
    predicted = ~torch.isnan(consistency_iou.cpu())
    return ProxyScores(
        entropy_sum / max(1, pixels),
        mean_iou_over(consistency_iou, predicted | source_classes),
        mean_iou_over(agreement.compute()) if agreement.update_count else 0.0,
    )


@torch.no_grad()
def paired_consistency(
    models: list[torch.nn.Module], batch: torch.Tensor, num_classes: int, seed: int = 0
) -> list[float]:
    """The consistency proxy of several models on the same images (a shadow comparison): each one
    over the classes that any of them predicts, under one shared perturbation, so a model that
    drops a class the others see scores 0 on it."""
    return paired_consistency_and_predictions(models, batch, num_classes, seed)[0]


@torch.no_grad()
def paired_consistency_and_predictions(
    models: list[torch.nn.Module], batch: torch.Tensor, num_classes: int, seed: int = 0
) -> tuple[list[float], list[torch.Tensor]]:
    """`paired_consistency`, and each model's class predictions (B, H, W) on `batch`."""
    with torch.random.fork_rng(devices=[batch.device] if batch.device.type == "cuda" else []):
        torch.manual_seed(seed)
        twin_input = perturbation(batch.device)(batch).flip(-1)
    preds, twins = [], []
    for model in models:
        model.eval()
        preds.append(model(batch).argmax(1))
        twins.append(model(twin_input).argmax(1).flip(-1))
    seen = torch.zeros(num_classes, dtype=torch.bool)
    for pred in preds:
        seen |= torch.bincount(pred.flatten().cpu(), minlength=num_classes)[:num_classes] > 0
    scores = []
    for pred, twin in zip(preds, twins):
        metric = _iou_metric(num_classes, batch.device)
        metric.update(twin, pred)
        scores.append(mean_iou_over(metric.compute(), seen))
    return scores, preds


def paired_consistency_per_image(
    models: list[torch.nn.Module],
    images: SegmentationDataset,
    num_classes: int,
    resize: ResizeConfig | None = None,
    device: torch.device | str = "cpu",
) -> list[list[float]]:
    """`paired_consistency` on each image of a set on its own (as a shadow comparison sees them):
    one row of per-model scores per image."""
    models = [m.to(device) for m in models]
    batches = scaled_batches(images.without_labels(), 1, resize, torch.device(device))
    return [paired_consistency(models, batch, num_classes) for batch, _, _ in batches]
