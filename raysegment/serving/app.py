"""The Serve application: wiring. A `Gateway` deployment (the FastAPI app of `api` and `console`)
calls the multiplexed, batched `SegmentModels` deployment (`replica`); with `topology: fused` one
deployment does both (each replica calls its own SegmentModels in-process).

Every refused request is a `ServingError` (`errors`), answered here, once, as
`{"error", "detail"}` JSON with its status; FastAPI's validation errors and bugs get the same
shape. Every response carries the console's security headers.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from raysegment.registry import Registry
from raysegment.registry.traffic import TrafficStore
from raysegment.serving import api, console
from raysegment.serving.auth import TokenTable
from raysegment.serving.catalog import Catalog
from raysegment.serving.config import ServeConfig
from raysegment.serving.deps import Services
from raysegment.serving.errors import ServingError
from raysegment.serving.loops import LoopTurns
from raysegment.serving.metrics import ServingMetrics
from raysegment.serving.mirror import Mirror
from raysegment.serving.replica import ModelCalls, SegmentModels

log = logging.getLogger(__name__)
SECURITY_HEADERS = {
    "content-security-policy": console.CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


API_DOCS = ("/docs", "/redoc", "/docs/oauth2-redirect")
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def error(status: int, message: str, detail: str = "", headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, "detail": detail}, headers=headers)


def build_services(cfg: ServeConfig, handle: DeploymentHandle | None) -> Services:
    registry = Registry(cfg.registry)
    loop = cfg.closed_loop
    traffic = TrafficStore(cfg.registry, loop.capture_max_images, loop.capture_max_age_s)
    models = ModelCalls(handle, cfg)
    metrics = ServingMetrics()
    return Services(
        cfg=cfg,
        catalog=Catalog(registry, traffic, cfg.resolve_ttl_s),
        models=models,
        mirror=Mirror(loop, traffic, models, metrics),
        tokens=TokenTable.read(cfg.token_file) if cfg.token_file and cfg.auth == "token" else None,
        loops=LoopTurns(cfg.registry, cfg.loop_timeout_s),
        metrics=metrics,
    )


def create_app(svc: Services) -> FastAPI:
    app = FastAPI(title="raysegment", description="Per-domain semantic segmentation endpoints.", version="1")
    app.state.services = svc
    app.include_router(api.router)
    app.include_router(console.router)

    @app.exception_handler(ServingError)
    async def refused(request: Request, exc: ServingError) -> JSONResponse:
        return error(exc.status, exc.error, exc.detail, exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's own validation errors (a bad `format`, say), in the house format."""
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, "invalid request", f"{where}: {first.get('msg', 'invalid')}"[:300])

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail).lower(), "")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        """A bug still answers in the house format (its traceback goes to the replica's log)."""
        log.exception("unhandled error on %s", request.url.path)
        return error(500, "internal error", type(exc).__name__)

    app.add_middleware(SecurityHeaders)
    return app


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every response's start (a plain ASGI middleware: Starlette's
    `BaseHTTPMiddleware` would wrap each response in a stream and cost every request)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        wanted = SECURITY_HEADERS
        if scope.get("path", "").endswith(API_DOCS):  # Swagger/ReDoc: FastAPI's inline script and CDN assets
            wanted = {**SECURITY_HEADERS, "content-security-policy": DOCS_CSP}

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in wanted.items() if k.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


@serve.ingress()
class Gateway:
    """The ingress: its FastAPI app is built on the replica, after the services it serves."""

    def __init__(self, models: DeploymentHandle | None, cfg: dict) -> None:
        self.services = build_services(ServeConfig.model_validate(cfg), models)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.services)


def build_app(args: dict) -> serve.Application:
    """Application builder for `serve run`/`serve deploy` (args = ServeConfig fields)."""
    cfg = ServeConfig.model_validate(args)
    r = cfg.replicas
    model_replica: dict[str, Any] = {  # a replica that runs the models, in either topology
        "autoscaling_config": {
            "min_replicas": r.min_replicas,
            "max_replicas": r.max_replicas,
            "target_ongoing_requests": r.target_ongoing_requests,
        },
        "max_queued_requests": cfg.limits.max_queued_requests,
        "ray_actor_options": {"num_cpus": r.cpus_per_replica, "num_gpus": r.gpus_per_replica},
        "graceful_shutdown_wait_loop_s": r.drain_poll_s,
    }
    if r.topology == "fused":  # its requests are in flight while their uploads are read, too
        service = serve.deployment(
            name="SegmentService", max_ongoing_requests=max(r.max_batch_size * 4, 32), **model_replica
        )(Gateway)
        return service.bind(None, cfg.model_dump())
    models = serve.deployment(
        name="SegmentModels", max_ongoing_requests=max(r.max_batch_size * 2, 16), **model_replica
    )(SegmentModels).bind(cfg.model_dump())
    gateway = serve.deployment(
        name="Gateway",
        num_replicas=r.ingress_replicas,
        ray_actor_options={"num_cpus": r.ingress_cpus},
        graceful_shutdown_wait_loop_s=r.drain_poll_s,
        max_ongoing_requests=256,
        max_queued_requests=cfg.limits.max_queued_requests,
    )(Gateway)
    return gateway.bind(models, cfg.model_dump())


__all__ = ["Gateway", "SegmentModels", "build_app", "create_app", "build_services"]
