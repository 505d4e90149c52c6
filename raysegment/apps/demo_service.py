"""The demo's live part, on its running Serve app: one request per target domain, then the closed
loop shown on it (routing without a domain, captured traffic, drift, one loop turn with shadow
evaluation on mirrored requests)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from raysegment.config import LoopConfig
from raysegment.data import files, open_split
from raysegment.distributed.closed_loop import LoopOutcome, run_loop
from raysegment.errors import RaySegmentError
from raysegment.registry import Registry
from raysegment.registry.traffic import NEW_POOL, TrafficStore


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_registry(registry_uri: str, targets: tuple[str, ...], loop_domain: str) -> str:
    """The Serve app on the demo's registry, on a free loopback port; returns its URL."""
    from ray import serve

    from raysegment.serving.app import build_app
    from raysegment.serving.config import ClosedLoop, Replicas, ServeConfig

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = ServeConfig(
        registry=registry_uri,
        auth="none",
        replicas=Replicas(max_replicas=1, cpus_per_replica=0.5, max_models_per_replica=len(targets) + 3),
        closed_loop=ClosedLoop(
            routing_base=Registry(registry_uri).get_entry("clear").ref,
            capture_domains=[loop_domain, NEW_POOL],
            shadow_share=1.0,
            drift_window=16,
            drift_every=1,  # the demo's traffic is a few dozen images: use every one
        ),
    )
    serve.run(build_app(cfg.model_dump()), name="raysegment", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def request_each_target(
    targets: tuple[str, ...], url: str, data: Path, out: Path, log: Callable[[str], Any]
) -> dict[str, dict]:
    """One overlay and one JSON answer per target domain, from the live endpoint."""
    served = {}
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    for domain in targets:
        image_path = open_split(data, domain, "test").samples[0][0]
        body = files.read(image_path)
        reply = httpx.post(
            f"{url}/v1/domains/{domain}/segment?format=overlay",
            content=body,
            headers={"content-type": "image/png"},
            timeout=120,
        )
        reply.raise_for_status()
        (out / "overlays" / f"{domain}.png").write_bytes(reply.content)
        shares = httpx.post(f"{url}/v1/domains/{domain}/segment?format=json", content=body, timeout=120).json()
        served[domain] = {"version": shares["version"], "shares": shares["shares"], "image": files.name(image_path)}
        log(
            f"  POST {url}/v1/domains/{domain}/segment -> {domain}@{shares['version']}, overlay "
            f"{out / 'overlays' / (domain + '.png')}"
        )
    return served


def show_closed_loop(
    url: str, registry_uri: str, data: Path, domain: str, routed_from: str, log: Callable[[str], Any]
) -> dict:
    """On the running service: one request without a domain; `domain`'s train images as live traffic
    (captured), its drift; then one loop turn while its test images keep coming (mirrored to the
    candidate). Returns what was shown."""
    image = open_split(data, routed_from, "test").samples[0][0]
    route = httpx.post(f"{url}/v1/segment?format=json", content=files.read(image), timeout=120).json()["route"]
    verdict = "unknown" if route["unknown"] else ("right" if route["domain"] == routed_from else "wrong")
    log(
        f"  POST {url}/v1/segment (a {routed_from} image, no domain) -> {route['domain']} ({verdict}), "
        f"distance {route['distance']:.3f}"
    )
    traffic = TrafficStore(registry_uri)
    seen = traffic.seen(domain)
    train = [files.read(p) for p, _ in open_split(data, domain, "train").samples]
    for body in train:
        httpx.post(f"{url}/v1/domains/{domain}/segment", content=body, timeout=120).raise_for_status()
    deadline = time.monotonic() + 120
    while traffic.seen(domain) < seen + len(train) and time.monotonic() < deadline:
        time.sleep(0.2)  # captures land just after the answers
    drift = httpx.get(f"{url}/v1/domains", timeout=120).json()["domains"][domain].get("drift", {})
    log(f"  {len(train)} {domain} requests captured ({len(traffic.items(domain))} kept); drift: {json.dumps(drift)}")
    cfg = LoopConfig(tent_lr=[1e-3], epochs=1, min_images=4, shadow_images=8, shadow_timeout_s=300, shadow_poll_s=0.5)
    done: list[LoopOutcome] = []
    turn = threading.Thread(target=lambda: done.append(run_loop(registry_uri, domain, cfg, log=log)), daemon=True)
    turn.start()
    live = [files.read(p) for p, _ in open_split(data, domain, "test").samples]
    answered: list[int] = []
    while turn.is_alive():
        reply = httpx.post(f"{url}/v1/domains/{domain}/segment", content=live[len(answered) % len(live)], timeout=120)
        answered.append(int(reply.headers.get("x-model-version", 0)))
    turn.join()
    if not done:
        raise RaySegmentError(f"the loop on {domain} failed; see the log above")
    outcome = done[0]
    verdict = f"promoted {domain}@{outcome.candidate}" if outcome.promoted else "no promotion"
    log(
        f"  loop on {domain}: {verdict} ({outcome.reason}); {len(answered)} live requests meanwhile, answered by "
        f"versions {sorted(set(answered))}; timings {outcome.timings}"
    )
    log(f"  audit trail: raysegment registry history {domain} --registry {registry_uri}")
    return {
        "route": route,
        "routed_from": routed_from,
        "drift": drift,
        "loop": asdict(outcome),
        "answered_by": answered,
    }
