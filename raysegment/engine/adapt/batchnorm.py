"""Label-free adaptation, first method: AdaBN (Li et al. 2016), a function: no gradients, no loop.

Re-estimates every BatchNorm layer's running statistics on unlabelled target images, so the
normalisation matches the target domain. Seconds of work. It can hurt, so a caller that ships the
result (the Tune search, `raysegment adapt`) must judge it against the source model first.
"""

from __future__ import annotations

import torch

from raysegment.config import ResizeConfig
from raysegment.data.dataset import SegmentationDataset
from raysegment.engine.evaluate import scaled_batches
from raysegment.models.freeze import is_batchnorm


@torch.no_grad()
def adapt_batchnorm(
    model: torch.nn.Module,
    images: SegmentationDataset,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    resize: ResizeConfig | None = None,
) -> int:
    """AdaBN in place: reset BN statistics, then average them over `images` (masks never read).

    Uses a cumulative average (momentum=None), so the result is the exact mean of the per-batch
    statistics whatever the order. Images of one size run together at the working scale, never
    padded, so no padding pixel enters the statistics. Returns the number of BatchNorm layers.
    """
    device = torch.device(device)
    layers = [m for m in model.modules() if is_batchnorm(m)]
    saved = [(m, m.momentum) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.eval()
    for m in layers:
        m.train()
    for batch, _, _ in scaled_batches(images.without_labels(), batch_size, resize, device):
        model(batch)
    for m, momentum in saved:
        m.momentum = momentum
    model.eval()
    return len(layers)
