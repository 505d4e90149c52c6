"""`build_segmenter(cfg, num_classes)`: encoder -> decoder -> head, and nothing else.

`model.library` picks who builds the three parts: raysegment (a timm backbone under one of its
decoders and a 1x1 head) or a foreign library (`models.foreign`: segmentation_models_pytorch,
torchvision), whose parts the same `Segmenter` holds, so every command treats them alike.
"""

from __future__ import annotations

import logging
import os
from typing import cast

import timm
import torch
import torch.nn.functional as F
from torch import nn

from raysegment.config import ModelConfig
from raysegment.errors import ModelError, WeightsError
from raysegment.models import freeze as freezing
from raysegment.models.backbones import check_backbone_name
from raysegment.models.decoders import DECODERS
from raysegment.models.io import load_weights_into
from raysegment.storage import fetch_to_local


class Segmenter(nn.Module):
    """`forward(images (B,3,H,W) float in [0,1]) -> logits (B,C,H,W)` at input resolution.

    ImageNet-style normalisation lives inside the model (from the backbone's pretrained config),
    so training, evaluation and serving all feed plain [0,1] images. Inputs of any size are padded
    to the backbone's largest stride and the logits cropped back.
    """

    mean: torch.Tensor  # ImageNet normalisation of the backbone's pretraining (buffers)
    std: torch.Tensor

    def __init__(
        self, encoder: nn.Module, decoder: nn.Module, head: nn.Conv2d, freeze_depth: int = 0, stride: int | None = None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head  # a conv on the decoder's features -> class logits at the decoder's resolution
        owner = freezing.stage_owner(encoder) or encoder
        cfg = getattr(owner, "pretrained_cfg", None) or {}
        self.register_buffer(
            "mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), persistent=False
        )
        self.stride = stride or max(freezing.feature_info(encoder).reduction())
        self.num_classes = head.out_channels
        self.freeze_depth = freeze_depth
        self._frozen = freezing.freeze(encoder, freeze_depth)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features, padded = self.padded_features(images)
        h, w = images.shape[-2:]
        logits = F.interpolate(self.head(features), size=padded, mode="bilinear", align_corners=False)
        return logits[..., :h, :w]

    def padded_features(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """images (B,3,H,W) in [0,1] -> the decoder's features (B,D,h',w') of the normalised images
        padded to the backbone's stride, and that padded size: what the head reads (and what label
        selection reads, `engine.selection`)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ModelError(f"expected images of shape (B,3,H,W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        x = (images - self.mean) / self.std
        pad_h, pad_w = (-h) % self.stride, (-w) % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.decoder(self.encoder(x)), (x.shape[-2], x.shape[-1])

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        for module in self._frozen:
            if freezing.is_batchnorm(module):
                module.eval()
        return self

    @property
    def num_stages(self) -> int:
        return freezing.num_stages(self.encoder)


def create_encoder(cfg: ModelConfig) -> nn.Module:
    """The timm features_only backbone, with weights from the configured source."""
    check_backbone_name(cfg.backbone)
    source, uri = cfg.pretrained.source, cfg.pretrained.uri
    try:
        if source == "timm":
            return _create_from_hub(cfg.backbone)
        if source == "imagenet":
            from raysegment.models.weights_import import imagenet_efficientnet_lite0

            logging.getLogger("timm.models._builder").setLevel(logging.ERROR)  # the dropped classifier

            return timm.create_model(
                cfg.backbone,
                features_only=True,
                pretrained=True,
                pretrained_cfg_overlay=dict(file=str(imagenet_efficientnet_lite0())),
            )
        if source == "file":
            if not uri:
                raise WeightsError("pretrained.source=file needs pretrained.uri (a .safetensors file or URI)")
            local = fetch_to_local(uri)
            if local.suffix != ".safetensors":
                raise WeightsError(
                    f"{uri} is not a .safetensors file; convert foreign weights with "
                    f"`raysegment weights import {uri} --arch {cfg.backbone} --out X.safetensors`"
                )
            # timm logs the dropped classifier keys as "unexpected"; for features_only that is the point.
            logging.getLogger("timm.models._builder").setLevel(logging.ERROR)
            return timm.create_model(
                cfg.backbone, features_only=True, pretrained=True, pretrained_cfg_overlay=dict(file=str(local))
            )
        return timm.create_model(cfg.backbone, features_only=True, pretrained=False)
    except WeightsError:
        raise
    except (RuntimeError, KeyError, ValueError) as exc:
        raise WeightsError(
            f"weights from {uri or source} do not fit backbone {cfg.backbone}: {str(exc)[:300]}"
        ) from exc


def _create_from_hub(name: str) -> nn.Module:
    try:
        return timm.create_model(name, features_only=True, pretrained=True)
    except Exception as exc:  # timm raises many types (HTTP, hub, OS) for an unreachable hub
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise WeightsError(
            f"could not fetch timm hub weights for {name}{offline}: {type(exc).__name__}; "
            f"without network, import a local file with `raysegment weights import` "
            f"and set pretrained.source=file"
        ) from exc


def build_segmenter(cfg: ModelConfig, num_classes: int) -> Segmenter:
    """Build encoder + decoder + head; `pretrained.source=checkpoint` also loads decoder and head."""
    if cfg.pretrained.source == "checkpoint":
        model = _build(cfg.without_pretrained(), num_classes, freeze_depth=0)
        if not cfg.pretrained.uri:
            raise WeightsError("pretrained.source=checkpoint needs pretrained.uri (a checkpoint folder)")
        load_weights_into(model, cfg.pretrained.uri)
        model._frozen = freezing.freeze(model.encoder, cfg.freeze_depth)
        model.freeze_depth = cfg.freeze_depth
        return model
    return _build(cfg, num_classes, cfg.freeze_depth)


def _build(cfg: ModelConfig, num_classes: int, freeze_depth: int) -> Segmenter:
    if cfg.library != "raysegment":
        from raysegment.models.foreign import build_foreign

        encoder, decoder, head, stride = build_foreign(cfg, num_classes)
        model = Segmenter(encoder, decoder, head, freeze_depth, stride)
        # Their DeepLabV3 heads pool to one value per channel before a BatchNorm (raysegment's own ASPP
        # pools without one): batches of one image must not fail in training mode.
        freezing.tolerate_single_values(model)
        return model
    encoder = create_encoder(cfg)
    info = freezing.feature_info(encoder)
    decoder = DECODERS[cfg.decoder](info.channels(), info.reduction(), cfg.decoder_channels)
    return Segmenter(encoder, decoder, nn.Conv2d(cast(int, decoder.out_channels), num_classes, 1), freeze_depth)
