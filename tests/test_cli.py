"""The CLI as a user runs it: the entry point as a real subprocess (help, exit codes, one-line
errors); the heavier commands in-process through the same `main` (the `cli` fixture); real files."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_BACKBONE
from PIL import Image


def raysegment(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "raysegment.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["train"],
        ["evaluate"],
        ["predict"],
        ["demo"],
        ["loop"],
        ["traffic"],
        ["data", "synth"],
        ["weights", "import"],
    ],
)
def test_help_for_every_command(command):
    result = raysegment(*command, "--help")
    assert result.returncode == 0 and "usage: raysegment" in result.stdout


def test_bad_config_is_one_line_on_stderr_and_exit_2(cli, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data: {root: /nowhere}\noptim: {decay: 3}\n")
    result = cli("train", "--config", cfg)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "optim.decay" in result.stderr and "Traceback" not in result.stderr


def test_missing_dataset_is_one_line_error(cli, tmp_path):
    result = cli("data", "check", "--root", tmp_path, "--domain", "clear")
    assert result.returncode == 2 and "dataset.json is missing" in result.stderr and result.stderr.count("\n") == 1


def test_train_evaluate_predict_end_to_end(cli, tmp_path, s3_bucket):
    """Trained and evaluated on a bucket (the one-process engine reads the objects where they lie),
    evaluated on the folder as well: the same numbers."""
    from raysegment.storage import upload_tree

    data = tmp_path / "data"
    assert (
        cli(
            "data",
            "synth",
            "--out",
            data,
            "--domains",
            "clear",
            "fog",
            "--images",
            "8",
            "--height",
            "64",
            "--width",
            "128",
        ).returncode
        == 0
    )
    bucket = upload_tree(data, f"{s3_bucket}/data")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"data: {{root: '{bucket}', domain: clear}}\n"
        f"model: {{backbone: {TINY_BACKBONE}, decoder: unet, decoder_channels: 8}}\n"
        f"optim: {{epochs: 2, batch_size: 4}}\noutput_dir: {tmp_path / 'run'}\n"
    )
    train = cli("train", "--config", cfg, "--set", "optim.lr=0.004")
    assert train.returncode == 0, train.stderr
    assert "epoch 2/2" in train.stdout and "model written to" in train.stdout
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert meta["model"]["decoder"] == "unet" and "val_miou" in meta["metrics"]

    scores = []
    for root in (bucket, data):
        model = tmp_path / "run" / "model"
        evaluation = cli("evaluate", "--model", model, "--data", root, "--domain", "fog", "--split", "all",
                         "--mode", "slide", "--window", "64", "64")  # fmt: skip
        assert evaluation.returncode == 0, evaluation.stderr
        assert "fog/all: mIoU" in evaluation.stdout and "sidewalk" in evaluation.stdout
        scores.append(evaluation.stdout)
    assert scores[0] == scores[1]

    image = data / "fog" / "images" / "fog_00000.png"
    pred = cli("predict", "--model", tmp_path / "run" / "model", "--out", tmp_path / "pred", image)
    assert pred.returncode == 0, pred.stderr
    overlay = Image.open(tmp_path / "pred" / "fog_00000_overlay.png")
    mask = Image.open(tmp_path / "pred" / "fog_00000_mask.png")
    assert overlay.format == "PNG" and overlay.size[0] > 128 and mask.size == (128, 64)
    assert np.asarray(mask).max() < 7


def test_weights_import_cli(cli, tmp_path):
    from raysegment.models.weights_import import bundled_efficientnet_lite0

    result = cli(
        "weights",
        "import",
        bundled_efficientnet_lite0(),
        "--arch",
        "efficientnet_lite0",
        "--out",
        tmp_path / "w.safetensors",
    )
    assert (
        result.returncode == 0 and "296 tensors" in result.stdout and (tmp_path / "w.safetensors").stat().st_size > 10e6
    )
    bad = cli(
        "weights", "import", bundled_efficientnet_lite0(), "--arch", "resnet18", "--out", tmp_path / "x.safetensors"
    )
    assert bad.returncode == 2 and "cannot map weights onto resnet18" in bad.stderr


def test_data_check_counts_images_and_labelled_ones(cli, odd_root):
    result = cli("data", "check", "--root", odd_root, "--domain", "raw")
    assert result.returncode == 0, result.stderr
    assert "4 images, 0 labelled" in result.stdout
    assert "5 images, 5 labelled" in cli("data", "check", "--root", odd_root, "--domain", "chase").stdout


def test_data_check_reads_every_pair_in_a_bucket(cli, poisoned_target, s3_bucket):
    from raysegment.storage import upload_tree

    uri = upload_tree(poisoned_target, f"{s3_bucket}/poisoned")
    good = cli("data", "check", "--root", uri, "--domain", "drive", "--split", "all")
    assert good.returncode == 0, good.stderr
    assert "7 images, 7 labelled" in good.stdout and "7 pairs read from object storage" in good.stdout
    bad = cli("data", "check", "--root", uri, "--domain", "chase")
    assert bad.returncode == 2 and "chase/masks/chase_00.png cannot be decoded" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.fixture
def poisoned_target(odd_root, tmp_path):
    """A copy of `odd_root` whose `chase` masks are garbage: any code that opens one fails loudly."""
    import shutil

    root = tmp_path / "poisoned"
    shutil.copytree(odd_root, root)
    masks = sorted((root / "chase" / "masks").glob("*.png"))
    for mask in masks:
        mask.write_bytes(b"opened a target mask")
    return root


def test_unlabelled_train_and_adapt_never_open_a_target_mask(cli, poisoned_target, odd_source_dir, tmp_path):
    cfg = tmp_path / "tent.yaml"
    cfg.write_text(
        f"data: {{root: {poisoned_target}, domain: chase}}\n"
        f"model: {{backbone: {TINY_BACKBONE}, decoder: fpn, decoder_channels: 8, "
        f"pretrained: {{source: checkpoint, uri: {odd_source_dir}}}}}\n"
        f"optim: {{epochs: 1, batch_size: 2}}\nadapt: {{method: tent}}\noutput_dir: {tmp_path / 'tent'}\n"
    )
    train = cli("train", "--config", cfg, "--unlabelled")
    assert train.returncode == 0, train.stderr
    assert "proxy score" in train.stdout and "no target labels read" in train.stdout
    study = cli(
        "compare",
        "--source",
        odd_source_dir,
        "--data",
        poisoned_target,
        "--source-domain",
        "drive",
        "--targets",
        "chase",
        "--methods",
        "adabn",
        "tent",
        "self_training",
        "--epochs",
        "1",
        "--unlabelled",
        "--batch-size",
        "2",
        "--out",
        tmp_path / "study",
    )
    assert study.returncode == 0, study.stderr
    assert "is now" not in study.stderr
    assert "no target labels read" in study.stdout and "judge pick:" in study.stdout
    assert "test mIoU" not in study.stdout  # no fake mIoU column
    results = json.loads((tmp_path / "study" / "results.json").read_text())
    assert results[0]["test_miou"] == {} and set(results[0]["proxy"]) == {
        "source-only",
        "adabn",
        "tent",
        "self_training",
    }
    # Without --unlabelled the same study reads the labels, and the garbage stops it with one line.
    labelled = cli(
        "compare",
        "--source",
        odd_source_dir,
        "--data",
        poisoned_target,
        "--source-domain",
        "drive",
        "--targets",
        "chase",
        "--methods",
        "adabn",
        "--shots",
        "--no-oracle",
        "--out",
        tmp_path / "s2",
    )
    assert labelled.returncode == 2 and "unreadable" in labelled.stderr
    assert cli("adapt", "--source", odd_source_dir).returncode == 2  # the old name is gone


def test_traffic_ls_and_purge(cli, tmp_path):
    from raysegment.registry.traffic import TrafficStore

    store = TrafficStore(str(tmp_path), max_images=4)
    for i in range(6):
        store.capture("fog", b"x" * (i + 1), "png")
    store.capture("new", b"odd", "jpeg")
    listing = cli("traffic", "ls", "--registry", tmp_path)
    assert listing.returncode == 0
    assert "fog: 4 images kept of 6 seen" in listing.stdout and "new: 1 images kept of 1 seen" in listing.stdout
    assert cli("traffic", "purge", "fog", "--registry", tmp_path, "--older-than", 3600).stdout.strip() == (
        "fog: removed 0 captured images"
    )
    assert cli("traffic", "purge", "fog", "--registry", tmp_path).stdout.strip() == "fog: removed 4 captured images"
    assert "fog: 0 images kept of 0 seen" in cli("traffic", "ls", "fog", "--registry", tmp_path).stdout
    bad = cli("traffic", "purge", "../etc", "--registry", tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "invalid domain name" in bad.stderr


def test_loop_refusals_are_one_line_errors(cli, tmp_path):
    missing = cli("loop", "fog", "--registry", tmp_path)
    assert missing.returncode == 2 and "no version" in missing.stderr and missing.stderr.count("\n") == 1
    bad = cli("loop", "fog", "--registry", tmp_path, "--set", "shadow_images=-1")
    assert bad.returncode == 2 and "shadow_images" in bad.stderr
    spec = tmp_path / "loop.yaml"
    spec.write_text("job: loop\nregistry: reg\n")
    assert "targets" in cli("loop", "--spec", spec).stderr
