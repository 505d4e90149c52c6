"""The main job end to end (what `make demo` runs), in quick mode on the session's two-node cluster,
with nothing durable on a shared disk: registry and every Ray checkpoint in the S3 server."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE
from PIL import Image

from raysegment.apps.demo import DemoSettings, run_demo
from raysegment.augment import to_float
from raysegment.config import EvalConfig
from raysegment.data import open_split
from raysegment.distributed.train import SHARED_FS_ENV
from raysegment.engine.evaluate import evaluate
from raysegment.registry import Registry
from raysegment.serving.imaging import class_shares, decode_upload


def test_pipeline_trains_tunes_registers_and_serves_with_no_shared_disk(ray_cluster, tmp_path, s3_bucket, monkeypatch):
    monkeypatch.delenv(SHARED_FS_ENV)  # local paths for Ray storage or the registry would now be refused
    monkeypatch.setenv("RAYSEGMENT_CACHE", str(tmp_path / "cache"))
    storage = f"{s3_bucket}/demo"
    lines = []
    settings = DemoSettings(
        images_per_domain=16,
        height=64,
        width=128,
        source_epochs=1,
        trials=1,
        trial_epochs=2,
        shots=4,
        targets=("night",),
        study_methods=("adabn",),
        study_shots=(2,),
        study_epochs=1,
        backbone=TINY_BACKBONE,
    )
    summary = run_demo(tmp_path, settings, storage=storage, log=lines.append)
    assert set(summary["table"]) == {"clear", "night"}
    registry = Registry(f"{storage}/registry")
    assert registry.domains() == ["clear", "night"]
    served = summary["served"]["night"]
    assert served["version"] in registry.versions("night")
    assert abs(sum(served["shares"].values()) - 1) < 1e-6
    # The replica's answer is the registered model's own answer on that image (same bytes from S3).
    model, meta, _ = registry.load(f"night@{served['version']}")
    body = (tmp_path / "data" / "night" / "images").joinpath(served["image"]).read_bytes()
    with torch.no_grad():
        mask = model(to_float(decode_upload(body))[None]).argmax(1)[0]
    assert served["shares"] == pytest.approx(class_shares(mask, meta.classes), abs=1e-3)
    # Nothing durable on local disk: no Ray checkpoint, no registry folder under the run's folder.
    assert not list(tmp_path.rglob("checkpoint_*")) and not (tmp_path / "registry").exists()
    overlay = Image.open(tmp_path / "overlays" / "night.png")
    assert overlay.width == 128 and overlay.height > 64 and np.asarray(overlay).std() > 0  # + legend strip
    assert Image.open(tmp_path / "miou_per_domain.png").format == "PNG"
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["table"] == summary["table"] and written["served"] == summary["served"]
    night = summary["table"]["night"]
    winner, _, _ = registry.load(f"night@{night['version']}")  # the table scores the registered winner itself
    test = open_split(tmp_path / "data", "night", "test")
    assert night["tuned"] == pytest.approx(evaluate(winner, test, EvalConfig()).miou)
    adapted = {row["domain"]: row for row in summary["adapt"]}
    assert set(adapted) == {"night"}
    assert list(adapted["night"]["test_miou"]) == ["source-only", "adabn", "2-shot", "oracle"]
    assert set(adapted["night"]["proxy"]) == {"source-only", "adabn"} and adapted["night"]["proxy_reason"]
    assert Image.open(tmp_path / "adapt" / "adapt_miou.png").format == "PNG"
    # The closed loop's ending: a request without a domain, the loop's turn on night with its record.
    shown = summary["closed_loop"]
    assert shown["route"]["domain"] == "night" and not shown["route"]["unknown"]
    assert shown["loop"]["reason"] and shown["answered_by"]
    steps = [r.loop.step for r in registry.history("night") if r.loop]
    assert steps[:2] == ["start", "search"]
    if shown["loop"]["promoted"]:
        assert registry.aliases("night")["production"] == shown["loop"]["candidate"]
    else:  # refused before registering, or retired: production did not move to it
        assert shown["loop"]["candidate"] is None or "candidate" not in registry.aliases("night")
    assert any("loop on night: " in line and shown["loop"]["reason"] in line for line in lines)
