"""`raysegment export`: a registry version (or a model folder) as an ONNX graph, checked against
the torch model on the domain's own images before it is stored; and `--quantize int8`, whose graph
becomes a new version judged against its float parent by the one promotion policy.

Images come from the version's run config (the domain's val split to check and judge on, its train
split to calibrate on) or from a folder given on the command line. Everything is at the model's
working scale (`model.json`'s `resize`), as serving runs it.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from pydantic import ValidationError

from raysegment.augment import resize_images, scaled_size, to_float
from raysegment.config import RunConfig
from raysegment.data import open_split
from raysegment.data.dataset import read_image
from raysegment.data.sources import IMAGE_SUFFIXES
from raysegment.errors import RaySegmentError
from raysegment.export.graph import (
    DEFAULT_OPSET,
    Agreement,
    ExportError,
    agreement,
    check_images,
    export_onnx,
    odd_sizes,
)
from raysegment.export.quantize import quantize_int8
from raysegment.export.runtime import OrtSegmenter
from raysegment.models.io import ModelMeta
from raysegment.models.rebuild import load_model
from raysegment.models.segmenter import Segmenter
from raysegment.registry import ModelVersion, Registry
from raysegment.registry.artifacts import ONNX, Artifacts, ExportRecord
from raysegment.registry.audit import Decision
from raysegment.registry.promotion import promote_compressed

log = logging.getLogger(__name__)
CHECK_IMAGES = 4  # images of the domain the agreement is measured on (each at two sizes)
INT8 = "int8"


@dataclass(frozen=True)
class Exported:
    ref: str  # the version, or the model folder
    record: ExportRecord
    path: Path | None  # where the graph was also written (--out)


@dataclass(frozen=True)
class Quantized:
    parent: str
    version: int
    record: ExportRecord
    decision: Decision


def folder_images(folder: str | Path, limit: int) -> list[torch.Tensor]:
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise RaySegmentError(f"{folder} holds no .png/.jpg images")
    return [read_image(p) for p in paths[:limit]]


def domain_images(entry: ModelVersion, split: str, limit: int, folder: str | Path | None = None) -> list[torch.Tensor]:
    """Up to `limit` unlabelled images of the version's domain (uint8, (3,H,W)): from `folder`, else
    from `split` of the dataset its run config names."""
    if folder is not None:
        return folder_images(folder, limit)
    try:
        data = RunConfig.model_validate(entry.config).data
        images = open_split(data.root, entry.domain, getattr(data, f"{split}_split"), data.layout, unlabelled=True)
    except (ValidationError, RaySegmentError) as exc:
        raise RaySegmentError(
            f"{entry.ref}: no images of its domain to check the export on ({str(exc)[:200]}); pass --images DIR"
        ) from exc
    chosen = random.Random(0).sample(range(len(images)), min(limit, len(images)))
    return [images[k][0] for k in sorted(chosen)]


def at_working_scale(images: list[torch.Tensor], meta: ModelMeta) -> list[torch.Tensor]:
    return [
        resize_images(to_float(im[None]), scaled_size(int(im.shape[-2]), int(im.shape[-1]), meta.resize))[0]
        for im in images
    ]


def checked_export(model: Segmenter, images: list[torch.Tensor], opset: int) -> tuple[bytes, Agreement]:
    """Export, then compare ONNX Runtime with torch at two sizes; a disagreeing graph is refused."""
    graph = export_onnx(model, opset)
    h, w = images[0].shape[-2:]
    found = agreement(model, OrtSegmenter.like(model, graph), check_images(images, odd_sizes(h, w)))
    if not found.passed:
        raise ExportError(f"the ONNX graph disagrees with the torch model: {found.describe()}; not stored")
    return graph, found


def export_record(opset: int, found: Agreement, **facts: object) -> dict[str, object]:
    return {
        "opset": opset,
        "onnx_version": md.version("onnx"),
        "onnxruntime_version": md.version("onnxruntime"),
        "torch_version": torch.__version__,
        "max_abs_diff": found.max_abs_diff,
        "pixel_agreement": found.pixel_agreement,
        "checked_images": found.images,
        "checked_sizes": [list(s) for s in found.sizes],
        **facts,
    }


def export_version(
    registry: Registry,
    ref: str,
    opset: int = DEFAULT_OPSET,
    out: Path | None = None,
    images: str | Path | None = None,
    say: Callable[[str], None] = print,
) -> Exported:
    """Export a registry version, check it, store it with the version (and at `out`)."""
    loaded, meta, entry = registry.load(ref)
    model = cast(Segmenter, loaded)
    say(f"[export] {entry.ref}: exporting {meta.model.decoder} on {meta.model.backbone} (opset {opset})")
    checks = at_working_scale(domain_images(entry, "val", CHECK_IMAGES, images), meta)
    graph, found = checked_export(model, checks, opset)
    say(f"[export] {entry.ref}: {found.describe()}")
    record = Artifacts(registry.store).add(entry, ONNX, graph, export_record(opset, found))
    if out is not None:
        out.write_bytes(graph)
    return Exported(entry.ref, record, out)


def export_folder(
    model_dir: str,
    out: Path,
    images: str | Path,
    opset: int = DEFAULT_OPSET,
    say: Callable[[str], None] = print,
) -> Agreement:
    """Export a model folder (no registry) to `out`, checked on the images of `images`."""
    model, meta = load_model(model_dir)
    checks = at_working_scale(folder_images(images, CHECK_IMAGES), meta)
    graph, found = checked_export(model, checks, opset)
    say(f"[export] {model_dir}: {found.describe()}")
    out.write_bytes(graph)
    return found


def quantize_version(
    registry: Registry,
    ref: str,
    calibration: int = 32,
    max_drop: float = 0.5,
    opset: int = DEFAULT_OPSET,
    images: str | Path | None = None,
    calibration_images: str | Path | None = None,
    say: Callable[[str], None] = print,
) -> Quantized:
    """INT8 of a float version, calibrated on `calibration` unlabelled images of its domain (its
    train split, or `calibration_images`), registered as a new version and judged against its parent
    on held-back images with a tolerance of `max_drop` mIoU points (`promotion.promote_compressed`)."""
    loaded, meta, parent = registry.load(ref)
    model = cast(Segmenter, loaded)
    if parent.lineage.method == INT8:
        raise RaySegmentError(f"{parent.ref} is INT8 already; quantize its float parent")
    artifacts = Artifacts(registry.store)
    if artifacts.load(parent) is None:  # quantized from the checked float graph, exported first if need be
        export_version(registry, parent.ref, opset, images=images, say=say)
    float_graph = artifacts.load(parent)
    assert float_graph is not None
    graph, float_record = float_graph
    calib = at_working_scale(domain_images(parent, "train", calibration, calibration_images), meta)
    source = str(calibration_images) if calibration_images else f"{parent.domain} train split"
    say(f"[export] {parent.ref}: INT8 calibration on {len(calib)} images ({source})")
    int8 = quantize_int8(graph, calib, model.stride, model.mean)
    runtime = OrtSegmenter.like(model, int8)  # one session: the agreement check and the judge share it
    checks = at_working_scale(domain_images(parent, "val", CHECK_IMAGES, images), meta)
    found = agreement(model, runtime, checks)
    say(f"[export] {parent.ref}: INT8 against float: {found.describe()}")
    facts = {"quantization": INT8, "calibration_images": len(calib), "calibration_source": source}
    version = registry.register(
        parent.domain,
        model,  # the float weights: the torch runtime (and drift, routing) keep using them
        meta,
        {},
        parent.config,
        parent=parent.ref,
        lineage={"method": INT8, "target_labels": 0, **facts},
    )
    entry = registry.get_entry(parent.domain, version)
    record = artifacts.add(entry, ONNX, int8, export_record(float_record.opset, found, **facts))
    decision = promote_compressed(registry, entry, parent, runtime, model, max_drop)
    say(f"[export] {entry.ref}: {'production' if decision.promoted else 'candidate'}: {decision.reason}")
    return Quantized(parent.ref, version, record, decision)
