"""DeepLabV3+ (Chen et al. 2018): ASPP on the deepest features, refined with stride-4 low-level features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raysegment.models.decoders.blocks import conv_bn_relu


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (6, 12, 18)) -> None:
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(cin, cout, 1)] + [conv_bn_relu(cin, cout, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(inplace=True))
        self.project = conv_bn_relu(cout * (len(rates) + 2), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    def __init__(self, channels: list[int], reductions: list[int], width: int = 64) -> None:
        super().__init__()
        # Low-level features: the first stage at stride >= 4 (stride 2 is too costly to refine).
        self.low_index = next((i for i, r in enumerate(reductions) if r >= 4), 0)
        self.aspp = ASPP(channels[-1], width)
        self.low = conv_bn_relu(channels[self.low_index], max(8, width // 4), 1)
        self.fuse = nn.Sequential(conv_bn_relu(width + max(8, width // 4), width), conv_bn_relu(width, width))
        self.out_channels = width

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low = self.low(features[self.low_index])
        high = F.interpolate(self.aspp(features[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([high, low], dim=1))
