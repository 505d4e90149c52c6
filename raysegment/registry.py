"""Versioned model registry: `<root>/<domain>/versions/<NNNN>/` + `<root>/<domain>/aliases.json`.

- A version is written in a temporary folder and renamed into place; the rename onto a new
  version number is atomic and fails if another process took that number first, so concurrent
  registrations never collide and a crash never leaves a half-written version visible.
- Every load checks the SHA-256 of the weights against the manifest.
- Delta storage: a model registered with a `parent` stores only the tensors that differ from the
  parent (frozen stages are not stored again) and names its base; loading rebuilds the whole.
- Domain names are validated: never a path outside the registry.

This release works on local folders (POSIX rename semantics); object stores need a
conditional-put backend and are refused with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from raysegment.errors import RaySegmentError
from raysegment.models.io import ModelMeta, state_dict_for_saving
from raysegment.storage import atomic_write_json, fsync_dir, is_uri

DOMAIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"


class RegistryError(RaySegmentError):
    """A registry operation failed: bad name, unknown version, corrupt files."""


@dataclass(frozen=True)
class Entry:
    domain: str
    version: int
    manifest: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.domain}@{self.version}"


def check_domain(domain: str) -> str:
    if not isinstance(domain, str) or not DOMAIN_RE.match(domain) or ".." in domain:
        raise RegistryError(f"invalid domain name {domain!r}: use 1-64 letters, digits, '_', '-', '.', "
                            f"starting with a letter or digit, no '..' or path separators")
    return domain


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Registry:
    def __init__(self, uri: str | os.PathLike) -> None:
        if is_uri(str(uri)) and not str(uri).startswith("file://"):
            raise RegistryError(f"registry {uri}: only local folders (or file://) are supported in this release")
        self.root = Path(str(uri).removeprefix("file://")).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ writes
    def register(self, domain: str, model: torch.nn.Module, meta: ModelMeta, metrics: dict[str, float] | None = None,
                 config: dict | None = None, parent: str | None = None, lineage: dict | None = None) -> int:
        """Store a new version; with `parent` ("domain@version" or alias), only differing tensors are kept."""
        check_domain(domain)
        state = state_dict_for_saving(model)
        base = None
        if parent:
            base_entry = self.resolve(parent)
            base_state = self.load_state(base_entry)
            state = {k: v for k, v in state.items() if k not in base_state or base_state[k].shape != v.shape
                     or not torch.equal(base_state[k], v)}
            base = {"domain": base_entry.domain, "version": base_entry.version}
        versions = self.root / domain / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=versions))
        try:
            save_file(state, str(tmp / WEIGHTS))
            manifest = {"domain": domain, "meta": meta.model_dump(mode="json"), "metrics": metrics or {},
                        "config": config or {}, "base": base, "sha256": sha256_file(tmp / WEIGHTS),
                        "tensors": len(state), "bytes": (tmp / WEIGHTS).stat().st_size,
                        "lineage": {"time": time.time(), "parent": parent, **(lineage or {})}}
            while True:
                version = self._next_version(domain)
                manifest["version"] = version
                atomic_write_json(tmp / MANIFEST, manifest)
                with open(tmp / WEIGHTS, "rb") as handle:
                    os.fsync(handle.fileno())
                try:
                    os.rename(tmp, versions / f"{version:04d}")  # atomic; fails if the number is taken
                except OSError:
                    continue
                fsync_dir(versions)
                return version
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def promote(self, domain: str, version: int, alias: str = "production") -> None:
        entry = self.get_entry(domain, version)
        aliases = self.aliases(domain)
        aliases[check_domain(alias)] = entry.version
        atomic_write_json(self.root / domain / "aliases.json", aliases)

    def remove(self, domain: str, version: int) -> None:
        entry = self.get_entry(domain, version)
        users = [e.ref for e in self.entries() if e.manifest.get("base") == {"domain": domain, "version": version}]
        if users:
            raise RegistryError(f"{entry.ref} is the base of {', '.join(users)}; remove those first")
        aliased = [a for a, v in self.aliases(domain).items() if v == version]
        if aliased:
            raise RegistryError(f"{entry.ref} is aliased as {', '.join(aliased)}; promote another version first")
        trash = self.root / domain / "versions" / f".removed-{version:04d}-{os.getpid()}"
        os.rename(self.root / domain / "versions" / f"{version:04d}", trash)
        shutil.rmtree(trash, ignore_errors=True)

    # ------------------------------------------------------------------- reads
    def domains(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "versions").is_dir())

    def versions(self, domain: str) -> list[int]:
        folder = self.root / check_domain(domain) / "versions"
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file())

    def aliases(self, domain: str) -> dict[str, int]:
        path = self.root / check_domain(domain) / "aliases.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def entries(self) -> list[Entry]:
        return [self.get_entry(d, v) for d in self.domains() for v in self.versions(d)]

    def list(self) -> list[dict[str, Any]]:
        rows = []
        for entry in self.entries():
            aliases = [a for a, v in self.aliases(entry.domain).items() if v == entry.version]
            rows.append({"domain": entry.domain, "version": entry.version, "aliases": aliases,
                         "metrics": entry.manifest["metrics"], "bytes": entry.manifest["bytes"],
                         "base": entry.manifest["base"]})
        return rows

    def resolve(self, ref: str) -> Entry:
        """`domain@3`, `domain@production` or `domain` (= production, else the newest)."""
        domain, _, which = ref.partition("@")
        return self.get_entry(domain, which or None)

    def get_entry(self, domain: str, version: int | str | None = None) -> Entry:
        check_domain(domain)
        if version is None:
            aliases = self.aliases(domain)
            version = aliases.get("production") or (self.versions(domain) or [None])[-1]
        elif isinstance(version, str) and not version.isdigit():
            aliases = self.aliases(domain)
            if version not in aliases:
                raise RegistryError(f"domain {domain!r} has no alias {version!r}; aliases: {sorted(aliases) or 'none'}")
            version = aliases[version]
        if version is None or int(version) not in self.versions(domain):
            raise RegistryError(f"domain {domain!r} has no version {version}; versions: {self.versions(domain) or 'none'}")
        path = self.root / domain / "versions" / f"{int(version):04d}" / MANIFEST
        return Entry(domain, int(version), json.loads(path.read_text()))

    def load_state(self, entry: Entry) -> dict[str, torch.Tensor]:
        """Full state dict of a version (its base's tensors overlaid by its own), hash-checked."""
        own = self._own_state(entry)
        base = entry.manifest.get("base")
        if not base:
            return own
        full = self.load_state(self.get_entry(base["domain"], base["version"]))
        full.update(own)
        return full

    def load(self, ref: str) -> tuple[torch.nn.Module, ModelMeta, Entry]:
        entry = self.resolve(ref)
        meta = ModelMeta.model_validate(entry.manifest["meta"])
        model = _skeleton(meta)
        model.load_state_dict(self.load_state(entry))
        return model.eval(), meta, entry

    def load_shared(self, ref: str, bases: "SharedBases") -> tuple[torch.nn.Module, ModelMeta, Entry]:
        """Load for inference, taking every tensor a version inherits from the one copy in `bases`.

        Models of many domains built on one base then hold only their own deltas in memory. The
        shared tensors must never be written to (inference only).
        """
        entry = self.resolve(ref)
        meta = ModelMeta.model_validate(entry.manifest["meta"])
        own = self._own_state(entry)
        base = entry.manifest.get("base")
        state = dict(bases.get(self, base["domain"], base["version"])) if base else {}
        state.update({k: v.to(bases.device) for k, v in own.items()})
        model = _skeleton(meta)
        model.load_state_dict(state, assign=True)  # adopt the tensors themselves, no copy
        return model.eval().to(bases.device), meta, entry

    def _own_state(self, entry: Entry) -> dict[str, torch.Tensor]:
        path = self.root / entry.domain / "versions" / f"{entry.version:04d}" / WEIGHTS
        if sha256_file(path) != entry.manifest["sha256"]:
            raise RegistryError(f"{entry.ref}: {WEIGHTS} does not match its manifest hash (corrupt or tampered)")
        return load_file(str(path))

    def _next_version(self, domain: str) -> int:
        folder = self.root / domain / "versions"
        taken = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
        return max(taken, default=0) + 1


def _skeleton(meta: ModelMeta) -> torch.nn.Module:
    from raysegment.models.segmenter import build_segmenter

    cfg = meta.model.model_copy(update={"pretrained": meta.model.pretrained.model_copy(update={"source": "none", "uri": None})})
    return build_segmenter(cfg, meta.num_classes)


class SharedBases:
    """Full state dicts of base versions, loaded once per process (a Serve replica) and shared
    by every model built on them."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._states: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    def get(self, registry: Registry, domain: str, version: int) -> dict[str, torch.Tensor]:
        key = (domain, version)
        if key not in self._states:
            entry = registry.get_entry(domain, version)
            self._states[key] = {k: v.to(self.device) for k, v in registry.load_state(entry).items()}
        return self._states[key]

    def __len__(self) -> int:
        return len(self._states)
