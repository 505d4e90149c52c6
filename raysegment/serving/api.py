"""The HTTP API: thin handlers over the gateway's services (`deps.Services`). Each declares its
role (`Depends(READ)` / `Depends(ADMIN)`) and the query parameters it takes; everything refused is a
typed `ServingError`, turned into `{"error", "detail"}` JSON once, in `app.py`."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from raysegment.registry import ModelVersion, RegistryError
from raysegment.registry.artifacts import ONNX
from raysegment.registry.audit import Decision
from raysegment.registry.promotion import (
    CANDIDATE,
    PRODUCTION,
    promote_version,
    prune_snapshots,
    register_snapshot,
    rollback,
)
from raysegment.registry.traffic import NEW_POOL
from raysegment.serving.auth import Client
from raysegment.serving.catalog import check_version, checked_domain
from raysegment.serving.deps import ADMIN, READ, Services, caller, only_query, services
from raysegment.serving.drift import drift_report
from raysegment.serving.errors import (
    BadVersion,
    Conflict,
    ServingError,
    UnknownDomain,
    Unroutable,
    UploadRefused,
)
from raysegment.serving.imaging import class_shares, mask_png, overlay_png
from raysegment.serving.routing import Route
from raysegment.serving.schemas import (
    Caller,
    DomainDetail,
    DomainListing,
    Domains,
    ErrorBody,
    Health,
    HistoryPage,
    LoopTurnStatus,
    Segmentation,
    ShadowProgress,
    Snapshot,
)
from raysegment.serving.schemas import Rollback as RollbackResult
from raysegment.serving.schemas import Route as RouteBody
from raysegment.serving.upload import Upload, read_upload

Format = Literal["png", "json", "overlay"]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 408, 409, 413, 415, 422, 503)
}
DOMAIN = Path(description="registry domain name (checked by the registry's rule: 400 when broken)")

router = APIRouter(responses=ERRORS)


@router.get("/healthz", response_model=Health, response_model_exclude_none=True, dependencies=[Depends(only_query())])
async def healthz(svc: Services = Depends(services)) -> Health:
    """`degraded` (with the broken domains named) when some domain's registry files are corrupt."""
    names = await svc.catalog.domains()
    listings = await asyncio.gather(*(svc.catalog.listing(d) for d in names))
    broken = [d for d, shown in zip(names, listings) if shown.error]
    return Health(status="degraded" if broken else "ok", domains=len(names), unavailable=broken or None)


@router.get("/v1/whoami", response_model=Caller, dependencies=[Depends(only_query())])
async def whoami(client: Client = Depends(READ)) -> Caller:
    """Who the token belongs to and its role (the console shows admin actions only to `admin`)."""
    return Caller(name=client.name, role=client.role)


async def served_runtime(svc: Services, domain: str, production: int) -> str:
    """What runs the domain's production model: the deployment's runtime, or torch (said so) when
    the runtime is ONNX Runtime and the version has no ONNX export."""
    runtime = svc.cfg.replicas.runtime
    if runtime == "onnxruntime" and ONNX not in await svc.catalog.exports(domain, production):
        return "torch (no ONNX export of this version)"
    return runtime


async def summary(svc: Services, domain: str, with_drift: bool = True) -> DomainListing:
    """One domain as the overview shows it: versions, aliases, drift, captured traffic, last decision."""
    shown = await svc.catalog.listing(domain)
    if shown.error:
        return shown
    production, candidate = shown.aliases.get(PRODUCTION), shown.aliases.get(CANDIDATE)
    more: dict[str, Any] = {"production": production, "candidate": candidate}
    if production is not None:
        more["runtime"] = await served_runtime(svc, domain, production)
    if with_drift:
        more["drift"] = await drift_report(svc, domain)
    if svc.mirror.captures(domain):
        more["captured"] = await svc.catalog.captured(domain)
    decisions = [r for r in await svc.catalog.history(domain) if r.decides]
    more["last_decision"] = decisions[-1] if decisions else None
    return shown.model_copy(update=more)


