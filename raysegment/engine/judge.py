"""Scoring by the judge: the one definition of what selection and promotion compare.

`score` is val mIoU when target labels judge, else the label-free proxy of the model against a
reference (the model its adaptation started from) on the held-back images, whose masks are then
never read. Epoch selection (`Runner`), AdaBN, Tune's source baseline and the promotion policy
all score through `judged_scores`.
"""

from __future__ import annotations

import torch

from raysegment.config import Judge, RunConfig
from raysegment.data import SegmentationDataset
from raysegment.engine.criteria import Scoring
from raysegment.engine.evaluate import evaluate
from raysegment.engine.proxies import proxy_scores


def judged_scores(
    model: torch.nn.Module,
    held_back: SegmentationDataset,
    cfg: RunConfig,
    judge: Judge,
    reference: torch.nn.Module | None = None,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """Held-back metrics of `model` by `judge`, with `score` the one that decides. Labels: mIoU
    (sharded over DDP ranks when `world_size` > 1). Proxy: against `reference` (the model itself
    when None, which scores the reference's own agreement of 1)."""
    if judge == "labels":
        miou = evaluate(
            model,
            held_back,
            cfg.eval,
            device,
            window=cfg.augment.crop,
            resize=cfg.data.resize,
            rank=rank,
            world_size=world_size,
        ).miou
        return {"val_miou": miou, "score": miou}
    proxies = proxy_scores(
        model,
        reference if reference is not None else model,
        held_back,
        device,
        cfg.data.resize,
        cfg.adapt.criterion,
        Scoring(confidence=cfg.adapt.proxy_confidence, batch_size=cfg.eval.batch_size),
    )
    return {**proxies.as_metrics(), "score": proxies.score}
