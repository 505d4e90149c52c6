"""The model process: per replica an LRU of domain models (`@serve.multiplexed`), batches of
concurrent requests (`@serve.batch`), drift sampling, online AdaBN; and `ModelCalls`, how the
gateway reaches it (a Serve handle routed by model id, or in-process in the fused topology).

Images of one size in a batch run as one tensor at the model's working scale (`model.json`'s
`resize`), their logits resized back to the upload's size. Models of many domains share their
base's tensors on a replica (`Registry.load_shared`): a domain loaded next to others costs only
its delta; with online AdaBN it also gets private BatchNorm statistics (never the shared ones).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import torch
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from raysegment.augment import group_by_size, resize_images, scaled_size, to_float
from raysegment.config import EvalConfig, ResizeConfig
from raysegment.engine.continual import OnlineAdapter
from raysegment.engine.evaluate import predict_full_size
from raysegment.engine.proxies import paired_consistency
from raysegment.engine.signature import RunningSignature, batchnorm_inputs, image_signatures
from raysegment.export.runtime import OrtSegmenter
from raysegment.models.freeze import is_batchnorm
from raysegment.models.outputs import class_map
from raysegment.models.segmenter import Segmenter
from raysegment.registry import ModelVersion, Registry, RegistryError, SharedBases
from raysegment.registry.artifacts import ONNX, Artifacts
from raysegment.serving.config import ServeConfig
from raysegment.serving.errors import DomainUnavailable, ReplicaGone
from raysegment.serving.routing import Route, RoutingTable

# Failures of the model deployment itself (a replica died, none is up yet, its queue is full): worth
# a retry, then a 503. Anything else (corrupt weights, a bug) is never retried or disguised as this.
REPLICA_GONE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError, BackPressureError)
WHOLE_IMAGE = EvalConfig(mode="whole")
log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A model on a replica and the working scale it was trained at (it is served at it too).
    `answer` computes the masks: the torch model, or its ONNX export under ONNX Runtime; the torch
    model stays for what reads its insides (drift statistics, routing signatures, online AdaBN)."""

    model: torch.nn.Module
    scale: ResizeConfig | None
    num_classes: int
    answer: torch.nn.Module


def received(image: np.ndarray) -> torch.Tensor:
    """An image as the gateway ships it to the model replica: a numpy uint8 array, which Ray sends as
    a buffer without pickling its bytes (a torch tensor goes through torch.save: at 2 megapixels 13 ms
    against 21 us, `benchmarks/bench_wire.py`) -> the (3,H,W) uint8 tensor; a read-only (shared)
    array is copied first, so torch never holds memory it must not write."""
    return torch.from_numpy(image if image.flags.writeable else image.copy())


