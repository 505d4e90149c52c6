"""Versioned model registry: `<root>/<domain>/versions/<NNNN>/` + `<root>/<domain>/aliases.json`.

- A version is written in a temporary folder and renamed into place; the rename onto a new
  version number is atomic and fails if another process took that number first, so concurrent
  registrations never collide and a crash never leaves a half-written version visible.
- Every load checks the SHA-256 of the weights against the manifest.
- Delta storage: a model registered with a `parent` stores only the tensors that differ from the
  parent (frozen stages are not stored again) and names its base; loading rebuilds the whole.
- Domain names are validated (whole-string match): never a path outside the registry.
- Version numbers are never reused: removing a version leaves a tombstone (`NNNN.removed`).
- Aliases move under a per-domain lock, so concurrent promotions never lose one another.

This release works on local folders (POSIX rename semantics); object stores need a
conditional-put backend and are refused with a clear error.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from raysegment.errors import RaySegmentError
from raysegment.models.io import ModelMeta, state_dict_for_saving
from raysegment.models.rebuild import rebuild
from raysegment.storage import atomic_write_json, fsync_dir, is_uri

DOMAIN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # matched whole (fullmatch): no trailing newline
VERSION_DIR_RE = re.compile(r"(\d{4,})(\.removed)?")  # a version, or the tombstone a removed one leaves
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
HISTORY = "history.jsonl"
REGISTER_ATTEMPTS = 1000


class RegistryError(RaySegmentError):
    """A registry operation failed: bad name, unknown version, corrupt files."""


class CorruptRegistry(RegistryError):
    """A domain's manifest or aliases file cannot be read: that domain is unavailable, not the registry."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptRegistry(f"{path} is corrupt ({exc}); restore it or remove the version") from exc


@dataclass(frozen=True)
class Entry:
    domain: str
    version: int
    manifest: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.domain}@{self.version}"


