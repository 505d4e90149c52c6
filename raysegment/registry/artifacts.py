"""Exported artifacts of registry versions (ONNX graphs, float or INT8), stored like weights.

Layout under the registry's root, next to the versions (`raysegment.registry`):
    <domain>/exports/<sha256>.onnx   the graph, named by its content (written first)
    <domain>/exports/<NNNN>.json     {"exports": {name: ExportRecord}} of version NNNN, by compare-and-swap

A version's manifest is immutable; its exports are added later (`raysegment export`), so they live
in a document of their own. Every load checks the graph's SHA-256 against its record, and remote
graphs are kept in this machine's blob cache under that hash (as weights are).
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raysegment.registry.cache import cached_blob
from raysegment.registry.manifest import ModelVersion, RegistryError
from raysegment.registry.store import ObjectStore, update_json
from raysegment.storage import sha256_hex

ONNX = "onnx"  # the export name serving's `runtime: onnxruntime` runs


class ExportRecord(BaseModel):
    """What an export is and how it was checked: the lineage of the artifact."""

    model_config = ConfigDict(frozen=True, extra="allow")

    format: str = "onnx"
    sha256: str
    bytes: int
    opset: int
    onnx_version: str
    onnxruntime_version: str
    torch_version: str
    quantization: str | None = None  # None: float32; "int8": static QDQ
    calibration_images: int = 0
    calibration_source: str | None = None
    max_abs_diff: float  # against the torch model it was exported from, on the domain's images
    pixel_agreement: float
    checked_images: int
    checked_sizes: list[tuple[int, int]] = Field(default_factory=list)
    time: float = 0.0


class Artifacts:
    """The exports of a registry's versions, in the registry's own store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def add(self, entry: ModelVersion, name: str, graph: bytes, record: dict[str, Any]) -> ExportRecord:
        """Store `graph` as `entry`'s export `name` (replacing an earlier one of that name)."""
        digest = sha256_hex(graph)
        self.store.put_new(self._graph_key(entry.domain, digest), graph)
        made = ExportRecord.model_validate({**record, "sha256": digest, "bytes": len(graph), "time": time.time()})

        def change(doc: dict[str, Any]) -> bool:
            doc["exports"][name] = made.model_dump(mode="json")
            return True

        update_json(self.store, self._record_key(entry), change, self._parse)
        return made

    def records(self, entry: ModelVersion) -> dict[str, ExportRecord]:
        doc = self._parse(self.store.get(self._record_key(entry)))
        return {name: ExportRecord.model_validate(raw) for name, raw in doc["exports"].items()}

    def load(self, entry: ModelVersion, name: str = ONNX) -> tuple[bytes, ExportRecord] | None:
        """The graph of export `name` and its record, hash-checked; None when the version has none."""
        record = self.records(entry).get(name)
        if record is None:
            return None
        key = self._graph_key(entry.domain, record.sha256)
        fetch = lambda: self.store.get(key)  # noqa: E731
        data = fetch() if self.store.is_local else cached_blob(record.sha256, fetch, ".onnx")
        if data is None or sha256_hex(data) != record.sha256:
            raise RegistryError(f"{entry.ref}: its {name} export is missing or does not match its hash")
        return data, record

    def drop(self, domain: str, version: int, still_used: set[str]) -> None:
        """Forget a removed version's exports; graphs no other version uses are deleted."""
        key = f"{domain}/exports/{version:04d}.json"
        doc = self._parse(self.store.get(key))
        self.store.delete(key)
        for raw in doc["exports"].values():
            if raw.get("sha256") not in still_used:
                self.store.delete(self._graph_key(domain, raw["sha256"]))

    def digests(self, entries: list[ModelVersion]) -> set[str]:
        return {r.sha256 for e in entries for r in self.records(e).values()}

    @staticmethod
    def _parse(data: bytes | None) -> dict[str, Any]:
        doc = json.loads(data) if data else {}
        return doc if isinstance(doc.get("exports"), dict) else {"exports": {}}

    @staticmethod
    def _record_key(entry: ModelVersion) -> str:
        return f"{entry.domain}/exports/{entry.version:04d}.json"

    @staticmethod
    def _graph_key(domain: str, digest: str) -> str:
        return f"{domain}/exports/{digest}.onnx"
