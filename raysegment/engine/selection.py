"""Which target images to label first, from the model and the unlabelled images alone.

`active` is BADGE (Ash et al., ICLR 2020) made for segmentation and for rare classes: each image
becomes the gradient the cross-entropy against the model's own prediction would put on the
segmentation head (a 1x1 conv), `(p - onehot(argmax p)) x features`, pooled *per class* (soft, by
each class's probability mass) and averaged over the classes, so the pixels of a rare class (vessels
in a fundus image) weigh as much as the background's. Its norm is the model's uncertainty about the
image, its direction what the image would teach; k-means++ seeding over these embeddings picks
uncertain images that differ from one another, so near-duplicates are not labelled twice. The
first pick is the most uncertain image; each next one is drawn with probability proportional to its
squared distance from the picks so far (seeded: the same seed picks the same images).

`active-novel` adds the source's own images (`far_from`): each embedding is scaled by how far the image lies from
the source (`source_novelty`: cosine distance of its pooled decoder features to the nearest source
image's, over the largest such distance), so an uncertain image that looks like the source, whose
labels teach what the source already taught, ranks behind an equally uncertain image that does not.

`random` (seeded) and `first` (file order) are the baselines the study and `bench_select` compare
against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raysegment.augment import resize_images, scaled_size, to_float
from raysegment.config import ResizeConfig, SelectStrategy
from raysegment.data import SegmentationDataset
from raysegment.errors import ConfigError
from raysegment.models.outputs import class_map
from raysegment.models.segmenter import Segmenter

Strategy = SelectStrategy  # the one list: config.SELECT_STRATEGIES


@dataclass(frozen=True)
class ImageEvidence:
    """What the model says about one unlabelled image."""

    embedding: torch.Tensor  # (C*D,) class-balanced head-gradient embedding
    uncertainty: float  # class-balanced mean normalised entropy in [0, 1]
    prediction: torch.Tensor  # (H, W) int64 class ids at the image's own size (its pre-label)
    descriptor: torch.Tensor  # (D,) unit-length mean of the decoder features: what the image looks like


@torch.no_grad()
def decoder_features(
    model: Segmenter, image: torch.Tensor, resize: ResizeConfig | None, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """image (3,H,W) uint8 -> the decoder's features (1, D, fh, fw) of the image at its working
    scale (the stride padding cropped off), and that working size."""
    model.eval()
    h, w = image.shape[-2:]
    x = resize_images(to_float(image.unsqueeze(0).to(device)), scaled_size(h, w, resize))
    sh, sw = x.shape[-2:]
    features, (ph, pw) = model.padded_features(x)  # (1, D, fh, fw) of the stride-padded image
    fh, fw = features.shape[-2:]
    keep_h, keep_w = math.ceil(sh * fh / ph), math.ceil(sw * fw / pw)
    return features[..., :keep_h, :keep_w].float(), (sh, sw)


def descriptor(features: torch.Tensor) -> torch.Tensor:
    """(D,) unit-length mean of an image's decoder features: what the image looks like."""
    return F.normalize(features[0].flatten(1).mean(1), dim=0)


@torch.no_grad()
def image_evidence(
    model: Segmenter, image: torch.Tensor, resize: ResizeConfig | None, device: torch.device | str = "cpu"
) -> ImageEvidence:
    """image (3,H,W) uint8 -> its embedding, uncertainty and predicted mask; `model` is a Segmenter
    (encoder -> decoder -> 1x1 head), read at the decoder's output."""
    h, w = image.shape[-2:]
    features, (sh, sw) = decoder_features(model, image, resize, device)
    logits = model.head(features)  # (1, C, fh, fw)
    probs = logits.softmax(1)[0].flatten(1)  # (C, P)
    num_classes = probs.shape[0]
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(0) / math.log(num_classes)  # (P,)
    onehot = F.one_hot(probs.argmax(0), num_classes).T.float()  # (C, P)
    mass = probs.sum(1)  # each class's soft pixel count
    present = mass > 1e-3 * probs.shape[1]
    per_class_weight = torch.where(present, 1 / mass.clamp_min(1e-12), torch.zeros_like(mass)) / present.sum()
    pixel_weight = (probs * per_class_weight[:, None]).sum(0)  # (P,): sums to 1 over the pixels
    uncertainty = float((pixel_weight * entropy).sum())
    grad = probs - onehot  # (C, P)
    embedding = (grad * pixel_weight) @ features[0].flatten(1).T  # (C, D)
    full = F.interpolate(logits, size=(sh, sw), mode="bilinear", align_corners=False)
    prediction = class_map(F.interpolate(full, size=(h, w), mode="bilinear", align_corners=False))[0]
    return ImageEvidence(embedding.flatten().cpu(), uncertainty, prediction.cpu(), descriptor(features).cpu())


