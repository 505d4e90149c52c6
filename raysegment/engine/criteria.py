"""Label-free model-selection criteria: which of several adapted models is best on a domain nobody
labelled? Every criterion scores each candidate on the same held-back unlabelled images, higher is
better, and no mask is ever read:

- `consistency`: class-mean IoU between the prediction and the prediction on a photometrically
  perturbed, mirrored copy, over the classes the candidate or the reference (the source) predicts.
- `entropy`: 1 - mean per-pixel prediction entropy / log C (confidence; Tent optimises it directly).
- `infomax`: entropy of the mean prediction minus mean entropy (information maximisation: confident
  *and* not collapsed onto one class), both / log C.
- `ensemble`: class-mean IoU with the prediction of the ensemble of all candidates (EnsV, Hu et al.
  2023): the average of many adapted models is a steadier pseudo-label than any one of them.
- `snd`: soft neighbourhood density (Saito et al. 2021): entropy of each sampled pixel's softmax
  similarity to the other sampled pixels; dense, well-clustered predictions score high.
- `mixval`: mixed-sample validation (Hu et al. 2023): on a 0.7/0.3 blend of two images, class-mean
  IoU between the prediction and the candidate's own prediction on the dominant image.
- `bn_distance`: minus the symmetric KL between the statistics each BatchNorm layer normalises with
  and the statistics of its input on these images (AdaBN sets it to about zero by construction);
  NaN for a model without BatchNorm (a LayerNorm model), which the judge refuses to be judged by.
- `agreement`: class-mean IoU with the reference on the pixels it predicts with confidence above a
  threshold (a diagnostic: a confidently wrong source would keep a fix from shipping).

How well each ranks candidates against test labels (`criterion_quality`) is measured per study.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.functional import spearman_corrcoef

from raysegment.augment import resize_images, scaled_size
from raysegment.config import CRITERIA, ResizeConfig
from raysegment.data.dataset import SegmentationDataset
from raysegment.engine.evaluate import scaled_batches
from raysegment.engine.policy import pick
from raysegment.engine.signature import InputStatistics
from raysegment.models.outputs import class_map

EPS = 1e-5
MIX_LAMBDA = 0.7  # the dominant image's share in a MixVal blend
SND_PIXELS_PER_IMAGE = 64
SND_MAX_PIXELS = 1024
SND_TEMPERATURE = 0.05


@dataclass(frozen=True)
class Candidate:
    """A model to judge, at its own working scale (None: the files' size)."""

    name: str
    model: torch.nn.Module
    resize: ResizeConfig | None = None


@dataclass(frozen=True)
class Scoring:
    """How the criteria are measured: the reference's confidence above which its pixels count for
    `agreement`, images per forward, and the seed of the perturbation and the sampled pixels."""

    confidence: float = 0.9
    batch_size: int = 8
    seed: int = 0


def perturbation(device: torch.device) -> torch.nn.Module:
    """The photometric nuisance the consistency criterion asks a model to be stable under."""
    return K.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=1.0).to(device)


def iou_metric(num_classes: int, device: torch.device) -> MulticlassJaccardIndex:
    # Both sides are class maps of models (always in range): torchmetrics' input check (a sort of
    # every pixel) would cost more than the tally itself.
    metric = MulticlassJaccardIndex(
        num_classes=num_classes, average="none", zero_division=float("nan"), validate_args=False
    )
    return metric.to(device)


def mean_iou_over(iou: torch.Tensor, classes: torch.Tensor | None = None) -> float:
    """Mean of per-class IoU over `classes` (bool mask; an absent class there counts 0), or over the
    classes that occur (not NaN) when `classes` is None."""
    iou = iou.double().cpu()
    if classes is None:
        classes = ~torch.isnan(iou)
    return float(torch.nan_to_num(iou[classes], nan=0.0).mean()) if classes.any() else 0.0


