"""SegFormer's all-MLP head (Xie et al. 2021): project every scale, upsample, concatenate, fuse."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raysegment.models.decoders.blocks import conv_bn_relu


class SegFormerDecoder(nn.Module):
    def __init__(self, channels: list[int], reductions: list[int], width: int = 64) -> None:
        super().__init__()
        # Like SegFormer, skip the stride-2 stem features when deeper ones exist.
        self.first = next((i for i, r in enumerate(reductions) if r >= 4), 0)
        self.proj = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels[self.first :])
        self.fuse = conv_bn_relu(width * len(self.proj), width, 1)
        self.out_channels = width

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        feats = features[self.first :]
        size = feats[0].shape[-2:]
        ups = [F.interpolate(p(f), size=size, mode="bilinear", align_corners=False) for p, f in zip(self.proj, feats)]
        return self.fuse(torch.cat(ups, dim=1))
