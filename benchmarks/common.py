"""What several benchmarks share: the synthetic source model they adapt from."""

from __future__ import annotations

from pathlib import Path

from raysegment.config import parse_config
from raysegment.data import open_split
from raysegment.engine.epochs import fit
from raysegment.models.io import save_model
from raysegment.models.weights_import import bundled_efficientnet_lite0, import_weights


def synthetic_source(root: Path, out: Path, epochs: int) -> Path:
    """EfficientNet-Lite0 (bundled ImageNet weights) + FPN trained on `clear` of `root`, saved as
    `out/source_model` (reused when it is already there)."""
    source_dir = out / "source_model"
    if not (source_dir / "model.safetensors").is_file():
        weights, _, _ = import_weights(bundled_efficientnet_lite0(), "efficientnet_lite0", out / "lite0.safetensors")
        cfg = parse_config(
            {
                "data": {"root": str(root), "domain": "clear"},
                "model": {"pretrained": {"source": "file", "uri": str(weights)}},
                "optim": {"epochs": epochs, "batch_size": 8, "lr": 2e-3, "decay": 0.9},
                "output_dir": str(out / "source_run"),
            }
        )
        learner = fit(cfg, open_split(root, "clear", "train"), open_split(root, "clear", "val"), resume=False)
        save_model(source_dir, learner.selected_model(), learner.meta)
    return source_dir