@router.get("/v1/domains", response_model=Domains, response_model_exclude_none=True)
async def domains(
    svc: Services = Depends(services), _: Client = Depends(READ), __: None = Depends(only_query())
) -> Domains:
    names = await svc.catalog.domains()
    shown = await asyncio.gather(*(summary(svc, d) for d in names))
    return Domains(domains=dict(zip(names, shown)))


@router.get("/v1/domains/{domain}", response_model=DomainDetail, response_model_exclude_none=True)
async def domain_detail(
    domain: str = DOMAIN, svc: Services = Depends(services), _: Client = Depends(READ), __: None = Depends(only_query())
) -> DomainDetail:
    """Versions with lineage, aliases, drift, captured images and the shadow evaluation's progress."""
    if checked_domain(domain) not in await svc.catalog.domains():
        raise UnknownDomain(f"no domain {domain!r} in the registry")
    shown = await summary(svc, domain)
    candidate, production, shadow = shown.candidate, shown.production, None
    if candidate is not None and production is not None and candidate != production:
        pairs = await svc.catalog.shadow(domain, candidate, production)
        shadow = ShadowProgress(
            candidate=candidate,
            production=production,
            pairs=len(pairs),
            candidate_mean=round(sum(c for c, _ in pairs) / len(pairs), 6) if pairs else None,
            production_mean=round(sum(p for _, p in pairs) / len(pairs), 6) if pairs else None,
        )
    return DomainDetail(**dict(shown), domain=domain, shadow=shadow)


@router.get("/v1/domains/{domain}/history", response_model=HistoryPage)
async def history(
    domain: str = DOMAIN,
    offset: int = Query(0, ge=0, le=1_000_000, description="records to skip, newest first"),
    limit: int = Query(50, ge=1, le=500),
    svc: Services = Depends(services),
    _: Client = Depends(READ),
    __: None = Depends(only_query("offset", "limit")),
) -> HistoryPage:
    """The domain's audit trail (every alias move, decision, rollback and loop step), newest first."""
    if checked_domain(domain) not in await svc.catalog.domains():
        raise UnknownDomain(f"no domain {domain!r} in the registry")
    records = list(reversed(await svc.catalog.history(domain)))
    return HistoryPage(domain=domain, total=len(records), offset=offset, records=records[offset : offset + limit])


@router.post("/v1/domains/{domain}/promote", response_model=Decision)
async def promote(
    domain: str = DOMAIN,
    version: str = Query(CANDIDATE, description="version number or alias to promote"),
    force: bool = Query(False, description="skip the judge (needs a reason; recorded with the token's name)"),
    reason: str | None = Query(None, max_length=300),
    svc: Services = Depends(services),
    client: Client = Depends(ADMIN),
    __: None = Depends(only_query("version", "force", "reason")),
) -> Decision:
    """Judge the version against production on held-back images and apply the one promotion policy."""
    if force and not (reason and reason.strip()):
        raise BadVersion("a forced promotion needs a reason (?reason=...)")
    svc.catalog.forget(domain)
    entry = await svc.catalog.entry(domain, check_version(version))
    decision = await svc.catalog.write(
        domain, lambda: promote_version(svc.catalog.registry, entry.ref, force, client.name, reason)
    )
    svc.metrics.decisions.inc(tags={"domain": domain, "promoted": str(decision.promoted).lower()})
    return decision


@router.post("/v1/domains/{domain}/rollback", response_model=RollbackResult)
async def roll_back(
    domain: str = DOMAIN,
    svc: Services = Depends(services),
    client: Client = Depends(ADMIN),
    __: None = Depends(only_query()),
) -> RollbackResult:
    """Move production back to the version that held it before."""
    svc.catalog.forget(domain)
    current = (await svc.catalog.entry(domain)).version
    try:
        previous = await svc.catalog.write(domain, lambda: rollback(svc.catalog.registry, domain, client.name))
    except RegistryError as exc:
        raise Conflict("nothing to roll back to", str(exc)) from exc
    svc.metrics.decisions.inc(tags={"domain": domain, "promoted": "rollback"})
    return RollbackResult(domain=domain, production=previous, previous=current, by=client.name)


