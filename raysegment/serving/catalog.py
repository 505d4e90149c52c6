"""Every registry read the gateway makes, off the event loop (`asyncio.to_thread`) and behind one
TTL cache: a hot endpoint does not re-read manifests per request, a slow store never stalls other
requests, and a write through the gateway (promote, rollback) drops what it changed."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from raysegment.engine.signature import Signature
from raysegment.registry import CorruptRegistry, ModelVersion, Registry, RegistryError, check_domain
from raysegment.registry.artifacts import Artifacts
from raysegment.registry.audit import AuditRecord
from raysegment.registry.promotion import CANDIDATE, PRODUCTION
from raysegment.registry.traffic import TrafficStore
from raysegment.serving.errors import BadDomainName, BadVersion, DomainUnavailable, UnknownDomain
from raysegment.serving.schemas import DomainListing, Version

T = TypeVar("T")
FOREVER = float("inf")


class TTLCache:
    """Values by key for `ttl_s` (content-addressed ones for ever), at most `size` of them (LRU)."""

    def __init__(self, ttl_s: float, size: int = 4096) -> None:
        self.ttl_s, self.size = ttl_s, size
        self.items: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()

    def get(self, key: Hashable) -> tuple[bool, Any]:
        hit = self.items.get(key)
        if hit is None or time.monotonic() >= hit[0]:
            return False, None
        self.items.move_to_end(key)
        return True, hit[1]

    def put(self, key: Hashable, value: Any, ttl_s: float | None = None) -> None:
        self.items[key] = (time.monotonic() + (self.ttl_s if ttl_s is None else ttl_s), value)
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def drop(self, match: Callable[[Hashable], bool]) -> None:
        for key in [k for k in self.items if match(k)]:
            del self.items[key]


def check_version(version: str) -> str:
    """`version` is ASCII digits (at most 9) or an alias name; anything else is a 400, not a 500."""
    if version.isascii() and version.isdigit() and len(version) <= 9:
        return version
    try:
        return check_domain(version)  # alias names follow the domain-name rule
    except RegistryError as exc:
        raise BadVersion(f"use a version number or an alias name: {str(exc)[:200]}") from exc


def checked_domain(domain: str) -> str:
    try:
        return check_domain(domain)
    except RegistryError as exc:
        raise BadDomainName(str(exc)) from exc


def lineage(entry: ModelVersion) -> Version:
    """What a version is and where it came from, as the API and the console show it."""
    return Version(
        version=entry.version,
        method=entry.lineage.method,
        target_labels=entry.lineage.target_labels,
        judge=entry.lineage.judge,
        parent=entry.lineage.parent,
        metrics=entry.metrics,
        bytes=entry.bytes,
        base=entry.base,
        time=entry.lineage.time,
    )


class Catalog:
    def __init__(self, registry: Registry, traffic: TrafficStore, ttl_s: float) -> None:
        self.registry, self.traffic = registry, traffic
        self.cache = TTLCache(ttl_s)

    async def _cached(self, key: Hashable, read: Callable[[], T], ttl_s: float | None = None) -> T:
        found, value = self.cache.get(key)
        if found:
            return value
        value = await asyncio.to_thread(read)
        self.cache.put(key, value, ttl_s)
        return value

    def forget(self, domain: str) -> None:
        """Drop what is cached about `domain` (after a write through the gateway)."""
        self.cache.drop(lambda key: isinstance(key, tuple) and len(key) > 1 and key[1] == domain)

    async def domains(self) -> list[str]:
        return await self._cached(("domains",), self.registry.domains)

    async def entry(self, domain: str, version: str = PRODUCTION) -> ModelVersion:
        """domain + version/alias -> entry ("production" falls back to the newest version)."""
        checked_domain(domain)
        check_version(version)

        def read() -> ModelVersion:
            which = version
            if version == PRODUCTION and PRODUCTION not in self.registry.aliases(domain):
                return self.registry.get_entry(domain, None)
            return self.registry.get_entry(domain, which)

        try:
            return await self._cached(("entry", domain, version), read)
        except CorruptRegistry as exc:
            raise DomainUnavailable(str(exc)) from exc
        except RegistryError as exc:
            raise UnknownDomain(str(exc)) from exc

    async def ref(self, ref: str) -> ModelVersion:
        domain, _, version = ref.partition("@")
        return await self.entry(domain, version or PRODUCTION)

    async def candidate(self, domain: str) -> ModelVersion | None:
        """The domain's `candidate` version, if any (absence cached like a hit)."""

        def read() -> ModelVersion | None:
            try:
                return self.registry.get_entry(domain, CANDIDATE)
            except RegistryError:
                return None

        return await self._cached(("candidate", domain), read)

    async def listing(self, domain: str) -> DomainListing:
        """Versions with lineage and aliases; `error` when the domain's files are corrupt."""

        def read() -> DomainListing:
            try:
                versions = [lineage(e) for e in self.registry.entries(domain)]
                return DomainListing(versions=versions, aliases=self.registry.aliases(domain))
            except RegistryError as exc:
                return DomainListing(error="domain unavailable", detail=str(exc)[:300])

        return await self._cached(("listing", domain), read)

    async def exports(self, domain: str, version: int) -> dict[str, str]:
        """Export name -> what it holds ("float32", "int8") of one version (the production one)."""

        def read() -> dict[str, str]:
            entry = self.registry.get_entry(domain, version)
            return {n: r.quantization or "float32" for n, r in Artifacts(self.registry.store).records(entry).items()}

        return await self._cached(("exports", domain, version), read)

    async def history(self, domain: str) -> list[AuditRecord]:
        try:
            return await self._cached(("history", domain), lambda: self.registry.history(domain))
        except RegistryError as exc:
            raise DomainUnavailable(str(exc)) from exc

    async def training_signature(self, entry: ModelVersion) -> Signature | None:
        digest = entry.signatures.get("own")
        return await self._cached(("signature", digest), lambda: self.registry.signature(entry), FOREVER)

    async def captured(self, domain: str) -> int:
        return await self._cached(("captured", domain), lambda: len(self.traffic.items(domain)))

    async def shadow(self, domain: str, candidate: int, production: int) -> list[tuple[float, float]]:
        return await self._cached(
            ("shadow", domain, candidate, production), lambda: self.traffic.shadow(domain, candidate, production)
        )

    async def write(self, domain: str, change: Callable[[], T]) -> T:
        """Run a registry write off the loop, then forget what it may have changed."""
        try:
            return await asyncio.to_thread(change)
        finally:
            self.forget(domain)
            self.cache.drop(lambda key: key == ("domains",))
