"""Inference on single images, as used by `raysegment predict` and the demo's overlays."""

from __future__ import annotations

import torch

from raysegment.augment import resize_images, scaled_size, to_float
from raysegment.config import EvalConfig, ResizeConfig
from raysegment.engine.evaluate import predict_full_size
from raysegment.models.outputs import class_map


@torch.no_grad()
def segment(
    model: torch.nn.Module,
    image: torch.Tensor,
    cfg: EvalConfig = EvalConfig(),
    window: tuple[int, int] | None = None,
    resize: ResizeConfig | None = None,
) -> torch.Tensor:
    """image (3,H,W) uint8 -> (H,W) int64 class ids at full size; `resize`: the model's working scale."""
    model.eval()
    device = next(model.parameters()).device
    h, w = image.shape[-2:]
    images = resize_images(to_float(image.unsqueeze(0).to(device)), scaled_size(h, w, resize))
    return class_map(predict_full_size(model, images, (h, w), cfg, window))[0].cpu()
