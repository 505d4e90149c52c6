"""`raysegment adapt`: the per-domain comparison table, its files and its CLI."""

import json
import math
import subprocess
import sys

from PIL import Image

from raysegment.study import TargetReport, format_table, run_study


def test_gap_closed_is_the_share_of_source_to_oracle():
    report = TargetReport("fog", source_only=0.4, oracle=0.8, methods={"adabn": 0.6})
    assert math.isclose(report.gap_closed(0.6), 0.5) and math.isclose(report.gap_closed(0.3), -0.25)
    assert math.isnan(TargetReport("x", 0.5, None).gap_closed(0.6))
    assert math.isnan(TargetReport("x", 0.5, 0.5).gap_closed(0.6))


def test_study_writes_table_results_and_chart(synth_root, source_model_dir, tmp_path):
    lines = []
    reports = run_study(source_model_dir, synth_root, "clear", ["night"], methods=("adabn",), shots=(2,),
                        out=tmp_path, epochs={"finetune": 2}, log=lines.append)
    (night,) = reports
    assert set(night.methods) == {"adabn"} and set(night.few_shot) == {2} and night.oracle is not None
    assert set(night.proxy) == set(night.val_miou) == {"source-only", "adabn"}
    assert night.methods["adabn"] > night.source_only  # night is a photometric shift
    results = json.loads((tmp_path / "results.json").read_text())
    assert results[0]["gap_closed"]["adabn"] == night.gap_closed(night.methods["adabn"])
    assert results[0]["proxy_choice"] in ("source-only", "adabn")
    assert Image.open(tmp_path / "adapt_miou.png").format == "PNG"
    table = format_table(reports)
    assert "mean gap closed by adabn" in table and "proxy picks what val labels pick" in table
    assert any("adabn" in line for line in lines)


def test_adapt_cli_reports_a_missing_source_in_one_line(tmp_path, synth_root):
    result = subprocess.run([sys.executable, "-m", "raysegment.cli", "adapt", "--source", str(tmp_path / "nope"),
                             "--data", str(synth_root), "--source-domain", "clear", "--targets", "fog"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "nope" in result.stderr
