"""`ModelVersion`: one registry version, its name and typed manifest (`<domain>/versions/<NNNN>.json`),
and `ManifestIndex` (every manifest of a domain in one document).

Every reader goes through it, so a field has one name and one type. It reads every manifest
written so far: fields added later (`version`, `tensors`, `signatures`, lineage facts) default
when absent, and lineage facts of one producer (a Tune trial id, a loop's image count) that have
no field of their own stay readable as extra keys.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raysegment.config import Judge
from raysegment.errors import RaySegmentError
from raysegment.models.io import ModelMeta
from raysegment.registry.store import ObjectStore, StoreError, update_json

INDEX_KEY = "index.json"  # <domain>/index.json: {"versions": {N: manifest}}
log = logging.getLogger(__name__)


class RegistryError(RaySegmentError):
    """A registry operation failed: bad name, unknown version, corrupt files."""


class CorruptRegistry(RegistryError):
    """A domain's manifest or aliases file cannot be read: that domain is unavailable, not the registry."""


class VersionRef(BaseModel):
    """A version of a domain by name (`domain@version`): what a delta's `base` points at, and what
    every `ModelVersion` is."""

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


class ModelVersion(VersionRef):
    """One registry version: its name (`ref`) and its manifest, the one type every reader gets."""

    model_config = ConfigDict(frozen=True, extra="allow")

    version: int = 0  # manifests before numbered ones carried it only in their key (filled from it)
    meta: ModelMeta
    metrics: dict[str, float] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)  # the RunConfig it was made with (validated by its users)
    base: VersionRef | None = None
    sha256: str
    tensors: int = 0
    bytes: int = 0
    lineage: Lineage = Lineage()
    signatures: dict[str, str] = Field(default_factory=dict)  # "own" or a base ref -> signature digest


class ManifestIndex:
    """A domain's `index.json`: a copy of every manifest, so its versions are read in one request.
    The registry adds a manifest after writing it and drops it after a removal, by compare-and-swap;
    the version listing stays the truth, so a missed update or a corrupt index only slows a read."""

    def __init__(self, store: ObjectStore, domain: str) -> None:
        self.store, self.key = store, f"{domain}/{INDEX_KEY}"

    def read(self) -> dict[str, Any]:
        """Manifests (raw JSON) by version number as a string."""
        return self._parse(self.store.get(self.key))

    def put(self, version: int, manifest: dict[str, Any] | None) -> None:
        """Add a version's manifest (None: drop it)."""

        def change(doc: dict[str, Any]) -> bool:
            if manifest is None:
                return doc["versions"].pop(str(version), None) is not None
            doc["versions"][str(version)] = manifest
            return True

        try:
            update_json(self.store, self.key, change, lambda data: {"versions": self._parse(data)})
        except StoreError as exc:  # the manifest is written, and it is the truth: readers fall back to it
            log.warning("%s/%s: version %d not indexed (%s)", self.store.uri, self.key, version, exc)

    def _parse(self, data: bytes | None) -> dict[str, Any]:
        """A corrupt index counts as empty (the manifests are the truth); the next registration
        starts it again."""
        if data is None:
            return {}
        try:
            doc = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("versions"), dict):
            log.warning(
                "%s/%s is corrupt: reading manifests one by one until it is rewritten", self.store.uri, self.key
            )
            return {}
        return doc["versions"]
