"""Domain signatures: what a domain's images look like to a model, and how far an image is from it.

A signature is the per-channel Gaussian (mean, variance) of the input of every BatchNorm layer of
one model over a set of images: exactly the statistics a domain shift moves (the reason AdaBN
works), no labels needed. Distances are the symmetric KL divergence between per-channel Gaussians,

    SKL(a, b) = ((va - vb)^2 + (va + vb)(ma - mb)^2) / (2 va vb)

averaged over the channels of a layer, then over layers. Signatures compared with one another must
come from the same model (routing: the source model every domain was adapted from).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch

from raysegment.models.freeze import is_batchnorm

if TYPE_CHECKING:  # the registry reads signatures without paying for datasets and metrics
    from raysegment.config import ResizeConfig
    from raysegment.data.dataset import SegmentationDataset

EPS = 1e-5
RADIUS_QUANTILE = 0.95


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The string metadata of a safetensors buffer (its JSON header; no tensor is read)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__", {})


@dataclass(frozen=True)
class Signature:
    """Per BatchNorm layer: channel means and variances of its input, and how many images made it.
    `radius`: the 95th percentile of its images' distances to the pool of the others (how far an
    unseen image of this domain usually lies; what the unknown-domain flag compares with)."""

    means: list[torch.Tensor]
    variances: list[torch.Tensor]
    images: int
    radius: float | None = None

    def to_bytes(self) -> bytes:
        """safetensors: float32 tensors, the counts in its metadata (never pickled)."""
        tensors = {f"mean.{k}": m.float().contiguous() for k, m in enumerate(self.means)}
        tensors.update({f"var.{k}": v.float().contiguous() for k, v in enumerate(self.variances)})
        metadata = {"images": str(self.images), "layers": str(len(self.means))}
        if self.radius is not None:
            metadata["radius"] = repr(self.radius)
        return safetensors.torch.save(tensors, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes) -> Signature:
        tensors = safetensors.torch.load(data)
        metadata = safetensors_metadata(data)
        layers = int(metadata["layers"])
        return cls(
            [tensors[f"mean.{k}"].double() for k in range(layers)],
            [tensors[f"var.{k}"].double() for k in range(layers)],
            int(metadata["images"]),
            float(metadata["radius"]) if "radius" in metadata else None,
        )


@contextmanager
def batchnorm_inputs(model: torch.nn.Module) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """While active, each forward fills the list with (mean, E[x^2]) per image and channel, (B, C)
    float64, for every BatchNorm layer's input, in module order."""
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().flatten(2)  # (B, C, H*W), reduced in its own dtype: no float64 copy of it
        captured.append((x.mean(2).double(), x.square().mean(2).double()))

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
    return signatures_of(*per_image_moments(model, batch))


def domain_signature(
    model: torch.nn.Module,
    images: SegmentationDataset,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    resize: ResizeConfig | None = None,
) -> Signature:
    """The pooled signature of a set of images (masks never read), with its radius: every pixel of
    every image counts once per image, so the variance holds both within- and between-image spread."""
    from raysegment.engine.evaluate import scaled_batches

    device = torch.device(device)
    model = model.to(device)
    pooled = RunningSignature(window=None)
    singles: list[Signature] = []
    for batch, _, _ in scaled_batches(images.without_labels(), batch_size, resize, device):
        means, squares = per_image_moments(model, batch)
        pooled.update(means, squares)
        singles += signatures_of(means, squares)
    if not singles:
        raise ValueError("a signature needs at least one image")
    whole = pooled.signature()
    return Signature(whole.means, whole.variances, whole.images, held_out_radius(singles, pooled))


def held_out_radius(singles: list[Signature], pooled: RunningSignature) -> float | None:
    """The RADIUS_QUANTILE of each image's distance to the pooled signature of the *other* images
    (an image is always close to a pool it is part of; unseen images are not): None for one image."""
    n = len(singles)
    if n < 2:
        return None
    spread = []
    for one in singles:
        means = [(n * m - o) / (n - 1) for m, o in zip(pooled.means, one.means)]
        squares = [(n * q - (v + o.pow(2))) / (n - 1) for q, v, o in zip(pooled.squares, one.variances, one.means)]
        others = Signature(means, [(q - m.pow(2)).clamp_min(EPS) for q, m in zip(squares, means)], n - 1)
        spread.append(distance(one, others))
    return float(torch.tensor(spread, dtype=torch.float64).quantile(RADIUS_QUANTILE))


