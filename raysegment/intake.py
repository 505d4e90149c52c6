"""Model folders into a registry: the doors a trained model (`raysegment train`, an imported one)
takes to become a version, with the facts serving and the judge need later.

A version keeps a run config whose data section names its domain's images, so the promotion
policy can score it on held-back images (`promotion.held_back`), and the signatures of its train
images, so serving can route to it and measure drift from it. Without images it is registered
without either, and the caller is told why.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from raysegment.config import Judge, Layout, RunConfig
from raysegment.data import open_split
from raysegment.engine.signature import version_signatures
from raysegment.errors import RaySegmentError
from raysegment.models import load_model
from raysegment.registry import Registry


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
        if entry.manifest.lineage.source_path == str(folder):
            return entry.ref
    model, meta = load_model(folder)
    try:
        images = open_split(root, domain, train_split, layout, unlabelled=True)
    except RaySegmentError as exc:
        log(f"[registry] source {domain}: registered without drift/routing signatures: {exc}")
        signatures = None
    else:
        signatures = version_signatures(model, images, meta.resize)
    version = registry.register(
        domain,
        model,
        meta,
        meta.metrics,
        meta.model.model_dump(mode="json"),
        lineage={"source_path": str(folder), "method": "source"},
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
    stored; without, it is registered as it is and cannot be judged until promoted by force."""
    folder = Path(folder).resolve()
    model, meta = load_model(folder)
    config: dict[str, Any] = {}
    signatures = None
    judge: Judge | None = None
    if root is not None:
        judge = held_back_judge(root, domain, layout)
        config = folder_config(folder, meta, root, domain, layout, judge).model_dump(mode="json")
        images = open_split(root, domain, "train", layout, unlabelled=True)
        signatures = version_signatures(model, images, meta.resize)
    else:
        log(f"[registry] {domain}: no --data, so no held-back images: the judge cannot score this version")
    return registry.register(
        domain,
        model,
        meta,
        meta.metrics,
        config,
        lineage={"source_path": str(folder), "method": "model_folder", "judge": judge},
        signatures=signatures,
    )
