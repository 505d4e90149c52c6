"""Optimiser and the exponential learning-rate decay lr_t = lr * decay**t (after linear warmup)."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

from raysegment.config import OptimConfig


def lr_factor(step: int, cfg: OptimConfig, steps_per_epoch: int) -> float:
    """Multiplier on the base lr at optimiser step `step` (0-based)."""
    t = step if cfg.decay_every == "step" else step // max(1, steps_per_epoch)
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    return warm * cfg.decay**t


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Optimise trainable parameters only; norm and bias parameters get no weight decay; the backbone
    (`model.encoder`) learns at `lr * backbone_lr_scale` (a slower backbone keeps what pretraining knew)."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {
        (enc, wd): [] for enc in (True, False) for wd in (True, False)
    }
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[(name.startswith("encoder."), param.ndim > 1)].append(param)
    param_groups = [
        {
            "params": params,
            "weight_decay": cfg.weight_decay if wd else 0.0,
            "lr": cfg.lr * (cfg.backbone_lr_scale if enc else 1.0),
        }
        for (enc, wd), params in groups.items()
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(param_groups, lr=cfg.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int) -> LambdaLR:
    """Stepped once per optimiser step; the factor itself decays per epoch or per step."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch))
