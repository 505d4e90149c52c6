"""Freeze depth: keep the stem and the first k backbone stages fixed.

A stage is one entry of timm's `feature_info`. Depth k freezes every encoder module that runs
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


def feature_info(encoder: nn.Module) -> FeatureInfo:
    """timm's per-stage table (channels, reduction, module name) of a `features_only` encoder."""
    return cast("FeatureInfo", encoder.feature_info)


def num_stages(encoder: nn.Module) -> int:
    return len(feature_info(encoder))


def frozen_modules(encoder: nn.Module, depth: int) -> list[nn.Module]:
    """Modules (each owning its direct parameters) frozen at `depth`, in definition order."""
    if depth == 0:
        return []
    stages = num_stages(encoder)
    if depth > stages:
        raise ModelError(f"freeze_depth {depth} exceeds the backbone's {stages} stages; use 0..{stages}")
    named = list(encoder.named_modules())
    positions = {name: i for i, (name, _) in enumerate(named)}
    target = feature_info(encoder).module_name(depth - 1)
    # FeatureListNet flattens `stages.0` into `stages_0`; efficientnet keeps dotted names.
    boundary = next((n for n in (target, target.replace(".", "_")) if n in positions), None)
    if boundary is None:
        raise ModelError(f"cannot locate stage module {target!r} in {type(encoder).__name__}")
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
