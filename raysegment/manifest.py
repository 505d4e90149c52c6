"""`ModelVersion`: the typed manifest of one registry version (`<domain>/versions/<NNNN>.json`).

Every reader goes through it, so a field has one name and one type. It reads every manifest
written so far: fields added later (`version`, `tensors`, `signatures`, lineage facts) default
when absent, and lineage facts of one producer (a Tune trial id, a loop's image count) that have
no field of their own stay readable as extra keys.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raysegment.config import Judge
from raysegment.models.io import ModelMeta


class VersionRef(BaseModel):
    """A version of a domain: the base a delta is stored against."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    domain: str
    version: int

    @property
    def ref(self) -> str:
        return f"{self.domain}@{self.version}"


class Lineage(BaseModel):
    """Where a version came from. `method` is the adaptation method (or `source`, `adabn_online`);
    `target_labels` how many target labels it learned from; `judge` what scored it."""

    model_config = ConfigDict(frozen=True, extra="allow")

    time: float = 0.0
    parent: str | None = None
    method: str | None = None
    target_labels: int | None = None
    judge: Judge | None = None
    search: str | None = None  # the Tune search that registered it ...
    trial_id: str | None = None  # ... and its winning trial
    source_path: str | None = None  # a source registered from a model folder
    loop: bool = False  # registered by a closed-loop turn

    def fact(self, key: str) -> Any:
        """A lineage fact without a field of its own (None when absent)."""
        return (self.model_extra or {}).get(key)


class ModelVersion(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    domain: str
    version: int = 0  # manifests before numbered ones carried it only in their key
    meta: ModelMeta
    metrics: dict[str, float] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)  # the RunConfig it was made with (validated by its users)
    base: VersionRef | None = None
    sha256: str
    tensors: int = 0
    bytes: int = 0
    lineage: Lineage = Lineage()
    signatures: dict[str, str] = Field(default_factory=dict)  # "own" or a base ref -> signature digest
