"""Find (image, mask) pairs for a split in the layouts users already have.

- raysegment: `<root>/dataset.json`, `<root>/<domain>/{images,masks}/<stem>.png|jpg`,
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

from raysegment.data.dataset import SegmentationDataset
from raysegment.data.info import CITYSCAPES, DatasetInfo
from raysegment.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_SHARES = {"train": (0.0, 0.7), "val": (0.7, 0.85), "test": (0.85, 1.0), "all": (0.0, 1.0)}


def list_domains(root: str | Path) -> list[str]:
    """Domains of a raysegment-layout dataset: sub-folders holding `images/`."""
    root = Path(root)
    DatasetInfo.read(root)
    return sorted(p.name for p in root.iterdir() if (p / "images").is_dir())


def open_split(root: str | Path, domain: str, split: str, layout: str = "raysegment",
               limit: int | None = None, validate: bool = True) -> SegmentationDataset:
    """Build the dataset of one domain's split; `limit` keeps the first k pairs (few-shot)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist")
    if layout == "raysegment":
        info, pairs = DatasetInfo.read(root), _raysegment_pairs(root, domain, split)
    elif layout == "cityscapes":
        info, pairs = CITYSCAPES, _suffix_pairs(root / "leftImg8bit" / split, "_leftImg8bit",
                                                root / "gtFine" / split, "_gtFine_labelTrainIds.png")
    elif layout == "acdc":
        info, pairs = CITYSCAPES, _suffix_pairs(root / "rgb_anon" / domain / split, "_rgb_anon",
                                                root / "gt" / domain / split, "_gt_labelTrainIds.png")
    else:
        raise DatasetError(f"unknown layout {layout!r}; use raysegment, cityscapes or acdc")
    if limit is not None:
        pairs = pairs[:limit]
    if not pairs:
        raise DatasetError(f"split {split!r} of domain {domain!r} under {root} is empty; "
                           f"check the split name and splits.json")
    return SegmentationDataset(pairs, info, validate=validate)


def _raysegment_pairs(root: Path, domain: str, split: str) -> list[tuple[Path, Path]]:
    folder = root / domain
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not images_dir.is_dir():
        known = ", ".join(p.name for p in root.iterdir() if (p / "images").is_dir()) or "none"
        raise DatasetError(f"{images_dir} is missing: domain {domain!r} not found (domains: {known})")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    stems = _split_stems(folder, sorted(images), split)
    pairs = []
    for stem in stems:
        if stem not in images:
            raise DatasetError(f"{folder / 'splits.json'} lists {stem!r} but {images_dir}/{stem}.png|jpg is missing")
        mask = masks_dir / f"{stem}.png"
        if not mask.is_file():
            n_masks = len(list(masks_dir.glob("*.png"))) if masks_dir.is_dir() else 0
            raise DatasetError(f"{mask} is missing (every image needs a mask of the same stem); "
                               f"found {len(images)} images and {n_masks} masks")
        pairs.append((images[stem], mask))
    return pairs


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
    return stems[round(lo * len(stems)):round(hi * len(stems))]


def _suffix_pairs(images_dir: Path, image_suffix: str, masks_dir: Path, mask_suffix: str) -> list[tuple[Path, Path]]:
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir} is missing; check the dataset root, split and domain")
    pairs = []
    for image in sorted(images_dir.rglob(f"*{image_suffix}.png")):
        rel = image.relative_to(images_dir).parent
        stem = image.name[: -len(f"{image_suffix}.png")]
        mask = masks_dir / rel / f"{stem}{mask_suffix}"
        if not mask.is_file():
            raise DatasetError(f"{mask} is missing for {image}; generate labelTrainIds with the "
                               f"dataset's official scripts (createTrainIdLabelImgs.py)")
        pairs.append((image, mask))
    return pairs
