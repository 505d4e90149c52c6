"""Unsupervised proxies: how good is an adapted model on a domain nobody labelled?

With zero target labels nothing measures target accuracy, yet adaptation can make a model worse.
These proxies score a candidate on held-back unlabelled target images:

- `entropy`: 1 - mean per-pixel prediction entropy / log(C), higher is more confident, as every
  criterion is higher-is-better (an entropy-minimising method raises it by construction, so it
  never decides alone). Logged as `proxy_entropy`, the same number.
- `consistency`: class-mean IoU between the prediction on an image and on a photometrically
  perturbed, mirrored copy (mirrored back), over the classes that the candidate *or the source
  model* predicts. A model that fits the domain is stable under nuisance changes; a collapsed
  model (one class everywhere, perfectly stable) scores 0 on every class it dropped.
- `agreement`: class-mean IoU with the source model on the pixels the source predicts with
  confidence above a threshold (a diagnostic: on a strong shift the source is often confidently
  wrong, so agreement would keep a model from fixing exactly that).

`score` is the criterion `adapt.criterion` names (see `engine.criteria` for all of them and how
each ranks candidates against test labels). A label-free result should replace the source model only when its score
beats the source model's own score on the same held-back images; the callers that register or
pick a result (the Tune search, `raysegment compare`) compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raysegment.config import ResizeConfig
from raysegment.data.dataset import SegmentationDataset
from raysegment.engine.criteria import Candidate, Scoring, criterion_scores, iou_metric, mean_iou_over, perturbation
from raysegment.engine.evaluate import scaled_batches
from raysegment.errors import ConfigError
from raysegment.models.outputs import class_map


@dataclass(frozen=True)
class ProxyScores:
    """A candidate's label-free scores against its reference; `score` is the judge's criterion."""

    criteria: dict[str, float]
    criterion: str = "consistency"

    @property
    def consistency(self) -> float:
        return self.criteria["consistency"]

    @property
    def agreement(self) -> float:
        return self.criteria["agreement"]

    @property
    def score(self) -> float:
        value = self.criteria[self.criterion]
        if value != value:  # NaN: the criterion does not apply to this model
            raise ConfigError(
                f"criterion {self.criterion} does not apply to a model without BatchNorm layers: "
                "judge it by consistency (the default) or another criterion"
            )
        return value

    def as_metrics(self) -> dict[str, float]:
        metrics = {f"proxy_{name}": value for name, value in self.criteria.items()}
        return {**metrics, "proxy_score": self.score}


@torch.no_grad()
def proxy_scores(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    images: SegmentationDataset,
    device: torch.device | str = "cpu",
    resize: ResizeConfig | None = None,
    criterion: str = "consistency",
    scoring: Scoring = Scoring(),
) -> ProxyScores:
    """Score `model` against `reference` (the source model) on the images of `images` (masks never
    read), by every criterion of `engine.criteria`; `score` is `criterion`'s. Deterministic for a
    given seed: the perturbation is drawn from a private generator state."""
    was_training = model.training
    candidates = [Candidate("model", model, resize)]  # a model judged against itself runs once
    if reference is not model:
        candidates.insert(0, Candidate("reference", reference, resize))
    scores = criterion_scores(candidates, images, device, scoring, {"model"})
    model.train(was_training)
    return ProxyScores(scores["model"], criterion)


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
        preds.append(class_map(model(batch)))
        twins.append(class_map(model(twin_input)).flip(-1))
    seen = torch.zeros(num_classes, dtype=torch.bool)
    for pred in preds:
        seen |= torch.bincount(pred.flatten().cpu(), minlength=num_classes)[:num_classes] > 0
    scores = []
    for pred, twin in zip(preds, twins):
        metric = iou_metric(num_classes, batch.device)
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
