"""U-Net decoder (Ronneberger et al. 2015): upsample, concatenate the skip, two convs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raysegment.models.decoders.blocks import conv_bn_relu


class UNetDecoder(nn.Module):
    def __init__(self, channels: list[int], reductions: list[int], width: int = 64) -> None:
        super().__init__()
        blocks = []
        cin = channels[-1]
        for skip in reversed(channels[:-1]):
            blocks.append(nn.Sequential(conv_bn_relu(cin + skip, width), conv_bn_relu(width, width)))
            cin = width
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = cin

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return x
