"""The API's response shapes (pydantic), so `/docs` shows real schemas and answers stay typed."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from raysegment.distributed.closed_loop import LoopOutcome
from raysegment.registry.audit import AuditRecord
from raysegment.registry.manifest import VersionRef


class ErrorBody(BaseModel):
    error: str
    detail: str = ""


class Health(BaseModel):
    status: str = Field(description="ok, or degraded when some domain's registry files are corrupt")
    domains: int
    unavailable: list[str] | None = None


class Caller(BaseModel):
    name: str
    role: str


class Version(BaseModel):
    version: int
    method: str | None = Field(None, description="how it was made: source, adabn, tent, self_training, ...")
    target_labels: int | None = Field(None, description="target labels used (0: label-free)")
    judge: str | None = None
    parent: str | None = None
    metrics: dict[str, float] = {}
    bytes: int | None = None
    base: VersionRef | None = None
    time: float | None = None


class Drift(BaseModel):
    drifted: bool | None = Field(description="None: cannot be told (no signature, tracking off, no replica)")
    distance: float | None = None
    threshold: float | None = None
    recent_images: int | None = None
    version: int | None = None
    detail: str | None = None


class ShadowProgress(BaseModel):
    candidate: int
    production: int
    pairs: int
    candidate_mean: float | None = None
    production_mean: float | None = None


class DomainListing(BaseModel):
    versions: list[Version] = []
    aliases: dict[str, int] = {}
    production: int | None = None
    candidate: int | None = None
    runtime: str | None = Field(None, description="what runs production: torch, onnxruntime, or torch as a fallback")
    drift: Drift | None = None
    captured: int | None = None
    last_decision: AuditRecord | None = None
    error: str | None = None
    detail: str | None = None


class Domains(BaseModel):
    domains: dict[str, DomainListing]


class DomainDetail(DomainListing):
    domain: str
    shadow: ShadowProgress | None = None


class HistoryPage(BaseModel):
    domain: str
    total: int
    offset: int
    records: list[AuditRecord]


class Rollback(BaseModel):
    domain: str
    production: int
    previous: int | None
    by: str


class LoopTurnStatus(BaseModel):
    id: str
    domain: str
    state: Literal["running", "succeeded", "failed"]
    started_by: str
    started: float
    ended: float | None = None
    exit_code: int | None = None
    log_tail: list[str] = []
    outcome: LoopOutcome | None = None  # the turn's report, once it succeeded
    notes: list[str] = []


class Snapshot(BaseModel):
    domain: str
    version: int
    parent: str
    images: int
    guard_restores: int
    promoted: bool
    reason: str
    pruned: list[int]


class Route(BaseModel):
    domain: str
    distance: float
    unknown: bool


class Segmentation(BaseModel):
    domain: str
    version: int
    model_id: str
    height: int
    width: int
    shares: dict[str, float]
    route: Route | None = None
