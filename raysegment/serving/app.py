"""The Serve application: a FastAPI ingress and a multiplexed, batched model deployment.

`POST /v1/domains/{domain}/segment?format=png|json|overlay&version=N|alias` ->
the ingress validates the upload and resolves domain@version in the registry (4xx with a JSON
body on bad input), then calls the `SegmentModels` deployment with
`multiplexed_model_id="domain@version"`. There each replica keeps an LRU of loaded models
(`@serve.multiplexed`) and batches concurrent requests for the same model (`@serve.batch`);
images of one size in a batch run as one tensor at the model's working scale (`model.json`'s
`resize`), their logits resized back to the upload's size.
With `topology: fused` there is one deployment: each ingress replica holds its own SegmentModels
and calls it in-process (a hop less per request; on CPU nodes, where the model and the decoding
share the cores anyway), so a batch may mix domains and is split by model there.

Models of many domains share their base's tensors on a replica (`Registry.load_shared`): a
domain loaded next to others costs only its delta. With `online_adabn`, each domain's BatchNorm
statistics follow the images its endpoint receives (its own copy of those buffers, never the
shared ones), watched by a guard that resets them to production's when the consistency proxy says
they lost (`engine.continual`); `POST /v1/domains/{domain}/adabn-snapshot` stores them as a new
registry version.

The closed loop's service side (issue: live traffic -> adaptation -> shadow -> promotion):
- `POST /v1/segment` (no domain) routes the image to the nearest domain by signature
  (`serving.routing`) and says which, with the distance (JSON `route`, `x-route-*` headers);
- request images of the domains in `capture_domains` go to the traffic reservoir, off the
  request's path (a bounded set of background tasks; when full, capture is skipped);
- each replica keeps the BatchNorm-input statistics of each model's recent images, and
  `GET /v1/domains` reports their distance to the version's training signature (`drift`);
- with `shadow_share`, that share of a domain's production requests is also run, in the
  background, by its `candidate` and both are scored by the consistency proxy on the same image;
  the answer always comes from production.
"""

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from raysegment.augment import group_by_size, resize_images, scaled_size, to_float
from raysegment.config import EvalConfig, ResizeConfig
from raysegment.engine.continual import OnlineAdapter
from raysegment.engine.evaluate import predict_full_size
from raysegment.engine.proxies import paired_consistency
from raysegment.engine.signature import RunningSignature, Signature, batchnorm_inputs, distance, image_signatures
from raysegment.models.freeze import is_batchnorm
from raysegment.promotion import Decision, promote_if_better
from raysegment.registry import CorruptRegistry, Entry, Registry, RegistryError, SharedBases, check_domain
from raysegment.serving.auth import TokenTable
from raysegment.serving.config import ServeConfig
from raysegment.serving.imaging import (
    BadImage,
    BadShape,
    ImageTooLarge,
    UnsupportedImage,
    class_shares,
    decode_upload,
    mask_png,
    overlay_png,
    sniff,
)
from raysegment.serving.routing import Route, RoutingTable
from raysegment.traffic import NEW_POOL, TrafficStore

SNAPSHOT_METHOD = "adabn_online"  # the lineage method of versions stored by .../adabn-snapshot

# Failures of the model deployment itself (a replica died, none is up yet, its queue is full): worth
# a retry, then a 503. Anything else (corrupt weights, a bug) is never retried or disguised as this.
REPLICA_GONE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError, BackPressureError)

api = FastAPI(title="raysegment", description="Per-domain semantic segmentation endpoints.", version="1")


def error(status: int, message: str, detail: str = "") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, "detail": detail})


@api.exception_handler(RequestValidationError)
async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own validation errors (a bad `format`, say), in the house format."""
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error(422, "invalid request", f"{where}: {first.get('msg', 'invalid')}"[:300])


@api.exception_handler(Exception)
async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug still answers in the house format (its traceback goes to the replica's log)."""
    return error(500, "internal error", type(exc).__name__)


