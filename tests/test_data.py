import hashlib
import json
import shutil

import pytest
import torch
from PIL import Image

from raysegment.data import EpochSampler, list_domains, open_split, pad_collate, synth
from raysegment.errors import DatasetError


def _digest(folder):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*.png")))).hexdigest()


def test_synth_is_deterministic_per_seed(tmp_path):
    a = synth.generate(tmp_path / "a", domains=("clear", "night"), images_per_domain=3, height=64, width=96, seed=1)
    b = synth.generate(tmp_path / "b", domains=("clear", "night"), images_per_domain=3, height=64, width=96, seed=1)
    c = synth.generate(tmp_path / "c", domains=("clear", "night"), images_per_domain=3, height=64, width=96, seed=2)
    assert _digest(a) == _digest(b) != _digest(c)


def test_synth_scenes_hold_the_street_classes(synth_root):
    data = open_split(synth_root, "clear", "all")
    seen = torch.unique(torch.cat([data[i][1].flatten() for i in range(len(data))]))
    assert len(synth.CLASSES) >= 6
    assert {0, 1, 2, 3, 4, 5}.issubset(set(seen.tolist()))  # road..vehicle always; people most of the time
    assert list_domains(synth_root) == ["clear", "fog", "night"]


def test_targets_share_labels_but_shift_appearance(synth_root):
    clear = open_split(synth_root, "clear", "all")
    night = open_split(synth_root, "night", "all")
    fog = open_split(synth_root, "fog", "all")

    def mean(d):
        return torch.stack([d[i][0].float().mean() for i in range(len(d))]).mean()

    def contrast(d):
        return torch.stack([d[i][0].float().std() for i in range(len(d))]).mean()

    assert mean(night) < 0.5 * mean(clear)  # night is dark
    assert contrast(fog) < 0.8 * contrast(clear)  # fog washes contrast out


def test_splits_are_disjoint_and_cover_the_domain(synth_root):
    splits = json.loads((synth_root / "clear" / "splits.json").read_text())
    stems = splits["train"] + splits["val"] + splits["test"]
    assert len(stems) == len(set(stems)) == 12
    assert len(open_split(synth_root, "clear", "train").labelled(3)) == 3