SOURCE_SAMPLE = 64  # source images described for `source_novelty` (evenly spaced: seconds, not minutes)


def source_novelty(
    model: Segmenter,
    target: list[ImageEvidence],
    source: SegmentationDataset,
    resize: ResizeConfig | None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(N,) in [0, 1] per target image: cosine distance to its nearest source image, over the largest."""
    unlabelled = source.without_labels()
    step = max(1, math.ceil(len(unlabelled) / SOURCE_SAMPLE))
    seen = torch.stack(  # the source images' descriptors only: no embedding or mask is needed of them
        [
            descriptor(decoder_features(model, unlabelled[i][0], resize, device)[0]).cpu()
            for i in range(0, len(unlabelled), step)
        ]
    )
    distance = 1 - (torch.stack([e.descriptor for e in target]) @ seen.T).max(1).values
    distance = distance.clamp_min(0)
    return distance / distance.max() if float(distance.max()) > 0 else torch.ones_like(distance)


def kmeans_plus_plus(embeddings: torch.Tensor, k: int, seed: int) -> list[int]:
    """k indices of (N, E) `embeddings`: the largest norm first, then each drawn with probability
    proportional to its squared distance from the nearest pick (k-means++ seeding, seeded)."""
    n = embeddings.shape[0]
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(embeddings.norm(dim=1).argmax())]
    nearest = ((embeddings - embeddings[chosen[0]]) ** 2).sum(1)
    while len(chosen) < min(k, n):
        weights = nearest.clone()
        weights[chosen] = 0
        if float(weights.sum()) <= 0:  # the rest duplicate the picks: take them by norm
            rest = [i for i in embeddings.norm(dim=1).argsort(descending=True).tolist() if i not in chosen]
            chosen.append(rest[0])
        else:
            chosen.append(int(torch.multinomial(weights / weights.sum(), 1, generator=generator)))
        nearest = torch.minimum(nearest, ((embeddings - embeddings[chosen[-1]]) ** 2).sum(1))
    return chosen


@dataclass(frozen=True)
class Selection:
    """The images to label, in the order to label them, and the model's evidence for every image."""

    order: list[int]  # every image, most useful first (`picks` is its head)
    budget: int
    evidence: list[ImageEvidence]

    @property
    def picks(self) -> list[int]:
        return self.order[: self.budget]


def select_images(
    model: Segmenter,
    images: SegmentationDataset,
    budget: int,
    strategy: Strategy = "active",
    resize: ResizeConfig | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    far_from: SegmentationDataset | None = None,
) -> Selection:
    """Rank `images` (read without their masks) for labelling by `strategy`; `budget` heads the order.
    `far_from`: the source's images, which `active-novel` prefers images unlike."""
    unlabelled = images.without_labels()
    evidence = [image_evidence(model, unlabelled[i][0], resize, device) for i in range(len(unlabelled))]
    n = len(evidence)
    if strategy == "first":
        order = list(range(n))
    elif strategy == "random":
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    else:
        embeddings = torch.stack([e.embedding for e in evidence])
        if strategy == "active-novel":
            if far_from is None or not len(far_from):
                raise ConfigError("selection active-novel needs the source's images to prefer images unlike them")
            embeddings = embeddings * source_novelty(model, evidence, far_from, resize, device)[:, None]
        order = kmeans_plus_plus(embeddings, n, seed)
    return Selection(order, min(budget, n), evidence)
