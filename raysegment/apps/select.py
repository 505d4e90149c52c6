"""`raysegment select`: which images of a target folder to label first, written where a labeller
(or `raysegment label push`) picks them up: the ranked list, a contact sheet of the picks with the
model's prediction on them, and each pick's pre-label (the model's mask, to correct rather than
paint from scratch)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.io import write_png

from raysegment.data import SegmentationDataset
from raysegment.data.folder import folder_images
from raysegment.engine.selection import Selection, Strategy, select_images
from raysegment.models.rebuild import load_model
from raysegment.storage import atomic_write_bytes
from raysegment.viz import contact_sheet_png

PRELABELS = "prelabels"  # OUT/prelabels/<stem>.png: the model's masks of the picks (class ids)


@dataclass(frozen=True)
class SelectionFiles:
    selection: Selection
    files: list[Path]  # every image, in the selection's order
    listing: Path
    sheet: Path
    prelabels: Path


def folder_dataset(folder: str | Path, info) -> SegmentationDataset:  # noqa: ANN001 (a DatasetInfo)
    """The images directly inside `folder` (any names), unlabelled."""
    return SegmentationDataset([(p, None) for p in folder_images(folder)], info)


def run_selection(
    model_dir: str | Path,
    images: str | Path,
    budget: int,
    out: str | Path,
    strategy: Strategy = "active",
    seed: int = 0,
    source_images: str | Path | None = None,
) -> SelectionFiles:
    """Rank the images of `images` for `model_dir`; `source_images` (a folder of the source's own
    images) lets `active-novel` prefer images unlike them."""
    model, meta = load_model(model_dir)
    data = folder_dataset(images, meta.dataset_info())
    far_from = folder_dataset(source_images, meta.dataset_info()) if source_images else None
    selection = select_images(model, data, budget, strategy, meta.resize, seed, far_from=far_from)
    paths = [Path(str(data.samples[i][0])) for i in selection.order]
    out = Path(out)
    (out / PRELABELS).mkdir(parents=True, exist_ok=True)
    ranking = [
        {
            "rank": rank + 1,
            "file": str(paths[rank]),
            "picked": rank < selection.budget,
            "uncertainty": round(selection.evidence[i].uncertainty, 5),
        }
        for rank, i in enumerate(selection.order)
    ]
    listing = out / "selection.json"
    document = {"model": str(model_dir), "images": str(images), "strategy": strategy, "seed": seed}
    if source_images:
        document["source_images"] = str(source_images)
    atomic_write_bytes(
        listing, json.dumps({**document, "budget": selection.budget, "ranking": ranking}, indent=1).encode()
    )
    for i in selection.picks:
        stem = data.stem(i)
        write_png(selection.evidence[i].prediction.to(torch.uint8)[None], str(out / PRELABELS / f"{stem}.png"))
    sheet = contact_sheet_png(
        out / "contact_sheet.png",
        [data[i][0] for i in selection.picks],
        [selection.evidence[i].prediction for i in selection.picks],
        [
            f"{rank + 1}. {data.stem(i)} (u={selection.evidence[i].uncertainty:.2f})"
            for rank, i in enumerate(selection.picks)
        ],
        meta.palette,
        title=f"label these {selection.budget} first ({strategy}); the model's prediction blended on",
    )
    return SelectionFiles(selection, paths, listing, sheet, out / PRELABELS)