class RunningSignature:
    """The signature of a stream of images: a plain average of their moments (`window=None`), or an
    exponential one that weighs about the last `window` images (a service's recent traffic)."""

    def __init__(self, window: int | None) -> None:
        self.window = window
        self.means: list[torch.Tensor] = []
        self.squares: list[torch.Tensor] = []
        self.images = 0

    def update(self, means: list[torch.Tensor], squares: list[torch.Tensor]) -> None:
        """Add a batch's per-image moments ((B, C) per layer, as `per_image_moments` gives them)."""
        means = [m.double().cpu() for m in means]  # one transfer per layer, not one per image
        squares = [s.double().cpu() for s in squares]
        for i in range(means[0].shape[0]):
            self.images += 1
            weight = 1 / self.images if self.window is None else max(1 / self.images, 1 / self.window)
            if not self.means:
                self.means = [m[i].clone() for m in means]
                self.squares = [s[i].clone() for s in squares]
                continue
            for k, (m, s) in enumerate(zip(means, squares)):
                self.means[k].lerp_(m[i], weight)
                self.squares[k].lerp_(s[i], weight)

    def signature(self) -> Signature:
        if not self.images:
            raise ValueError("a signature needs at least one image")
        variances = [(q - m.pow(2)).clamp_min(EPS) for q, m in zip(self.squares, self.means)]
        return Signature([m.clone() for m in self.means], variances, self.images)


def signatures_of(means: list[torch.Tensor], squares: list[torch.Tensor]) -> list[Signature]:
    """One signature per image from per-image moments ((B, C) per layer)."""
    return [
        Signature([m[i] for m in means], [(s[i] - m[i].pow(2)).clamp_min(EPS) for m, s in zip(means, squares)], 1)
        for i in range(means[0].shape[0])
    ]


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


def running_statistics(model: torch.nn.Module) -> Signature | None:
    """What a model's BatchNorm layers normalise with (their running statistics) as a signature, in
    the layer order of `batchnorm_inputs`; None when a layer keeps none (or there is no layer)."""
    layers = [m for m in model.modules() if is_batchnorm(m)]
    if not layers or any(m.running_mean is None or m.running_var is None for m in layers):
        return None
    means = [m.running_mean.double().cpu() for m in layers]  # type: ignore[union-attr]
    variances = [m.running_var.double().cpu().clamp_min(EPS) for m in layers]  # type: ignore[union-attr]
    return Signature(means, variances, 0)


class InputStatistics:
    """While active (`with`), pools the moments of every BatchNorm layer's input over the forwards
    run; `distance_to_running` is their symmetric KL (`distance`) from the statistics the layers
    normalise with: the BatchNorm criterion of model selection and of the working-scale pick."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.layers = sum(1 for m in model.modules() if is_batchnorm(m))
        self.pooled = RunningSignature(window=None)
        self._active: Any = None

    def __enter__(self) -> InputStatistics:
        self._active = batchnorm_inputs(self.model)
        self._captured = self._active.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._active.__exit__(None, None, None)
        for start in range(0, len(self._captured), max(self.layers, 1)):  # one forward's layers at a time
            forward = self._captured[start : start + self.layers]
            self.pooled.update([m for m, _ in forward], [s for _, s in forward])

    def distance_to_running(self) -> float:
        """NaN for a model without BatchNorm statistics: the criterion does not apply to it."""
        running = running_statistics(self.model)
        if running is None or not self.pooled.images:
            return math.nan
        return distance(self.pooled.signature(), running)


def nearest(image: Signature, domains: dict[str, Signature]) -> tuple[str, float]:
    """The domain whose signature is closest to the image's, and that distance."""
    scored = {name: distance(image, sig) for name, sig in domains.items()}
    best = min(scored, key=scored.__getitem__)
    return best, scored[best]


def version_signatures(
    model: torch.nn.Module,
    images: SegmentationDataset,
    resize: ResizeConfig | None,
    base: tuple[str, torch.nn.Module] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Signature]:
    """What a registry version stores about the images it was made from: `own` (under `model`, for
    the drift signal) and, given `(base ref, base model)`, the same images under its base (routing)."""
    found = {"own": domain_signature(model, images, device=device, resize=resize)}
    if base is not None:
        found[base[0]] = domain_signature(base[1], images, device=device, resize=resize)
    return found
