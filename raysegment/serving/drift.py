"""Is a domain drifting? How far the production model's recent images (on the replica that answers)
are from its training images: the symmetric KL of their BatchNorm-input statistics
(`engine.signature`), against `drift_factor` times the version's radius."""

from __future__ import annotations

import asyncio

from raysegment.engine.signature import Signature, distance
from raysegment.serving.deps import Services
from raysegment.serving.errors import ServingError
from raysegment.serving.schemas import Drift


async def drift_report(svc: Services, domain: str) -> Drift:
    loop = svc.cfg.closed_loop
    try:
        entry = await svc.catalog.entry(domain)
        trained = await svc.catalog.training_signature(entry)
    except ServingError as exc:
        return Drift(drifted=None, detail=exc.detail[:200])
    if trained is None or trained.radius is None:
        return Drift(drifted=None, detail=f"{entry.ref} was registered without a signature of its images")
    threshold = loop.drift_factor * trained.radius
    if not loop.drift_window:
        return Drift(drifted=None, detail="drift tracking is off (closed_loop.drift_window: 0)")
    try:
        recent = await asyncio.wait_for(svc.models.drift(entry.ref), svc.cfg.limits.body_timeout_s)
    except (TimeoutError, ServingError):
        return Drift(drifted=None, detail="no model replica answered")
    if recent is None:
        return Drift(drifted=False, recent_images=0, threshold=round(threshold, 6), version=entry.version)
    seen = Signature.from_bytes(recent)
    gap = distance(seen, trained)
    svc.metrics.drift.set(gap, tags={"domain": domain})
    svc.metrics.drift_threshold.set(threshold, tags={"domain": domain})
    return Drift(
        drifted=gap > threshold,
        distance=round(gap, 6),
        recent_images=seen.images,
        threshold=round(threshold, 6),
        version=entry.version,
    )
