"""Weights on this machine: remote blobs kept in a local cache keyed by their content hash, and the
tensors of base versions shared, one copy per process, by every model built on them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from raysegment.registry.manifest import ModelVersion
from raysegment.storage import atomic_write_bytes, sha256_hex


class StateSource(Protocol):
    """Where base versions' tensors come from (a `Registry`): the cache needs only these two reads."""

    def get_entry(self, domain: str, version: int | str | None = None) -> ModelVersion: ...

    def load_state(self, entry: ModelVersion) -> dict[str, torch.Tensor]: ...


CACHE_ENV = "RAYSEGMENT_CACHE"


def blob_cache_dir() -> Path:
    """Where remote weights are kept on this machine, by content hash ($RAYSEGMENT_CACHE)."""
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "raysegment-cache" / "blobs")


def cached_blob(digest: str, fetch: Callable[[], bytes | None], suffix: str = ".safetensors") -> bytes | None:
    """The blob of `digest` from this machine's cache, else `fetch()`ed and cached when it matches
    its hash (a blob that does not is returned as is, for the caller's hash check to refuse)."""
    cached = blob_cache_dir() / f"{digest}{suffix}"
    if cached.is_file():
        held = cached.read_bytes()
        if sha256_hex(held) == digest:
            return held
    fetched = fetch()
    if fetched is not None and sha256_hex(fetched) == digest:
        atomic_write_bytes(cached, fetched)
    return fetched


class SharedBases:
    """Full state dicts of base versions, loaded once per process (a Serve replica) and shared
    by every model built on them."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._states: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    def get(self, registry: StateSource, domain: str, version: int) -> dict[str, torch.Tensor]:
        key = (domain, version)
        if key not in self._states:
            entry = registry.get_entry(domain, version)
            self._states[key] = {k: v.to(self.device) for k, v in registry.load_state(entry).items()}
        return self._states[key]

    def __len__(self) -> int:
        return len(self._states)
