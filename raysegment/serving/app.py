"""The Serve application: a FastAPI ingress and a multiplexed, batched model deployment.

`POST /v1/domains/{domain}/segment?format=png|json|overlay&version=N|alias` ->
the ingress validates the upload and resolves domain@version in the registry (4xx with a JSON
body on bad input), then calls the `SegmentModels` deployment with
`multiplexed_model_id="domain@version"`. There each replica keeps an LRU of loaded models
(`@serve.multiplexed`) and batches concurrent requests for the same model (`@serve.batch`),
padding images of different sizes to one tensor and cropping each result back.
"""


import asyncio
from typing import Any, Optional

import torch
import torch.nn.functional as F
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from raysegment.augment import to_float
from raysegment.registry import Registry, RegistryError, check_domain
from raysegment.serving.config import ServeConfig
from raysegment.serving.imaging import BadImage, class_shares, decode_upload, mask_png, overlay_png, sniff

api = FastAPI(title="raysegment", description="Per-domain semantic segmentation endpoints.", version="1")


def error(status: int, message: str, detail: str = "") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, "detail": detail})


class SegmentModels:
    """Holds domain models (LRU per replica) and segments batches of same-model images."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = ServeConfig.model_validate(cfg)
        self.registry = Registry(self.cfg.registry)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

        # Plain closures, not bound methods: Serve keeps its LRU / batch queue on the wrapped object.
        async def load(model_id: str) -> torch.nn.Module:
            model, _, _ = await asyncio.to_thread(self.registry.load, model_id)
            return model.to(self.device).eval()

        async def segment_batch(images: list[torch.Tensor]) -> list[dict[str, Any]]:
            return await self._segment_batch(images)

        self.get_model = serve.multiplexed(max_num_models_per_replica=self.cfg.max_models_per_replica)(load)
        self.segment = serve.batch(max_batch_size=self.cfg.max_batch_size,
                                   batch_wait_timeout_s=self.cfg.batch_wait_timeout_s)(segment_batch)

    async def _segment_batch(self, images: list[torch.Tensor]) -> list[dict[str, Any]]:
        model_id = serve.get_multiplexed_model_id()
        model = await self.get_model(model_id)
        h = max(i.shape[1] for i in images)
        w = max(i.shape[2] for i in images)
        batch = torch.stack([F.pad(to_float(i), (0, w - i.shape[2], 0, h - i.shape[1])) for i in images])
        with torch.inference_mode():
            preds = model(batch.to(self.device)).argmax(1).cpu()
        return [{"mask": preds[k, : img.shape[1], : img.shape[2]], "model_id": model_id, "batch_size": len(images)}
                for k, img in enumerate(images)]

    async def __call__(self, image: torch.Tensor) -> dict[str, Any]:
        return await self.segment(image)


@serve.ingress(api)
class Gateway:
    def __init__(self, models, cfg: dict) -> None:
        self.models = models
        self.cfg = ServeConfig.model_validate(cfg)
        self.registry = Registry(self.cfg.registry)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "domains": len(self.registry.domains())}

    @api.get("/v1/domains")
    async def domains(self) -> dict:
        out: dict[str, Any] = {}
        for row in self.registry.list():
            d = out.setdefault(row["domain"], {"versions": [], "aliases": self.registry.aliases(row["domain"])})
            d["versions"].append({"version": row["version"], "metrics": row["metrics"], "bytes": row["bytes"],
                                  "base": row["base"]})
        return {"domains": out}

    @api.post("/v1/domains/{domain}/segment")
    async def segment(self, domain: str, request: Request, format: str = Query("png", pattern="^(png|json|overlay)$"),
                      version: str = Query("production")):
        try:
            check_domain(domain)
        except RegistryError as exc:
            return error(400, "bad domain name", str(exc))
        try:
            entry = self.registry.get_entry(domain, None if version == "production" and
                                            "production" not in self.registry.aliases(domain) else version)
        except RegistryError as exc:
            return error(404, "unknown domain or version", str(exc))
        length = request.headers.get("content-length")
        if length and int(length) > self.cfg.max_image_bytes:
            return error(413, "image too large", f"{length} bytes > limit {self.cfg.max_image_bytes}")
        body = await request.body()
        if not body:
            return error(400, "empty body", "POST the PNG or JPEG bytes as the request body")
        if len(body) > self.cfg.max_image_bytes:
            return error(413, "image too large", f"{len(body)} bytes > limit {self.cfg.max_image_bytes}")
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype not in ("image/png", "image/jpeg", "application/octet-stream", ""):
            return error(415, "unsupported content type", f"{ctype!r}; send image/png or image/jpeg")
        try:
            image = await asyncio.to_thread(decode_upload, body)
        except BadImage as exc:
            return error(400, "not a valid image", str(exc))
        if image.shape[1] * image.shape[2] > self.cfg.max_pixels:
            return error(413, "image too large", f"{image.shape[2]}x{image.shape[1]} px > limit {self.cfg.max_pixels} px")
        result = await self.models.options(multiplexed_model_id=f"{entry.domain}@{entry.version}").remote(image)
        mask = result["mask"]
        headers = {"x-model-version": str(entry.version), "x-model-id": result["model_id"],
                   "x-batch-size": str(result["batch_size"])}
        if format == "json":
            meta = entry.manifest["meta"]
            return JSONResponse({"domain": entry.domain, "version": entry.version, "model_id": result["model_id"],
                                 "height": int(mask.shape[0]), "width": int(mask.shape[1]),
                                 "shares": class_shares(mask, meta["classes"])}, headers=headers)
        if format == "overlay":
            png = overlay_png(image, mask, entry.manifest["meta"]["palette"])
        else:
            png = mask_png(mask)
        return Response(content=png, media_type="image/png", headers=headers)


def build_app(args: dict) -> serve.Application:
    """Application builder for `serve run`/`serve deploy` (args = ServeConfig fields)."""
    cfg = ServeConfig.model_validate(args)
    autoscaling = {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                   "target_ongoing_requests": cfg.target_ongoing_requests}
    models = serve.deployment(SegmentModels, name="SegmentModels",
                              autoscaling_config=autoscaling,
                              max_ongoing_requests=max(cfg.max_batch_size * 2, 16),
                              ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica}
                              ).bind(cfg.model_dump())
    gateway = serve.deployment(Gateway, name="Gateway", ray_actor_options={"num_cpus": cfg.ingress_cpus},
                               max_ongoing_requests=256)
    return gateway.bind(models, cfg.model_dump())


__all__ = ["Gateway", "SegmentModels", "build_app", "sniff"]
