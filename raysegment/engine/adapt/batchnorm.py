"""Label-free adaptation, first method: AdaBN (Li et al. 2016).

Re-estimates every BatchNorm layer's running statistics on unlabeled target images, so the
normalisation matches the target domain. No labels, no gradients, seconds of work. Whether it
helps must be judged per domain (it can hurt), which is the registry's promotion rule's job.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from raysegment.augment import to_float
from raysegment.data.dataset import pad_collate
from raysegment.models.freeze import is_batchnorm


@torch.no_grad()
def adapt_batchnorm(model: torch.nn.Module, images: Dataset, batch_size: int = 8,
                    device: torch.device | str = "cpu") -> int:
    """AdaBN in place: reset BN statistics, then average them over `images` (labels unused).

    Uses a cumulative average (momentum=None), so the result is the exact mean of the per-batch
    statistics whatever the order. Returns the number of BatchNorm layers re-estimated.
    """
    layers = [m for m in model.modules() if is_batchnorm(m)]
    saved = [(m, m.momentum, m.training) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.eval()
    for m in layers:
        m.train()
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, collate_fn=pad_collate)
    for batch, _ in loader:
        model(to_float(batch.to(device)))
    for m, momentum, _ in saved:
        m.momentum = momentum
    model.eval()
    return len(layers)
