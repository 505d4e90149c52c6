"""Scale as an adaptation knob, chosen without labels.

A target from another camera sees the same structures at another pixel size (a retinal vessel is
2-3x wider in pixels on a 999x960 CHASE_DB1 fundus than on a 565x584 DRIVE one). Each BatchNorm
layer of the source model holds the statistics of its input at the source's training scale; the
target scale whose input statistics under the source model come nearest to them is the one at
which the target looks most like what the model learnt. No mask is read.
"""

from __future__ import annotations

import torch

from raysegment.config import ResizeConfig
from raysegment.data.dataset import SegmentationDataset
from raysegment.engine.evaluate import scaled_batches
from raysegment.engine.signature import InputStatistics
from raysegment.errors import ConfigError


@torch.no_grad()
def statistics_distance(
    model: torch.nn.Module,
    images: SegmentationDataset,
    resize: ResizeConfig | None,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
) -> float:
    """Symmetric KL between the model's BatchNorm running statistics and its inputs' statistics on
    `images` at working scale `resize` (the mean over channels, then layers; masks never read)."""
    device = torch.device(device)
    model.to(device).eval()
    inputs = InputStatistics(model)
    with inputs:
        for x, _, _ in scaled_batches(images.without_labels(), batch_size, resize, device):
            model(x)
    return inputs.distance_to_running()


def pick_scale(
    model: torch.nn.Module,
    images: SegmentationDataset,
    short_sides: list[int],
    device: torch.device | str = "cpu",
    batch_size: int = 8,
) -> tuple[ResizeConfig, dict[int, float]]:
    """The short side (of `short_sides`) at which `images` look most like the model's training
    data to its BatchNorm layers, and every tried side's distance."""
    distances = {
        side: statistics_distance(model, images, ResizeConfig(short_side=side), device, batch_size)
        for side in short_sides
    }
    if any(d != d for d in distances.values()):  # NaN: no BatchNorm layer to compare statistics in
        raise ConfigError("target_short_sides picks a scale by BatchNorm statistics; this model has no BatchNorm layer")
    best = min(distances, key=distances.__getitem__)
    return ResizeConfig(short_side=best), distances
