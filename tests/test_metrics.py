"""The Grafana dashboard (`deploy/grafana-dashboard.json`) draws exactly the metrics the gateway
exports (`serving.metrics`), under the names Ray's Prometheus exporter gives them. That they are
exported with the right labels is tested on the live cluster in test_serving.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"


def exported_names() -> set[str]:
    from raysegment.serving.metrics import ServingMetrics

    names = set()
    for instrument in vars(ServingMetrics()).values():
        kind = type(instrument).__name__
        suffix = {"Counter": "_total", "Histogram": "_bucket", "Gauge": ""}[kind]
        names.add(f"ray_{instrument._name}{suffix}")
    return names


def test_every_exported_metric_is_on_the_dashboard_and_nothing_else_is():
    expressions = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    drawn = {name for e in expressions for name in re.findall(r"ray_raysegment_\w+", e)}
    assert drawn == exported_names()
