"""`raysegment data import`: small files written in each publisher's layout (TIFF, GIF, JPEG, odd
sizes) come out as raysegment datasets whose masks hold 0/1 inside the field of view, 255 outside."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raysegment.data import open_split
from raysegment.data.importers import import_dataset
from raysegment.errors import DatasetError


def _fundus(h: int, w: int, seed: int) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(image, manual, fov): a bright disc on black, a vessel line, the disc as the FOV."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 2.2) ** 2
    image = np.zeros((h, w, 3), np.uint8)
    image[disc] = (180, 90, 40) + rng.integers(0, 30, (int(disc.sum()), 3))
    vessel = disc & (np.abs(yy - xx * h / w) < 2)
    return (
        Image.fromarray(image),
        Image.fromarray((vessel * 255).astype(np.uint8)),
        Image.fromarray(disc * np.uint8(255)),
    )


def write_drive(src: Path) -> Path:
    """A small DRIVE download: training 21, 22, 37 and test 01, 02 (TIFF images, GIF manuals and FOVs)."""
    for folder, numbers in (("training", [21, 22, 37]), ("test", [1, 2])):
        for sub in ("images", "1st_manual", "mask"):
            (src / folder / sub).mkdir(parents=True)
        for n in numbers:
            image, manual, fov = _fundus(43, 47, n)
            kind = "training" if folder == "training" else "test"
            image.save(src / folder / "images" / f"{n:02d}_{kind}.tif")
            manual.convert("P").save(src / folder / "1st_manual" / f"{n:02d}_manual1.gif")
            fov.convert("P").save(src / folder / "mask" / f"{n:02d}_{kind}_mask.gif")
    return src


def test_drive_layout_becomes_train_val_test_with_the_fov_ignored(tmp_path, cli):
    src = write_drive(tmp_path / "DRIVE")
    result = cli("data", "import", "drive", src, tmp_path / "retina")
    assert result.returncode == 0, result.stderr
    assert "2 train, 1 val, 2 test" in result.stdout
    train = open_split(tmp_path / "retina", "drive", "train")
    assert len(train) == 2 and train.labelled_count == 2 and train.info.classes == ["background", "vessel"]
    _, mask = train[0]
    values = set(np.unique(mask.numpy()).tolist())
    assert values == {0, 1, 255}, values
    assert len(open_split(tmp_path / "retina", "drive", "val")) == 1


def test_chase_lands_beside_drive_with_a_field_of_view_from_the_image(tmp_path, cli):
    src = tmp_path / "CHASEDB1"
    src.mkdir()
    for child in (1, 8, 11):
        for eye in "LR":
            image, manual, _ = _fundus(51, 45, child * 2 + (eye == "R"))
            image.save(src / f"Image_{child:02d}{eye}.jpg", quality=95)
            manual.save(src / f"Image_{child:02d}{eye}_1stHO.png")
            manual.save(src / f"Image_{child:02d}{eye}_2ndHO.png")
    assert cli("data", "import", "chase", src, tmp_path / "retina").returncode == 0
    splits = json.loads((tmp_path / "retina" / "chase" / "splits.json").read_text())
    assert splits == {
        "train": ["chase_01L", "chase_01R"],
        "val": ["chase_08L", "chase_08R"],
        "test": ["chase_11L", "chase_11R"],
    }
    test = open_split(tmp_path / "retina", "chase", "test")
    image, mask = test[0]
    assert tuple(mask.shape) == tuple(image.shape[1:]) == (51, 45)
    assert mask[0, 0] == 255 and set(np.unique(mask.numpy()).tolist()) <= {0, 1, 255}


def test_hrf_and_camvid_layouts(tmp_path):
    hrf = tmp_path / "HRF"
    for sub in ("images", "manual1", "mask"):
        (hrf / sub).mkdir(parents=True)
    for stem in ("01_h", "10_g", "13_dr"):
        image, manual, fov = _fundus(40, 60, len(stem))
        image.save(hrf / "images" / f"{stem}.jpg")
        manual.save(hrf / "manual1" / f"{stem}.tif")
        fov.save(hrf / "mask" / f"{stem}_mask.tif")
    assert import_dataset("hrf", hrf, tmp_path / "fundus") == {"train": 1, "val": 1, "test": 1}

    camvid = tmp_path / "CamVid"
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        (camvid / split).mkdir(parents=True)
        (camvid / f"{split}annot").mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (36, 48, 3), dtype=np.uint8)).save(camvid / split / f"f{i}.png")
            Image.fromarray(rng.integers(0, 12, (36, 48), dtype=np.uint8)).save(camvid / f"{split}annot" / f"f{i}.png")
    assert import_dataset("camvid", camvid, tmp_path / "roads") == {"train": 3, "val": 1, "test": 2}
    train = open_split(tmp_path / "roads", "camvid", "train")
    assert train.info.num_classes == 11
    assert set(np.unique(train[0][1].numpy()).tolist()) <= set(range(11)) | {255}
    with pytest.raises(DatasetError, match="holds classes"):  # vessels do not go into a road dataset
        import_dataset("hrf", hrf, tmp_path / "roads")


def test_a_missing_download_says_where_to_get_it(tmp_path, cli):
    result = cli("data", "import", "drive", tmp_path / "nowhere", tmp_path / "out")
    assert result.returncode == 2
    assert "drive.grand-challenge.org" in result.stderr and "\n" not in result.stderr.strip()
