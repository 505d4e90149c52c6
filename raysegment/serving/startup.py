"""`raysegment serve`'s life: Ray and Serve up on a machine that may be busy (a training run on the
same cores), progress on the way, one line (not a traceback) if it cannot come up, then serving
until SIGINT or SIGTERM, and a clean stop that leaves no Ray process of its own behind.

Ray is started (or attached, with RAY_ADDRESS) in the calling thread, which must be the main one
(`ensure_ray`): an embedded Ray started in a helper thread dies with it, and the server a minute later.
Only Serve's own start (which waits on the controller) runs in a helper thread, so progress can be
printed; progress asks Serve only once Ray is up, so it never starts a second local Ray.

The proxy and replica start-up allowances are `config.SERVE_PROCESS_ENV` (a 60 s proxy readiness
check instead of Serve's 5 s, which killed the proxy three times on a loaded machine); they must be
in the environment before the local Ray starts, so this is the only place that starts it."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

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
) -> bool:
    """Start Ray (embedded, or RAY_ADDRESS) here, then Serve's proxy on host:port and the app;
    returns once every deployment is up: True when this call started Ray (`distributed.train.ensure_ray`).
    Raises RaySegmentError (one line) when that fails or takes `timeout_s`."""
    os.environ.setdefault(PROXY_MAX_BODY_ENV, str(cfg.limits.max_image_bytes))
    use_serve_process_env()
    from raysegment.distributed.train import ensure_ray

    started_ray = ensure_ray()
    outcome: dict[str, BaseException | None] = {}

    def run() -> None:
        try:
            from ray import serve

            from raysegment.serving.app import build_app

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
    return started_ray


def progress() -> str:
    """What Serve says about its proxies and deployments, in a few words; never starts Ray."""
    import ray

    if not ray.is_initialized():
        return "Ray starting"
    try:
        from ray import serve

        status = serve.status()
        proxies = ", ".join(f"{node[:8]} {state}" for node, state in status.proxies.items()) or "no proxy yet"
        parts = [f"{name} {d.status}" for app in status.applications.values() for name, d in app.deployments.items()]
        return f"proxies: {proxies}; deployments: {', '.join(parts) or 'none yet'}"
    except Exception as exc:  # Serve's controller itself still starting
        return f"Serve starting ({type(exc).__name__})"


class Stop(Exception):
    """SIGINT or SIGTERM arrived: serving ends."""


def serve_until_stopped(owns_ray: bool, log: Callable[[str], None] = print) -> str:
    """Block until SIGINT or SIGTERM, then shut Serve down (and the embedded Ray when this process
    started it, which stops its GCS, raylet and every worker). Returns the signal's name."""
    import ray
    from ray import serve

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            time.sleep(3600)
    except Stop as got:
        reason = str(got)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    log(f"[serve] {reason}: stopping")
    try:
        serve.shutdown()
    finally:
        if owns_ray:
            ray.shutdown()
    return reason
