"""`raysegment registry add`: a trained model folder becomes a version, judged like every other."""

from __future__ import annotations

import torch

from raysegment.models.io import save_model
from raysegment.models.rebuild import load_model
from raysegment.registry import Registry
from raysegment.registry.intake import lineage_fit


def test_a_model_folder_joins_a_registry_judged_against_production(cli, odd_root, odd_source_dir, tmp_path):
    registry = tmp_path / "registry"
    first = cli("registry", "add", odd_source_dir, "--domain", "drive", "--data", odd_root, "--registry", registry)
    assert first.returncode == 0, first.stderr
    assert "drive@1 registered, now production: no model to beat" in first.stdout
    entry = Registry(registry).resolve("drive@1")
    assert entry.lineage.judge == "labels" and entry.config["data"]["domain"] == "drive"
    assert set(entry.signatures) == {"own"}  # serving can measure drift from it

    model, meta = load_model(odd_source_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # a model that predicts nothing: it must not replace production
    broken = save_model(tmp_path / "broken", model, meta)
    worse = cli("registry", "add", broken, "--domain", "drive", "--data", odd_root, "--registry", registry)
    assert worse.returncode == 0, worse.stderr
    assert "drive@2 registered, now candidate: labels score" in worse.stdout and "does not beat" in worse.stdout
    assert Registry(registry).aliases("drive") == {"production": 1, "candidate": 2}
    decisions = [r.decision for r in Registry(registry).history("drive") if r.decision]
    assert [d.promoted for d in decisions] == [True, False]

    unjudged = cli("registry", "add", broken, "--domain", "chase", "--alias", "candidate", "--registry", registry)
    assert unjudged.returncode == 0 and "chase@1 registered as candidate (not judged)" in unjudged.stdout
    missing = cli("registry", "add", tmp_path / "nope", "--domain", "drive", "--registry", registry)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1


def test_a_version_is_estimated_with_the_confidence_fit_up_its_lineage(cli, odd_root, odd_source_dir, tmp_path):
    """A source registered with labelled val images keeps its confidence fit; a folder added to a
    domain without labels is estimated with the fit of that domain's production lineage."""
    registry = tmp_path / "registry"
    first = cli("registry", "add", odd_source_dir, "--domain", "drive", "--data", odd_root, "--registry", registry)
    assert first.returncode == 0, first.stderr
    reg = Registry(registry)
    fit = lineage_fit(reg, "drive@1")
    assert fit is not None and fit.classes == ["background", "vessel"] and len(fit.thresholds) == 2
    assert "estimated_miou" not in reg.resolve("drive@1").metrics  # its val is labelled: measured

    model, meta = load_model(odd_source_dir)
    reg.register("raw", model, meta, parent="drive@1")  # a delta: the fit is found up its base
    reg.set_alias("raw", 1, "production")
    assert lineage_fit(reg, "raw@1") == fit
    added = cli("registry", "add", odd_source_dir, "--domain", "raw", "--data", odd_root, "--registry", registry)
    assert added.returncode == 0, added.stderr
    metrics = Registry(registry).resolve("raw@2").metrics
    assert 0 <= metrics["estimated_miou_low"] <= metrics["estimated_miou"] <= metrics["estimated_miou_high"] <= 1
    assert {"estimated_iou.background", "estimated_iou.vessel"} <= set(metrics)
    assert lineage_fit(reg, "nowhere@1") is None
