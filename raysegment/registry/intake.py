"""Model folders into a registry: the doors a trained model (`raysegment train`, an imported one)
takes to become a version, with the facts serving and the judge need later.

A version keeps a run config whose data section names its domain's images, so the promotion
policy can score it on held-back images (`promotion.held_back`), and the signatures of its train
images, so serving can route to it and measure drift from it. Without images it is registered
without either, and the caller is told why.

Estimated target accuracy (`engine.estimate`) needs a confidence fit on labelled images of the
domain a model was trained on. A version registered with its own domain's labelled val images
keeps that fit as the lineage fact `confidence_fit`; a version adapted from it (a Tune winner, a
loop turn, a study pick, a folder added to a domain with a production model) finds the fit up its
base chain (`lineage_fit`) and is registered with its estimated mIoU on its held-back images
(`estimated_metrics`), which the promotion policy's do-no-harm floor and the console read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from raysegment.config import Judge, Layout, ResizeConfig, RunConfig
from raysegment.data import SegmentationDataset, open_split
from raysegment.engine.estimate import ConfidenceFit, Estimate, estimate_miou, fit_confidence
from raysegment.engine.signature import version_signatures
from raysegment.errors import RaySegmentError
from raysegment.models.rebuild import load_model
from raysegment.registry.manifest import RegistryError
from raysegment.registry.versions import Registry

FIT_FACT = "confidence_fit"  # the lineage fact holding a version's `ConfidenceFit`


def own_fit(
    model: torch.nn.Module, root: str, domain: str, layout: Layout, resize: ResizeConfig | None
) -> ConfidenceFit | None:
    """The model's confidence fitted on `domain`'s labelled val images; None without any."""
    try:
        val = open_split(root, domain, "val", layout)
    except RaySegmentError:
        return None
    return fit_confidence(model, val, resize) if val.labelled_count else None


def lineage_fit(registry: Registry, ref: str | None) -> ConfidenceFit | None:
    """The confidence fit of `ref` or the nearest version up its base chain that has one."""
    seen: set[str] = set()
    while ref and ref not in seen:
        seen.add(ref)
        try:
            entry = registry.resolve(ref)
        except RegistryError:
            return None
        fact = entry.lineage.fact(FIT_FACT)
        if fact:
            return ConfidenceFit(**fact)
        base = entry.base
        ref = base.ref if base else entry.lineage.parent
    return None


def estimate_as_metrics(found: Estimate | None) -> dict[str, float]:
    """An estimate as version metrics: mIoU, its interval and each class's IoU (none without one)."""
    if found is None:
        return {}
    per_class = {f"estimated_iou.{name}": v for name, v in found.per_class.items() if v == v}  # NaN: not estimated
    return {**found.as_metrics(), **per_class}


def estimated_metrics(
    fit: ConfidenceFit | None,
    model: torch.nn.Module,
    images: SegmentationDataset | None,
    resize: ResizeConfig | None,
    log: Callable[[str], Any] = print,
    name: str = "version",
) -> dict[str, float]:
    """`model`'s estimated mIoU on `images` (their masks unread) as version metrics; none, and a
    log line saying why, without a fit or images."""
    if fit is None or images is None or not len(images):
        log(f"[registry] {name}: no estimated mIoU (no labelled source val images up its lineage, or no images)")
        return {}
    return estimate_as_metrics(estimate_miou(model, fit, images.without_labels(), resize))


def folder_config(folder: str | Path, meta: Any, root: str, domain: str, layout: Layout, judge: Judge) -> RunConfig:
    """The run config a registered model folder is judged by: its domain's splits under `root`, at
    the model's working scale, `judge` scoring held-back images."""
    return RunConfig.model_validate(
        {
            "data": {
                "root": root,
                "domain": domain,
                "layout": layout,
                "resize": meta.resize.model_dump() if meta.resize else None,
            },
            "model": {
                **meta.model.model_dump(mode="json"),
                "pretrained": {"source": "checkpoint", "uri": str(folder)},
            },
            "adapt": {"judge": judge},
        }
    )


def held_back_judge(root: str, domain: str, layout: Layout, split: str = "val") -> Judge:
    """Labels when the domain's held-back split has any, else the unsupervised proxy."""
    return "labels" if open_split(root, domain, split, layout).labelled_count else "proxy"


def register_source(
    registry: Registry,
    folder: str | Path,
    root: str,
    domain: str,
    layout: Layout = "raysegment",
    train_split: str = "train",
    log: Callable[[str], Any] = print,
) -> str:
    """Register a source model folder once under its own domain (a second call finds the first by
    its path) with the drift and routing signatures of that domain's train images; returns its ref.
    Without those images it is registered without signatures, and the log says so."""
    folder = Path(folder)
    for entry in registry.entries(domain):
        if entry.lineage.source_path == str(folder):
            return entry.ref
    model, meta = load_model(folder)
    try:
        images = open_split(root, domain, train_split, layout, unlabelled=True)
    except RaySegmentError as exc:
        log(f"[registry] source {domain}: registered without drift/routing signatures: {exc}")
        signatures = None
    else:
        signatures = version_signatures(model, images, meta.resize)
    fit = own_fit(model, root, domain, layout, meta.resize)
    version = registry.register(
        domain,
        model,
        meta,
        meta.metrics,
        meta.model.model_dump(mode="json"),
        lineage={"source_path": str(folder), "method": "source"} | ({FIT_FACT: asdict(fit)} if fit else {}),
        signatures=signatures,
    )
    return f"{domain}@{version}"


def register_folder(
    registry: Registry,
    folder: str | Path,
    domain: str,
    root: str | None = None,
    layout: Layout = "raysegment",
    log: Callable[[str], Any] = print,
) -> int:
    """`raysegment registry add`: any trained model folder as a new version of `domain`. With `root`
    (a dataset holding `domain`), its run config names those images, so the policy can judge it
    (by val labels where the domain has them, else the proxy), and its train images' signatures are
    stored; without, it is registered as it is and cannot be judged until promoted by force.
    Its confidence fit is its domain's labelled val images' when there are any (it is then a source
    for later versions); otherwise it is estimated with the fit of the domain's production lineage."""
    folder = Path(folder).resolve()
    model, meta = load_model(folder)
    config: dict[str, Any] = {}
    signatures = None
    judge: Judge | None = None
    facts: dict[str, Any] = {}
    metrics = dict(meta.metrics)
    if root is not None:
        judge = held_back_judge(root, domain, layout)
        config = folder_config(folder, meta, root, domain, layout, judge).model_dump(mode="json")
        images = open_split(root, domain, "train", layout, unlabelled=True)
        signatures = version_signatures(model, images, meta.resize)
        fit = own_fit(model, root, domain, layout, meta.resize)
        if fit is not None:
            facts[FIT_FACT] = asdict(fit)
        else:
            inherited = lineage_fit(registry, f"{domain}@production")
            val = open_split(root, domain, "val", layout, unlabelled=True)
            metrics |= estimated_metrics(inherited, model, val, meta.resize, log, domain)
    else:
        log(f"[registry] {domain}: no --data, so no held-back images: the judge cannot score this version")
    return registry.register(
        domain,
        model,
        meta,
        metrics,
        config,
        lineage={"source_path": str(folder), "method": "model_folder", "judge": judge} | facts,
        signatures=signatures,
    )
