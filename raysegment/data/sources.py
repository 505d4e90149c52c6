"""Find (image, mask) pairs for a split in the layouts users already have, in a folder or a bucket.

- raysegment: `<root>/dataset.json`, `<root>/<domain>/images/<stem>.png|jpg` and, where labelled,
  `<root>/<domain>/masks/<stem>.png` (no masks folder, or masks for only some images, is fine),
  optional `<root>/<domain>/splits.json` = {"train": [stems], "val": [...], "test": [...]}.
  Without splits.json every split is derived deterministically from the sorted stems
  (70% train, 15% val, 15% test) and split "all" lists everything.
- cityscapes: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` + `gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`.
- acdc: `rgb_anon/<condition>/<split>/<seq>/*_rgb_anon.png` + `gt/<condition>/<split>/<seq>/*_gt_labelTrainIds.png`;
  the domain is the condition (fog, night, rain, snow).

`root` is a folder or an object-store URI (`s3://bucket/cityscapes`): the same layouts, listed
through `data.files` (one listing per folder, no download).
"""

from __future__ import annotations

import json
from pathlib import Path

from raysegment.data import files
from raysegment.data.dataset import Sample, SegmentationDataset
from raysegment.data.files import Location
from raysegment.data.info import CITYSCAPES, DatasetInfo
from raysegment.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_SHARES = {"train": (0.0, 0.7), "val": (0.7, 0.85), "test": (0.85, 1.0), "all": (0.0, 1.0)}


def list_domains(root: str | Path) -> list[str]:
    """Domains of a raysegment-layout dataset: sub-folders holding `images/`."""
    base = files.location(root)
    DatasetInfo.read(base)
    return [files.name(d) for d in _domain_folders(base)]


def _domain_folders(root: Location) -> list[Location]:
    return [d for d in files.folders(root) if files.is_folder(files.join(d, "images"))]


def open_split(
    root: str | Path, domain: str, split: str, layout: str = "raysegment", unlabelled: bool = False
) -> SegmentationDataset:
    """Build the dataset of one domain's split. Images without a mask are kept, unlabelled;
    `unlabelled=True` reads every image that way without looking at the masks at all."""
    info, samples = _listed(root, domain, split, layout, unlabelled)
    return SegmentationDataset(samples, info)


def open_labelled(
    root: str | Path,
    domain: str,
    split: str,
    layout: str = "raysegment",
    limit: int | None = None,
    stems: list[str] | None = None,
) -> SegmentationDataset:
    """Only the labelled images a few-shot run may learn from: those `stems` names (in its order),
    or the first labelled ones in file order, the first `limit` of them. No other mask of the split
    is opened, not even to check it: the rest of the target stays unlabelled to the run."""
    info, samples = _listed(root, domain, split, layout, unlabelled=False)
    if stems is not None:
        by_stem = {files.stem(image): (image, mask) for image, mask in samples}
        unknown = [s for s in stems if s not in by_stem or by_stem[s][1] is None]
        if unknown:
            raise DatasetError(f"selected images {unknown[:5]} are not labelled images of {domain}/{split}")
        chosen = [by_stem[s] for s in stems][:limit]
    else:
        chosen = [sample for sample in samples if sample[1] is not None][:limit]
    if not chosen:
        raise DatasetError(
            f"none of the {len(samples)} images of {domain}/{split} under {root} has a mask; supervised "
            "training and mIoU need labels: add masks/<stem>.png or use a label-free method"
        )
    return SegmentationDataset(chosen, info)


