"""A domain's `aliases.json`: its aliases and their audit history, one typed `AuditRecord` per
entry, for every door that moves an alias or decides about a version.

A record says what moved (`alias`, `version`, `previous`) and why, in exactly one of:
`decision` (the promotion policy's verdict), `rollback`, `retired` (a candidate that lost),
`added` (a folder added by hand) or `loop` (a closed-loop step, which may move nothing).
Records written before this type existed read as it too; keys it does not know stay readable.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from raysegment.config import Judge
from raysegment.registry.manifest import CorruptRegistry

ALIASES = "aliases.json"  # <domain>/aliases.json: {"aliases": {name: version}, "history": [records]}


class Decision(BaseModel):
    """Why a version did or did not become production (`registry.promotion`)."""

    model_config = ConfigDict(frozen=True)

    domain: str
    version: int
    promoted: bool
    judge: Judge | None = None  # None: forced, nothing judged
    candidate_score: float | None = None
    incumbent_score: float | None = None
    incumbent: str | None = None  # the ref the candidate was judged against
    reason: str
    forced_by: str | None = None
    evidence: str = "held-back images"  # what the scores were measured on (or "shadow traffic (N pairs)")


class RolledBack(BaseModel):
    """Production moved back from `from` (a Python keyword, hence `from_` in code), asked by `by`."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, serialize_by_alias=True)

    from_: int = Field(alias="from")
    by: str | None = None


class Retired(BaseModel):
    """A candidate that lost, or could not be judged, stopped being `candidate`."""

    model_config = ConfigDict(frozen=True)

    version: int
    reason: str


class Added(BaseModel):
    """A model folder added to the registry by hand (`raysegment registry add`)."""

    model_config = ConfigDict(frozen=True)

    by: str


LoopStepName = Literal["start", "search", "candidate", "refused"]


class LoopStep(BaseModel):
    """One step of a closed-loop turn (`raysegment loop`), with the facts that step has."""

    model_config = ConfigDict(frozen=True)

    step: LoopStepName
    production: str | None = None  # start, refused: the ref the turn started from
    captured: int | None = None  # start: captured images found
    scores: dict[str, tuple[float, float]] | None = None  # search: (try, production) proxy per try
    best: str | None = None  # search: the try that won
    method: str | None = None  # candidate: the method registered
    reason: str | None = None  # refused: why

    @model_serializer(mode="wrap")
    def _present(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class AuditRecord(BaseModel):
    """One entry of a domain's history. `Registry.set_alias` / `drop_alias` fill `alias`, `version`
    and `previous` and the time; the caller gives the cause."""

    model_config = ConfigDict(frozen=True, extra="allow")

    time: float = Field(default_factory=time.time)
    alias: str | None = None
    version: int | None = None  # None: the alias was removed
    previous: int | None = None  # what the alias pointed at before (None: nothing)
    decision: Decision | None = None
    rollback: RolledBack | None = None
    retired: Retired | None = None
    added: Added | None = None
    loop: LoopStep | None = None

    @property
    def decides(self) -> bool:
        """Whether the record is a decision about production or a candidate (what the console shows last)."""
        return self.decision is not None or self.rollback is not None or self.retired is not None

    @model_serializer(mode="wrap")
    def _present(self, handler: Any) -> dict[str, Any]:
        """Absent causes are left out, so each stored record says only what happened."""
        return {k: v for k, v in handler(self).items() if v is not None}


def parse_aliases(data: bytes | None, where: str) -> dict[str, Any]:
    """The aliases document read from `where` (None: none yet); `CorruptRegistry` when it is not one."""
    if data is None:
        return {"aliases": {}, "history": []}
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptRegistry(f"{where} is corrupt ({exc})") from exc
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("aliases"), dict)
        or not all(isinstance(v, int) for v in doc["aliases"].values())
        or not isinstance(doc.get("history"), list)
    ):
        raise CorruptRegistry(f"{where} is corrupt (not aliases -> versions with a history)")
    return doc


def stamped(record: AuditRecord | None, moved: dict[str, Any]) -> dict[str, Any]:
    """The stored form of `record` (or a bare move), timed now, with what moved."""
    return (record or AuditRecord()).model_copy(update={"time": time.time(), **moved}).model_dump(mode="json")
