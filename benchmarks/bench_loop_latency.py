"""What the closed loop's service side adds to a request, through Ray Serve on this machine:
p50 / mean latency of sequential requests (one at a time, so no batching or queueing hides it) for

- `plain`: a named domain, drift tracking off, no capture, no shadow;
- `drift`: the same with drift tracking (`drift_window: 64`: BatchNorm-input statistics per image);
- `routed`: `POST /v1/segment`, no domain (a routing-model forward + signature, then the domain's model);
- `mirrored`: a named domain with a candidate, `shadow_share: 1` and capture on (both run after the
  answer, so they cost the next request CPU time on a 2-core machine rather than this one's).

EfficientNet-Lite0 (ImageNet weights) + FPN, synthetic 128x256 PNGs, local Ray with --cpus.

    python benchmarks/bench_loop_latency.py [--requests 60] [--cpus 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import httpx  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402

from raysegment.config import ModelConfig, PretrainedConfig  # noqa: E402
from raysegment.data import DatasetInfo, files, open_split, synth  # noqa: E402
from raysegment.engine.signature import version_signatures  # noqa: E402
from raysegment.models.io import ModelMeta  # noqa: E402
from raysegment.models.segmenter import build_segmenter
from raysegment.models.weights_import import bundled_efficientnet_lite0, import_weights  # noqa: E402
from raysegment.registry import Registry  # noqa: E402
from raysegment.serving.app import build_app  # noqa: E402
from raysegment.serving.config import ClosedLoop, Replicas, ServeConfig, use_serve_process_env  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_registry(tmp: Path) -> tuple[str, Path]:
    root = synth.generate(tmp / "data", domains=("clear", "fog", "night"), images_per_domain=24)
    weights, _, _ = import_weights(bundled_efficientnet_lite0(), "efficientnet_lite0", tmp / "lite0.safetensors")
    cfg = ModelConfig(pretrained=PretrainedConfig(source="file", uri=str(weights)))
    info = DatasetInfo.read(root)
    model = build_segmenter(cfg, info.num_classes).eval()
    meta = ModelMeta(
        model=cfg.without_pretrained(), num_classes=info.num_classes, classes=info.classes, palette=info.palette
    )
    reg = Registry(tmp / "registry")
    train = {d: open_split(root, d, "train", unlabelled=True) for d in ("clear", "fog", "night")}
    reg.register("clear", model, meta, signatures=version_signatures(model, train["clear"], None))
    for domain in ("fog", "night"):
        reg.register(
            domain,
            model,
            meta,
            parent="clear@1",
            signatures=version_signatures(model, train[domain], None, ("clear@1", model)),
        )
        reg.set_alias(domain, 1, "production")
    reg.register("fog", model, meta, parent="clear@1")
    reg.set_alias("fog", 2, "candidate")
    return reg.uri, root


def measure(url: str, bodies: list[bytes], n: int) -> list[float]:
    with httpx.Client(timeout=120) as client:
        for body in bodies[:5]:  # warm-up: models loaded, caches filled
            client.post(url, content=body).raise_for_status()
        took = []
        for k in range(n):
            start = time.perf_counter()
            client.post(url, content=bodies[k % len(bodies)]).raise_for_status()
            took.append(1000 * (time.perf_counter() - start))
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--cpus", type=int, default=2)
    args = p.parse_args()
    use_serve_process_env()
    with tempfile.TemporaryDirectory() as tmp_name:
        registry, root = build_registry(Path(tmp_name))
        bodies = [files.read(path) for path, _ in open_split(root, "fog", "test").samples]
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = ServeConfig(
            registry=registry,
            auth="none",
            replicas=Replicas(max_replicas=1, cpus_per_replica=0.5),
            closed_loop=ClosedLoop(drift_window=0),
        )
        loops = {
            "plain": ClosedLoop(drift_window=0),
            "drift": ClosedLoop(drift_window=64, drift_every=1),
            "routed": ClosedLoop(drift_window=0, routing_base="clear@1"),
            "mirrored": ClosedLoop(drift_window=0, shadow_share=1.0, capture_domains=["fog"]),
        }
        paths = {"routed": "/v1/segment"}
        rows = {}
        for name, loop in loops.items():
            settings, path = base.model_copy(update={"closed_loop": loop}), paths.get(name, "/v1/domains/fog/segment")
            serve.run(build_app(settings.model_dump()), name=name, route_prefix=f"/{name}")
            took = measure(f"http://127.0.0.1:{port}/{name}{path}", bodies, args.requests)
            serve.delete(name)
            rows[name] = (statistics.median(took), statistics.mean(took))
            print(f"{name}: p50 {rows[name][0]:.1f} ms, mean {rows[name][1]:.1f} ms", flush=True)
        serve.shutdown()
        ray.shutdown()
    print("| case | p50 ms | mean ms | p50 added vs plain |\n|---|---|---|---|")
    for name, (p50, mean) in rows.items():
        print(f"| {name} | {p50:.1f} | {mean:.1f} | {p50 - rows['plain'][0]:+.1f} |")


if __name__ == "__main__":
    main()
