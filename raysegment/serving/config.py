"""Serving configuration, validated once (CLI flags or the Serve config file's args)."""

from __future__ import annotations

import ipaddress
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

# Ray Serve's throughput settings, read by each Serve process (proxy, replicas) when it starts, so
# they belong in every node's environment before `ray start` (cluster.yaml, the test cluster) or
# in the process that starts a local Ray: user code and the router on the replica's own event loop,
# request logs buffered, proxy -> replica over gRPC. benchmarks/bench_serve.py measures them.
SERVE_PROCESS_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_PROXY_USE_GRPC": "1",
    # A busy node (a training run on the same cores) starts the proxy slower than Serve's 5 s
    # readiness check, which then kills it three times over: give it a minute, and health checks room.
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
    # Oversized declared bodies are refused in the proxy, before `Expect: 100-continue` is answered.
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "raysegment.serving.proxy_guard:middlewares",
}


def use_serve_process_env() -> None:
    """Adopt SERVE_PROCESS_ENV (unless set otherwise) for a local Ray this process is about to start."""
    for key, value in SERVE_PROCESS_ENV.items():
        os.environ.setdefault(key, value)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Section):
    """What one request may cost: the upload checks (`serving.upload`)."""

    max_image_bytes: PositiveInt = Field(10 * 1024 * 1024, description="larger bodies get 413")
    max_pixels: PositiveInt = Field(4096 * 4096, description="images whose header declares more get 413")
    body_timeout_s: PositiveFloat = Field(
        10.0, description="a body not received within this gets 408 and its connection is closed"
    )
    max_queued_requests: PositiveInt = Field(256, description="per deployment; beyond it Serve answers 503")


class Replicas(_Section):
    """How the model process runs (`serving.replica`) and scales."""

    max_models_per_replica: PositiveInt = Field(8, description="LRU of domain@version models per replica")
    max_batch_size: PositiveInt = 8
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    min_replicas: int = Field(1, ge=0)
    max_replicas: PositiveInt = 2
    target_ongoing_requests: PositiveFloat = 4
    cpus_per_replica: float = Field(0.5, ge=0)
    gpus_per_replica: float = Field(0.0, ge=0)
    ingress_cpus: float = Field(0.1, ge=0)
    topology: Literal["split", "fused"] = Field(
        "split",
        description="split: Gateway replicas (validate, decode, encode) call SegmentModels replicas routed by model "
        "id, so CPU gateways can feed a GPU replica; fused: one deployment does both, a hop less per request (CPU "
        "nodes; scaled by the replica settings, and any replica may load any domain)",
    )
    runtime: Literal["torch", "onnxruntime"] = Field(
        "torch",
        description="onnxruntime: each version's ONNX export (`raysegment export`) answers requests, in a session "
        "of the replica's CPUs; a version without one is served by torch (said in /v1/domains)",
    )
    onnx_providers: tuple[str, ...] = Field(
        ("CPUExecutionProvider",),
        description="ONNX Runtime execution providers in order of preference, e.g. CUDAExecutionProvider, "
        "TensorrtExecutionProvider (those the installed onnxruntime lacks are skipped; CPU is the fallback)",
    )
    ingress_replicas: PositiveInt = Field(
        1, description="Gateway replicas (split): they decode uploads, so a fast model replica (a GPU) needs several"
    )
    drain_poll_s: PositiveFloat = Field(
        0.2,
        description="how often a stopping replica checks that its requests have finished (Serve's "
        "graceful_shutdown_wait_loop_s, 2 s by default: every scale-down, redeploy and delete waits at least that)",
    )


class Online(_Section):
    """Online AdaBN on each domain's endpoint images (`engine.continual`)."""

    adabn: bool = Field(
        False,
        description="adapt each domain's BatchNorm statistics to the images its "
        "endpoint receives (label-free); POST .../adabn-snapshot stores them",
    )
    momentum: float = Field(0.01, gt=0, le=1, description="weight of each new batch's statistics")
    guard_window: int = Field(
        32,
        ge=0,
        description="online AdaBN's guard: every this many images the adapted statistics are judged against "
        "production's by the consistency proxy, and reset to them on a loss (0: no guard)",
    )
    max_snapshots_per_domain: PositiveInt = Field(
        4, description="unaliased AdaBN snapshots kept per domain; the oldest goes when a new one passes the cap"
    )