@dataclass
class _Tally:
    """One candidate's running sums over the held-back images."""

    num_classes: int
    device: torch.device
    entropy_sum: float = 0.0
    pixels: int = 0
    class_mass: torch.Tensor = field(init=False)
    predicted: torch.Tensor = field(init=False)
    snd_features: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.class_mass = torch.zeros(self.num_classes, dtype=torch.float64)
        self.predicted = torch.zeros(self.num_classes, dtype=torch.bool)
        self.consistency = iou_metric(self.num_classes, self.device)
        self.ensemble = iou_metric(self.num_classes, self.device)
        self.mixval = iou_metric(self.num_classes, self.device)
        self.agreement = iou_metric(self.num_classes, self.device)
        self.agreement_updates = 0

    def add_views(
        self, probs: torch.Tensor, pred: torch.Tensor, twin: torch.Tensor, mixed: torch.Tensor, picks: torch.Tensor
    ) -> None:
        """One batch of a scored candidate: its probabilities and prediction, its predictions on the
        perturbed-mirrored twin and on the mixed images, and the pixels SND samples."""
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1) / math.log(self.num_classes)
        self.entropy_sum += float(entropy.sum())
        self.pixels += entropy.numel()
        self.class_mass += probs.sum((0, 2, 3)).double().cpu()
        self.consistency.update(twin, pred)
        self.mixval.update(mixed, pred)
        flat = probs.flatten(2)  # (B, C, h*w)
        picked = torch.gather(flat, 2, picks[:, None].expand(-1, self.num_classes, -1))
        self.snd_features.append(picked.permute(0, 2, 1).reshape(-1, self.num_classes).cpu())

    def scores(
        self, reference_classes: torch.Tensor, bn_distance: float, generator: torch.Generator
    ) -> dict[str, float]:
        """Every criterion from the running sums (higher is better)."""
        mean_entropy = self.entropy_sum / max(1, self.pixels)
        marginal = self.class_mass / self.class_mass.sum().clamp_min(1e-12)
        marginal_entropy = float(-(marginal * marginal.clamp_min(1e-12).log()).sum()) / math.log(self.num_classes)
        features = torch.cat(self.snd_features)
        if features.shape[0] > SND_MAX_PIXELS:
            features = features[torch.randperm(features.shape[0], generator=generator)[:SND_MAX_PIXELS]]
        classes = self.predicted | reference_classes
        return {
            "consistency": mean_iou_over(self.consistency.compute(), classes),
            "entropy": 1.0 - mean_entropy,
            "infomax": marginal_entropy - mean_entropy,
            "ensemble": mean_iou_over(self.ensemble.compute()),
            "snd": _soft_neighbourhood_density(features),
            "mixval": mean_iou_over(self.mixval.compute(), classes),
            "bn_distance": bn_distance,
            "agreement": mean_iou_over(self.agreement.compute()) if self.agreement_updates else 0.0,
        }


