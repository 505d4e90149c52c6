"""The gateway's registry reads (`serving.catalog`): off the event loop, behind one cache. The app
runs in-process here (FastAPI over ASGI, no Ray Serve) on a real folder registry whose store can be
held shut, as a slow S3 or NFS mount holds a read."""

from __future__ import annotations

import asyncio
import threading

import httpx
import torch
from conftest import TINY_BACKBONE

from raysegment.config import ModelConfig
from raysegment.models.io import ModelMeta
from raysegment.models.segmenter import build_segmenter
from raysegment.registry import Registry
from raysegment.serving.catalog import TTLCache
from raysegment.serving.config import ServeConfig

META = ModelMeta(
    model=ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8),
    num_classes=2,
    classes=["a", "b"],
    palette=[(0, 0, 0), (255, 0, 0)],
)


class HeldStore:
    """The registry's own store, whose reads wait while `held` is set (bounded: a regression that
    blocks the event loop shows as a failed assertion, not a hung test)."""

    def __init__(self, store) -> None:
        self.store, self.held, self.waiting = store, threading.Event(), threading.Event()

    def _wait(self) -> None:
        if self.held.is_set():
            self.waiting.set()
            for _ in range(200):  # 10 s at most
                if not self.held.is_set():
                    break
                threading.Event().wait(0.05)

    def get(self, key):
        self._wait()
        return self.store.get(key)

    def children(self, prefix):
        self._wait()
        return self.store.children(prefix)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_held_registry_read_never_stops_healthz_from_answering(tmp_path):
    from raysegment.serving.app import build_services, create_app

    torch.manual_seed(0)
    reg = Registry(tmp_path / "registry")
    reg.register("fog", build_segmenter(META.model, 2), META)
    reg.set_alias("fog", 1, "production")
    svc = build_services(ServeConfig(registry=str(tmp_path / "registry"), auth="none", resolve_ttl_s=600), None)
    store = svc.catalog.registry.store = HeldStore(svc.catalog.registry.store)
    app = create_app(svc)

    async def scenario() -> tuple[int, bool, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            assert (await client.get("/healthz")).json() == {"status": "ok", "domains": 1}  # now cached
            store.held.set()
            history = asyncio.create_task(client.get("/v1/domains/fog/history"))  # not cached: it waits on the store
            while not store.waiting.is_set():
                await asyncio.sleep(0.01)
            health = await asyncio.wait_for(client.get("/healthz"), timeout=30)
            still_waiting = not history.done()
            store.held.clear()
            return health.status_code, still_waiting, (await history).status_code

    health, still_waiting, history = asyncio.run(scenario())
    assert health == 200 and still_waiting, "healthz waited for another request's registry read"
    assert history == 200


def test_the_cache_expires_and_stays_bounded(monkeypatch):
    import raysegment.serving.catalog as catalog

    now = [100.0]
    monkeypatch.setattr(catalog.time, "monotonic", lambda: now[0])
    cache = TTLCache(ttl_s=5, size=3)
    cache.put("a", 1)
    cache.put("forever", 2, ttl_s=float("inf"))
    now[0] += 6
    assert cache.get("a") == (False, None) and cache.get("forever") == (True, 2)
    for key in "bcde":
        cache.put(key, key)
    assert len(cache.items) == 3 and cache.get("forever") == (False, None)  # the least recently used went
