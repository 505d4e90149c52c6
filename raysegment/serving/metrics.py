"""What operators watch, as Ray metrics (`ray.serve.metrics`: Serve adds the deployment, replica and
application tags), so the Ray dashboard, Prometheus and Grafana (`deploy/grafana-dashboard.json`)
show them. Tag values are only ever names the registry knows (a stranger's path never becomes a
label: unknown domains are counted as "-")."""

from __future__ import annotations

from typing import Any

from ray.serve import metrics as serve_metrics

# Ray annotates tag_keys as a one-element tuple; any tuple of names is what it takes.
Counter: Any = serve_metrics.Counter
Gauge: Any = serve_metrics.Gauge
Histogram: Any = serve_metrics.Histogram

LATENCY_MS = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0]
UNKNOWN = "-"


class ServingMetrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "raysegment_requests", "segment requests answered, by domain and status", ("domain", "status")
        )
        self.latency = Histogram(
            "raysegment_request_latency_ms", "segment request latency (ms), by domain", LATENCY_MS, ("domain",)
        )
        self.rejected = Counter("raysegment_uploads_rejected", "uploads refused, by reason", ("reason",))
        self.drift = Gauge(
            "raysegment_drift_distance", "distance of recent traffic from the training images", ("domain",)
        )
        self.drift_threshold = Gauge("raysegment_drift_threshold", "drift distance that counts as drifted", ("domain",))
        self.routes = Counter(
            "raysegment_routing_decisions", "requests routed without a domain, by outcome", ("domain", "unknown")
        )
        self.shadow_pairs = Counter(
            "raysegment_shadow_pairs", "mirrored requests scored by candidate and production", ("domain",)
        )
        self.decisions = Counter(
            "raysegment_promotion_decisions", "promotion decisions made over HTTP", ("domain", "promoted")
        )

    def request(self, domain: str | None, status: int, seconds: float) -> None:
        name = domain or UNKNOWN
        self.requests.inc(tags={"domain": name, "status": str(status)})
        self.latency.observe(seconds * 1000, tags={"domain": name})
