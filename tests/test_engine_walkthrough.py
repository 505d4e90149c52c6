import json
import subprocess
import sys

from PIL import Image

from raysegment.config import SYNTH_DOMAINS as DOMAINS


def test_quick_demo_writes_table_chart_and_overlays(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "raysegment.cli", "demo", "--engine-only", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "source-only" in result.stdout and "fine-tuned" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["table"]) == set(DOMAINS)
    assert all(0 <= row["source_only"] <= 1 for row in results["table"].values())
    assert Image.open(tmp_path / "miou_per_domain.png").format == "PNG"
    assert Image.open(tmp_path / "learning_curves.png").format == "PNG"
    assert {p.stem for p in (tmp_path / "overlays").glob("*.png")} == set(DOMAINS)