def check_domain(domain: str) -> str:
    if not isinstance(domain, str) or not DOMAIN_RE.fullmatch(domain) or ".." in domain:
        raise RegistryError(
            f"invalid domain name {domain!r}: use 1-64 letters, digits, '_', '-', '.', "
            f"starting with a letter or digit, no '..' or path separators"
        )
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
    def register(
        self,
        domain: str,
        model: torch.nn.Module,
        meta: ModelMeta,
        metrics: dict[str, float] | None = None,
        config: dict | None = None,
        parent: str | None = None,
        lineage: dict | None = None,
    ) -> int:
        """Store a new version; with `parent` ("domain@version" or alias), only differing tensors are kept."""
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
            base = {"domain": base_entry.domain, "version": base_entry.version}
        versions = self.root / domain / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=versions))
        try:
            save_file(state, str(tmp / WEIGHTS))
            manifest = {
                "domain": domain,
                "meta": meta.model_dump(mode="json"),
                "metrics": metrics or {},
                "config": config or {},
                "base": base,
                "sha256": sha256_file(tmp / WEIGHTS),
                "tensors": len(state),
                "bytes": (tmp / WEIGHTS).stat().st_size,
                "lineage": {"time": time.time(), "parent": parent, **(lineage or {})},
            }
            with open(tmp / WEIGHTS, "rb") as handle:
                os.fsync(handle.fileno())
            for _ in range(REGISTER_ATTEMPTS):
                version = self._next_version(domain)
                manifest["version"] = version
                atomic_write_json(tmp / MANIFEST, manifest)
                try:
                    os.rename(tmp, versions / f"{version:04d}")  # atomic; fails if the number is taken
                except OSError as exc:
                    if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                        continue  # another process took this number first: take the next
                    raise RegistryError(f"cannot store {domain}@{version} in {versions}: {exc}") from exc
                fsync_dir(versions)
                return version
            raise RegistryError(f"{domain}: no free version number after {REGISTER_ATTEMPTS} attempts")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def promote(self, domain: str, version: int, alias: str = "production", record: dict | None = None) -> None:
        """Point `alias` at a version and append the move to the domain's history. Aliases move one
        writer at a time (a lock per domain), so concurrent moves never lose one another. Which
        version may become `production` is the promotion policy's call (`raysegment.promotion`)."""
        entry = self.get_entry(domain, version)
        with self._alias_lock(domain):
            aliases = self.aliases(domain)
            previous = aliases.get(check_domain(alias))
            aliases[alias] = entry.version
            atomic_write_json(self.root / domain / "aliases.json", aliases)
            with open(self.root / domain / HISTORY, "a") as handle:
                handle.write(
                    json.dumps(
                        {
                            "time": time.time(),
                            "alias": alias,
                            "version": entry.version,
                            "previous": previous,
                            **(record or {}),
                        }
                    )
                    + "\n"
                )
                handle.flush()
                os.fsync(handle.fileno())

    def drop_alias(self, domain: str, alias: str, version: int) -> None:
        """Remove `alias` if it still points at `version` (a candidate that has just gone live)."""
        with self._alias_lock(domain):
            aliases = self.aliases(domain)
            if aliases.get(alias) == version:
                del aliases[alias]
                atomic_write_json(self.root / domain / "aliases.json", aliases)

    def history(self, domain: str) -> list[dict[str, Any]]:
        """Every alias move of a domain, oldest first (an audit record each)."""
        path = self.root / check_domain(domain) / HISTORY
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-append: that move never completed its record
        return records

    @contextmanager
    def _alias_lock(self, domain: str) -> Iterator[None]:
        """An exclusive advisory lock on `<domain>/.aliases.lock` (released if the holder dies)."""
        path = self.root / check_domain(domain) / ".aliases.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def remove(self, domain: str, version: int) -> None:
        entry = self.get_entry(domain, version)
        users = [e.ref for e in self.entries() if e.manifest.get("base") == {"domain": domain, "version": version}]
        if users:
            raise RegistryError(f"{entry.ref} is the base of {', '.join(users)}; remove those first")
        aliased = [a for a, v in self.aliases(domain).items() if v == version]
        if aliased:
            raise RegistryError(f"{entry.ref} is aliased as {', '.join(aliased)}; promote another version first")
        versions = self.root / domain / "versions"
        # The tombstone first: the number stays taken, so a replica's cache of domain@N can never
        # meet other weights under the same name.
        (versions / f"{version:04d}.removed").mkdir(exist_ok=True)
        trash = versions / f".removed-{version:04d}-{os.getpid()}"
        os.rename(versions / f"{version:04d}", trash)
        fsync_dir(versions)
        shutil.rmtree(trash, ignore_errors=True)

    # ------------------------------------------------------------------- reads
    def domains(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "versions").is_dir())

    def versions(self, domain: str) -> list[int]:
        folder = self.root / check_domain(domain) / "versions"
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in folder.iterdir()
            if VERSION_DIR_RE.fullmatch(p.name) and p.name.isdigit() and (p / MANIFEST).is_file()
        )

    def aliases(self, domain: str) -> dict[str, int]:
        path = self.root / check_domain(domain) / "aliases.json"
        aliases = _read_json(path) if path.is_file() else {}
        if not isinstance(aliases, dict) or not all(isinstance(v, int) for v in aliases.values()):
            raise CorruptRegistry(f"{path} is corrupt (not a mapping of alias -> version)")
        return aliases

    def entries(self) -> list[Entry]:
        return [self.get_entry(d, v) for d in self.domains() for v in self.versions(d)]

    def list(self) -> list[dict[str, Any]]:
        rows = []
        for entry in self.entries():
            aliases = [a for a, v in self.aliases(entry.domain).items() if v == entry.version]
            rows.append(
                {
                    "domain": entry.domain,
                    "version": entry.version,
                    "aliases": aliases,
                    "metrics": entry.manifest["metrics"],
                    "bytes": entry.manifest["bytes"],
                    "base": entry.manifest["base"],
                }
            )
        return rows

    def resolve(self, ref: str) -> Entry:
        """`domain@3`, `domain@production` or `domain` (= production, else the newest)."""
        domain, _, which = ref.partition("@")
        return self.get_entry(domain, which or None)

    def get_entry(self, domain: str, version: int | str | None = None) -> Entry:
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
        if version is None or int(version) not in self.versions(domain):
            raise RegistryError(
                f"domain {domain!r} has no version {version}; versions: {self.versions(domain) or 'none'}"
            )
        path = self.root / domain / "versions" / f"{int(version):04d}" / MANIFEST
        manifest = _read_json(path)
        if not isinstance(manifest, dict) or "meta" not in manifest:
            raise CorruptRegistry(f"{path} is corrupt (no model meta)")
        return Entry(domain, int(version), manifest)

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
        model = rebuild(meta)
        model.load_state_dict(self.load_state(entry))
        return model.eval(), meta, entry

    def load_shared(self, ref: str, bases: SharedBases) -> tuple[torch.nn.Module, ModelMeta, Entry]:
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
        model = rebuild(meta)
        model.load_state_dict(state, assign=True)  # adopt the tensors themselves, no copy
        return model.eval().to(bases.device), meta, entry

    def _own_state(self, entry: Entry) -> dict[str, torch.Tensor]:
        path = self.root / entry.domain / "versions" / f"{entry.version:04d}" / WEIGHTS
        if sha256_file(path) != entry.manifest["sha256"]:
            raise RegistryError(f"{entry.ref}: {WEIGHTS} does not match its manifest hash (corrupt or tampered)")
        return load_file(str(path))

    def _next_version(self, domain: str) -> int:
        """One past every number ever used, removed versions included: numbers are never reused."""
        folder = self.root / domain / "versions"
        taken = [int(m.group(1)) for p in folder.iterdir() if (m := VERSION_DIR_RE.fullmatch(p.name))]
        return max(taken, default=0) + 1


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