class ClosedLoop(_Section):
    """Traffic capture, drift, routing and shadow (`serving.mirror`, `serving.routing`)."""

    capture_domains: list[str] = Field(
        default_factory=list,
        description="domains whose request images are captured into traffic/<domain>/ ('*': every "
        "domain; 'new': images the router found far from every domain); empty: nothing is stored",
    )
    capture_max_images: PositiveInt = Field(256, description="reservoir size per domain")
    capture_max_age_s: PositiveFloat = Field(7 * 86400, description="captured images older than this leave the sample")
    max_background_tasks: PositiveInt = Field(
        16, description="captures and shadow calls in flight per gateway; beyond it they are skipped, never queued"
    )
    drift_window: int = Field(
        64, ge=0, description="recent images per domain whose BatchNorm statistics the drift signal tracks (0: off)"
    )
    drift_every: PositiveInt = Field(
        8,
        description="the drift statistics come from one batch in this many per model (1: every batch): taking them "
        "costs a pass over every BatchNorm input (bench_serve.py: 0.64 -> 0.74 of the CPU limit without them)",
    )
    drift_factor: PositiveFloat = Field(
        1.0,
        description="a domain has drifted when its recent traffic, pooled, is farther from its training images "
        "than this times the radius of one training image (engine.signature.held_out_radius)",
    )
    routing_base: str | None = Field(
        None, description="DOMAIN@VERSION of the model routing compares images under; None: POST /v1/segment is off"
    )
    unknown_factor: PositiveFloat = Field(
        2.0, description="an image farther than this times the nearest domain's radius is `unknown`"
    )
    default_domain: str | None = Field(None, description="serves `unknown` images (None: the routing model itself)")
    shadow_share: float = Field(
        0.0, ge=0, le=1, description="share of a domain's production requests mirrored to its `candidate`"
    )


SECTIONS: dict[str, type[_Section]] = {
    "limits": Limits,
    "replicas": Replicas,
    "online": Online,
    "closed_loop": ClosedLoop,
}


class ServeConfig(BaseModel):
    """Everything `raysegment serve` runs with, in sections that match the serving modules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registry: str = Field(description="registry folder or s3://bucket/prefix")
    auth: Literal["token", "none"] = Field(
        "token",
        description="token: every request needs a bearer token from token_file; none: only for a loopback bind_host",
    )
    token_file: str | None = Field(None, description="file of 'name role sha256-hex' lines (hashes, never tokens)")
    bind_host: str = Field("127.0.0.1", description="the address the HTTP proxy listens on")
    resolve_ttl_s: float = Field(
        1.0,
        ge=0,
        description="how long the gateway trusts what it read from the registry; a promotion is live within this time",
    )
    loop_timeout_s: PositiveFloat = Field(3600, description="a loop turn started over HTTP is stopped after this")
    limits: Limits = Limits()
    replicas: Replicas = Replicas()
    online: Online = Online()
    closed_loop: ClosedLoop = ClosedLoop()

    @model_validator(mode="after")
    def _online_adaptation_needs_torch(self) -> ServeConfig:
        if self.online.adabn and self.replicas.runtime == "onnxruntime":
            raise ValueError("online.adabn changes BatchNorm statistics in torch: use replicas.runtime=torch with it")
        return self

    @model_validator(mode="after")
    def _names_are_registry_names(self) -> ServeConfig:
        from raysegment.registry import RegistryError, check_domain

        loop = self.closed_loop
        names = [n for n in loop.capture_domains if n != "*"] + ([loop.default_domain] if loop.default_domain else [])
        try:
            for name in names:
                check_domain(name)
            if loop.routing_base is not None:
                domain, at, version = loop.routing_base.partition("@")
                check_domain(domain)
                if not (at and version.isdigit()):
                    raise ValueError(
                        f"closed_loop.routing_base must be DOMAIN@VERSION (a fixed version), not {loop.routing_base!r}"
                    )
        except RegistryError as exc:
            raise ValueError(str(exc)) from exc
        return self

    @model_validator(mode="after")
    def _strangers_need_tokens(self) -> ServeConfig:
        if self.auth == "token" and not self.token_file:
            raise ValueError("auth: token needs token_file (make one with `raysegment token add NAME ROLE --file F`)")
        if self.auth == "none" and not is_loopback(self.bind_host):
            raise ValueError(
                f"auth: none is only for a loopback bind_host (127.0.0.1), not {self.bind_host!r}: "
                f"anyone who reaches it could use the API; set auth: token and token_file"
            )
        return self
