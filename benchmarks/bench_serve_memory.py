"""Replica memory per loaded domain: models of many domains sharing their base's tensors
(`Registry.load_shared`, what a Serve replica does) against loading each model whole.

Deltas of three kinds on EfficientNet-Lite0 + FPN: `adabn` (only BatchNorm statistics differ,
what AdaBN/online AdaBN store), `freeze 4` (stem + 4 stages frozen) and `freeze 0` (everything
trained). Each cell loads 1, 4 or 8 domains in a fresh process and reports the resident-memory
growth (resident set, /proc/self/statm) after loading, per domain, and the ratio shared / whole.

    python benchmarks/bench_serve_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from raysegment.config import ModelConfig
from raysegment.models.freeze import frozen_modules
from raysegment.models.io import ModelMeta
from raysegment.models.segmenter import build_segmenter
from raysegment.registry import Registry, SharedBases

CLASSES = [f"c{i}" for i in range(7)]


def build_registry(root: Path, kind: str, domains: int) -> None:
    meta = ModelMeta(
        model=ModelConfig(backbone="efficientnet_lite0"),
        num_classes=7,
        classes=CLASSES,
        palette=[(i, i, i) for i in range(7)],
    )
    torch.manual_seed(0)
    base = build_segmenter(meta.model, 7).eval()
    reg = Registry(root)
    reg.register("source", base, meta)
    frozen = {id(p) for m in frozen_modules(base.encoder, 4) for p in m.parameters(recurse=False)}
    for d in range(domains):
        variant = build_segmenter(meta.model, 7).eval()
        variant.load_state_dict(base.state_dict())
        with torch.no_grad():
            for (_name, p), (_, bp) in zip(variant.named_parameters(), base.named_parameters()):
                if kind == "freeze 0" or (kind == "freeze 4" and id(bp) not in frozen):
                    p.add_(torch.randn_like(p) * 1e-3)
            for name, b in variant.named_buffers():
                if "running_mean" in name:
                    b.add_(torch.randn_like(b) * 1e-2)
        reg.register(f"d{d}", variant, meta, parent="source@1")


def child(root: str, n: int, shared: bool) -> None:
    import gc
    import os

    def rss() -> int:  # resident bytes, from the kernel (Linux)
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    torch.set_num_threads(1)
    reg = Registry(root)
    build_segmenter(ModelConfig(backbone="efficientnet_lite0"), 7)  # warm up imports and allocator
    gc.collect()
    before = rss()
    bases = SharedBases()
    models = [reg.load_shared(f"d{d}@1", bases)[0] if shared else reg.load(f"d{d}@1")[0] for d in range(n)]
    gc.collect()
    storages = {}
    for model in models:  # every distinct tensor storage the loaded models hold, counted once
        for t in model.state_dict(keep_vars=True).values():
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    print(json.dumps({"rss_mb": (rss() - before) / 2**20, "tensor_mb": sum(storages.values()) / 2**20}))


def main() -> None:
    if len(sys.argv) == 4:
        return child(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "shared")
    print(
        "tensor MB: distinct weight storage the loaded models hold (exact); RSS MB: resident growth (allocator noise)"
    )
    print(
        f"{'delta kind':<10} {'domains':>7} {'tensor MB whole':>15} {'tensor MB shared':>16} {'per domain shared':>17} "
        f"{'ratio':>6} {'RSS MB whole':>12} {'RSS MB shared':>13}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("adabn", "freeze 4", "freeze 0"):
            root = Path(tmp) / kind.replace(" ", "")
            build_registry(root, kind, 8)
            for n in (1, 4, 8):
                cells = {}
                for mode in ("whole", "shared"):
                    out = subprocess.run(
                        [sys.executable, __file__, str(root), str(n), mode], capture_output=True, text=True, check=True
                    ).stdout
                    cells[mode] = json.loads(out.strip().splitlines()[-1])
                w, sh = cells["whole"], cells["shared"]
                print(
                    f"{kind:<10} {n:>7} {w['tensor_mb']:>15.1f} {sh['tensor_mb']:>16.1f} {sh['tensor_mb'] / n:>17.2f} "
                    f"{sh['tensor_mb'] / w['tensor_mb']:>6.2f} {w['rss_mb']:>12.1f} {sh['rss_mb']:>13.1f}"
                )


if __name__ == "__main__":
    main()
