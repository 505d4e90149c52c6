"""Domain adaptation with few or no target labels, selected by `cfg.adapt.method`.

`finetune` trains on the target's labelled images (`data.labelled_limit` of them, optionally
replaying source batches); `adabn`, `tent` and `self_training` read the target's images only:
their target datasets are opened without masks, so no code path of a label-free run can open a
target mask file, and they are judged on held-back val images by the unsupervised proxy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from raysegment.config import RunConfig
from raysegment.data import SegmentationDataset, open_split
from raysegment.engine.adapt.batchnorm import adapt_batchnorm
from raysegment.engine.adapt.methods import SelfTraining, Tent, tent_parameters
from raysegment.engine.adapt.teacher import EMATeacher
from raysegment.engine.judge import judged_scores
from raysegment.engine.learner import Finetune, Learner, Wrap
from raysegment.engine.loop import train_in_process
from raysegment.engine.scale import pick_scale
from raysegment.errors import ConfigError
from raysegment.models import ModelMeta, build_segmenter


def open_target_train(cfg: RunConfig) -> SegmentationDataset:
    """The target images a method trains on: labelled ones (the first `labelled_limit`) for finetune,
    every image without its mask for the label-free methods."""
    d = cfg.data
    if cfg.adapt.uses_target_labels:
        return open_split(d.root, d.domain, d.train_split, d.layout).labelled(d.labelled_limit)
    return open_split(d.root, d.domain, d.train_split, d.layout, unlabelled=True)


def open_source_train(cfg: RunConfig) -> SegmentationDataset:
    """The labelled source domain (self-training, source replay)."""
    d, source = cfg.data, cfg.adapt.source_domain
    if source is None:
        raise ConfigError("self-training and source replay learn from source labels too: set adapt.source_domain")
    return open_split(d.root, source, d.train_split, d.layout).labelled()


def open_val(cfg: RunConfig) -> SegmentationDataset:
    """The held-back target images that judge the run: labelled ones when labels judge (the first
    `adapt.canary` of them for a label-free method with a canary set), else images only."""
    d = cfg.data
    if cfg.judge == "labels":
        return open_split(d.root, d.domain, d.val_split, d.layout).labelled(cfg.adapt.canary)
    return open_split(d.root, d.domain, d.val_split, d.layout, unlabelled=True)


def build_learner(
    cfg: RunConfig, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1, wrap_model: Wrap = None
) -> Learner:
    """The `Learner` of a trained method (finetune, tent, self_training) with its datasets opened."""
    method, target = cfg.adapt.method, open_target_train(cfg)
    if method == "finetune":
        replay = open_source_train(cfg) if cfg.adapt.source_replay else None
        return Finetune(cfg, target, device, rank, world_size, wrap_model, replay=replay)
    model = build_segmenter(cfg.model, target.info.num_classes)
    if method == "tent":
        return Tent(cfg, target, model, device, rank, world_size, wrap_model)
    if method == "self_training":
        return SelfTraining(cfg, open_source_train(cfg), target, device, rank, world_size, wrap_model, model)
    raise ValueError(f"{method} is not trained by a Learner")  # adabn: see adabn_model


def with_target_scale(cfg: RunConfig, device: torch.device | str = "cpu") -> tuple[RunConfig, dict[str, float]]:
    """`cfg` at the target scale picked without labels when `adapt.target_short_sides` asks for one
    (its `data.resize` set, the choices cleared so the recorded config says what ran), and the
    distance of every tried side; else `cfg` unchanged."""
    sides = cfg.adapt.target_short_sides
    if not sides:
        return cfg, {}
    images = open_target_train(cfg)
    source = build_segmenter(cfg.model, images.info.num_classes)
    resize, distances = pick_scale(source, images, sides, device, cfg.optim.batch_size)
    picked = cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"resize": resize}),
            "adapt": cfg.adapt.model_copy(update={"target_short_sides": None}),
        }
    )
    return picked, {"target_short_side": float(resize.short_side or 0)} | {
        f"scale_distance_{side}": d for side, d in distances.items()
    }


def adabn_model(cfg: RunConfig, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, ModelMeta]:
    """The source model with its BatchNorm statistics re-estimated on the target's train images."""
    target = open_target_train(cfg)
    model = build_segmenter(cfg.model, target.info.num_classes).to(device)
    adapt_batchnorm(model, target, cfg.optim.batch_size, device, cfg.data.resize, cfg.adapt.bn_mix)
    info = target.info
    return model, ModelMeta(
        model=cfg.model,
        num_classes=info.num_classes,
        classes=info.classes,
        palette=info.palette,
        ignore_index=info.ignore_index,
        resize=cfg.data.resize,
    )


def adabn_scores(
    cfg: RunConfig, model: torch.nn.Module, val: SegmentationDataset, device: torch.device | str
) -> dict[str, float]:
    """AdaBN's held-back scores by the run's judge, against the unadapted source model."""
    source = build_segmenter(cfg.model, val.info.num_classes).to(device) if cfg.judge == "proxy" else None
    return judged_scores(model, val, cfg, cfg.judge, source, device)


@dataclass
class Adapted:
    """What an adaptation run produced: the selected model, its meta and held-back scores."""

    model: torch.nn.Module
    meta: ModelMeta
    scores: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    learner: Learner | None = None  # None for AdaBN, which trains nothing


def adapt(
    cfg: RunConfig,
    device: torch.device | str | None = None,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], Any] = print,
) -> Adapted:
    """Run `cfg.adapt.method` in this process: scored every `eval_every` epochs on held-back target
    images, checkpointed under `cfg.output_dir`, the best-scored epoch selected."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg, scale = with_target_scale(cfg, device)
    if scale:
        log(f"target scale: short side {int(scale['target_short_side'])} (BatchNorm statistics nearest the source's)")
    val = open_val(cfg)
    if cfg.adapt.method == "adabn":
        model, meta = adabn_model(cfg, device)
        return Adapted(model.eval(), meta, {**adabn_scores(cfg, model, val, device), **scale})
    learner = train_in_process(build_learner(cfg, device), val, resume, progress, log)
    return Adapted(
        learner.selected_model(),
        learner.meta,
        {**learner.best_scores, "selected_epoch": learner.best_epoch, **scale},
        learner.history,
        learner,
    )


__all__ = [
    "Adapted",
    "EMATeacher",
    "SelfTraining",
    "Tent",
    "adabn_model",
    "adapt",
    "adapt_batchnorm",
    "build_learner",
    "open_source_train",
    "open_target_train",
    "open_val",
    "tent_parameters",
    "with_target_scale",
]
