"""Segmenters built by another library, split into the parts a `Segmenter` holds.

Teams own models trained with segmentation_models_pytorch (SMP) or torchvision; raysegment adapts,
judges, exports and serves them like its own by holding their encoder, decoder and final conv as
`Segmenter.encoder / .decoder / .head` (the head's upsampling is the `Segmenter`'s own bilinear
resize, which is what SMP's head and torchvision's forward do). `foreign_state_dict` renames a
checkpoint of the original model onto those parts (`raysegment import-model`).

- SMP: `model.arch` is any SMP architecture, `model.backbone` any encoder SMP accepts; freeze depth
  counts the stages of `tu-<timm>` encoders. SMP's head must output logits (activation None).
- torchvision: `model.arch` is a segmentation model name whose classifier is a plain sequence ending
  in the class conv (FCN, DeepLabV3); LR-ASPP sums two classifiers, so it has no single head.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict

import torch
from safetensors.torch import load_file
from torch import nn

from raysegment.config import ModelConfig
from raysegment.errors import ModelError, WeightsError
from raysegment.models import freeze as freezing
from raysegment.storage import fetch_to_local

TORCHVISION_STRIDE = 32  # inputs are padded to a multiple of this (any multiple works: the output is cropped)


class OutFeatures(nn.Sequential):
    """torchvision's classifier without its last conv, reading the backbone's `out` feature map."""

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(features["out"])


def smp_architectures() -> dict[str, str]:
    """SMP's architectures, lower-case name -> the name SMP's factory takes."""
    import segmentation_models_pytorch as smp

    return {name.lower(): name for name in smp.MODEL_ARCHITECTURES_MAPPING}


def torchvision_models() -> list[str]:
    from torchvision.models import list_models, segmentation

    return [name for name in list_models(module=segmentation) if not name.startswith("lraspp")]


def _unknown(kind: str, name: str, known: list[str]) -> ModelError:
    close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.5)
    return ModelError(
        f"unknown {kind} {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "") + f" ({', '.join(known)})"
    )


def build_foreign(cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, nn.Module, nn.Conv2d, int]:
    """(encoder, decoder, head, input stride) of `cfg`'s SMP or torchvision model, with encoder
    weights from `cfg.pretrained` (imagenet, file); `checkpoint` weights are loaded by the caller."""
    if cfg.library == "smp":
        return _build_smp(cfg, num_classes)
    return _build_torchvision(cfg, num_classes)


def _build_smp(cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, nn.Module, nn.Conv2d, int]:
    import segmentation_models_pytorch as smp

    known = smp_architectures()
    arch = known.get((cfg.arch or "").lower())
    if arch is None:
        raise _unknown("SMP architecture", cfg.arch or "", sorted(known))
    try:
        net = smp.create_model(arch, encoder_name=cfg.backbone, encoder_weights=None, classes=num_classes)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ModelError(f"SMP cannot build {arch} on encoder {cfg.backbone!r}: {str(exc)[:300]}") from exc
    head = net.segmentation_head
    activation = getattr(head[-1], "activation", head[-1])
    if not isinstance(activation, nn.Identity):
        raise ModelError(
            f"{arch}'s head applies {type(activation).__name__}: raysegment needs logits (activation None)"
        )
    _load_encoder_weights(net.encoder, cfg)
    return net.encoder, net.decoder, head[0], int(getattr(net.encoder, "output_stride", 32))


def _load_encoder_weights(encoder: nn.Module, cfg: ModelConfig) -> None:
    """ImageNet or file weights into an SMP `tu-` encoder's timm model (its classifier dropped)."""
    source = cfg.pretrained.source
    if source not in ("imagenet", "file"):
        if source == "timm":
            raise WeightsError("pretrained.source=timm: SMP encoders take weights offline here: imagenet or file")
        return
    owner = freezing.stage_owner(encoder)
    if owner is None:
        raise WeightsError(f"encoder {cfg.backbone} takes no timm weights: use a tu-<timm name> encoder")
    if source == "imagenet":
        from raysegment.models.weights_import import imagenet_efficientnet_lite0

        path = imagenet_efficientnet_lite0()
    else:
        if not cfg.pretrained.uri:
            raise WeightsError("pretrained.source=file needs pretrained.uri (a .safetensors file or URI)")
        path = fetch_to_local(cfg.pretrained.uri)
    state = load_file(str(path))
    own = owner.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise WeightsError(
            f"{path} does not fit encoder {cfg.backbone}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(wrong)} of another shape (e.g. {wrong[:3]})"
        )
    owner.load_state_dict({k: state[k] for k in own})


def _build_torchvision(cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, nn.Module, nn.Conv2d, int]:
    from torchvision.models import get_model

    known = torchvision_models()
    if cfg.arch not in known:
        raise _unknown("torchvision segmentation model", cfg.arch or "", known)
    net = get_model(cfg.arch, weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    *body, head = list(net.classifier.children())
    return net.backbone, OutFeatures(*body), head, TORCHVISION_STRIDE


def foreign_state_dict(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A checkpoint of the original SMP / torchvision model renamed onto a `Segmenter`'s parts, and
    the keys dropped because the `Segmenter` has no such part (an auxiliary head)."""
    renamed: dict[str, torch.Tensor] = OrderedDict()
    dropped = []
    if cfg.library == "smp":
        for key, value in state.items():
            if key.startswith("segmentation_head.0."):
                renamed["head." + key.removeprefix("segmentation_head.0.")] = value
            elif key.startswith("classification_head."):
                dropped.append(key)
            else:
                renamed[key] = value
        return renamed, dropped
    last = max((int(k.split(".")[1]) for k in state if k.startswith("classifier.")), default=-1)
    for key, value in state.items():
        if key.startswith("backbone."):
            renamed["encoder." + key.removeprefix("backbone.")] = value
        elif key.startswith(f"classifier.{last}."):
            renamed["head." + key.removeprefix(f"classifier.{last}.")] = value
        elif key.startswith("classifier."):
            renamed["decoder." + key.removeprefix("classifier.")] = value
        else:
            dropped.append(key)
    return renamed, dropped
