"""Freeze depth: keep the stem and the first k backbone stages fixed.

A stage is one entry of timm's `feature_info` (on the encoder, or on the timm model a foreign
encoder wraps, as SMP's `tu-` encoders do at `.model`). Depth k freezes every encoder module that runs
before or inside the module producing feature k-1 (stem included). Frozen means
`requires_grad=False` *and* BatchNorm kept in eval mode: without the latter, running statistics
keep drifting even though no weight receives a gradient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeGuard, cast

from torch import nn

from raysegment.errors import ModelError

if TYPE_CHECKING:  # a type only: `is_batchnorm` users (the registry, via signatures) need no timm
    from timm.models import FeatureInfo


def stage_owner(encoder: nn.Module) -> nn.Module | None:
    """The timm `features_only` module whose `feature_info` names the stages: the encoder itself, or
    the timm model it wraps (`.model`); None for an encoder without one (torchvision, SMP's own)."""
    for module in (encoder, getattr(encoder, "model", None)):
        if module is not None and hasattr(module, "feature_info"):
            return module
    return None


def feature_info(encoder: nn.Module) -> FeatureInfo:
    """timm's per-stage table (channels, reduction, module name) of a `features_only` encoder."""
    owner = stage_owner(encoder)
    if owner is None:
        raise ModelError(f"{type(encoder).__name__} has no timm stage table (feature_info)")
    return cast("FeatureInfo", owner.feature_info)


def num_stages(encoder: nn.Module) -> int:
    """Stages freeze depth can count (0 for an encoder without a timm stage table: nothing to freeze)."""
    return len(feature_info(encoder)) if stage_owner(encoder) is not None else 0


def frozen_modules(encoder: nn.Module, depth: int) -> list[nn.Module]:
    """Modules (each owning its direct parameters) frozen at `depth`, in definition order."""
    if depth == 0:
        return []
    owner, stages = stage_owner(encoder), num_stages(encoder)
    if owner is None:
        raise ModelError(
            f"freeze_depth {depth}: {type(encoder).__name__} has no stage table to count stages in; "
            "freeze depth works on timm encoders (SMP: encoder_name tu-<timm name>); use 0"
        )
    if depth > stages:
        raise ModelError(f"freeze_depth {depth} exceeds the backbone's {stages} stages; use 0..{stages}")
    named = list(owner.named_modules())
    positions = {name: i for i, (name, _) in enumerate(named)}
    target = feature_info(encoder).module_name(depth - 1)
    # FeatureListNet flattens `stages.0` into `stages_0`; efficientnet keeps dotted names.
    boundary = next((n for n in (target, target.replace(".", "_")) if n in positions), None)
    if boundary is None:
        raise ModelError(f"cannot locate stage module {target!r} in {type(owner).__name__}")
    end = positions[boundary]
    while end + 1 < len(named) and named[end + 1][0].startswith(boundary + "."):
        end += 1
    return [module for name, module in named[1 : end + 1]]


def freeze(encoder: nn.Module, depth: int) -> list[nn.Module]:
    """Freeze the first `depth` stages; returns the frozen modules (for the BN eval override)."""
    modules = frozen_modules(encoder, depth)
    for module in modules:
        for param in module.parameters(recurse=False):
            param.requires_grad_(False)
    return modules


def is_batchnorm(module: nn.Module) -> TypeGuard[nn.modules.batchnorm._BatchNorm]:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _one_value_before(module: nn.Module, inputs: tuple) -> None:
    """A BatchNorm in training mode cannot take batch statistics of one value per channel (a batch
    of one image after global pooling, as torchvision's DeepLabV3 ASPP does); that call uses the
    running statistics instead of failing."""
    x = inputs[0]
    if module.training and x.dim() > 1 and x.numel() == x.shape[1]:
        module.training = False
        module._one_value = True  # type: ignore[assignment]


def _one_value_after(module: nn.Module, inputs: tuple, output: object) -> None:
    if getattr(module, "_one_value", False):
        module.training = True
        module._one_value = False  # type: ignore[assignment]


def tolerate_single_values(model: nn.Module) -> None:
    """Let every BatchNorm of `model` take a one-value-per-channel input in training mode
    (`_one_value_before`): adaptation groups images by size, so batches of one image happen, and a
    foreign model's pooled branch (DeepLabV3's ASPP) then holds one value per channel. Foreign models
    only (`segmenter._build`): the hooks would cost every forward of raysegment's own for nothing."""
    for module in model.modules():
        if is_batchnorm(module):
            module.register_forward_pre_hook(_one_value_before)
            module.register_forward_hook(_one_value_after)