def _listed(
    root: str | Path, domain: str, split: str, layout: str, unlabelled: bool
) -> tuple[DatasetInfo, list[Sample]]:
    """(info, samples) of a split, found by listing only: no file is opened."""
    base = files.location(root)
    if not files.is_folder(base):
        raise DatasetError(f"dataset root {root} does not exist")
    j = files.join
    if layout == "raysegment":
        info, samples = DatasetInfo.read(base), _raysegment_samples(base, domain, split, unlabelled)
    elif layout == "cityscapes":
        info, samples = (
            CITYSCAPES,
            _suffix_samples(
                j(base, "leftImg8bit", split),
                "_leftImg8bit",
                j(base, "gtFine", split),
                "_gtFine_labelTrainIds.png",
                unlabelled,
            ),
        )
    elif layout == "acdc":
        info, samples = (
            CITYSCAPES,
            _suffix_samples(
                j(base, "rgb_anon", domain, split),
                "_rgb_anon",
                j(base, "gt", domain, split),
                "_gt_labelTrainIds.png",
                unlabelled,
            ),
        )
    else:
        raise DatasetError(f"unknown layout {layout!r}; use raysegment, cityscapes or acdc")
    if not samples:
        raise DatasetError(
            f"split {split!r} of domain {domain!r} under {root} is empty; check the split name and splits.json"
        )
    return info, samples


def _raysegment_samples(root: Location, domain: str, split: str, unlabelled: bool) -> list[Sample]:
    folder = files.join(root, domain)
    images_dir, masks_dir = files.join(folder, "images"), files.join(folder, "masks")
    listed = files.files(images_dir)
    if not listed and not files.is_folder(images_dir):
        known = ", ".join(files.name(d) for d in _domain_folders(root)) or "none"
        raise DatasetError(f"{images_dir} is missing: domain {domain!r} not found (domains: {known})")
    images = {files.stem(p): p for p in listed if files.suffix(p).lower() in IMAGE_SUFFIXES}
    stems = _split_stems(folder, sorted(images), split)
    masks = set() if unlabelled else {files.name(p) for p in files.files(masks_dir)}
    samples: list[Sample] = []
    for stem in stems:
        if stem not in images:
            raise DatasetError(
                f"{files.join(folder, 'splits.json')} lists {stem!r} but {images_dir}/{stem}.png|jpg is missing"
            )
        mask = files.join(masks_dir, f"{stem}.png") if f"{stem}.png" in masks else None
        samples.append((images[stem], mask))
    return samples


def _split_stems(folder: Location, stems: list[str], split: str) -> list[str]:
    splits_file = files.join(folder, "splits.json")
    text = files.read_if_exists(splits_file)
    if text is not None:
        try:
            splits = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{splits_file} is not valid JSON: {exc}") from exc
        if split == "all":
            return stems
        if split not in splits:
            raise DatasetError(f"{splits_file} has no split {split!r}; it has {sorted(splits)}")
        return list(splits[split])
    if split not in SPLIT_SHARES:
        raise DatasetError(f"no splits.json in {folder}, so split must be one of {sorted(SPLIT_SHARES)}, got {split!r}")
    lo, hi = SPLIT_SHARES[split]
    return stems[round(lo * len(stems)) : round(hi * len(stems))]


def _suffix_samples(
    images_dir: Location, image_suffix: str, masks_dir: Location, mask_suffix: str, unlabelled: bool
) -> list[Sample]:
    """Official layouts: a missing label folder means unlabelled; a missing label file is a broken export."""
    found = files.files_below(images_dir, f"{image_suffix}.png")
    if not found and not files.is_folder(images_dir):
        raise DatasetError(f"{images_dir} is missing; check the dataset root, split and domain")
    labels = set() if unlabelled else set(map(str, files.files_below(masks_dir, mask_suffix)))
    labelled = bool(labels)
    samples: list[Sample] = []
    for image in found:
        rel = str(image)[len(str(images_dir)) :].strip("/").rsplit("/", 1)
        sub = rel[0] if len(rel) == 2 else ""
        stem = files.name(image)[: -len(f"{image_suffix}.png")]
        mask = files.join(masks_dir, *([sub] if sub else []), f"{stem}{mask_suffix}") if labelled else None
        if mask is not None and str(mask) not in labels:
            raise DatasetError(
                f"{mask} is missing for {image}; generate labelTrainIds with the "
                f"dataset's official scripts (createTrainIdLabelImgs.py)"
            )
        samples.append((image, mask))
    return samples
