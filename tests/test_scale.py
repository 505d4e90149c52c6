"""The target's working scale, picked without labels from BatchNorm statistics."""

import shutil

import torch
from PIL import Image

from raysegment.config import ResizeConfig, parse_config
from raysegment.data import open_split
from raysegment.engine.adapt import adapt
from raysegment.engine.scale import pick_scale, statistics_distance
from raysegment.models.rebuild import load_model


def _zoomed_copy(synth_root, tmp_path, factor: int):
    """`clear` at `factor` times its pixel size, as a camera with a finer sensor would see it; no masks."""
    root = tmp_path / "zoomed"
    (root / "big" / "images").mkdir(parents=True)
    shutil.copy(synth_root / "dataset.json", root / "dataset.json")
    for split_file in (synth_root / "clear").glob("*.json"):
        shutil.copy(split_file, root / "big" / split_file.name)
    for png in (synth_root / "clear" / "images").glob("*.png"):
        image = Image.open(png)
        image.resize((image.width * factor, image.height * factor), Image.BICUBIC).save(
            root / "big" / "images" / png.name
        )
    return root


def test_the_picked_scale_undoes_a_zoom(synth_root, source_model_dir, tmp_path):
    """The source saw 64x128 images; the same scenes at 128x256 look like the source again at short side 64."""
    root = _zoomed_copy(synth_root, tmp_path, 2)
    source, _ = load_model(source_model_dir)
    images = open_split(root, "big", "train", unlabelled=True)
    picked, distances = pick_scale(source, images, [32, 64, 128])
    assert picked == ResizeConfig(short_side=64), distances
    assert distances[64] < distances[32] and distances[64] < distances[128]
    assert statistics_distance(source, images, ResizeConfig(short_side=64)) == distances[64]


def test_an_adapted_version_carries_the_picked_scale(synth_root, source_model_dir, tmp_path):
    root = _zoomed_copy(synth_root, tmp_path, 2)
    cfg = parse_config(
        {
            "data": {"root": str(root), "domain": "big"},
            "model": {
                "backbone": "test_efficientnet",
                "decoder": "fpn",
                "decoder_channels": 16,
                "pretrained": {"source": "checkpoint", "uri": str(source_model_dir)},
            },
            "adapt": {"method": "adabn", "target_short_sides": [32, 64, 128]},
            "output_dir": str(tmp_path / "run"),
        }
    )
    lines = []
    result = adapt(cfg, resume=False, progress=False, log=lines.append)
    assert result.meta.resize == ResizeConfig(short_side=64)  # what evaluate, predict and serving read
    assert result.scores["target_short_side"] == 64 and "scale_distance_128" in result.scores
    assert any("short side 64" in line for line in lines)
    assert torch.isfinite(torch.tensor(result.scores["score"]))
