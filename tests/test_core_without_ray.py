"""The core (data, augment, models, engine) runs in a plain process: Ray is a shell around it."""

import subprocess
import sys

from conftest import TINY_BACKBONE

SCRIPT = f"""
import sys
from raysegment.config import parse_config
from raysegment.data import open_split
from raysegment.engine.epochs import fit
from raysegment.engine.evaluate import evaluate
import raysegment.augment, raysegment.models, raysegment.viz, raysegment.apps.engine_walkthrough
cfg = parse_config({{"data": {{"root": sys.argv[1]}}, "model": {{"backbone": "{TINY_BACKBONE}", "decoder_channels": 8}},
                    "optim": {{"epochs": 1, "batch_size": 4}}, "output_dir": sys.argv[2]}})
learner = fit(cfg, open_split(sys.argv[1], "clear", "train"), resume=False, log=lambda s: None)
evaluate(learner.method.model, open_split(sys.argv[1], "clear", "val"), cfg.eval)
loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
print("RAY_MODULES", loaded)
"""


def test_core_imports_and_trains_without_ray(synth_root, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(synth_root), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "RAY_MODULES []" in result.stdout