@pytest.fixture
def domain_copy(synth_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(synth_root, root, ignore=shutil.ignore_patterns("fog", "night"))
    return root


def test_an_image_without_mask_is_kept_unlabelled(domain_copy):
    (domain_copy / "clear" / "masks" / "clear_00001.png").unlink()
    data = open_split(domain_copy, "clear", "train")
    assert len(data) == 7 and data.labelled_count == 6
    unlabelled = [i for i, (_, mask) in enumerate(data.samples) if mask is None]
    assert [data.samples[i][0].name for i in unlabelled] == ["clear_00001.png"]
    assert (data[unlabelled[0]][1] == 255).all()  # an all-ignore mask, made in memory
    assert len(data.labelled()) == 6 and len(data.labelled(2)) == 2


def test_a_domain_without_masks_folder_is_unlabelled(domain_copy):
    shutil.rmtree(domain_copy / "clear" / "masks")
    data = open_split(domain_copy, "clear", "train")
    assert len(data) == 7 and data.labelled_count == 0
    with pytest.raises(DatasetError, match="none of the 7 images .* has a mask.*label-free method"):
        data.labelled()


def test_unlabelled_reading_never_looks_at_masks(domain_copy):
    # Garbage masks would fail validation if anything opened them.
    for mask in (domain_copy / "clear" / "masks").glob("*.png"):
        mask.write_bytes(b"not a png")
    data = open_split(domain_copy, "clear", "train", unlabelled=True)
    assert data.labelled_count == 0 and data[0][0].shape == (3, 64, 128)
    with pytest.raises(DatasetError, match="unreadable"):
        open_split(domain_copy, "clear", "train")


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16"])
def test_grayscale_palette_rgba_and_16_bit_images_read_as_8_bit_rgb(tmp_path, mode):
    import numpy as np

    from raysegment.data.dataset import read_image

    values = np.arange(35, dtype=np.uint8).reshape(5, 7) * 7
    image = Image.fromarray(values.astype(np.uint16) * 257) if mode == "I;16" else Image.fromarray(values).convert(mode)
    image.save(tmp_path / "x.png")
    tensor = read_image(tmp_path / "x.png")
    assert tensor.shape == (3, 5, 7) and tensor.dtype == torch.uint8
    if mode in ("L", "LA", "I;16", "RGBA"):
        assert torch.equal(tensor[0], torch.from_numpy(values)) and torch.equal(tensor[0], tensor[2])


def test_size_mismatch_names_both_files(domain_copy):
    Image.new("L", (10, 10)).save(domain_copy / "clear" / "masks" / "clear_00002.png")
    with pytest.raises(DatasetError, match=r"masks/clear_00002.png is 10x10 but .*images/clear_00002.png is 128x64"):
        open_split(domain_copy, "clear", "train")


def test_labels_outside_the_classes_are_rejected(domain_copy):
    Image.new("L", (128, 64), color=42).save(domain_copy / "clear" / "masks" / "clear_00003.png")
    with pytest.raises(DatasetError, match=r"label values \[42\] outside \[0, 7\)"):
        open_split(domain_copy, "clear", "train")


def test_ignore_label_is_allowed(domain_copy):
    Image.new("L", (128, 64), color=255).save(domain_copy / "clear" / "masks" / "clear_00003.png")
    assert len(open_split(domain_copy, "clear", "train")) == 7


def test_unreadable_image_is_reported(domain_copy):
    (domain_copy / "clear" / "images" / "clear_00000.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="clear_00000.png is unreadable"):
        open_split(domain_copy, "clear", "train")


def test_empty_split_and_unknown_domain(domain_copy):
    splits = json.loads((domain_copy / "clear" / "splits.json").read_text())
    splits["val"] = []
    (domain_copy / "clear" / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(DatasetError, match="split 'val' .* is empty"):
        open_split(domain_copy, "clear", "val")
    with pytest.raises(DatasetError, match=r"domain 'snow' not found \(domains: clear\)"):
        open_split(domain_copy, "snow", "train")


def test_missing_dataset_json_says_how_to_make_one(tmp_path):
    (tmp_path / "d" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="dataset.json is missing"):
        open_split(tmp_path, "d", "train")


def _write_pair(image_path, mask_path, value=0):
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 16), color=(10, 20, 30)).save(image_path)
    Image.new("L", (32, 16), color=value).save(mask_path)


def _write_cityscapes(root) -> None:
    """Three labelled frames (car everywhere) in two cities of the official layout."""
    for city, n in (("aachen", 2), ("bremen", 1)):
        for i in range(n):
            stem = f"{city}_000000_00000{i}"
            _write_pair(
                root / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png",
                root / "gtFine" / "train" / city / f"{stem}_gtFine_labelTrainIds.png",
                value=13,
            )


def test_cityscapes_layout(tmp_path):
    _write_cityscapes(tmp_path)
    data = open_split(tmp_path, "cityscapes", "train", layout="cityscapes")
    assert len(data) == 3 and data.info.num_classes == 19 and data.info.classes[13] == "car"
    image, mask = data[0]
    assert image.shape == (3, 16, 32) and image.dtype == torch.uint8 and int(mask.unique()) == 13


def test_acdc_layout_uses_the_condition_as_domain(tmp_path):
    _write_pair(
        tmp_path / "rgb_anon" / "fog" / "train" / "GOPR0475" / "GOPR0475_frame_000041_rgb_anon.png",
        tmp_path / "gt" / "fog" / "train" / "GOPR0475" / "GOPR0475_frame_000041_gt_labelTrainIds.png",
    )
    assert len(open_split(tmp_path, "fog", "train", layout="acdc")) == 1
    with pytest.raises(DatasetError, match="night/train is missing"):
        open_split(tmp_path, "night", "train", layout="acdc")


def test_pad_collate_pads_masks_with_ignore():
    a = (torch.ones(3, 4, 6, dtype=torch.uint8), torch.zeros(4, 6, dtype=torch.long))
    b = (torch.ones(3, 8, 5, dtype=torch.uint8), torch.ones(8, 5, dtype=torch.long))
    images, masks, sizes = pad_collate([a, b], ignore_index=255)
    assert images.shape == (2, 3, 8, 6) and masks.shape == (2, 8, 6) and sizes.tolist() == [[4, 6], [8, 5]]
    assert (masks[0, 4:] == 255).all() and (masks[1, :, 5] == 255).all() and (masks[0, :4, :6] == 0).all()


def test_epoch_sampler_shards_are_disjoint_and_reproducible():
    shards = [list(EpochSampler(10, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(10))
    s = EpochSampler(10, seed=3)
    s.set_epoch(1)
    first = list(s)
    s.set_epoch(2)
    assert list(s) != first
    s.set_epoch(1)
    assert list(s) == first


# ---- the same layouts in a bucket of the loopback S3 server (data.files) ------------------------
def files_name(location) -> str:
    return str(location).rsplit("/", 1)[-1]


def _items(data):
    return [(files_name(i), m is not None) for i, m in data.samples]


def test_a_bucket_reads_like_the_folder(odd_root, s3_bucket):
    from raysegment.storage import upload_tree

    uri = upload_tree(odd_root, f"{s3_bucket}/odd")
    assert list_domains(uri) == list_domains(odd_root) == ["chase", "drive", "raw"]
    for domain, split in [("drive", "train"), ("chase", "val"), ("raw", "train")]:
        local, remote = open_split(odd_root, domain, split), open_split(uri, domain, split)
        assert _items(remote) == _items(local) and remote.info == local.info
        assert all(str(i).startswith(f"{uri}/{domain}/images/") for i, _ in remote.samples)
        for (image, mask), (remote_image, remote_mask) in zip(local, remote):
            assert torch.equal(image, remote_image) and torch.equal(mask, remote_mask)
    assert open_split(uri, "raw", "train").labelled_count == 0  # no masks folder: unlabelled
    unlabelled = open_split(uri, "drive", "train", unlabelled=True)
    assert unlabelled.labelled_count == 0 and all(m is None for _, m in unlabelled.samples)


def test_a_bad_pair_in_a_bucket_is_refused_when_read(domain_copy, s3_bucket):
    from raysegment.storage import upload_tree

    Image.new("L", (10, 10)).save(domain_copy / "clear" / "masks" / "clear_00002.png")
    uri = upload_tree(domain_copy, f"{s3_bucket}/bad")
    data = open_split(uri, "clear", "train")  # one listing: the pair is checked as it is decoded
    index = [files_name(i) for i, _ in data.samples].index("clear_00002.png")
    with pytest.raises(DatasetError, match=r"masks/clear_00002.png is 10x10 but .*images/clear_00002.png is 128x64"):
        data[index]
    with pytest.raises(DatasetError, match=r"domain 'snow' not found \(domains: clear\)"):
        open_split(uri, "snow", "train")
    with pytest.raises(DatasetError, match="does not exist"):
        open_split(f"{s3_bucket}/nothing-here", "clear", "train")


def test_cityscapes_layout_in_a_bucket(tmp_path, s3_bucket):
    from raysegment.storage import upload_tree

    _write_cityscapes(tmp_path)
    uri = upload_tree(tmp_path, f"{s3_bucket}/cityscapes")
    data = open_split(uri, "cityscapes", "train", layout="cityscapes")
    assert len(data) == 3 and data.labelled_count == 3
    assert str(data.samples[2][1]).endswith("gtFine/train/bremen/bremen_000000_000000_gtFine_labelTrainIds.png")
    image, mask = data[2]
    assert image.shape == (3, 16, 32) and int(mask.unique()) == 13
