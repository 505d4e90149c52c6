"""Domain adaptation with few or no target labels, selected by `cfg.adapt.method` from `METHODS`,
and every method run the same way: `build_runner` -> the one epoch loop.

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

from raysegment.config import MethodName, RunConfig
from raysegment.data import SegmentationDataset, open_labelled, open_split
from raysegment.engine.adapt.batchnorm import adapt_batchnorm
from raysegment.engine.adapt.methods import AdaBN, SelfTraining, Tent, tent_parameters
from raysegment.engine.adapt.teacher import EMATeacher
from raysegment.engine.epochs import train_in_process
from raysegment.engine.finetune import Finetune
from raysegment.engine.method import Method, Placement, Wrap
from raysegment.engine.runner import Runner
from raysegment.engine.scale import pick_scale
from raysegment.errors import ConfigError
from raysegment.models.io import ModelMeta
from raysegment.models.segmenter import build_segmenter


def open_target_train(cfg: RunConfig) -> SegmentationDataset:
    """The target images a method trains on: labelled ones (the first `labelled_limit`) for finetune,
    every image without its mask for the label-free methods."""
    d = cfg.data
    if cfg.adapt.uses_target_labels:
        return open_labelled(d.root, d.domain, d.train_split, d.layout, d.labelled_limit, d.labelled_images)
    return open_split(d.root, d.domain, d.train_split, d.layout, unlabelled=True)


def open_source_train(cfg: RunConfig) -> SegmentationDataset:
    """The labelled source domain (self-training, source replay)."""
    d, source = cfg.data, cfg.adapt.source_domain
    if source is None:
        raise ConfigError("self-training and source replay learn from source labels too: set adapt.source_domain")
    a = cfg.adapt
    return open_split(a.source_root or d.root, source, d.train_split, a.source_layout or d.layout).labelled()


def open_val(cfg: RunConfig) -> SegmentationDataset:
    """The held-back target images that judge the run: labelled ones when labels judge (the first
    `adapt.canary` of them for a label-free method with a canary set), else images only."""
    d = cfg.data
    if cfg.judge == "labels":
        return open_split(d.root, d.domain, d.val_split, d.layout).labelled(cfg.adapt.canary)
    return open_split(d.root, d.domain, d.val_split, d.layout, unlabelled=True)


def finetune(cfg: RunConfig, placement: Placement) -> Method:
    replay = open_source_train(cfg) if cfg.adapt.source_replay else None
    target = open_target_train(cfg)
    model = build_segmenter(cfg.model, target.info.num_classes)
    return Finetune(cfg, model=model, train_set=target, placement=placement, replay=replay)


def label_free(kind: type[AdaBN] | type[Tent]) -> Callable[[RunConfig, Placement], Method]:
    def build(cfg: RunConfig, placement: Placement) -> Method:
        target = open_target_train(cfg)
        model = build_segmenter(cfg.model, target.info.num_classes)
        return kind(cfg, model=model, train_set=target, placement=placement)

    return build


def open_target_labelled(cfg: RunConfig) -> SegmentationDataset | None:
    """Self-training's few target labels: the train images `data.labelled_images` names (the first
    `labelled_limit` of them), or the first `labelled_limit` labelled ones; None when neither is set."""
    d = cfg.data
    if not cfg.semi_supervised:
        return None
    return open_labelled(d.root, d.domain, d.train_split, d.layout, d.labelled_limit, d.labelled_images)


def self_training(cfg: RunConfig, placement: Placement) -> Method:
    source, target = open_source_train(cfg), open_target_train(cfg)
    model = build_segmenter(cfg.model, source.info.num_classes)
    return SelfTraining(
        cfg,
        model=model,
        train_set=source,
        target_set=target,
        placement=placement,
        labelled_target=open_target_labelled(cfg),
    )


# The one method table: `adapt.method` -> the method with its datasets opened (config.MethodName names them).
METHODS: dict[MethodName, Callable[[RunConfig, Placement], Method]] = {
    "finetune": finetune,
    "adabn": label_free(AdaBN),
    "tent": label_free(Tent),
    "self_training": self_training,
}


def build_runner(cfg: RunConfig, placement: Placement, *, wrap_model: Wrap = None) -> Runner:
    """The `Runner` of `cfg.adapt.method` on this rank, its datasets opened. Torch is seeded here,
    once, so what a run draws (a new head's weights, augmentation) depends on the seed alone."""
    torch.manual_seed(cfg.optim.seed)
    return Runner(METHODS[cfg.adapt.method](cfg, placement), wrap_model=wrap_model)


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


@dataclass
class Adapted:
    """What an adaptation run produced: the selected model, its meta and held-back scores."""

    model: torch.nn.Module
    meta: ModelMeta
    scores: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    runner: Runner | None = None


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
    runner = train_in_process(build_runner(cfg, Placement.of(device)), open_val(cfg), resume, progress, log)
    return Adapted(
        runner.selected_model().eval(),
        runner.meta,
        {**runner.best_scores, "selected_epoch": runner.best_epoch, **scale},
        runner.history,
        runner,
    )


__all__ = [
    "METHODS",
    "AdaBN",
    "Adapted",
    "EMATeacher",
    "Finetune",
    "SelfTraining",
    "Tent",
    "adapt",
    "adapt_batchnorm",
    "build_runner",
    "open_source_train",
    "open_target_train",
    "open_val",
    "tent_parameters",
    "with_target_scale",
]
