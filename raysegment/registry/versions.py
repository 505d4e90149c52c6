"""Versioned model registry on a folder or an S3 bucket, one code path (`raysegment.registry.store`).

Layout under the registry's root:
    <domain>/blobs/<sha256>.safetensors   weights, named by their content (written first)
    <domain>/versions/<NNNN>.json         the manifest: meta, metrics, hash, base (written last)
    <domain>/versions/<NNNN>.removed      the tombstone a removed version leaves
    <domain>/aliases.json                 {"aliases": {name: version}, "history": [every move]}
    <domain>/signatures/<sha256>.safetensors  what the version's images look like (drift, routing)
    <domain>/index.json                   {"versions": {N: manifest}}: every manifest in one read
    <domain>/exports/...                  ONNX exports of versions (`raysegment.registry.artifacts`)

- A version exists once its manifest does, and the manifest is created only-if-absent after its
  weights are stored: concurrent registrations never take one number, a crash never leaves a
  half-written version visible (at worst an unreferenced blob), and readers never see a partial one.
- Aliases move by compare-and-swap on `aliases.json` (the move and its audit record together),
  so concurrent promotions never lose one another.
- Every load checks the SHA-256 of the weights against the manifest; a replica's local copy of a
  remote blob is keyed by that hash, so it can never hold stale weights under a reused name.
- Delta storage: a model registered with a `parent` stores only the tensors that differ from the
  parent (frozen stages are not stored again) and names its base; loading rebuilds the whole.
- Domain names are validated (whole-string match): never a key outside the registry.
- Version numbers are never reused: removing a version leaves a tombstone.
- The index holds a copy of every manifest of the domain, added by compare-and-swap after the
  manifest itself is written (and dropped after a removal): reading a domain's versions is one
  listing and one read, not one read per version. The listing stays the truth: a version the
  index misses (its writer died between the two writes) is read from its manifest.
- A version may carry signatures of the images it was made from (`engine.signature`): `own`, under
  its own model (the drift signal compares a domain's traffic with it), and one under its base
  model, keyed by the base's ref (domain routing compares images under one shared model).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load, save

from raysegment.engine.signature import Signature
from raysegment.models.io import ModelMeta, state_dict_for_saving
from raysegment.registry.artifacts import Artifacts  # a version's exports go with it
from raysegment.registry.audit import ALIASES, AuditRecord, parse_aliases, stamped
from raysegment.registry.cache import SharedBases, cached_blob
from raysegment.registry.manifest import (
    INDEX_KEY,
    CorruptRegistry,
    Lineage,
    ManifestIndex,
    ModelVersion,
    RegistryError,
    VersionRef,
)
from raysegment.registry.store import ObjectStore, StoreError, open_store, update_json
from raysegment.storage import sha256_hex

TRAFFIC = "traffic"  # the registry root's folder of captured requests (raysegment.registry.traffic), never a domain
DOMAIN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # matched whole (fullmatch): no trailing newline
VERSION_KEY_RE = re.compile(r"(\d{4,})\.(json|removed)")  # a version's manifest, or its tombstone
REGISTER_ATTEMPTS = 1000


def _parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptRegistry(f"{where} is corrupt ({exc}); restore it or remove the version") from exc


def check_domain(domain: str) -> str:
    if not isinstance(domain, str) or not DOMAIN_RE.fullmatch(domain) or ".." in domain or domain == TRAFFIC:
        raise RegistryError(
            f"invalid domain name {domain!r}: use 1-64 letters, digits, '_', '-', '.', "
            f"starting with a letter or digit, no '..' or path separators ({TRAFFIC!r} is reserved)"
        )
    return domain


class Registry:
    def __init__(self, uri: str | os.PathLike) -> None:
        try:
            self.store: ObjectStore = open_store(uri)
        except StoreError as exc:
            raise RegistryError(str(exc)) from exc
        self.uri = self.store.uri

    # ------------------------------------------------------------------ writes
    def register(
        self,
        domain: str,
        model: torch.nn.Module,
        meta: ModelMeta,
        metrics: dict[str, float] | None = None,
        config: dict | None = None,
        parent: str | None = None,
        lineage: dict | None = None,
        signatures: dict[str, Signature] | None = None,
    ) -> int:
        """Store a new version; with `parent` ("domain@version" or alias), only differing tensors are kept.
        `signatures`: {"own": ..., "<base ref>": ...} of the images the version was made from."""
        check_domain(domain)
        state = state_dict_for_saving(model)
        base = None
        if parent:
            base_entry = self.resolve(parent)
            base_state = self.load_state(base_entry)
            state = {
                k: v
                for k, v in state.items()
                if k not in base_state or base_state[k].shape != v.shape or not torch.equal(base_state[k], v)
            }
            base = VersionRef(domain=base_entry.domain, version=base_entry.version)
        weights = save(state)
        digest = sha256_hex(weights)
        self.store.put_new(self._blob_key(domain, digest), weights)  # named by content: an existing one is the same
        signature_digests = {}
        for under, signature in (signatures or {}).items():
            data = signature.to_bytes()
            signature_digests[under] = sha256_hex(data)
            self.store.put_new(self._signature_key(domain, signature_digests[under]), data)
        manifest = ModelVersion(
            domain=domain,
            meta=meta,
            metrics=metrics or {},
            config=config or {},
            base=base,
            sha256=digest,
            tensors=len(state),
            bytes=len(weights),
            lineage=Lineage.model_validate({"time": time.time(), "parent": parent, **(lineage or {})}),
            signatures=signature_digests,
        )
        for _ in range(REGISTER_ATTEMPTS):
            version = self._next_version(domain)
            manifest = manifest.model_copy(update={"version": version})
            body = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True).encode()
            if not self.store.put_new(self._version_key(domain, version, "json"), body):
                continue  # another writer took this number first: take the next
            if self.store.get(self._version_key(domain, version, "removed")) is not None:
                # The number was used and removed while we looked: numbers are never reused.
                self.store.delete(self._version_key(domain, version, "json"))
                continue
            ManifestIndex(self.store, domain).put(version, json.loads(body))
            return version
        raise RegistryError(f"{domain}: no free version number after {REGISTER_ATTEMPTS} attempts")

    def set_alias(self, domain: str, version: int, alias: str, record: AuditRecord | None = None) -> None:
        """Point `alias` at a version and record the move (with `record`'s cause) in the domain's
        history, in one compare-and-swap, so concurrent moves never lose one another. The low-level
        move, with no default: which version may become `production` is the promotion policy's call
        (`raysegment.registry.promotion`), and every move there goes through it or `rollback`."""
        entry = self.get_entry(domain, version)
        check_domain(alias)

        def move(doc: dict[str, Any]) -> bool:
            moved = {"alias": alias, "version": entry.version, "previous": doc["aliases"].get(alias)}
            doc["history"].append(stamped(record, moved))
            doc["aliases"][alias] = entry.version
            return True

        self._update_aliases(domain, move)

    def drop_alias(self, domain: str, alias: str, version: int, record: AuditRecord | None = None) -> None:
        """Remove `alias` if it still points at `version` (a candidate that went live or was retired);
        with `record`, the removal enters the history too."""

        def drop(doc: dict[str, Any]) -> bool:
            if doc["aliases"].get(alias) != version:
                return False
            del doc["aliases"][alias]
            if record is not None:
                doc["history"].append(stamped(record, {"alias": alias, "version": None, "previous": version}))
            return True

        self._update_aliases(domain, drop)

    def note(self, domain: str, record: AuditRecord) -> None:
        """Append an audit record that moves no alias (a step of `raysegment loop`, say)."""

        def append(doc: dict[str, Any]) -> bool:
            doc["history"].append(stamped(record, {}))
            return True

        self._update_aliases(domain, append)

    def history(self, domain: str) -> list[AuditRecord]:
        """Every alias move of a domain and every note, oldest first (an audit record each)."""
        key = f"{check_domain(domain)}/{ALIASES}"
        try:
            return [AuditRecord.model_validate(r) for r in self._aliases_doc(domain)["history"]]
        except ValidationError as exc:
            raise CorruptRegistry(f"{self.uri}/{key} has a history record that is not an audit record: {exc}") from exc

    def remove(self, domain: str, version: int) -> None:
        entry = self.get_entry(domain, version)
        users = [e.ref for e in self.entries() if e.base == VersionRef(domain=domain, version=version)]
        if users:
            raise RegistryError(f"{entry.ref} is the base of {', '.join(users)}; remove those first")
        aliased = [a for a, v in self.aliases(domain).items() if v == version]
        if aliased:
            raise RegistryError(f"{entry.ref} is aliased as {', '.join(aliased)}; promote another version first")
        # The tombstone first: the number stays taken, so a replica's cache of domain@N can never
        # meet other weights under the same name.
        self.store.put_new(self._version_key(domain, version, "removed"), b"")
        self.store.delete(self._version_key(domain, version, "json"))
        ManifestIndex(self.store, domain).put(version, None)
        left = self.entries(domain)
        remaining = [e for e in left]
        Artifacts(self.store).drop(domain, version, Artifacts(self.store).digests(left))
        if all(m.sha256 != entry.sha256 for m in remaining):
            self.store.delete(self._blob_key(domain, entry.sha256))
        still_used = {d for m in remaining for d in m.signatures.values()}
        for digest in set(entry.signatures.values()) - still_used:
            self.store.delete(self._signature_key(domain, digest))

    # ------------------------------------------------------------------- reads
    def domains(self) -> list[str]:
        return [d for d in self.store.children("") if DOMAIN_RE.fullmatch(d) and self.store.children(f"{d}/versions")]

    def versions(self, domain: str) -> list[int]:
        found = (VERSION_KEY_RE.fullmatch(name) for name in self.store.children(f"{check_domain(domain)}/versions"))
        return sorted(int(m.group(1)) for m in found if m and m.group(2) == "json")

    def aliases(self, domain: str) -> dict[str, int]:
        return dict(self._aliases_doc(domain)["aliases"])

    def entries(self, domain: str | None = None) -> list[ModelVersion]:
        """Every version of `domain`, or of every domain: per domain its listing and its index
        (a version the index misses is read from its manifest)."""
        found = []
        for d in [domain] if domain is not None else self.domains():
            indexed = ManifestIndex(self.store, d).read()
            for v in self.versions(d):
                raw = indexed.get(str(v))
                where = f"{self.uri}/{d}/{INDEX_KEY} (version {v})"
                found.append(self._manifest(d, v, raw, where) if raw else self.get_entry(d, v))
        return found

    def list(self) -> list[dict[str, Any]]:
        rows, aliases_of = [], {d: self.aliases(d) for d in self.domains()}
        for entry in self.entries():
            aliases = [a for a, v in aliases_of.get(entry.domain, {}).items() if v == entry.version]
            rows.append(
                {
                    "domain": entry.domain,
                    "version": entry.version,
                    "aliases": aliases,
                    "metrics": entry.metrics,
                    "bytes": entry.bytes,
                    "base": entry.base.model_dump() if entry.base else None,
                }
            )
        return rows

    def resolve(self, ref: str) -> ModelVersion:
        """`domain@3`, `domain@production` or `domain` (= production, else the newest)."""
        domain, _, which = ref.partition("@")
        return self.get_entry(domain, which or None)

    def get_entry(self, domain: str, version: int | str | None = None) -> ModelVersion:
        check_domain(domain)
        if version is None:
            aliases = self.aliases(domain)
            known = self.versions(domain)
            version = aliases.get("production") or (known[-1] if known else None)
        elif isinstance(version, str) and not version.isdigit():
            aliases = self.aliases(domain)
            if version not in aliases:
                raise RegistryError(f"domain {domain!r} has no alias {version!r}; aliases: {sorted(aliases) or 'none'}")
            version = aliases[version]
        number = int(version) if version is not None else None
        key = self._version_key(domain, number, "json") if number is not None else None
        data = self.store.get(key) if key else None
        if data is None or number is None:
            raise RegistryError(
                f"domain {domain!r} has no version {version}; versions: {self.versions(domain) or 'none'}"
            )
        where = f"{self.uri}/{key}"
        return self._manifest(domain, number, _parse_json(data, where), where)

    @staticmethod
    def _manifest(domain: str, version: int, raw: Any, where: str) -> ModelVersion:
        if not isinstance(raw, dict) or "meta" not in raw:
            raise CorruptRegistry(f"{where} is corrupt (no model meta)")
        try:
            return ModelVersion.model_validate({**raw, "domain": domain, "version": version})  # named by its key
        except ValidationError as exc:
            raise CorruptRegistry(f"{where} is corrupt ({str(exc)[:300]})") from exc

    def load_state(self, entry: ModelVersion) -> dict[str, torch.Tensor]:
        """Full state dict of a version (its base's tensors overlaid by its own), hash-checked."""
        own = self._own_state(entry)
        base = entry.base
        if base is None:
            return own
        full = self.load_state(self.get_entry(base.domain, base.version))
        full.update(own)
        return full

    def load(self, ref: str) -> tuple[torch.nn.Module, ModelMeta, ModelVersion]:
        from raysegment.models.rebuild import rebuild  # timm on first load, not on import: alias moves need none

        entry = self.resolve(ref)
        meta = entry.meta
        model = rebuild(meta)
        model.load_state_dict(self.load_state(entry))
        return model.eval(), meta, entry

    def load_shared(self, ref: str, bases: SharedBases) -> tuple[torch.nn.Module, ModelMeta, ModelVersion]:
        """Load for inference, taking every tensor a version inherits from the one copy in `bases`.

        Models of many domains built on one base then hold only their own deltas in memory. The
        shared tensors must never be written to (inference only).
        """
        from raysegment.models.rebuild import rebuild

        entry = self.resolve(ref)
        meta = entry.meta
        own = self._own_state(entry)
        base = entry.base
        state = dict(bases.get(self, base.domain, base.version)) if base else {}
        state.update({k: v.to(bases.device) for k, v in own.items()})
        model = rebuild(meta)
        model.load_state_dict(state, assign=True)  # adopt the tensors themselves, no copy
        return model.eval().to(bases.device), meta, entry

    def signature(self, entry: ModelVersion, under: str = "own") -> Signature | None:
        """The version's signature under its own model ("own") or a base's ("domain@version"); None
        when it has none; hash-checked like weights."""
        digest = entry.signatures.get(under)
        if digest is None:
            return None
        data = self.store.get(self._signature_key(entry.domain, digest))
        if data is None or sha256_hex(data) != digest:
            raise CorruptRegistry(f"{entry.ref}: its {under} signature is missing or does not match its hash")
        return Signature.from_bytes(data)

    # ---------------------------------------------------------------- internals
    @staticmethod
    def _signature_key(domain: str, digest: str) -> str:
        return f"{domain}/signatures/{digest}.safetensors"

    @staticmethod
    def _version_key(domain: str, version: int, kind: str) -> str:
        return f"{domain}/versions/{version:04d}.{kind}"

    @staticmethod
    def _blob_key(domain: str, digest: str) -> str:
        return f"{domain}/blobs/{digest}.safetensors"

    def _own_state(self, entry: ModelVersion) -> dict[str, torch.Tensor]:
        digest = entry.sha256
        data = self._weights(entry.domain, digest)
        if data is None:
            raise RegistryError(f"{entry.ref}: its weights ({digest[:12]}...) are missing from {self.uri}")
        if sha256_hex(data) != digest:
            raise RegistryError(f"{entry.ref}: weights file does not match its manifest hash (corrupt or tampered)")
        return load(data)

    def _weights(self, domain: str, digest: str) -> bytes | None:
        """A version's weights; from a remote store through this machine's cache, keyed by hash."""
        if self.store.is_local:
            return self.store.get(self._blob_key(domain, digest))
        return cached_blob(digest, lambda: self.store.get(self._blob_key(domain, digest)))

    def _aliases_doc(self, domain: str) -> dict[str, Any]:
        key = f"{check_domain(domain)}/{ALIASES}"
        return parse_aliases(self.store.get(key), f"{self.uri}/{key}")

    def _update_aliases(self, domain: str, change: Any) -> None:
        """Change a domain's aliases document by compare-and-swap (concurrent moves never lose one another)."""
        key = f"{check_domain(domain)}/{ALIASES}"
        try:
            update_json(self.store, key, change, lambda data: parse_aliases(data, f"{self.uri}/{key}"))
        except StoreError as exc:
            raise RegistryError(f"{domain}: {exc}") from exc

    def _next_version(self, domain: str) -> int:
        """One past every number ever used, removed versions included: numbers are never reused."""
        found = (VERSION_KEY_RE.fullmatch(name) for name in self.store.children(f"{domain}/versions"))
        return max((int(m.group(1)) for m in found if m), default=0) + 1
