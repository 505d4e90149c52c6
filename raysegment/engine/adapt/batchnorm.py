"""Label-free adaptation, first method: AdaBN (Li et al. 2016), a function: no gradients, no loop.

Re-estimates every BatchNorm layer's running statistics on unlabelled target images, so the
normalisation matches the target domain. Seconds of work. It can hurt, so a caller that ships the
result (the Tune search, `raysegment compare`) must judge it against the source model first.
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

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
    target_share: float = 1.0,
) -> int:
    """AdaBN in place: reset BN statistics, then average them over `images` (masks never read).

    Uses a cumulative average (momentum=None), so the result is the exact mean of the per-batch
    statistics whatever the order. Images of one size run together at the working scale, never
    padded, so no padding pixel enters the statistics. With `target_share` a < 1 (partial AdaBN,
    for small shifts where full target statistics from few images overshoot) each layer keeps the
    moments of the mixture a*target + (1-a)*source. Returns the number of BatchNorm layers.
    """
    device = torch.device(device)
    layers = [m for m in model.modules() if is_batchnorm(m)]
    source = [statistics(m) for m in layers] if target_share < 1 else []
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
    for m, (mean, var) in zip(layers, source):
        mix_statistics(m, mean, var, target_share)
    model.eval()
    return len(layers)


def statistics(layer: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of a BatchNorm layer's running (mean, variance)."""
    if layer.running_mean is None or layer.running_var is None:
        raise ValueError(f"{layer} keeps no running statistics (track_running_stats=False): AdaBN cannot set them")
    return layer.running_mean.clone(), layer.running_var.clone()


def mix_statistics(layer: _BatchNorm, source_mean: torch.Tensor, source_var: torch.Tensor, share: float) -> None:
    """Set a BatchNorm layer's running moments (now the target's) to those of the mixture
    share*target + (1-share)*source: mean a*mt + (1-a)*ms, variance a*vt + (1-a)*vs + a(1-a)(mt-ms)^2."""
    mt, vt = statistics(layer)
    delta = (mt - source_mean).pow(2)
    layer.running_var = share * vt + (1 - share) * source_var + share * (1 - share) * delta
    layer.running_mean = share * mt + (1 - share) * source_mean
