"""The main job end to end (what `make demo` runs), in quick mode on the session's cluster."""

import json

import numpy as np
from conftest import TINY_BACKBONE
from PIL import Image

from raysegment.apps.demo import run_demo
from raysegment.registry import Registry


def test_pipeline_trains_tunes_registers_and_serves(ray_cluster, tmp_path):
    lines = []
    summary = run_demo(
        tmp_path,
        images_per_domain=16,
        height=64,
        width=128,
        source_epochs=1,
        trials=2,
        trial_epochs=2,
        shots=4,
        targets=("night",),
        study_methods=("adabn",),
        study_shots=(2,),
        study_epochs=1,
        backbone=TINY_BACKBONE,
        log=lines.append,
    )
    assert set(summary["table"]) == {"clear", "night"}
    registry = Registry(tmp_path / "registry")
    assert registry.domains() == ["clear", "night"]
    assert summary["served"]["night"]["version"] in registry.versions("night")
    assert abs(sum(summary["served"]["night"]["shares"].values()) - 1) < 1e-6
    overlay = Image.open(tmp_path / "overlays" / "night.png")
    assert overlay.width == 128 and overlay.height > 64 and np.asarray(overlay).std() > 0  # + legend strip
    assert Image.open(tmp_path / "miou_per_domain.png").format == "PNG"
    assert json.loads((tmp_path / "results.json").read_text())["seconds"] > 0
    assert any("6/6" in line for line in lines)
    adapted = {row["domain"]: row for row in summary["adapt"]}
    assert set(adapted) == {"night"}
    assert list(adapted["night"]["test_miou"]) == ["source-only", "adabn", "2-shot", "oracle"]
    assert set(adapted["night"]["proxy"]) == {"source-only", "adabn"} and adapted["night"]["proxy_reason"]
    assert Image.open(tmp_path / "adapt" / "adapt_miou.png").format == "PNG"
