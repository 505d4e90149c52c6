"""Work after the answer: capture of request images into the traffic reservoir and shadow scoring
of a domain's candidate on production's requests. A bounded set of background tasks: beyond
`max_background_tasks` in flight new work is skipped (and counted), never queued, so a slow store
or a slow candidate never makes a request wait or memory grow."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import numpy as np

from raysegment.registry import ModelVersion
from raysegment.registry.traffic import TrafficStore
from raysegment.serving.config import ClosedLoop
from raysegment.serving.imaging import sniff
from raysegment.serving.metrics import ServingMetrics
from raysegment.serving.replica import ModelCalls

log = logging.getLogger(__name__)


class Mirror:
    def __init__(self, cfg: ClosedLoop, traffic: TrafficStore, models: ModelCalls, metrics: ServingMetrics) -> None:
        self.cfg, self.traffic, self.models, self.metrics = cfg, traffic, models, metrics
        self.tasks: set[asyncio.Task] = set()
        self.skipped = 0

    def captures(self, domain: str) -> bool:
        return domain in self.cfg.capture_domains or "*" in self.cfg.capture_domains

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        if len(self.tasks) >= self.cfg.max_background_tasks:
            work.close()
            self.skipped += 1
            return
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def capture(self, domain: str, body: bytes) -> None:
        """Keep `body` in `domain`'s reservoir, if that domain is captured."""
        if self.captures(domain):
            self._start(self._capture(domain, body))

    def shadow(self, candidate: ModelVersion, production: ModelVersion, image: np.ndarray) -> None:
        """Score `image` with the candidate and production (the answer came from production)."""
        self._start(self._shadow(candidate, production, image))

    async def _capture(self, domain: str, body: bytes) -> None:
        try:
            await asyncio.to_thread(self.traffic.capture, domain, body, (sniff(body) or "image/bin").split("/")[1])
        except Exception as exc:  # a failed capture must never reach the client: log and go on
            log.warning("capture for %s failed: %s: %s", domain, type(exc).__name__, exc)

    async def _shadow(self, candidate: ModelVersion, production: ModelVersion, image: np.ndarray) -> None:
        try:
            scores = await self.models.shadow_compare(candidate.ref, image, production.ref)
            await asyncio.to_thread(
                self.traffic.record_shadow, candidate.domain, candidate.version, production.version, [scores]
            )
            self.metrics.shadow_pairs.inc(tags={"domain": candidate.domain})
        except Exception as exc:  # the shadow never affects the answer
            log.warning("shadow of %s failed: %s: %s", candidate.ref, type(exc).__name__, exc)
