"""Domain adaptation with few or no target labels, selected by `cfg.adapt.method`.

`build_tuner(cfg, ...)` returns the `FineTuner` for the method with its datasets opened:
`finetune` (labelled target images), `adabn`, `tent` and `self_training` (target images without
labels; self-training also reads the labelled source domain).
"""

from __future__ import annotations

import torch

from raysegment.config import RunConfig
from raysegment.data import SegmentationDataset, UnlabelledView, open_split
from raysegment.engine.adapt.batchnorm import adapt_batchnorm
from raysegment.engine.adapt.teacher import EMATeacher
from raysegment.engine.adapt.tuners import AdaBNTuner, SelfTrainer, TentTuner, Wrap
from raysegment.engine.finetuner import FineTuner
from raysegment.models import build_segmenter


def training_sets(cfg: RunConfig) -> tuple[SegmentationDataset, ...]:
    """The datasets a method trains on; target labels only where the method may use them."""
    d, a = cfg.data, cfg.adapt
    if a.uses_target_labels:
        return (open_split(d.root, d.domain, d.train_split, d.layout, d.labelled_limit),)
    target = UnlabelledView(open_split(d.root, d.domain, d.train_split, d.layout))
    if a.method == "self_training":
        return open_split(d.root, a.source_domain, d.train_split, d.layout), target
    return (target,)


def build_tuner(cfg: RunConfig, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                wrap_model: Wrap = None) -> FineTuner:
    sets = training_sets(cfg)
    method = cfg.adapt.method
    if method == "finetune":
        return FineTuner(cfg, sets[0], device, rank, world_size, wrap_model)
    model = build_segmenter(cfg.model, sets[0].info.num_classes)
    if method == "adabn":
        return AdaBNTuner(cfg, sets[0], device, rank, world_size, wrap_model, model)
    if method == "tent":
        return TentTuner(cfg, sets[0], device, rank, world_size, wrap_model, model)
    return SelfTrainer(cfg, sets[0], sets[1], device, rank, world_size, wrap_model, model)


def adapt(cfg: RunConfig, device: torch.device | str | None = None, resume: bool = True, progress: bool = True,
          log=print) -> FineTuner:
    """Run `cfg.adapt.method` to its last epoch in this process, scored and checkpointed every epoch."""
    from raysegment.engine.finetuner import run_epochs

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    d = cfg.data
    val = open_split(d.root, d.domain, d.val_split, d.layout)
    return run_epochs(build_tuner(cfg, device), cfg, val, resume, progress, log)


__all__ = ["adapt", "AdaBNTuner", "EMATeacher", "SelfTrainer", "TentTuner", "adapt_batchnorm", "build_tuner", "training_sets"]
