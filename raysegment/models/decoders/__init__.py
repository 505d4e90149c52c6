"""Decoders: multi-scale backbone features -> one feature map at the finest feature stride.

Every decoder takes `channels` and `reductions` from timm's `feature_info`, so any
`features_only` backbone fits any decoder.
"""

from __future__ import annotations

from torch import nn

from raysegment.config import Decoder
from raysegment.models.decoders.deeplabv3plus import DeepLabV3PlusDecoder
from raysegment.models.decoders.fpn import FPNDecoder
from raysegment.models.decoders.segformer import SegFormerDecoder
from raysegment.models.decoders.unet import UNetDecoder

DECODERS: dict[Decoder, type[nn.Module]] = {  # keys checked against config.Decoder (the one list)
    "fpn": FPNDecoder,
    "unet": UNetDecoder,
    "deeplabv3plus": DeepLabV3PlusDecoder,
    "segformer": SegFormerDecoder,
}

__all__ = ["DECODERS"]
