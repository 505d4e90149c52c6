"""A plain folder of images (any file names, no masks, no dataset root) as an unlabelled domain.

What a team usually holds for a new target is exactly that. `image_folder_domain` lays it out as a
raysegment-layout dataset that every reader already understands: links to the user's files (never
copies, never edits them), the model's classes as `dataset.json`, and a seeded train / val split
(val: the held-back images the label-free judge scores on). The layout is kept (it is what a
registered version's held-back images are read from later), under a folder the caller chooses.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

from raysegment.data.info import DatasetInfo
from raysegment.data.sources import IMAGE_SUFFIXES
from raysegment.errors import DatasetError

MIN_IMAGES = 2  # one to adapt on, one held back for the judge


def domain_name(folder: str | Path) -> str:
    """The domain a folder of images becomes: its name, with each run of characters a domain name
    cannot hold (spaces, punctuation) as one '-' (`ward 7 photos` -> `ward-7-photos`)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(folder).resolve().name).strip("-.")[:64]
    if not name:
        raise DatasetError(f"cannot name a domain after folder {folder}: rename it (letters, digits, '_', '-')")
    return name


def folder_images(folder: str | Path) -> list[Path]:
    """The image files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder of images")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_image_folder(path: str | Path) -> bool:
    """True when `path` is a local folder that directly holds image files (not a dataset root)."""
    p = Path(path)
    return p.is_dir() and not (p / "dataset.json").exists() and bool(folder_images(p))


def image_folder_domain(
    folder: str | Path, root: str | Path, domain: str, info: DatasetInfo, val_share: float = 0.25, seed: int = 0
) -> Path:
    """Lay `folder`'s images out as domain `domain` of a raysegment dataset at `root` (replaced if
    it exists); returns `root`. Stems that two files share (a.png, a.jpg) get a numeric suffix."""
    images = folder_images(folder)
    if len(images) < MIN_IMAGES:
        raise DatasetError(
            f"{folder} holds {len(images)} image(s) ({', '.join(IMAGE_SUFFIXES)}); at least {MIN_IMAGES} are "
            "needed (some to adapt on, one held back to judge the result)"
        )
    root = Path(root)
    target = root / domain / "images"
    shutil.rmtree(root / domain, ignore_errors=True)
    target.mkdir(parents=True)
    stems: list[str] = []
    for path in images:
        stem = path.stem
        while stem in stems:
            stem = f"{path.stem}-{len(stems)}"
        os.symlink(path.resolve(), target / f"{stem}{path.suffix.lower()}")
        stems.append(stem)
    shuffled = stems[:]
    random.Random(seed).shuffle(shuffled)
    held = max(1, round(val_share * len(stems)))
    splits = {"train": sorted(shuffled[held:]), "val": sorted(shuffled[:held]), "test": []}
    (root / domain / "splits.json").write_text(json.dumps(splits, indent=1))
    (root / "dataset.json").write_text(json.dumps(info.model_dump(mode="json"), indent=1))
    return root
