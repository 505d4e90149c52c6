"""Shared fixtures: one small synthetic dataset, tiny timm backbones, the bundled ImageNet weights."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the hub from tests

import pytest
import torch

from raysegment.config import parse_config
from raysegment.data import synth

torch.set_num_threads(2)

TINY_BACKBONE = "test_efficientnet"  # timm's 82k-parameter test net: 5 stages, dotted module names


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (AMP/channels-last paths); none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """Three 64x128 domains, 12 images each (train 7 / val 2 / test 3)."""
    return synth.generate(tmp_path_factory.mktemp("synth"), domains=("clear", "fog", "night"),
                          images_per_domain=12, height=64, width=128, seed=0)


@pytest.fixture(scope="session")
def imagenet_weights(tmp_path_factory):
    from raysegment.models.weights_import import bundled_efficientnet_lite0, import_weights

    path, _, _ = import_weights(bundled_efficientnet_lite0(), "efficientnet_lite0",
                                tmp_path_factory.mktemp("weights") / "effl0.safetensors")
    return path


@pytest.fixture
def tiny_config(synth_root, tmp_path):
    """A RunConfig on the synthetic data with a tiny backbone; override with `.model_copy`."""
    def make(**sections):
        base = {"data": {"root": str(synth_root), "domain": "clear"},
                "model": {"backbone": TINY_BACKBONE, "decoder": "fpn", "decoder_channels": 16},
                "optim": {"epochs": 2, "batch_size": 4, "lr": 3e-3},
                "augment": {"jitter": 0.1},
                "output_dir": str(tmp_path / "run")}
        for key, value in sections.items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
        return parse_config(base, "test")
    return make
