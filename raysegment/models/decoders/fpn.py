"""Feature Pyramid Network (Lin et al. 2017) with the panoptic-FPN semantic merge."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raysegment.models.decoders.blocks import conv_bn_relu


class FPNDecoder(nn.Module):
    def __init__(self, channels: list[int], reductions: list[int], width: int = 64) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.smooth = nn.ModuleList(conv_bn_relu(width, width) for _ in channels)
        self.out_channels = width

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral, features)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        size = laterals[0].shape[-2:]
        merged = [
            F.interpolate(s(x), size=size, mode="bilinear", align_corners=False) for s, x in zip(self.smooth, laterals)
        ]
        return torch.stack(merged).sum(0)
