"""Which domain an image belongs to, when the caller does not say: the registered domain whose
signature (under one shared routing model, the source every domain was adapted from) is nearest to
the image's own statistics under that model, by the symmetric KL of `engine.signature`.

An image is `unknown` when even the nearest domain is farther than `unknown_factor` times that
domain's radius (the 95th percentile of its training images' distances to the pool of the others,
`engine.signature.held_out_radius`). Domains whose
production version has no signature under the routing model take no part.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from raysegment.engine.signature import Signature, distance
from raysegment.registry import Registry, RegistryError


@dataclass(frozen=True)
class Route:
    domain: str  # the nearest domain (also when unknown: what it was nearest to)
    distance: float
    unknown: bool

    def as_json(self) -> dict:
        return {"domain": self.domain, "distance": round(self.distance, 6), "unknown": self.unknown}


class RoutingTable:
    """Each routable domain's signature under `base_ref`, re-read from the registry every
    `refresh_s` (a promotion changes the production signature); signatures cached by content hash."""

    def __init__(self, registry: Registry, base_ref: str, unknown_factor: float, refresh_s: float = 10.0) -> None:
        self.registry = registry
        self.base_ref = base_ref
        self.unknown_factor = unknown_factor
        self.refresh_s = refresh_s
        self._signatures: dict[str, Signature] = {}
        self._by_hash: dict[str, Signature] = {}
        self._read_at = float("-inf")

    def signatures(self) -> dict[str, Signature]:
        if time.monotonic() - self._read_at > self.refresh_s:
            self._signatures = self._read()
            self._read_at = time.monotonic()
        return self._signatures

    def _read(self) -> dict[str, Signature]:
        found = {}
        for domain in self.registry.domains():
            try:
                entry = self.registry.get_entry(domain)
                under = "own" if entry.ref == self.base_ref else self.base_ref
                digest = entry.signatures.get(under)
                if digest is None:
                    continue
                if digest not in self._by_hash:
                    signature = self.registry.signature(entry, under)
                    if signature is None:
                        continue
                    self._by_hash[digest] = signature
                found[domain] = self._by_hash[digest]
            except RegistryError:
                continue  # a broken domain is not routable; the others still are
        return found

    def route(self, image: Signature) -> Route | None:
        """The nearest domain, or None when no domain is routable."""
        table = self.signatures()
        if not table:
            return None
        scored = {name: distance(image, sig) for name, sig in table.items()}
        best = min(scored, key=scored.__getitem__)
        radius = table[best].radius
        unknown = radius is not None and scored[best] > self.unknown_factor * radius
        return Route(best, scored[best], unknown)
