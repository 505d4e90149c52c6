"""Joint image+mask augmentation with Kornia, on whatever device the batch lives on.

Loaders hand over uint8 batches; this module turns them into float [0,1] on the training
device and augments the whole batch there (GPU when there is one), so CPU loader processes
only decode. Geometric transforms resample masks with nearest neighbour; pixels that a
rotation or scale pads in become the ignore index, never a real class.
"""

from __future__ import annotations

from typing import Any

import kornia.augmentation as K
import torch
from torch import nn

from raysegment.config import AugmentConfig


class SegmentationAugment(nn.Module):
    """`images (B,3,H,W) uint8|float, masks (B,H,W) int64 -> (float [0,1], int64)` on the same device."""

    def __init__(self, cfg: AugmentConfig, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        ops: list[Any] = []  # kornia augmentations
        if cfg.hflip:
            ops.append(K.RandomHorizontalFlip())
        if cfg.crop is not None:
            ops.append(
                K.RandomResizedCrop(
                    cfg.crop,
                    scale=cfg.crop_scale,
                    ratio=(cfg.crop[1] / cfg.crop[0] * 0.8, cfg.crop[1] / cfg.crop[0] * 1.25),
                )
            )
        if cfg.rotate_degrees > 0 or cfg.scale != (1.0, 1.0):
            ops.append(K.RandomAffine(degrees=cfg.rotate_degrees, scale=cfg.scale, p=0.5))
        if cfg.jitter > 0:
            j = cfg.jitter
            ops.append(K.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4), p=0.8))
        if cfg.blur_p > 0:
            ops.append(K.RandomGaussianBlur((5, 5), (0.1, 1.5), p=cfg.blur_p))
        if cfg.noise_std > 0:
            ops.append(K.RandomGaussianNoise(std=cfg.noise_std, p=0.5))
        self.pipeline = K.AugmentationSequential(*ops, data_keys=["input", "mask"]) if ops else None

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = to_float(images)
        if self.pipeline is None:
            return images, masks
        # Shift labels by one so that geometric padding (zeros) is distinguishable from class 0.
        shifted = (masks + 1).unsqueeze(1)
        images, shifted = self.pipeline(images, shifted)
        masks = shifted.squeeze(1).long() - 1
        masks[masks < 0] = self.ignore_index
        return images.clamp_(0, 1), masks


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B,3,H,W) -> float32 in [0,1]; floats pass through."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images
