"""Cross-entropy over labelled pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy over non-ignored pixels (weighted mean with class weights).

    logits: (B,C,H,W); target: (B,H,W) int64. A batch with no labelled pixel gives a zero loss
    that still reaches every parameter (so DDP's gradient all-reduce stays in step).
    """
    if not (target != ignore_index).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, weight=class_weights, ignore_index=ignore_index)
