"""`raysegment serve`'s start: Serve up on a machine that may be busy (a training run on the same
cores), with progress on the way and one line, not a traceback, if it cannot come up.

The proxy and replica start-up allowances are `config.SERVE_PROCESS_ENV` (a 60 s proxy readiness
check instead of Serve's 5 s, which killed the proxy three times on a loaded machine); they must be
in the environment before the local Ray starts, so this is the only place that starts it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from raysegment.errors import RaySegmentError
from raysegment.serving.config import ServeConfig, use_serve_process_env
from raysegment.serving.proxy_guard import PROXY_MAX_BODY_ENV

PROGRESS_EVERY_S = 10.0


def start_serving(
    cfg: ServeConfig,
    host: str,
    port: int,
    timeout_s: float,
    log: Callable[[str], None] = print,
    name: str = "raysegment",
    route_prefix: str = "/",
    progress_every_s: float = PROGRESS_EVERY_S,
) -> None:
    """Start Ray (embedded, or RAY_ADDRESS), Serve's proxy on host:port and the app; returns once
    every deployment is up. Raises RaySegmentError (one line) when that fails or takes `timeout_s`."""
    os.environ.setdefault(PROXY_MAX_BODY_ENV, str(cfg.limits.max_image_bytes + 64 * 1024))
    use_serve_process_env()
    outcome: dict[str, BaseException | None] = {}

    def run() -> None:
        try:
            from ray import serve

            from raysegment.distributed.train import ensure_ray
            from raysegment.serving.app import build_app

            ensure_ray()
            serve.start(http_options={"host": host, "port": port, "request_timeout_s": 120})
            serve.run(build_app(cfg.model_dump()), name=name, route_prefix=route_prefix)
            outcome["error"] = None
        except BaseException as exc:  # reported by the caller's thread, as one line
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="serve-start", daemon=True)
    started = time.monotonic()
    worker.start()
    while worker.is_alive():
        worker.join(min(progress_every_s, max(timeout_s - (time.monotonic() - started), 0.1)))
        waited = time.monotonic() - started
        if worker.is_alive():
            if waited >= timeout_s:
                raise RaySegmentError(
                    f"Serve did not come up within {timeout_s:.0f} s ({progress()}); is the machine overloaded?"
                )
            log(f"[serve] starting, {waited:.0f} s: {progress()}")
    error = outcome.get("error")
    if error is not None:
        first = (str(error).strip().splitlines() or [""])[0][:240]
        raise RaySegmentError(f"Serve did not start: {type(error).__name__}: {first}") from error


def progress() -> str:
    """What Serve says about its proxies and deployments, in a few words."""
    try:
        from ray import serve

        status = serve.status()
        proxies = ", ".join(f"{node[:8]} {state}" for node, state in status.proxies.items()) or "no proxy yet"
        parts = [f"{name} {d.status}" for app in status.applications.values() for name, d in app.deployments.items()]
        return f"proxies: {proxies}; deployments: {', '.join(parts) or 'none yet'}"
    except Exception as exc:  # Ray itself still starting
        return f"Ray starting ({type(exc).__name__})"