class BodyTooLarge(Exception):
    pass


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it passes `limit` bytes (chunked uploads included)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body passed {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def check_version(version: str) -> None:
    """`version` is ASCII digits (at most 9) or an alias name; anything else is a 400, not a 500."""
    if version.isascii() and version.isdigit() and len(version) <= 9:
        return
    check_domain(version)  # alias names follow the domain-name rule


@dataclass
class Loaded:
    """A model on a replica and the working scale it was trained at (it is served at it too)."""

    model: torch.nn.Module
    scale: ResizeConfig | None
    num_classes: int


WHOLE_IMAGE = EvalConfig(mode="whole")


def received(image: np.ndarray) -> torch.Tensor:
    """An image as the gateway ships it to the model replica: a numpy uint8 array, which Ray sends as
    a buffer without pickling its bytes (a torch tensor goes through torch.save: at 2 megapixels 13 ms
    against 21 us, `benchmarks/bench_wire.py`) -> the (3,H,W) uint8 tensor; a read-only (shared)
    array is copied first, so torch never holds memory it must not write."""
    return torch.from_numpy(image if image.flags.writeable else image.copy())


class SegmentModels:
    """Holds domain models (LRU per replica) and segments batches of same-model images."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = ServeConfig.model_validate(cfg)
        self.registry = Registry(self.cfg.registry)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.bases = SharedBases(self.device)
        self.adapted_images: dict[str, int] = {}
        self.adapters: dict[str, OnlineAdapter] = {}
        self.recent: dict[str, RunningSignature] = {}  # per model id: its recent images' statistics
        self.drift_batches: dict[str, int] = {}  # per model id: batches segmented (drift samples one in drift_every)
        base = self.cfg.routing_base
        self.routing = RoutingTable(self.registry, base, self.cfg.unknown_factor) if base else None

        # Plain closures, not bound methods: Serve keeps its LRU / batch queue on the wrapped object.
        async def load(model_id: str) -> Loaded:
            model, meta, _ = await asyncio.to_thread(self.registry.load_shared, model_id, self.bases)
            if self.cfg.online_adabn:
                own_batchnorm_buffers(model)
            return Loaded(model, meta.resize, meta.num_classes)

        async def segment_batch(model_ids: list[str], images: list[torch.Tensor]) -> list[dict[str, Any]]:
            return await self._segment_batch(model_ids, images)

        self.get_model = serve.multiplexed(max_num_models_per_replica=self.cfg.max_models_per_replica)(load)
        # Called (model_id, image); the batch function gets both as lists (mypy sees only one-argument batching).
        self.segment: Any = serve.batch(
            max_batch_size=self.cfg.max_batch_size, batch_wait_timeout_s=self.cfg.batch_wait_timeout_s
        )(segment_batch)

    async def _segment_batch(self, model_ids: list[str], images: list[torch.Tensor]) -> list[dict[str, Any]]:
        """One forward per (model, image size) in the batch: Serve splits batches by the handle's model
        id (split topology); a fused replica's batch may hold several models."""
        masks: list[torch.Tensor] = [torch.empty(0)] * len(images)
        same_model: dict[str, list[int]] = {}
        for k, model_id in enumerate(model_ids):
            same_model.setdefault(model_id, []).append(k)
        for model_id, members in same_model.items():
            await self._segment_model(model_id, [images[k] for k in members], members, masks)
        return [
            {"mask": mask, "model_id": model_id, "batch_size": len(same_model[model_id])}
            for mask, model_id in zip(masks, model_ids, strict=True)
        ]

    async def _segment_model(
        self, model_id: str, images: list[torch.Tensor], slots: list[int], masks: list[torch.Tensor]
    ) -> None:
        """Segment `images` with one model; the mask of images[i] goes to masks[slots[i]]."""
        loaded = await self.get_model(model_id)
        for (h, w), index in group_by_size(img.shape[-2:] for img in images).items():  # one size each, unpadded
            batch = torch.stack([to_float(images[k]) for k in index]).to(self.device)
            batch = resize_images(batch, scaled_size(h, w, loaded.scale))
            if self.cfg.online_adabn:
                adapter = self._adapter(model_id, loaded)
                adapter.adapt(batch)
                adapter.watch(batch)
            if self._drift_sample(model_id):
                with batchnorm_inputs(loaded.model) as captured:
                    logits = predict_full_size(loaded.model, batch, (h, w), WHOLE_IMAGE)
                recent = self.recent.setdefault(model_id, RunningSignature(self.cfg.drift_window))
                recent.update([m for m, _ in captured], [q for _, q in captured])
            else:
                logits = predict_full_size(loaded.model, batch, (h, w), WHOLE_IMAGE)
            preds = logits.argmax(1).to(torch.uint8).cpu()  # class ids fit a byte: 1/8 of int64 to ship back
            for row, k in enumerate(index):
                masks[slots[k]] = preds[row]
        if self.cfg.online_adabn:
            self.adapted_images[model_id] = self.adapted_images.get(model_id, 0) + len(images)

    def _drift_sample(self, model_id: str) -> bool:
        """Whether this batch of `model_id` feeds its drift statistics: the first, then one in `drift_every`."""
        if not self.cfg.drift_window:
            return False
        batches = self.drift_batches.get(model_id, 0)
        self.drift_batches[model_id] = batches + 1
        return batches % self.cfg.drift_every == 0

    async def __call__(self, model_id: str, image: np.ndarray) -> dict[str, Any]:
        return await self.segment(model_id, received(image))

    def _adapter(self, model_id: str, loaded: Loaded) -> OnlineAdapter:
        """The online AdaBN (and its guard) of a loaded model; a reloaded model starts afresh."""
        adapter = self.adapters.get(model_id)
        if adapter is None or adapter.model is not loaded.model:
            window = self.cfg.online_guard_window
            momentum = self.cfg.online_adabn_momentum
            adapter = OnlineAdapter(loaded.model, loaded.num_classes, "adabn", window > 0, window, momentum)
            self.adapters[model_id] = adapter
        return adapter

    async def _at_scale(self, loaded: Loaded, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        return resize_images(to_float(image)[None].to(self.device), scaled_size(h, w, loaded.scale))

    async def route(self, model_id: str, image: np.ndarray) -> Route | None:
        """The nearest domain to this image under the routing model `model_id`."""
        if self.routing is None:
            raise RuntimeError("routing is off: set routing_base")
        loaded = await self.get_model(model_id)
        signature = image_signatures(loaded.model, await self._at_scale(loaded, received(image)))[0]
        return await asyncio.to_thread(self.routing.route, signature)

    async def drift(self, model_id: str) -> bytes | None:
        """This replica's signature of the recent images of `model_id` (safetensors bytes)."""
        recent = self.recent.get(model_id)
        return recent.signature().to_bytes() if recent is not None and recent.images else None

    async def shadow_compare(self, candidate_ref: str, image: np.ndarray, production_ref: str) -> tuple[float, float]:
        """(candidate, production) consistency proxy on one image."""
        candidate = await self.get_model(candidate_ref)
        production = await self.get_model(production_ref)
        batch = await self._at_scale(candidate, received(image))
        scores = paired_consistency([candidate.model, production.model], batch, candidate.num_classes)
        return scores[0], scores[1]

    async def batchnorm_snapshot(self, model_id: str) -> dict[str, Any]:
        """This replica's BatchNorm statistics for `model_id` and how many images shaped them."""
        loaded = await self.get_model(model_id)
        state = {
            k: v.detach().cpu() for k, v in loaded.model.state_dict().items() if "running_" in k or "num_batches" in k
        }
        adapter = self.adapters.get(model_id)
        restores = adapter.restores if adapter is not None else 0
        return {
            "model_id": model_id,
            "images": self.adapted_images.get(model_id, 0),
            "state": state,
            "restores": restores,
        }


class ModelCalls:
    """How the gateway reaches the models. Split topology: the SegmentModels deployment over a Serve
    handle, routed by model id to a replica that has the model loaded. Fused: a SegmentModels in the
    gateway's own process, one hop less per request."""

    def __init__(self, handle: DeploymentHandle | None, cfg: ServeConfig) -> None:
        self.handle = handle
        self.local = SegmentModels(cfg.model_dump()) if handle is None else None

    async def __call__(self, method: str, model_id: str, *args: Any) -> Any:
        if self.local is not None:
            return await getattr(self.local, method)(model_id, *args)
        assert self.handle is not None
        handle = self.handle if method == "__call__" else getattr(self.handle, method)
        return await handle.options(multiplexed_model_id=model_id).remote(model_id, *args)


# Defined before the ingress: `serve.ingress` pickles the routes (and the globals they use) at
# class definition, so a helper defined after the class would be missing on the replica.
def prune_snapshots(registry: Registry, domain: str, keep: int) -> list[int]:
    """Remove the oldest AdaBN snapshots of `domain` beyond `keep`; aliased ones (production,
    candidate) and bases of other versions are never removed. Returns the removed versions."""
    aliased = set(registry.aliases(domain).values())
    used_as_base = {
        (e.manifest["base"] or {}).get("version")
        for e in registry.entries()
        if (e.manifest.get("base") or {}).get("domain") == domain
    }
    spare = [
        v
        for v in registry.versions(domain)
        if v not in aliased
        and v not in used_as_base
        and registry.get_entry(domain, v).manifest["lineage"].get("method") == SNAPSHOT_METHOD
    ]
    doomed = spare[: max(len(spare) - keep, 0)]
    for version in doomed:
        registry.remove(domain, version)
    return doomed


@serve.ingress(api)
class Gateway:
    def __init__(self, models: DeploymentHandle | None, cfg: dict) -> None:
        self.cfg = ServeConfig.model_validate(cfg)
        self.models = ModelCalls(models, self.cfg)
        self.registry = Registry(self.cfg.registry)
        self.tokens = TokenTable.read(self.cfg.token_file) if self.cfg.token_file and self.cfg.auth == "token" else None
        self._entries: dict[tuple[str, str], tuple[float, Entry]] = {}
        self._candidates: dict[str, tuple[float, Entry | None]] = {}
        self._signatures: dict[str | None, Signature | None] = {}  # training signatures by content hash
        self.traffic = TrafficStore(self.cfg.registry, self.cfg.capture_max_images, self.cfg.capture_max_age_s)
        self._background: set[asyncio.Task] = set()
        self.skipped_background = 0

    def _denied(self, request: Request, role: str) -> JSONResponse | None:
        """None when the request's bearer token grants `role`; else the 401/403 answer."""
        if self.tokens is None:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return error(401, "authentication required", "send 'Authorization: Bearer <token>'")
        client = self.tokens.client(token.strip())
        if client is None:
            return error(401, "unknown token", "the token is not in the server's token file")
        if not client.may(role):
            return error(403, "forbidden", f"client {client.name!r} has role {client.role!r}; this needs {role!r}")
        return None

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """`degraded` (with the broken domains named) when some domain's registry files are corrupt."""
        broken = [d for d in self.registry.domains() if "error" in self._domain_listing(d)]
        return {
            "status": "degraded" if broken else "ok",
            "domains": len(self.registry.domains()),
            **({"unavailable": broken} if broken else {}),
        }

    def _domain_listing(self, domain: str) -> dict[str, Any]:
        try:
            versions = []
            for version in self.registry.versions(domain):
                entry = self.registry.get_entry(domain, version)
                versions.append(
                    {
                        "version": version,
                        "metrics": entry.manifest["metrics"],
                        "bytes": entry.manifest["bytes"],
                        "base": entry.manifest["base"],
                    }
                )
            return {"versions": versions, "aliases": self.registry.aliases(domain)}
        except RegistryError as exc:
            return {"error": "domain unavailable", "detail": str(exc)}

    @api.get("/v1/domains")
    async def domains(self, request: Request) -> Any:
        if denied := self._denied(request, "read"):
            return denied
        listing = {d: self._domain_listing(d) for d in self.registry.domains()}
        healthy = [d for d, shown in listing.items() if "error" not in shown]
        for domain, drift in zip(healthy, await asyncio.gather(*(self._drift(d) for d in healthy))):
            listing[domain]["drift"] = drift
            if self._captures(domain):
                listing[domain]["captured"] = len(await asyncio.to_thread(self.traffic.items, domain))
        return {"domains": listing}

    async def _drift(self, domain: str) -> dict[str, Any]:
        """How far the production model's recent images (on the replica that answers) are from its
        training images: symmetric KL of their BatchNorm-input statistics (`engine.signature`),
        against `drift_factor` times the version's radius."""
        try:
            entry = self._resolve(domain, "production")
            trained = await asyncio.to_thread(self._training_signature, entry)
        except RegistryError as exc:
            return {"drifted": None, "detail": str(exc)[:200]}
        if trained is None or trained.radius is None:
            return {"drifted": None, "detail": f"{entry.ref} was registered without a signature of its images"}
        threshold = self.cfg.drift_factor * trained.radius
        if not self.cfg.drift_window:
            return {"drifted": None, "detail": "drift tracking is off (drift_window: 0)"}
        try:
            recent = await asyncio.wait_for(self.models("drift", entry.ref), self.cfg.body_timeout_s)
        except (TimeoutError, *REPLICA_GONE):
            return {"drifted": None, "detail": "no model replica answered"}
        if recent is None:
            return {
                "drifted": False,
                "distance": None,
                "recent_images": 0,
                "threshold": threshold,
                "version": entry.version,
            }
        seen = Signature.from_bytes(recent)
        gap = distance(seen, trained)
        return {
            "drifted": gap > threshold,
            "distance": round(gap, 6),
            "recent_images": seen.images,
            "threshold": round(threshold, 6),
            "version": entry.version,
        }

    def _training_signature(self, entry: Entry) -> Signature | None:
        digest = (entry.manifest.get("signatures") or {}).get("own")
        if digest not in self._signatures:
            self._signatures[digest] = self.registry.signature(entry)
        return self._signatures[digest]

    @api.post("/v1/domains/{domain}/segment")
    async def segment(
        self,
        domain: str,
        request: Request,
        format: str = Query("png", pattern="^(png|json|overlay)$"),
        version: str = Query("production"),
    ):
        if denied := self._denied(request, "read"):
            return denied
        try:
            check_domain(domain)
        except RegistryError as exc:
            return error(400, "bad domain name", str(exc))
        try:
            check_version(version)
        except RegistryError as exc:
            return error(400, "bad version", f"use a version number or an alias name: {str(exc)[:200]}")
        try:
            entry = self._resolve(domain, version)
        except CorruptRegistry as exc:
            return error(503, "domain unavailable", str(exc))
        except RegistryError as exc:
            return error(404, "unknown domain or version", str(exc))
        upload = await self._upload(request)
        if isinstance(upload, JSONResponse):
            return upload
        return await self._answer(entry, *upload, format, mirror=version == "production")

    @api.post("/v1/segment")
    async def segment_routed(self, request: Request, format: str = Query("png", pattern="^(png|json|overlay)$")):
        """Segment with the production model of the domain nearest to the image (`serving.routing`);
        an image far from every domain is `unknown`: served by `default_domain` (else the routing
        model) and captured into the `new` pool."""
        if denied := self._denied(request, "read"):
            return denied
        if self.cfg.routing_base is None:
            return error(
                409, "routing is off", "name the domain (POST /v1/domains/{domain}/segment) or set routing_base"
            )
        upload = await self._upload(request)
        if isinstance(upload, JSONResponse):
            return upload
        body, image = upload
        try:
            route = await self._call_models(self.cfg.routing_base, image, method="route")
        except REPLICA_GONE as exc:
            return error(503, "model replica unavailable", f"{type(exc).__name__}; retry shortly")
        except RegistryError as exc:
            return error(503, "routing model unavailable", str(exc).strip().splitlines()[-1][:300])
        if route is None:
            return error(
                503, "no routable domain", f"no production version has a signature under {self.cfg.routing_base}"
            )
        served = self.cfg.default_domain if route.unknown else route.domain
        try:
            entry = self._resolve(served, "production") if served else self.registry.resolve(self.cfg.routing_base)
        except RegistryError as exc:
            return error(503, "domain unavailable", str(exc))
        if route.unknown:  # not the default domain's traffic: kept apart, in the `new` pool
            self._in_background(self._capture(NEW_POOL, body))
        return await self._answer(entry, body, image, format, mirror=not route.unknown, route=route)

    async def _upload(self, request: Request) -> tuple[bytes, torch.Tensor] | JSONResponse:
        """The request's image (its bytes and decoded tensor), or the 4xx answer: sizes checked from
        the headers before decoding, the body capped while streaming."""
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype not in ("image/png", "image/jpeg", "application/octet-stream", ""):
            return error(415, "unsupported content type", f"{ctype!r}; send image/png or image/jpeg")
        length = request.headers.get("content-length", "")
        if length and (not length.isascii() or not length.isdigit()):
            return error(400, "bad content-length", f"{length[:40]!r}")
        if length and int(length) > self.cfg.max_image_bytes:
            return error(413, "image too large", f"{length} bytes > limit {self.cfg.max_image_bytes}")
        try:
            body = await asyncio.wait_for(read_capped(request, self.cfg.max_image_bytes), self.cfg.body_timeout_s)
        except BodyTooLarge as exc:
            return error(413, "image too large", str(exc))
        except TimeoutError:
            return error(408, "request body too slow", f"not received within {self.cfg.body_timeout_s} s")
        if not body:
            return error(400, "empty body", "POST the PNG or JPEG bytes as the request body")
        try:
            image = await asyncio.to_thread(decode_upload, body, self.cfg.max_pixels)
        except ImageTooLarge as exc:
            return error(413, "image too large", str(exc))
        except BadShape as exc:
            return error(422, "unsupported image shape", str(exc))
        except UnsupportedImage as exc:
            return error(415, "unsupported image format", str(exc))
        except BadImage as exc:
            return error(400, "not a valid image", str(exc))
        return body, image

    async def _answer(
        self, entry: Entry, body: bytes, image: torch.Tensor, format: str, mirror: bool, route: Route | None = None
    ) -> Response:
        """Segment with `entry`'s model and answer in `format`; then, off the request's path, capture
        the image and (for a production request) mirror it to the domain's candidate."""
        try:
            result = await self._call_models(entry.ref, image)
        except REPLICA_GONE as exc:
            return error(503, "model replica unavailable", f"{type(exc).__name__}; retry shortly")
        except RegistryError as exc:  # raised on the replica: the version's weights are corrupt or gone
            return error(503, "domain unavailable", str(exc).strip().splitlines()[-1][:300])
        if self._captures(entry.domain) and not (route is not None and route.unknown):
            self._in_background(self._capture(entry.domain, body))
        if mirror and self.cfg.shadow_share and random.random() < self.cfg.shadow_share:
            candidate = self._candidate(entry.domain)
            if candidate is not None and candidate.version != entry.version:
                self._in_background(self._shadow(candidate, entry, image))
        mask = result["mask"]
        headers = {
            "x-model-version": str(entry.version),
            "x-model-id": result["model_id"],
            "x-batch-size": str(result["batch_size"]),
        }
        if route is not None:
            headers.update(
                {
                    "x-route-domain": route.domain,
                    "x-route-distance": f"{route.distance:.6f}",
                    "x-route-unknown": str(route.unknown).lower(),
                }
            )
        if format == "json":
            meta = entry.manifest["meta"]
            return JSONResponse(
                {
                    "domain": entry.domain,
                    "version": entry.version,
                    "model_id": result["model_id"],
                    "height": int(mask.shape[0]),
                    "width": int(mask.shape[1]),
                    "shares": class_shares(mask, meta["classes"]),
                    **({"route": route.as_json()} if route is not None else {}),
                },
                headers=headers,
            )
        if format == "overlay":
            meta = entry.manifest["meta"]
            png = overlay_png(image, mask, meta["palette"], meta["classes"])
        else:
            png = mask_png(mask)
        return Response(content=png, media_type="image/png", headers=headers)

    def _captures(self, domain: str) -> bool:
        return domain in self.cfg.capture_domains or "*" in self.cfg.capture_domains

    def _in_background(self, work: Any) -> None:
        """Run `work` after the answer, never making a request wait: beyond `max_background_tasks`
        in flight it is skipped (and counted), not queued."""
        if len(self._background) >= self.cfg.max_background_tasks:
            work.close()
            self.skipped_background += 1
            return
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _capture(self, domain: str, body: bytes) -> None:
        if not self._captures(domain):
            return
        try:
            await asyncio.to_thread(self.traffic.capture, domain, body, (sniff(body) or "image/bin").split("/")[1])
        except Exception as exc:  # a failed capture must never reach the client: log and go on
            print(f"[raysegment] capture for {domain} failed: {type(exc).__name__}: {exc}")

    async def _shadow(self, candidate: Entry, production: Entry, image: torch.Tensor) -> None:
        try:
            scores = await self.models("shadow_compare", candidate.ref, image.numpy(), production.ref)
            await asyncio.to_thread(
                self.traffic.record_shadow, candidate.domain, candidate.version, production.version, [scores]
            )
        except Exception as exc:  # the shadow never affects the answer
            print(f"[raysegment] shadow of {candidate.ref} failed: {type(exc).__name__}: {exc}")

    def _candidate(self, domain: str) -> Entry | None:
        """The domain's `candidate` version, if any (absence cached like a hit, for `resolve_ttl_s`)."""
        now = time.monotonic()
        hit = self._candidates.get(domain)
        if hit is None or now - hit[0] >= self.cfg.resolve_ttl_s:
            try:
                entry: Entry | None = self.registry.get_entry(domain, "candidate")
            except RegistryError:
                entry = None
            hit = self._candidates[domain] = (now, entry)
        return hit[1]

    def _resolve(self, domain: str, version: str, fresh: bool = False) -> Entry:
        """domain + version/alias -> registry entry ("production" falls back to the newest), cached for
        `resolve_ttl_s` so a hot endpoint does not re-read manifests on every request."""
        key, now = (domain, version), time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and not fresh and now - hit[0] < self.cfg.resolve_ttl_s:
            return hit[1]
        entry = self.registry.get_entry(
            domain, None if version == "production" and "production" not in self.registry.aliases(domain) else version
        )
        self._entries[key] = (now, entry)
        return entry

    async def _call_models(
        self, model_id: str, image: torch.Tensor, method: str = "__call__", attempts: int = 3
    ) -> Any:
        """Call the model deployment, retrying when the replica it picked has died."""
        for attempt in range(attempts):
            try:
                return await self.models(method, model_id, image.numpy())
            except REPLICA_GONE:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    @api.post("/v1/domains/{domain}/adabn-snapshot")
    async def adabn_snapshot(self, domain: str, request: Request, version: str = Query("production")):
        """Store the online-adapted BatchNorm statistics of domain@version as a new `candidate` version
        (production only through `raysegment registry promote`, which judges it on held-back images)."""
        if denied := self._denied(request, "admin"):
            return denied
        if not self.cfg.online_adabn:
            return error(409, "online AdaBN is off", "start the app with online_adabn: true")
        try:
            check_domain(domain)
            entry = self._resolve(domain, version, fresh=True)
        except RegistryError as exc:
            return error(404, "unknown domain or version", str(exc))
        snap = await self.models("batchnorm_snapshot", entry.ref)
        if snap["images"] == 0:
            return error(409, "nothing to store", f"{entry.ref} has seen no images on this replica yet")
        decision = await asyncio.to_thread(self._register_adapted, entry, snap)
        pruned = await asyncio.to_thread(prune_snapshots, self.registry, domain, self.cfg.max_snapshots_per_domain)
        return {
            "domain": domain,
            "version": decision.version,
            "parent": entry.ref,
            "images": snap["images"],
            "guard_restores": snap["restores"],
            "promoted": decision.promoted,
            "reason": decision.reason,
            "pruned": pruned,
        }

    def _register_adapted(self, entry: Entry, snap: dict[str, Any]) -> Decision:
        """A snapshot is a candidate: registered with its own (empty) metrics, never its parent's,
        and handed to the promotion policy, which has no held-back score for it here."""
        model, meta, _ = self.registry.load(entry.ref)
        model.load_state_dict({**model.state_dict(), **snap["state"]})
        version = self.registry.register(
            entry.domain,
            model,
            meta,
            {},
            entry.manifest["config"],
            parent=entry.ref,
            lineage={"method": SNAPSHOT_METHOD, "target_labels": 0, "images": snap["images"]},
        )
        return promote_if_better(self.registry, entry.domain, version, None, None, "proxy", entry.ref)


def own_batchnorm_buffers(model: torch.nn.Module) -> None:
    """Give the model private copies of its BatchNorm statistics (the rest stays shared)."""
    for module in model.modules():
        if is_batchnorm(module) and module.running_mean is not None:
            module.running_mean = module.running_mean.clone()
            module.running_var = module.running_var.clone() if module.running_var is not None else None
            if module.num_batches_tracked is not None:
                module.num_batches_tracked = module.num_batches_tracked.clone()


def build_app(args: dict) -> serve.Application:
    """Application builder for `serve run`/`serve deploy` (args = ServeConfig fields)."""
    cfg = ServeConfig.model_validate(args)
    model_replica: dict[str, Any] = {  # a replica that runs the models, in either topology
        "autoscaling_config": {
            "min_replicas": cfg.min_replicas,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
        },
        "max_queued_requests": cfg.max_queued_requests,
        "ray_actor_options": {"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
    }
    if cfg.topology == "fused":  # its requests are in flight while their uploads are read, too
        service = serve.deployment(
            name="SegmentService", max_ongoing_requests=max(cfg.max_batch_size * 4, 32), **model_replica
        )(Gateway)
        return service.bind(None, cfg.model_dump())
    models = serve.deployment(
        name="SegmentModels", max_ongoing_requests=max(cfg.max_batch_size * 2, 16), **model_replica
    )(SegmentModels).bind(cfg.model_dump())
    gateway = serve.deployment(
        name="Gateway",
        num_replicas=cfg.ingress_replicas,
        ray_actor_options={"num_cpus": cfg.ingress_cpus},
        max_ongoing_requests=256,
        max_queued_requests=cfg.max_queued_requests,
    )(Gateway)
    return gateway.bind(models, cfg.model_dump())


__all__ = ["Gateway", "SegmentModels", "build_app", "sniff"]