def _at(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear")


def _soft_neighbourhood_density(features: torch.Tensor) -> float:
    """features (N, C) softmax vectors -> mean entropy of the temperature-softmax similarity rows."""
    n = features.shape[0]
    if n < 3:
        return 0.0
    f = F.normalize(features.double(), dim=1)
    sim = f @ f.T / SND_TEMPERATURE
    sim.fill_diagonal_(-math.inf)
    p = sim.softmax(1)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(1).mean()
    return float(entropy / math.log(n - 1))


@torch.no_grad()
def criterion_scores(
    candidates: Sequence[Candidate],
    images: SegmentationDataset,
    device: torch.device | str = "cpu",
    scoring: Scoring = Scoring(),
    scored: Collection[str] | None = None,
) -> dict[str, dict[str, float]]:
    """candidate name -> criterion -> score (higher is better), on the images of `images` (masks
    never read). The first candidate is the reference (the source model). Each candidate runs at its
    own working scale; predictions meet at the reference's scale. Only the candidates named in
    `scored` (all when None) get scores: the others run one forward per batch, not three (their
    clean predictions still count for the ensemble, the reference's classes and agreement).
    Deterministic for a seed, and the global RNG is left as it was."""
    device, num_classes = torch.device(device), images.info.num_classes
    images = images.without_labels()
    for c in candidates:
        c.model.to(device).eval()
    wanted = {c.name for c in candidates} if scored is None else set(scored)
    tallies = {c.name: _Tally(num_classes, device) for c in candidates}
    hooks = {c.name: InputStatistics(c.model) for c in candidates}
    perturb = perturbation(device)
    pixel_generator = torch.Generator().manual_seed(scoring.seed)
    reference = candidates[0]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(scoring.seed)
        for x, _, (h, w) in scaled_batches(images, scoring.batch_size, None, device):
            common = scaled_size(h, w, reference.resize)
            twin_full = perturb(x).flip(-1)
            partner = x.roll(1, 0) if x.shape[0] > 1 else x.flip(-2)
            mixed_full = MIX_LAMBDA * x + (1 - MIX_LAMBDA) * partner
            n_pick = min(SND_PIXELS_PER_IMAGE, common[0] * common[1])
            picks = torch.randint(0, common[0] * common[1], (x.shape[0], n_pick), generator=pixel_generator)
            all_probs = {}
            for c in candidates:
                size = scaled_size(h, w, c.resize)
                with hooks[c.name]:
                    probs = _at(c.model(resize_images(x, size)).float(), common).softmax(1)
                all_probs[c.name] = probs
                t, pred = tallies[c.name], class_map(probs)
                t.predicted |= torch.bincount(pred.flatten().cpu(), minlength=num_classes)[:num_classes] > 0
                if c.name not in wanted:
                    continue
                twin = class_map(_at(c.model(resize_images(twin_full, size)).float(), common)).flip(-1)
                mixed = class_map(_at(c.model(resize_images(mixed_full, size)).float(), common))
                t.add_views(probs, pred, twin, mixed, picks.to(device))
            scored_probs = [(tallies[n], p) for n, p in all_probs.items() if n in wanted]
            _tally_agreements(scored_probs, all_probs, reference.name, scoring.confidence)
    reference_classes = tallies[reference.name].predicted
    scores = {
        c.name: tallies[c.name].scores(reference_classes, -hooks[c.name].distance_to_running(), pixel_generator)
        for c in candidates
        if c.name in wanted
    }
    assert all(set(s) == set(CRITERIA) for s in scores.values())
    return scores


def _tally_agreements(
    scored: list[tuple[_Tally, torch.Tensor]], all_probs: dict[str, torch.Tensor], reference: str, confidence: float
) -> None:
    """One batch's agreement of each scored candidate (its tally, its probabilities) with the
    ensemble of all candidates and with the reference's confident pixels."""
    ensemble = class_map(torch.stack(list(all_probs.values())).mean(0))
    ref_conf, ref_pred = all_probs[reference].max(1)
    sure = ref_conf > confidence
    for t, probs in scored:
        pred = class_map(probs)
        t.ensemble.update(pred, ensemble)
        if sure.any():
            t.agreement.update(pred[sure], ref_pred[sure])
            t.agreement_updates += 1


def judge_pick(scores: dict[str, dict[str, float]], criterion: str, reference: str) -> str:
    """What a criterion ships: its best candidate, but only when it beats the reference outright
    (do no harm: a tie keeps the source)."""
    return pick({c: s[criterion] for c, s in scores.items()}, reference, "proxy")


@dataclass(frozen=True)
class CriterionQuality:
    """How one criterion ranked one study's candidates against their test scores."""

    spearman: float  # rank correlation of the criterion with test mIoU (NaN when undefined)
    regret: float  # test mIoU of the label-picked best minus that of what the criterion ships
    pick: str


def criterion_quality(
    scores: dict[str, dict[str, float]], test_miou: dict[str, float], criterion: str, reference: str
) -> CriterionQuality:
    """Spearman and regret of `criterion` over the candidates that have both a score and a test mIoU."""
    names = [c for c in scores if c in test_miou]
    pick = judge_pick({c: scores[c] for c in names}, criterion, reference)
    regret = max(test_miou[c] for c in names) - test_miou[pick]
    if len(names) < 3:
        rho = math.nan
    else:
        values = torch.tensor([scores[c][criterion] for c in names], dtype=torch.float32)
        truth = torch.tensor([test_miou[c] for c in names], dtype=torch.float32)
        rho = float(spearman_corrcoef(values, truth)) if values.std() > 0 and truth.std() > 0 else math.nan
    return CriterionQuality(rho, regret, pick)
