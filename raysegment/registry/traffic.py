"""Captured live traffic: a bounded, aging reservoir sample of each domain's request images, and the
shadow comparisons of a candidate against production on mirrored requests.

Kept beside the registry, in the same store (a folder or `s3://`), under

    traffic/<domain>/reservoir.json       {"seen": n, "items": {slot: {"key", "time", "bytes"}}}
    traffic/<domain>/images/<uuid>.<ext>  the uploaded bytes, as received
    traffic/<domain>/shadow.json          {"candidate", "production", "pairs": [[candidate, production]]}
    traffic/<domain>/snapshots/<id>/      a frozen copy of the captured images as a dataset (`freeze`)

The reservoir (Vitter's algorithm R) keeps at most `max_images` images per domain, each of the
`seen` requests equally likely to be among them, however long the service runs; images older than
`max_age_s` leave it. Every change of a document is a compare-and-swap, so several gateway
replicas capture into one reservoir without losing one another's updates. The `new` pool holds
images the router found far from every domain.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from raysegment.data import DatasetInfo
from raysegment.registry.store import ObjectStore, open_store, update_json
from raysegment.registry.versions import TRAFFIC, check_domain

NEW_POOL = "new"  # where images far from every domain's signature are captured
RESERVOIR = "reservoir.json"
SHADOW = "shadow.json"
SNAPSHOTS = "snapshots"
MAX_SHADOW_PAIRS = 10_000


@dataclass(frozen=True)
class Captured:
    key: str
    time: float
    bytes: int


@dataclass(frozen=True)
class FrozenCapture:
    """Captured images frozen as an unlabelled raysegment-layout dataset inside the store:
    `open_split(root, domain, "train" | "val" | "all", unlabelled=True)` reads it where it lies."""

    root: str  # the dataset root: a folder, or an s3:// URI
    domain: str
    images: int
    prefix: str  # its keys in the store (what `drop_frozen` removes)


def _parse(data: bytes | None, empty: dict[str, Any]) -> dict[str, Any]:
    if data is None:
        return empty
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return empty  # a torn capture document is not worth failing a request over: start again
    return doc if isinstance(doc, dict) else empty


class TrafficStore:
    def __init__(self, uri: str, max_images: int = 256, max_age_s: float = 7 * 86400, seed: int | None = None) -> None:
        self.store: ObjectStore = open_store(uri)
        self.max_images = max_images
        self.max_age_s = max_age_s
        self.random = random.Random(seed)

    def _key(self, domain: str, name: str) -> str:
        return f"{TRAFFIC}/{check_domain(domain)}/{name}"

    def _reservoir(self, data: bytes | None) -> dict[str, Any]:
        return _parse(data, {"seen": 0, "items": {}})

    # ----------------------------------------------------------------- capture
    def capture(self, domain: str, data: bytes, suffix: str, now: float | None = None) -> str | None:
        """Offer one request image to the domain's reservoir; the key it is stored under, or None
        when the sample passed it over."""
        now = time.time() if now is None else now
        key = self._key(domain, f"images/{uuid.uuid4().hex}.{suffix}")
        written = False
        outcome: dict[str, Any] = {}

        def offer(doc: dict[str, Any]) -> bool:
            nonlocal written
            outcome.clear()
            items = doc["items"]
            outcome["expired"] = [items.pop(s)["key"] for s in list(items) if items[s]["time"] < now - self.max_age_s]
            doc["seen"] += 1
            free = [str(s) for s in range(self.max_images) if str(s) not in items]
            if free:
                slot: str | None = free[0]
            else:
                pick = self.random.randrange(doc["seen"])
                slot = str(pick) if pick < self.max_images else None
            if slot is None:
                return True
            if not written:
                self.store.put(key, data)
                written = True
            outcome["replaced"] = items[slot]["key"] if slot in items else None
            outcome["stored"] = True
            items[slot] = {"key": key, "time": now, "bytes": len(data)}
            return True

        update_json(self.store, self._key(domain, RESERVOIR), offer, self._reservoir)
        for old in outcome.get("expired", []) + [outcome.get("replaced")]:
            if old:
                self.store.delete(old)
        if written and not outcome.get("stored"):
            self.store.delete(key)  # a retry after a lost swap passed it over
            return None
        return key if outcome.get("stored") else None

    # ------------------------------------------------------------------- reads
    def domains(self) -> list[str]:
        return self.store.children(TRAFFIC)

    def items(self, domain: str, now: float | None = None) -> list[Captured]:
        """The domain's captured images within the age limit, oldest first."""
        now = time.time() if now is None else now
        doc = self._reservoir(self.store.get(self._key(domain, RESERVOIR)))
        fresh = [Captured(i["key"], i["time"], i["bytes"]) for i in doc["items"].values()]
        return sorted((c for c in fresh if c.time >= now - self.max_age_s), key=lambda c: c.time)

    def seen(self, domain: str) -> int:
        return int(self._reservoir(self.store.get(self._key(domain, RESERVOIR)))["seen"])

    def read(self, key: str) -> bytes | None:
        return self.store.get(key)

    def purge(self, domain: str, older_than_s: float | None = None, now: float | None = None) -> int:
        """Remove the domain's captured images (those older than `older_than_s`, or all) and any
        stray files a crash left behind; returns how many captured images went."""
        now = time.time() if now is None else now
        removed: list[str] = []

        def drop(doc: dict[str, Any]) -> bool:
            removed.clear()
            for slot in list(doc["items"]):
                if older_than_s is None or doc["items"][slot]["time"] < now - older_than_s:
                    removed.append(doc["items"].pop(slot)["key"])
            if older_than_s is None:
                doc["seen"] = 0
            return bool(removed) or older_than_s is None

        doc = update_json(self.store, self._key(domain, RESERVOIR), drop, self._reservoir)
        kept = {i["key"] for i in doc["items"].values()}
        for name in self.store.children(self._key(domain, "images")):
            key = self._key(domain, f"images/{name}")
            if key not in kept:
                self.store.delete(key)
        return len(removed)

    # ----------------------------------------------------------------- freeze
    def freeze(self, domain: str, info: DatasetInfo, val_share: float, seed: int) -> FrozenCapture:
        """The domain's captured images now, as a dataset that training reads in place: each image a
        store-side copy (S3 CopyObject, a hard link in a folder: no byte leaves the store), split
        into train and `val_share` held back (seeded), with `info` (the classes production predicts).
        Frozen, so captures replacing reservoir images during a run cannot pull images from under it."""
        prefix = self._key(domain, f"{SNAPSHOTS}/{uuid.uuid4().hex}")
        stems = []
        for k, item in enumerate(self.items(domain)):
            stem = f"{k:05d}"
            if self.store.copy(item.key, f"{prefix}/{domain}/images/{stem}.{item.key.rsplit('.', 1)[-1]}"):
                stems.append(stem)  # else replaced by a newer capture since the listing
        random.Random(seed).shuffle(stems)
        held = max(1, round(val_share * len(stems)))
        splits = {"train": sorted(stems[held:]), "val": sorted(stems[:held])}
        self.store.put(f"{prefix}/{domain}/splits.json", json.dumps(splits).encode())
        self.store.put(f"{prefix}/dataset.json", json.dumps(info.model_dump(mode="json")).encode())
        return FrozenCapture(self.store.location(prefix), domain, len(stems), prefix)

    def drop_frozen(self, frozen: FrozenCapture) -> None:
        self.store.delete_tree(frozen.prefix)

    # ------------------------------------------------------------------ shadow
    def record_shadow(self, domain: str, candidate: int, production: int, pairs: list[tuple[float, float]]) -> int:
        """Append (candidate score, production score) pairs measured on the same mirrored images;
        a new candidate or production version starts the record afresh. Returns the pair count."""

        def append(doc: dict[str, Any]) -> bool:
            if (doc.get("candidate"), doc.get("production")) != (candidate, production):
                doc.clear()
                doc.update(candidate=candidate, production=production, pairs=[])
            doc["pairs"] = (doc["pairs"] + [list(p) for p in pairs])[-MAX_SHADOW_PAIRS:]
            return True

        doc = update_json(self.store, self._key(domain, SHADOW), append, lambda d: _parse(d, {}))
        return len(doc["pairs"])

    def shadow(self, domain: str, candidate: int, production: int) -> list[tuple[float, float]]:
        """The pairs recorded for exactly this candidate against this production version."""
        doc = _parse(self.store.get(self._key(domain, SHADOW)), {})
        if (doc.get("candidate"), doc.get("production")) != (candidate, production):
            return []
        return [(float(c), float(p)) for c, p in doc["pairs"]]
