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

`score = consistency`. The registry promotes a label-free result only when its score beats the
source model's own score on the same images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch.utils.data import DataLoader, Dataset

from raysegment.augment import to_float
from raysegment.data.dataset import pad_collate


@dataclass(frozen=True)
class ProxyScores:
    entropy: float
    consistency: float
    agreement: float

    @property
    def score(self) -> float:
        return self.consistency

    def as_metrics(self) -> dict[str, float]:
        return {"proxy_entropy": self.entropy, "proxy_consistency": self.consistency,
                "proxy_agreement": self.agreement, "proxy_score": self.score}


def class_mean_iou(confusion: torch.Tensor, classes: torch.Tensor | None = None) -> float:
    """Mean IoU over `classes` (bool mask; default: those occurring in either labelling)."""
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0 if classes is None else classes
    union = union.clamp(min=1)
    return float((tp[present] / union[present]).mean()) if present.any() else 0.0


def _confusion(a: torch.Tensor, b: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(a.flatten() * num_classes + b.flatten(), minlength=num_classes ** 2).view(
        num_classes, num_classes).double().cpu()


@torch.no_grad()
def proxy_scores(model: torch.nn.Module, reference: torch.nn.Module, images: Dataset, num_classes: int,
                 confidence: float = 0.9, device: torch.device | str = "cpu", batch_size: int = 8,
                 seed: int = 0) -> ProxyScores:
    """Score `model` against `reference` (the source model) on unlabelled `images`.

    Deterministic for a given seed: the perturbation is drawn from a private generator state.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    reference.eval()
    perturb = K.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=1.0).to(device)
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, collate_fn=pad_collate)
    consistency = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    agreement = torch.zeros_like(consistency)
    entropy_sum, pixels = 0.0, 0
    source_classes = torch.zeros(num_classes, dtype=torch.bool)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for batch, _ in loader:
            x = to_float(batch.to(device))
            probs = model(x).float().softmax(1)
            pred = probs.argmax(1)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1) / math.log(num_classes)
            entropy_sum += float(entropy.sum())
            pixels += entropy.numel()
            twin = model(perturb(x).flip(-1)).argmax(1).flip(-1)
            consistency += _confusion(pred, twin, num_classes)
            ref_conf, ref_pred = reference(x).float().softmax(1).max(1)
            sure = ref_conf > confidence
            agreement += _confusion(ref_pred[sure], pred[sure], num_classes)
            source_classes |= torch.bincount(ref_pred.flatten().cpu(), minlength=num_classes) > 0
    model.train(was_training)
    predicted = (consistency.sum(0) + consistency.sum(1)) > 0
    return ProxyScores(entropy_sum / max(1, pixels), class_mean_iou(consistency, predicted | source_classes),
                       class_mean_iou(agreement))
