"""Find (image, mask) pairs for a split in the layouts users already have.

- raysegment: `<root>/dataset.json`, `<root>/<domain>/images/<stem>.png|jpg` and, where labelled,
  `<root>/<domain>/masks/<stem>.png` (no masks folder, or masks for only some images, is fine),
  optional `<root>/<domain>/splits.json` = {"train": [stems], "val": [...], "test": [...]}.
  Without splits.json every split is derived deterministically from the sorted stems
  (70% train, 15% val, 15% test) and split "all" lists everything.
- cityscapes: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` + `gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`.
- acdc: `rgb_anon/<condition>/<split>/<seq>/*_rgb_anon.png` + `gt/<condition>/<split>/<seq>/*_gt_labelTrainIds.png`;
  the domain is the condition (fog, night, rain, snow).
"""

from __future__ import annotations

import json
from pathlib import Path

from raysegment.data.dataset import Sample, SegmentationDataset
from raysegment.data.info import CITYSCAPES, DatasetInfo
from raysegment.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_SHARES = {"train": (0.0, 0.7), "val": (0.7, 0.85), "test": (0.85, 1.0), "all": (0.0, 1.0)}


def list_domains(root: str | Path) -> list[str]:
    """Domains of a raysegment-layout dataset: sub-folders holding `images/`."""
    root = Path(root)
    DatasetInfo.read(root)
    return sorted(p.name for p in root.iterdir() if (p / "images").is_dir())


def open_split(
    root: str | Path, domain: str, split: str, layout: str = "raysegment", unlabelled: bool = False
) -> SegmentationDataset:
    """Build the dataset of one domain's split. Images without a mask are kept, unlabelled;
    `unlabelled=True` reads every image that way without looking at the masks at all."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist")
    if layout == "raysegment":
        info, samples = DatasetInfo.read(root), _raysegment_samples(root, domain, split, unlabelled)
    elif layout == "cityscapes":
        info, samples = (
            CITYSCAPES,
            _suffix_samples(
                root / "leftImg8bit" / split,
                "_leftImg8bit",
                root / "gtFine" / split,
                "_gtFine_labelTrainIds.png",
                unlabelled,
            ),
        )
    elif layout == "acdc":
        info, samples = (
            CITYSCAPES,
            _suffix_samples(
                root / "rgb_anon" / domain / split,
                "_rgb_anon",
                root / "gt" / domain / split,
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
    return SegmentationDataset(samples, info)


def _raysegment_samples(root: Path, domain: str, split: str, unlabelled: bool) -> list[Sample]:
    folder = root / domain
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not images_dir.is_dir():
        known = ", ".join(p.name for p in root.iterdir() if (p / "images").is_dir()) or "none"
        raise DatasetError(f"{images_dir} is missing: domain {domain!r} not found (domains: {known})")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    stems = _split_stems(folder, sorted(images), split)
    samples: list[Sample] = []
    for stem in stems:
        if stem not in images:
            raise DatasetError(f"{folder / 'splits.json'} lists {stem!r} but {images_dir}/{stem}.png|jpg is missing")
        mask = None if unlabelled else masks_dir / f"{stem}.png"
        samples.append((images[stem], mask if mask is not None and mask.is_file() else None))
    return samples


def _split_stems(folder: Path, stems: list[str], split: str) -> list[str]:
    splits_file = folder / "splits.json"
    if splits_file.is_file():
        try:
            splits = json.loads(splits_file.read_text())
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
    images_dir: Path, image_suffix: str, masks_dir: Path, mask_suffix: str, unlabelled: bool
) -> list[Sample]:
    """Official layouts: a missing label folder means unlabelled; a missing label file is a broken export."""
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir} is missing; check the dataset root, split and domain")
    labelled = not unlabelled and masks_dir.is_dir()
    samples: list[Sample] = []
    for image in sorted(images_dir.rglob(f"*{image_suffix}.png")):
        rel = image.relative_to(images_dir).parent
        stem = image.name[: -len(f"{image_suffix}.png")]
        mask = masks_dir / rel / f"{stem}{mask_suffix}" if labelled else None
        if mask is not None and not mask.is_file():
            raise DatasetError(
                f"{mask} is missing for {image}; generate labelTrainIds with the "
                f"dataset's official scripts (createTrainIdLabelImgs.py)"
            )
        samples.append((image, mask))
    return samples
