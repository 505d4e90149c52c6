"""Domain signatures: what a domain's images look like to a model, and how far an image is from it.

A signature is the per-channel Gaussian (mean, variance) of the input of every BatchNorm layer of
one model over a set of images: exactly the statistics a domain shift moves (the reason AdaBN
works), no labels needed. Distances are the symmetric KL divergence between per-channel Gaussians,

    SKL(a, b) = ((va - vb)^2 + (va + vb)(ma - mb)^2) / (2 va vb)

averaged over the channels of a layer, then over layers. Signatures compared with one another must
come from the same model (routing: the source model every domain was adapted from).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from raysegment.config import ResizeConfig
from raysegment.data.dataset import SegmentationDataset
from raysegment.engine.evaluate import scaled_batches
from raysegment.models.freeze import is_batchnorm

EPS = 1e-5


@dataclass(frozen=True)
class Signature:
    """Per BatchNorm layer: channel means and variances of its input, and how many images made it."""

    means: list[torch.Tensor]
    variances: list[torch.Tensor]
    images: int

    def to_dict(self) -> dict:
        return {
            "means": [m.tolist() for m in self.means],
            "variances": [v.tolist() for v in self.variances],
            "images": self.images,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Signature:
        return cls(
            [torch.tensor(m, dtype=torch.float64) for m in data["means"]],
            [torch.tensor(v, dtype=torch.float64) for v in data["variances"]],
            int(data["images"]),
        )


@contextmanager
def batchnorm_inputs(model: torch.nn.Module) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """While active, each forward fills the list with (mean, E[x^2]) per image and channel, (B, C)
    float64, for every BatchNorm layer's input, in module order."""
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().double().flatten(2)  # (B, C, H*W)
        captured.append((x.mean(2), x.pow(2).mean(2)))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if is_batchnorm(m)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def per_image_moments(model: torch.nn.Module, batch: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(means, second moments): per layer, (B, C) for each image of a float batch at working scale."""
    was_training = model.training
    model.eval()
    with batchnorm_inputs(model) as captured:
        model(batch)
    model.train(was_training)
    return [m for m, _ in captured], [s for _, s in captured]


def image_signatures(model: torch.nn.Module, batch: torch.Tensor) -> list[Signature]:
    """One signature per image of `batch` (its own spatial statistics)."""
    means, squares = per_image_moments(model, batch)
    return [
        Signature(
            [m[i] for m in means],
            [(s[i] - m[i].pow(2)).clamp_min(EPS) for m, s in zip(means, squares)],
            1,
        )
        for i in range(batch.shape[0])
    ]


def domain_signature(
    model: torch.nn.Module,
    images: SegmentationDataset,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    resize: ResizeConfig | None = None,
) -> Signature:
    """The pooled signature of a set of images (masks never read): every pixel of every image counts
    once per image, so the variance holds both within- and between-image spread."""
    device = torch.device(device)
    model = model.to(device)
    mean_sums: list[torch.Tensor] = []
    square_sums: list[torch.Tensor] = []
    count = 0
    for batch, _, _ in scaled_batches(images.without_labels(), batch_size, resize, device):
        means, squares = per_image_moments(model, batch)
        if not mean_sums:
            mean_sums = [torch.zeros_like(m[0]) for m in means]
            square_sums = [torch.zeros_like(s[0]) for s in squares]
        for k, (m, s) in enumerate(zip(means, squares)):
            mean_sums[k] += m.sum(0)
            square_sums[k] += s.sum(0)
        count += batch.shape[0]
    if count == 0:
        raise ValueError("a signature needs at least one image")
    means_out = [s / count for s in mean_sums]
    variances = [(q / count - m.pow(2)).clamp_min(EPS) for q, m in zip(square_sums, means_out)]
    return Signature([m.cpu() for m in means_out], [v.cpu() for v in variances], count)


def distance(a: Signature, b: Signature) -> float:
    """Symmetric KL between the per-channel Gaussians of two signatures, averaged over channels and
    layers (0 for identical statistics; the same model must have made both)."""
    if len(a.means) != len(b.means):
        raise ValueError(f"signatures of different models ({len(a.means)} vs {len(b.means)} BatchNorm layers)")
    per_layer = []
    for ma, va, mb, vb in zip(a.means, a.variances, b.means, b.variances):
        ma, va, mb, vb = (t.to(torch.float64).cpu() for t in (ma, va, mb, vb))
        skl = ((va - vb).pow(2) + (va + vb) * (ma - mb).pow(2)) / (2 * va * vb)
        per_layer.append(float(skl.mean()))
    return sum(per_layer) / len(per_layer)


def nearest(image: Signature, domains: dict[str, Signature]) -> tuple[str, float]:
    """The domain whose signature is closest to the image's, and that distance."""
    scored = {name: distance(image, sig) for name, sig in domains.items()}
    best = min(scored, key=scored.__getitem__)
    return best, scored[best]
