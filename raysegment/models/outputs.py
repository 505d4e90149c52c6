"""What a segmenter's logits mean: the class map every consumer (scoring, proxies, serving) reads."""

from __future__ import annotations

import torch


def class_map(logits: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) logits -> (B,H,W) class ids, ties to the lowest id as `argmax(1)` breaks them.

    `torch.max(..., 1).indices`, not `argmax(1)`: on CPU (torch 2.14) argmax over the class dimension
    is 5-20x slower (0.24 s against 0.01-0.03 s for 8x7x256x512 logits), and at full label resolution
    it was most of an evaluation's time."""
    return torch.max(logits, 1).indices
