"""Inference on single images, as used by `raysegment predict` and the demo's overlays."""

from __future__ import annotations

import torch

from raysegment.augment import to_float
from raysegment.config import EvalConfig
from raysegment.engine.evaluate import predict_logits


@torch.no_grad()
def segment(model: torch.nn.Module, image: torch.Tensor, cfg: EvalConfig = EvalConfig(),
            window: tuple[int, int] | None = None) -> torch.Tensor:
    """image (3,H,W) uint8 -> (H,W) int64 class ids."""
    model.eval()
    device = next(model.parameters()).device
    logits = predict_logits(model, to_float(image.unsqueeze(0).to(device)), cfg, window)
    return logits.argmax(1)[0].cpu()
