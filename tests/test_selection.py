"""Which images to label (`engine.selection`, `raysegment select`) and what a few labels do beside
the unlabelled rest (self-training with `data.labelled_images`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import _write_scene
from PIL import Image

from raysegment.data import SegmentationDataset, open_split
from raysegment.data.info import DatasetInfo
from raysegment.engine.adapt import adapt
from raysegment.engine.selection import kmeans_plus_plus, select_images
from raysegment.errors import ConfigError, DatasetError
from raysegment.models.rebuild import load_model

INFO = DatasetInfo(classes=["background", "vessel"], palette=[(0, 0, 0), (255, 255, 255)])


def test_kmeans_plus_plus_is_seeded_and_never_picks_a_duplicate_while_others_remain():
    base = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    base[0] *= 5  # the most uncertain: picked first
    embeddings = torch.cat([base, base[:1].repeat(3, 1)])  # image 0 three more times
    assert kmeans_plus_plus(embeddings, 9, seed=3) == kmeans_plus_plus(embeddings, 9, seed=3)
    for seed in range(20):
        picks = kmeans_plus_plus(embeddings, 6, seed)
        assert picks[0] == 0 and len(set(picks)) == 6
        assert not set(picks) & {6, 7, 8}, (seed, picks)  # copies of a pick come only after the rest


def _plain(path, h, w, seed):
    """Background only: the dark disc, no vessel."""
    rng = np.random.default_rng(seed)
    image = np.stack([0.3 + 0.1 * rng.random((h, w))] * 3, -1) * 0.6
    Image.fromarray((image * 255).astype(np.uint8)).save(path)


def test_the_image_with_the_rare_class_is_picked_first_and_copies_are_not(odd_source_dir, tmp_path):
    folder = tmp_path / "target"
    folder.mkdir()
    for i in range(5):
        _plain(folder / f"plain_{i}.png", 50, 40, i)
    _write_scene(folder / "vessels.png", None, 50, 40, seed=7, mode="RGB", bright=0.6)
    for copy in ("vessels_copy1.png", "vessels_copy2.png"):
        shutil.copy(folder / "vessels.png", folder / copy)
    model, meta = load_model(odd_source_dir)
    data = SegmentationDataset([(p, None) for p in sorted(folder.glob("*.png"))], INFO)
    selection = select_images(model, data, budget=3, strategy="active", resize=meta.resize, seed=0)
    names = [data.stem(i) for i in selection.picks]
    assert names[0].startswith("vessels"), names
    assert sum(n.startswith("vessels") for n in names) == 1, names  # diversity: one of the three copies
    again = select_images(model, data, budget=3, strategy="active", resize=meta.resize, seed=0)
    assert again.order == selection.order  # deterministic for a seed
    assert select_images(model, data, 3, "first").picks == [0, 1, 2]


def test_active_novel_ranks_an_image_the_source_already_shows_behind_the_rest(odd_source_dir, tmp_path):
    target, source = tmp_path / "target", tmp_path / "source"
    target.mkdir(), source.mkdir()
    for i in range(3):
        _plain(target / f"plain_{i}.png", 50, 40, i)
    for seed in (7, 8):
        _write_scene(target / f"vessels_{seed}.png", None, 50, 40, seed=seed, mode="RGB", bright=0.6)
    shutil.copy(target / "vessels_7.png", source / "seen.png")  # the source has this very image
    model, meta = load_model(odd_source_dir)
    data = SegmentationDataset([(p, None) for p in sorted(target.glob("*.png"))], INFO)
    seen = [data.stem(i) for i in range(len(data))].index("vessels_7")
    far_from = SegmentationDataset([(source / "seen.png", None)], INFO)
    novel = select_images(model, data, 2, "active-novel", meta.resize, seed=0, far_from=far_from)
    active = select_images(model, data, 2, "active", meta.resize, seed=0)
    assert novel.order[-1] == seen and active.order.index(seen) < len(data) - 1, (active.order, novel.order)
    assert novel.order == select_images(model, data, 2, "active-novel", meta.resize, 0, far_from=far_from).order
    with pytest.raises(ConfigError, match="source's images"):
        select_images(model, data, 2, "active-novel", meta.resize)


def test_select_writes_the_ranking_a_contact_sheet_and_pre_labels(cli, odd_root, odd_source_dir, tmp_path):
    folder = tmp_path / "raw photos"
    shutil.copytree(odd_root / "chase" / "images", folder)
    result = cli("select", "--model", odd_source_dir, "--images", folder, "--budget", "2", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    ranking = json.loads((tmp_path / "out" / "selection.json").read_text())["ranking"]
    assert len(ranking) == 5 and [r["picked"] for r in ranking] == [True, True, False, False, False]
    assert Image.open(tmp_path / "out" / "contact_sheet.png").format == "PNG"
    for row in ranking[:2]:
        stem = row["file"].rsplit("/", 1)[1].rsplit(".", 1)[0]
        prelabel = np.asarray(Image.open(tmp_path / "out" / "prelabels" / f"{stem}.png"))
        assert prelabel.shape == np.asarray(Image.open(row["file"])).shape[:2] and prelabel.max() <= 1
    assert cli("select", "--model", odd_source_dir, "--images", folder, "--budget", "0").returncode == 2
    no_source = cli(
        "select", "--model", odd_source_dir, "--images", folder, "--budget", "1", "--strategy", "active-novel"
    )
    assert no_source.returncode == 2 and "--source-images" in no_source.stderr


def test_self_training_with_k_labels_reads_those_masks_and_no_other_target_mask(odd_root, odd_source_dir, tmp_path):
    """The chosen target masks train beside the source and the pseudo-labelled rest; every other
    train mask of the target is garbage, so opening any of them would fail the run."""
    root = tmp_path / "data"
    shutil.copytree(odd_root, root)
    splits = json.loads((root / "chase" / "splits.json").read_text())
    chase_train = splits["train"] + ["chase_04"]  # 3 train images: one labelled, two whose masks must stay shut
    splits = {"train": chase_train, "val": splits["val"], "test": []}
    (root / "chase" / "splits.json").write_text(json.dumps(splits))
    chosen = ["chase_01"]
    for stem in chase_train:
        if stem not in chosen:
            (root / "chase" / "masks" / f"{stem}.png").write_bytes(b"not a png: reading this mask is a bug")
    with pytest.raises(DatasetError):  # the trap is armed: a plain open of the split reads them
        open_split(root, "chase", "train")
    cfg_dict = {
        "data": {"root": str(root), "domain": "chase", "labelled_images": chosen},
        "model": {"pretrained": {"source": "checkpoint", "uri": str(odd_source_dir)}},
        "optim": {"epochs": 1, "batch_size": 2},
        "adapt": {"method": "self_training", "source_domain": "drive"},
        "output_dir": str(tmp_path / "run"),
    }
    from raysegment.config import parse_config
    from raysegment.models.io import ModelMeta

    meta = ModelMeta.model_validate_json((odd_source_dir / "model.json").read_text())
    cfg_dict["model"] = {**meta.model.model_dump(mode="json"), **cfg_dict["model"]}
    cfg = parse_config(cfg_dict)
    assert cfg.semi_supervised and cfg.judge == "labels"
    result = adapt(cfg, resume=False, progress=False, log=lambda line: None)
    assert "val_miou" in result.scores
