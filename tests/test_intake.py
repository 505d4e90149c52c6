"""`raysegment registry add`: a trained model folder becomes a version, judged like every other."""

from __future__ import annotations

import torch

from raysegment.models import load_model, save_model
from raysegment.registry import Registry


def test_a_model_folder_joins_a_registry_judged_against_production(cli, odd_root, odd_source_dir, tmp_path):
    registry = tmp_path / "registry"
    first = cli("registry", "add", odd_source_dir, "--domain", "drive", "--data", odd_root, "--registry", registry)
    assert first.returncode == 0, first.stderr
    assert "drive@1 registered, now production: no model to beat" in first.stdout
    entry = Registry(registry).resolve("drive@1")
    assert entry.manifest.lineage.judge == "labels" and entry.manifest.config["data"]["domain"] == "drive"
    assert set(entry.manifest.signatures) == {"own"}  # serving can measure drift from it

    model, meta = load_model(odd_source_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # a model that predicts nothing: it must not replace production
    broken = save_model(tmp_path / "broken", model, meta)
    worse = cli("registry", "add", broken, "--domain", "drive", "--data", odd_root, "--registry", registry)
    assert worse.returncode == 0, worse.stderr
    assert "drive@2 registered, now candidate: labels score" in worse.stdout and "does not beat" in worse.stdout
    assert Registry(registry).aliases("drive") == {"production": 1, "candidate": 2}
    decisions = [r["decision"] for r in Registry(registry).history("drive") if "decision" in r]
    assert [d["promoted"] for d in decisions] == [True, False]

    unjudged = cli("registry", "add", broken, "--domain", "chase", "--alias", "candidate", "--registry", registry)
    assert unjudged.returncode == 0 and "chase@1 registered as candidate (not judged)" in unjudged.stdout
    missing = cli("registry", "add", tmp_path / "nope", "--domain", "drive", "--registry", registry)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