@router.post("/v1/domains/{domain}/loop", response_model=LoopTurnStatus, status_code=202)
async def start_loop(
    domain: str = DOMAIN,
    svc: Services = Depends(services),
    client: Client = Depends(ADMIN),
    __: None = Depends(only_query()),
) -> LoopTurnStatus:
    """Start one loop turn (adapt to captured traffic, shadow, judged promotion); poll its id."""
    await svc.catalog.entry(domain)
    return await asyncio.to_thread(svc.loops.start, domain, client.name)


def gateway_replica() -> str:
    """This gateway replica's id (`in-process` outside a Serve replica)."""
    try:
        from ray import serve
        from ray.serve.exceptions import RayServeException

        return serve.get_replica_context().replica_id.unique_id
    except RayServeException:  # not inside a replica
        return "in-process"


@router.get("/v1/domains/{domain}/loop/{turn_id}", response_model=LoopTurnStatus)
async def loop_status(
    response: Response,
    domain: str = DOMAIN,
    turn_id: str = Path(max_length=40),
    svc: Services = Depends(services),
    _: Client = Depends(READ),
    __: None = Depends(only_query()),
) -> LoopTurnStatus:
    response.headers["x-gateway-replica"] = gateway_replica()  # any replica answers: the status is in the store
    return await asyncio.to_thread(svc.loops.get, domain, turn_id)


@router.post("/v1/domains/{domain}/adabn-snapshot", response_model=Snapshot)
async def adabn_snapshot(
    domain: str = DOMAIN,
    version: str = Query(PRODUCTION),
    svc: Services = Depends(services),
    _: Client = Depends(ADMIN),
    __: None = Depends(only_query("version")),
) -> Snapshot:
    """Store the online-adapted BatchNorm statistics of domain@version as a new `candidate` version
    (production only through the judged promote route)."""
    if not svc.cfg.online.adabn:
        raise Conflict("online AdaBN is off", "start the app with online.adabn: true")
    svc.catalog.forget(domain)
    entry = await svc.catalog.entry(domain, version)
    snap = await svc.models.batchnorm_snapshot(entry.ref)
    if snap.images == 0:
        raise Conflict("nothing to store", f"{entry.ref} has seen no images on this replica yet")
    registry, keep = svc.catalog.registry, svc.cfg.online.max_snapshots_per_domain
    state, images = snap.state, snap.images
    decision = await svc.catalog.write(domain, lambda: register_snapshot(registry, entry, state, images))
    pruned = await svc.catalog.write(domain, lambda: prune_snapshots(registry, domain, keep))
    return Snapshot(
        domain=domain,
        version=decision.version,
        parent=entry.ref,
        images=snap.images,
        guard_restores=snap.restores,
        promoted=decision.promoted,
        reason=decision.reason,
        pruned=pruned,
    )


SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}, "application/json": {"schema": Segmentation.model_json_schema()}}}
}


@router.post("/v1/domains/{domain}/segment", responses=SEGMENT_RESPONSES, response_class=Response)
async def segment(
    request: Request,
    domain: str = DOMAIN,
    format: Format = Query("png", description="png: class-id mask; overlay: picture with legend; json: shares"),
    version: str = Query(PRODUCTION, description="version number or alias"),
    svc: Services = Depends(services),
    _: Client = Depends(READ),
    __: None = Depends(only_query("format", "version")),
) -> Response:
    """Segment the PNG/JPEG body with domain@version (production by default)."""
    started, known = time.monotonic(), None
    try:
        entry = await svc.catalog.entry(domain, version)
        known = entry.domain
        upload = await read_upload(request, svc.cfg.limits)
        reply = await answer(svc, entry, upload, format, mirror=version == PRODUCTION)
    except ServingError as exc:
        refused(svc, exc, known, started)
        raise
    svc.metrics.request(known, 200, time.monotonic() - started)
    return reply


