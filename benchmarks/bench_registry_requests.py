"""Store requests per registry operation at scale, on the S3 server (moto on 127.0.0.1): a registry
of D domains x V versions (each domain's v1 a full model, the rest deltas on it), then every read
path that used to scan manifests: a domain's versions (the console's domain page, a search's
resumed winner, the source lookup), a version removed (who uses it as a base?), snapshot pruning,
and the whole listing. On S3 every request is a round trip; the count is what scales.

    python benchmarks/bench_registry_requests.py [--domains 50] [--versions 20] [--out results.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import S3_ENV, S3_SERVER  # noqa: E402

from raysegment.config import ModelConfig  # noqa: E402
from raysegment.models.io import ModelMeta  # noqa: E402
from raysegment.models.segmenter import build_segmenter
from raysegment.registry import Registry  # noqa: E402
from raysegment.registry.promotion import prune_snapshots  # noqa: E402


class CountingStore:
    """The registry's store, counting the requests each method makes."""

    def __init__(self, store: Any) -> None:
        self._store, self.counts = store, collections.Counter[str]()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] += 1
            return attr(*args, **kwargs)

        return counted


def populate(uri: str, domains: int, versions: int) -> None:
    cfg = ModelConfig(backbone="test_efficientnet", decoder_channels=8)
    meta = ModelMeta(model=cfg, num_classes=2, classes=["a", "b"], palette=[(0, 0, 0)] * 2)
    reg = Registry(uri)
    torch.manual_seed(0)
    model = build_segmenter(cfg, 2)
    for d in range(domains):
        domain = f"d{d:02d}"
        reg.register(domain, model, meta, lineage={"method": "source"})
        for v in range(2, versions + 1):
            with torch.no_grad():
                model.head.bias.add_(0.01)  # type: ignore[union-attr]  # the head's conv has a bias
            method = "adabn_online" if v % 4 == 0 else "finetune"
            reg.register(
                domain,
                model,
                meta,
                parent=f"{domain}@1",
                lineage={"method": method, "search": "s", "trial_id": f"t{v}"},
            )
        reg.set_alias(domain, 1, "production")


def count(uri: str, operation: Any) -> int:
    reg = Registry(uri)
    store = CountingStore(reg.store)
    reg.store = store  # type: ignore[assignment]
    operation(reg)
    return sum(store.counts.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--domains", type=int, default=50)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-c", S3_SERVER, str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    boto3.client("s3").create_bucket(Bucket="bench")
    uri = "s3://bench/registry"
    try:
        start = time.perf_counter()
        populate(uri, args.domains, args.versions)
        print(
            f"registry: {args.domains} domains x {args.versions} versions on S3 ({time.perf_counter() - start:.0f} s)"
        )
        last = f"d{args.domains - 1:02d}"
        operations = {
            "one domain's versions (Registry.entries(domain))": lambda r: r.entries(last),
            "a search's registered winner (by lineage)": lambda r: [
                e for e in r.entries(last) if e.lineage.trial_id == f"t{args.versions}"
            ],
            "remove one version (base check)": lambda r: r.remove(last, args.versions),
            "prune snapshots of one domain": lambda r: prune_snapshots(r, last, keep=1),
            "list the whole registry (Registry.list)": lambda r: r.list(),
        }
        rows = {name: count(uri, op) for name, op in operations.items()}
        for name, n in rows.items():
            print(f"{n:>6} requests  {name}")
        if args.out:
            args.out.write_text(json.dumps({"domains": args.domains, "versions": args.versions, "requests": rows}))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
