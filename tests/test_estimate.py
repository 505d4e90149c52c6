"""Target mIoU estimated without target labels (`engine.estimate`), on generated data whose true
mIoU the test labels give."""

from __future__ import annotations

import shutil

import torch

from raysegment.config import EvalConfig
from raysegment.data import open_split
from raysegment.engine.estimate import estimate_miou, fit_confidence
from raysegment.engine.evaluate import evaluate
from raysegment.models.rebuild import load_model


def test_the_estimate_tracks_the_true_miou_without_opening_a_target_mask(synth_root, source_model_dir, tmp_path):
    model, meta = load_model(source_model_dir)
    fit = fit_confidence(model, open_split(synth_root, "clear", "val"), meta.resize)
    assert len(fit.thresholds) == len(fit.classes) and all(0 <= t < 1 for t in fit.thresholds)
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    for domain in ("clear", "night"):  # the target masks are garbage: opening one fails the estimate
        truth = evaluate(model, open_split(synth_root, domain, "all"), EvalConfig(), resize=meta.resize).miou
        for mask in (root / domain / "masks").glob("*.png"):
            mask.write_bytes(b"garbage")
        found = estimate_miou(model, fit, open_split(root, domain, "all", unlabelled=True), meta.resize)
        assert found.low <= found.miou <= found.high and found.images == 12
        assert abs(found.miou - truth) < 0.2, (domain, found.miou, truth)
        assert set(found.per_class) == set(fit.classes)
    # A model that predicts one class everywhere is estimated far below the trained one.
    constant = load_model(source_model_dir)[0]
    with torch.no_grad():
        constant.head.weight.zero_()
        constant.head.bias.copy_(torch.arange(len(fit.classes), dtype=torch.float32))
    worse = estimate_miou(constant, fit, open_split(synth_root, "clear", "all", unlabelled=True), meta.resize)
    good = estimate_miou(model, fit, open_split(synth_root, "clear", "all", unlabelled=True), meta.resize)
    assert worse.miou < good.miou - 0.2
