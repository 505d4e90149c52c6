"""The model registry: versions of each domain's models, their aliases and the one way a version
reaches production, on a folder or an S3 bucket.

One way down, each module importing only those above it in this list:

- `store`: the object store (a folder or S3) with the conditional writes the registry's atomicity
  rests on (create-only-if-absent, compare-and-swap).
- `manifest`: `ModelVersion` (one version: its name and typed manifest), `VersionRef`, the
  per-domain manifest index, the registry's errors.
- `audit`: a domain's `aliases.json`: its aliases and history, one typed `AuditRecord` per entry
  (the promotion's `Decision`, a rollback, a retirement, a loop step).
- `cache`: remote weights cached on this machine by content hash, base versions' tensors shared.
- `artifacts`: exports of versions (ONNX graphs) stored beside them.
- `versions`: `Registry`, registering, loading, aliasing and removing versions.
- `traffic`: images the service captured, kept in the registry's store.
- `promotion`: the promotion policy, the only door to `production` (rollback is its own audited door).
- `intake`: the doors a trained model folder takes into the registry, with its estimate.

The names below are what the rest of the package imports most; the others by their module.
"""

from raysegment.registry.manifest import CorruptRegistry, ModelVersion, RegistryError
from raysegment.registry.versions import TRAFFIC, Registry, SharedBases, check_domain

__all__ = ["TRAFFIC", "CorruptRegistry", "ModelVersion", "Registry", "RegistryError", "SharedBases", "check_domain"]