def own_batchnorm_buffers(model: torch.nn.Module) -> None:
    """Give the model private copies of its BatchNorm statistics (the rest stays shared)."""
    for module in model.modules():
        if is_batchnorm(module) and module.running_mean is not None:
            module.running_mean = module.running_mean.clone()
            module.running_var = module.running_var.clone() if module.running_var is not None else None
            if module.num_batches_tracked is not None:
                module.num_batches_tracked = module.num_batches_tracked.clone()


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
        self.runtimes: dict[str, str] = {}  # per model id: what answered its last batch
        self.drift_batches: dict[str, int] = {}  # per model id: batches segmented (drift samples one in drift_every)
        loop = self.cfg.closed_loop
        base = loop.routing_base
        self.routing = RoutingTable(self.registry, base, loop.unknown_factor) if base else None
        online, runtime = self.cfg.online.adabn, self.cfg.replicas.runtime

        # Plain closures, not bound methods: Serve keeps its LRU / batch queue on the wrapped object.
        async def load(model_id: str) -> Loaded:
            model, meta, entry = await asyncio.to_thread(self.registry.load_shared, model_id, self.bases)
            if online:
                own_batchnorm_buffers(model)
            answer = await asyncio.to_thread(self._onnx_runtime, model, entry) if runtime == "onnxruntime" else None
            return Loaded(model, meta.resize, meta.num_classes, answer if answer is not None else model)

        async def segment_batch(model_ids: list[str], images: list[torch.Tensor]) -> list[Segmented]:
            return await self._segment_batch(model_ids, images)

        replicas = self.cfg.replicas
        self.get_model = serve.multiplexed(max_num_models_per_replica=replicas.max_models_per_replica)(load)
        # Called (model_id, image); the batch function gets both as lists (mypy sees only one-argument batching).
        self.segment: Any = serve.batch(
            max_batch_size=replicas.max_batch_size, batch_wait_timeout_s=replicas.batch_wait_timeout_s
        )(segment_batch)

    def _onnx_runtime(self, model: torch.nn.Module, entry: ModelVersion) -> OrtSegmenter | None:
        """The version's ONNX export in a session of this replica's CPUs (None: it has none)."""
        found = Artifacts(self.registry.store).load(entry, ONNX)
        if found is None:
            log.info("%s has no ONNX export: served by torch", entry.ref)
            return None
        threads = max(1, round(self.cfg.replicas.cpus_per_replica))
        return OrtSegmenter.like(cast(Segmenter, model), found[0], threads, self.cfg.replicas.onnx_providers)

    async def _segment_batch(self, model_ids: list[str], images: list[torch.Tensor]) -> list[Segmented]:
        """One forward per (model, image size) in the batch: Serve splits batches by the handle's model
        id (split topology); a fused replica's batch may hold several models."""
        masks: list[torch.Tensor] = [torch.empty(0)] * len(images)
        same_model: dict[str, list[int]] = {}
        for k, model_id in enumerate(model_ids):
            same_model.setdefault(model_id, []).append(k)
        for model_id, members in same_model.items():
            await self._segment_model(model_id, [images[k] for k in members], members, masks)
        return [
            Segmented(mask, model_id, len(same_model[model_id]), self.runtimes.get(model_id, "torch"))
            for mask, model_id in zip(masks, model_ids, strict=True)
        ]

    async def _segment_model(
        self, model_id: str, images: list[torch.Tensor], slots: list[int], masks: list[torch.Tensor]
    ) -> None:
        """Segment `images` with one model; the mask of images[i] goes to masks[slots[i]]."""
        loaded = await self.get_model(model_id)
        self.runtimes[model_id] = "torch" if loaded.answer is loaded.model else "onnxruntime"
        for (h, w), index in group_by_size(img.shape[-2:] for img in images).items():  # one size each, unpadded
            batch = torch.stack([to_float(images[k]) for k in index]).to(self.device)
            batch = resize_images(batch, scaled_size(h, w, loaded.scale))
            if self.cfg.online.adabn:
                adapter = self._adapter(model_id, loaded)
                adapter.adapt(batch)
                adapter.watch(batch)
            logits = None
            if self._drift_sample(model_id):  # the statistics are torch's (under ONNX Runtime: one more forward)
                with batchnorm_inputs(loaded.model) as captured:
                    logits = predict_full_size(loaded.model, batch, (h, w), WHOLE_IMAGE)
                recent = self.recent.setdefault(model_id, RunningSignature(self.cfg.closed_loop.drift_window))
                recent.update([m for m, _ in captured], [q for _, q in captured])
            if logits is None or loaded.answer is not loaded.model:
                logits = predict_full_size(loaded.answer, batch, (h, w), WHOLE_IMAGE)
            preds = class_map(logits).to(torch.uint8).cpu()  # class ids fit a byte: 1/8 of int64 to ship back
            for row, k in enumerate(index):
                masks[slots[k]] = preds[row]
        if self.cfg.online.adabn:
            self.adapted_images[model_id] = self.adapted_images.get(model_id, 0) + len(images)

    def _drift_sample(self, model_id: str) -> bool:
        """Whether this batch of `model_id` feeds its drift statistics: the first, then one in `drift_every`."""
        if not self.cfg.closed_loop.drift_window:
            return False
        batches = self.drift_batches.get(model_id, 0)
        self.drift_batches[model_id] = batches + 1
        return batches % self.cfg.closed_loop.drift_every == 0

    async def segment_image(self, model_id: str, image: np.ndarray) -> Segmented:
        """Segment one image with `model_id`, batched with the concurrent requests for it."""
        return await self.segment(model_id, received(image))

    def _adapter(self, model_id: str, loaded: Loaded) -> OnlineAdapter:
        """The online AdaBN (and its guard) of a loaded model; a reloaded model starts afresh."""
        adapter = self.adapters.get(model_id)
        if adapter is None or adapter.model is not loaded.model:
            online = self.cfg.online
            window = online.guard_window
            adapter = OnlineAdapter(loaded.model, loaded.num_classes, "adabn", window > 0, window, online.momentum)
            self.adapters[model_id] = adapter
        return adapter

    async def _at_scale(self, loaded: Loaded, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        return resize_images(to_float(image)[None].to(self.device), scaled_size(h, w, loaded.scale))

    async def route(self, model_id: str, image: np.ndarray) -> Route | None:
        """The nearest domain to this image under the routing model `model_id`."""
        if self.routing is None:
            raise RuntimeError("routing is off: set closed_loop.routing_base")
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

    async def batchnorm_snapshot(self, model_id: str) -> BatchNormSnapshot:
        """This replica's BatchNorm statistics for `model_id` and how many images shaped them."""
        loaded = await self.get_model(model_id)
        state = {
            k: v.detach().cpu() for k, v in loaded.model.state_dict().items() if "running_" in k or "num_batches" in k
        }
        adapter = self.adapters.get(model_id)
        restores = adapter.restores if adapter is not None else 0
        return BatchNormSnapshot(model_id, self.adapted_images.get(model_id, 0), state, restores)


@dataclass(frozen=True)
class Segmented:
    """One image's answer from a model replica."""

    mask: torch.Tensor  # (H, W) uint8 class ids at the upload's size
    model_id: str
    batch_size: int  # how many images of this model shared its forward
    runtime: str  # torch or onnxruntime


@dataclass(frozen=True)
class BatchNormSnapshot:
    """A replica's online-adapted BatchNorm statistics of one model, and what shaped them."""

    model_id: str
    images: int
    state: dict[str, torch.Tensor]
    restores: int  # how often the guard put the statistics back


T = TypeVar("T")


class ModelCalls:
    """How the gateway reaches the models. Split topology: the SegmentModels deployment over a Serve
    handle, routed by model id to a replica that has the model loaded. Fused: a SegmentModels in the
    gateway's own process, one hop less per request. A replica that is gone is retried, then
    `ReplicaGone` (503); a registry failure on the replica (corrupt weights) is `DomainUnavailable`."""

    def __init__(self, handle: DeploymentHandle | None, cfg: ServeConfig) -> None:
        self.handle = handle
        self.local = SegmentModels(cfg.model_dump()) if handle is None else None

    def _routed(self, model_id: str) -> Any:  # a DeploymentHandle routed to a replica holding model_id
        assert self.handle is not None
        return self.handle.options(multiplexed_model_id=model_id)

    async def segment(self, model_id: str, image: np.ndarray) -> Segmented:
        """`model_id`'s mask of `image` (batched with concurrent requests on the replica)."""

        async def once() -> Segmented:
            if self.local is not None:
                return await self.local.segment_image(model_id, image)
            return await self._routed(model_id).segment_image.remote(model_id, image)

        return await self._retrying(once)

    async def route(self, model_id: str, image: np.ndarray) -> Route | None:
        """The nearest domain to `image` under the routing model `model_id`."""

        async def once() -> Route | None:
            if self.local is not None:
                return await self.local.route(model_id, image)
            return await self._routed(model_id).route.remote(model_id, image)

        return await self._retrying(once)

    async def drift(self, model_id: str) -> bytes | None:
        """A replica's signature of `model_id`'s recent images (one try: the next poll asks again)."""

        async def once() -> bytes | None:
            if self.local is not None:
                return await self.local.drift(model_id)
            return await self._routed(model_id).drift.remote(model_id)

        return await self._retrying(once, attempts=1)

    async def shadow_compare(self, candidate_ref: str, image: np.ndarray, production_ref: str) -> tuple[float, float]:
        """(candidate, production) consistency proxy on one mirrored image."""

        async def once() -> tuple[float, float]:
            if self.local is not None:
                return await self.local.shadow_compare(candidate_ref, image, production_ref)
            return await self._routed(candidate_ref).shadow_compare.remote(candidate_ref, image, production_ref)

        return await self._retrying(once)

    async def batchnorm_snapshot(self, model_id: str) -> BatchNormSnapshot:
        """A replica's online-adapted BatchNorm statistics of `model_id`."""

        async def once() -> BatchNormSnapshot:
            if self.local is not None:
                return await self.local.batchnorm_snapshot(model_id)
            return await self._routed(model_id).batchnorm_snapshot.remote(model_id)

        return await self._retrying(once)

    async def _retrying(self, once: Callable[[], Awaitable[T]], attempts: int = 3) -> T:
        """`once()`, retried when the replica it reached has died; a registry failure on the replica
        (corrupt weights) is `DomainUnavailable`, a replica still gone after `attempts` `ReplicaGone`."""
        for attempt in range(attempts):
            try:
                return await once()
            except REPLICA_GONE as exc:
                if attempt == attempts - 1:
                    raise ReplicaGone(f"{type(exc).__name__}; retry shortly") from exc
                await asyncio.sleep(0.5 * (attempt + 1))
            except RegistryError as exc:  # raised on the replica: the version's weights are corrupt or gone
                raise DomainUnavailable(str(exc).strip().splitlines()[-1][:300]) from exc
        raise AssertionError("unreachable")