@router.post("/v1/segment", responses=SEGMENT_RESPONSES, response_class=Response)
async def segment_routed(
    request: Request,
    format: Format = Query("png"),
    svc: Services = Depends(services),
    _: Client = Depends(READ),
    __: None = Depends(only_query("format")),
) -> Response:
    """Segment with the production model of the domain nearest to the image (`serving.routing`);
    an image far from every domain is `unknown`: served by `default_domain` (else the routing model)
    and captured into the `new` pool."""
    started, known = time.monotonic(), None
    loop = svc.cfg.closed_loop
    try:
        if loop.routing_base is None:
            raise Conflict(
                "routing is off", "name the domain (POST /v1/domains/{domain}/segment) or set closed_loop.routing_base"
            )
        upload = await read_upload(request, svc.cfg.limits)
        route = await svc.models.route(loop.routing_base, upload.image.numpy())
        if route is None:
            raise Unroutable(f"no production version has a signature under {loop.routing_base}")
        svc.metrics.routes.inc(tags={"domain": route.domain, "unknown": str(route.unknown).lower()})
        served = loop.default_domain if route.unknown else route.domain
        entry = await (svc.catalog.entry(served) if served else svc.catalog.ref(loop.routing_base))
        known = entry.domain
        if route.unknown:  # not the default domain's traffic: kept apart, in the `new` pool
            svc.mirror.capture(NEW_POOL, upload.body)
        reply = await answer(svc, entry, upload, format, mirror=not route.unknown, route=route)
    except ServingError as exc:
        refused(svc, exc, known, started)
        raise
    svc.metrics.request(known, 200, time.monotonic() - started)
    return reply


def refused(svc: Services, exc: ServingError, domain: str | None, started: float) -> None:
    svc.metrics.request(domain, exc.status, time.monotonic() - started)
    if isinstance(exc, UploadRefused):
        svc.metrics.rejected.inc(tags={"reason": exc.reason})


async def answer(
    svc: Services, entry: ModelVersion, upload: Upload, format: Format, mirror: bool, route: Route | None = None
) -> Response:
    """Segment with `entry`'s model and answer in `format`; then, off the request's path, capture
    the image and (for a production request) mirror it to the domain's candidate."""
    result = await svc.models.segment(entry.ref, upload.image.numpy())
    if not (route is not None and route.unknown):
        svc.mirror.capture(entry.domain, upload.body)
    share = svc.cfg.closed_loop.shadow_share
    if mirror and share and random.random() < share:
        candidate = await svc.catalog.candidate(entry.domain)
        if candidate is not None and candidate.version != entry.version:
            svc.mirror.shadow(candidate, entry, upload.image.numpy())
    mask = result.mask
    headers = {
        "x-model-version": str(entry.version),
        "x-model-id": result.model_id,
        "x-batch-size": str(result.batch_size),
        "x-runtime": result.runtime,
    }
    if route is not None:
        headers |= {
            "x-route-domain": route.domain,
            "x-route-distance": f"{route.distance:.6f}",
            "x-route-unknown": str(route.unknown).lower(),
        }
    meta = entry.meta
    if format == "json":
        body = Segmentation(
            domain=entry.domain,
            version=entry.version,
            model_id=result.model_id,
            height=int(mask.shape[0]),
            width=int(mask.shape[1]),
            shares=class_shares(mask, meta.classes),
            route=RouteBody(**route.as_json()) if route is not None else None,
        )
        return JSONResponse(body.model_dump(exclude_none=True), headers=headers)
    if format == "overlay":
        png = await asyncio.to_thread(overlay_png, upload.image, mask, meta.palette, meta.classes)
    else:
        png = mask_png(mask)
    return Response(content=png, media_type="image/png", headers=headers)


__all__ = ["router", "caller"]
