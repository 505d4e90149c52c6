"""Serve throughput and latency on loopback, bounded in time, against the in-process limit.

For the Serve app with batching, the same without batching (max_batch_size=1), and the model's
own in-process forward (best of batch 1 and batch 8): throughput and p50/p99 latency at
concurrency 1, 8, 16 and 32, on one domain and on a mix of 4 domains; then replica memory (RSS)
with 1, 4 and 8 domains loaded. Ratios are printed against figures measured in this run.

    python benchmarks/bench_serve.py [--seconds 5] [--height 128 --width 256]
    python benchmarks/bench_serve.py --device cuda --height 512 --width 1024 --ingress 8
    python benchmarks/bench_serve.py --runtimes [--concurrency 16]   # runtime torch vs onnxruntime, in turns

On a CPU the app runs one model replica per CPU by default (`--replicas 1` for the old layout):
Ray gives an actor of under 2 CPUs one torch thread, so a single replica leaves cores idle, and
replicas scale better than torch's intra-op threads (benchmarks/results/2026-11-28-cpu.md). With
--device cuda the model replica holds one GPU and `--ingress` Gateway replicas decode the uploads
on the machine's CPUs; the in-process limit is then the GPU forward (best of batch 1/8).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from ray import serve  # noqa: E402
from serve_limit import InProcess  # noqa: E402

from raysegment.config import ModelConfig  # noqa: E402
from raysegment.data import synth  # noqa: E402
from raysegment.models.io import ModelMeta  # noqa: E402
from raysegment.models.segmenter import build_segmenter
from raysegment.registry import Registry  # noqa: E402
from raysegment.serving.app import build_app  # noqa: E402
from raysegment.serving.config import ClosedLoop, Replicas, ServeConfig, use_serve_process_env  # noqa: E402

DOMAINS = [f"d{i}" for i in range(8)]


def make_registry(root: Path) -> ModelMeta:
    cfg = ModelConfig(backbone="efficientnet_lite0", decoder="fpn")
    meta = ModelMeta(model=cfg, num_classes=7, classes=[f"c{i}" for i in range(7)], palette=[(0, 0, 0)] * 7)
    reg = Registry(root)
    torch.manual_seed(0)
    base = build_segmenter(cfg.model_copy(update={"freeze_depth": 3}), 7)
    reg.register("base", base, meta)
    for i, domain in enumerate(DOMAINS):
        with torch.no_grad():
            for p in base.parameters():
                if p.requires_grad:
                    p.add_(0.001 * (i + 1))
        reg.register(domain, base, meta, parent="base@1")
    return meta


def load(
    url: str, body: bytes, domains: list[str], concurrency: int, seconds: float
) -> tuple[float, float, float, int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    def worker(k: int) -> None:
        nonlocal errors
        with httpx.Client(timeout=60) as client:
            i = k
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = client.post(f"{url}/v1/domains/{domains[i % len(domains)]}/segment", content=body)
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200
                i += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return len(latencies) / elapsed, q[49] * 1000, q[98] * 1000, errors


def replica_rss_mb() -> float:
    """Resident memory of one model replica (the mean over the replicas)."""
    from ray.util.state import list_actors

    alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")])
    replicas = ("SegmentModels", "SegmentService")
    pids = [a.pid for a in alive if a.pid is not None and any(n in (a.class_name or "") for n in replicas)]
    return sum(_rss_kb(pid) for pid in pids) / 1e3 / max(len(pids), 1)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def compare_runtimes(
    root: Path, body: bytes, replicas: Replicas, url: str, seconds: float, turns: int, concurrency: int
) -> dict[str, list[float]]:
    """The same app with `runtime: torch` and `runtime: onnxruntime` (every domain exported first),
    in alternating turns on a mix of 4 domains: req/s of each turn."""
    from raysegment.apps.export import export_version

    images = root.parent / "images"
    images.mkdir(exist_ok=True)
    (images / "scene.png").write_bytes(body)
    mix = DOMAINS[:4]
    for domain in mix:
        export_version(Registry(root), domain, images=images, say=lambda line: None)
    rates: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    for _ in range(turns):
        for runtime, found in rates.items():
            cfg = ServeConfig(
                registry=str(root), auth="none", replicas=replicas.model_copy(update={"runtime": runtime})
            )
            serve.run(build_app(cfg.model_dump()), name="raysegment", route_prefix="/")
            load(url, body, mix, 2, 1.0)  # warm the models (and the sessions)
            rps, p50, p99, errors = load(url, body, mix, concurrency, seconds)
            found.append(rps)
            print(f"[bench] {runtime:<12} {rps:6.1f} req/s p50 {p50:.0f} ms p99 {p99:.0f} ms errors {errors}")
            serve.delete("raysegment")
    return rates


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--ingress", type=int, default=1, help="Gateway replicas (they decode uploads)")
    parser.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="model replicas (default: one per CPU on a CPU, one on a GPU); on a CPU each gets an equal share of "
        "the CPUs the gateway leaves, and as many torch threads as whole CPUs in it (at least one)",
    )
    parser.add_argument(
        "--topology", choices=["split", "fused"], default="split", help="ServeConfig.topology (fused: no gateway hop)"
    )
    parser.add_argument(
        "--drift-window", type=int, help="ServeConfig.drift_window (0: no drift statistics; default: the config's)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--pairs", type=int, default=3, help="turns of (best batched cell, in-process limit)")
    parser.add_argument("--runtimes", action="store_true", help="only: runtime torch vs onnxruntime, --pairs turns")
    return parser.parse_args()


@dataclass(frozen=True)
class Layout:
    """What the app runs on: CPUs, whether a GPU, and the replicas Ray must fit on the node."""

    gpu: bool
    cpus: int
    replicas: int
    ingress_cpus: float
    cpus_per_replica: float

    @classmethod
    def of(cls, args: argparse.Namespace) -> Layout:
        gpu = args.device == "cuda"
        cpus = (os.cpu_count() or 2) if gpu else 2
        replicas = args.replicas or (1 if gpu else cpus)
        ingress_cpus = 0.1 if args.topology == "split" else 0.0
        # Ray schedules by these numbers: the replicas and the gateways together must fit the node;
        # a GPU replica's CPU only batches and copies.
        per_replica = 1.0 if gpu else round((cpus - ingress_cpus * args.ingress + 1e-9) // (0.05 * replicas) * 0.05, 2)
        return cls(gpu, cpus, replicas, ingress_cpus, per_replica)

    def replicas_config(self, args: argparse.Namespace, batch: int) -> Replicas:
        return Replicas(
            max_batch_size=batch,
            max_replicas=self.replicas,
            min_replicas=self.replicas,
            cpus_per_replica=self.cpus_per_replica,
            ingress_cpus=self.ingress_cpus,
            gpus_per_replica=1 if self.gpu else 0,
            ingress_replicas=args.ingress,
            max_models_per_replica=8,
            topology=args.topology,
        )


def scene_png(height: int, width: int) -> tuple[torch.Tensor, bytes]:
    """A rendered street scene (compresses like a photo, unlike noise): the image and its PNG."""
    scene = synth.render_scene(np.random.default_rng(0), height, width)
    image = torch.from_numpy((scene.image * 255).round().astype(np.uint8)).permute(2, 0, 1).contiguous()
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, "PNG")
    return image, buf.getvalue()


@dataclass
class Measured:
    """Every figure of a run: the in-process limits around the apps, the apps' cells, the
    headline turns (best batched cell, limit) and the replica's memory."""

    limits: list[float] = field(default_factory=list)
    kinds: list[tuple[float, float]] = field(default_factory=list)
    rows: list[tuple[str, int, int, float, float, float, int]] = field(default_factory=list)
    pairs: list[tuple[float, ...]] = field(default_factory=list)
    memory: list[tuple[int, float]] = field(default_factory=list)
    best_cell: tuple[int, int] = (1, 1)  # (domains, concurrency)

    def limit(self, own: InProcess, seconds: float) -> None:
        self.limits.append(own.rate(seconds))
        self.kinds.append(own.last)


def measure_apps(
    args: argparse.Namespace, layout: Layout, root: Path, body: bytes, url: str, own: InProcess
) -> tuple[Measured, ServeConfig]:
    """The batched app, then the unbatched one: every (domains, concurrency) cell, the limit
    after each, and for the batched app the headline turns and the replica's memory."""
    found = Measured()
    found.limit(own, args.seconds)
    for label, batch in (("batched", 8), ("unbatched", 1)):
        cfg = ServeConfig(
            registry=str(root),
            auth="none",
            replicas=layout.replicas_config(args, batch),
            closed_loop=ClosedLoop() if args.drift_window is None else ClosedLoop(drift_window=args.drift_window),
        )
        serve.run(build_app(cfg.model_dump()), name="raysegment", route_prefix="/")
        for mix in (["d0"], DOMAINS[:4]):
            load(url, body, mix, 2, 1.0)  # warm the models
            for conc in args.concurrency:
                rps, p50, p99, errors = load(url, body, mix, conc, args.seconds)
                found.rows.append((label, len(mix), conc, rps, p50, p99, errors))
        found.limit(own, args.seconds)
        if label == "batched":
            # The headline: the best batched cell and the in-process limit, measured in turns.
            _, n_best, conc_best = max(found.rows, key=lambda r: r[3])[:3]
            found.best_cell = (n_best, conc_best)
            for _ in range(args.pairs):
                serve_rps = load(url, body, DOMAINS[:n_best], conc_best, args.seconds)[0]
                found.pairs.append((serve_rps, own.rate(args.seconds), *own.last))
            for n in (1, 4, 8):
                load(url, body, DOMAINS[:n], 4, 1.5)
                found.memory.append((n, replica_rss_mb()))
        serve.delete("raysegment")
    return found, cfg


def report_runtimes(args: argparse.Namespace, layout: Layout, rates: dict[str, list[float]], conc: int) -> None:
    ratios = sorted(o / t for o, t in zip(rates["onnxruntime"], rates["torch"]))
    print(
        f"{args.height}x{args.width} PNG, 4 domains, concurrency {conc}, {layout.replicas} replica(s) x "
        f"{layout.cpus_per_replica:.2f} CPU, {args.topology}: onnxruntime / torch per turn "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + f"; median {statistics.median(ratios):.2f} (goal >= 1.3)"
    )


def report(args: argparse.Namespace, layout: Layout, found: Measured, cfg: ServeConfig) -> None:
    gpu, cpus = layout.gpu, layout.cpus
    gateways = args.ingress if args.topology == "split" else 0
    print(
        f"{args.height}x{args.width} PNG, EfficientNet-Lite0 + FPN, {cpus} CPUs, "
        f"{torch.cuda.get_device_name() if gpu else 'no GPU'}, {args.topology} topology, {gateways} gateway(s), "
        f"{layout.replicas} model replica(s) x {layout.cpus_per_replica:.2f} CPU, "
        f"drift window {cfg.closed_loop.drift_window} (one batch in {cfg.closed_loop.drift_every}), loopback, "
        f"{args.seconds:.0f} s per cell"
    )
    print(
        "limit outside Serve (best of batch 1/8) before, between and after the two apps: "
        + ", ".join(f"{x:.1f}" for x in found.limits)
        + " img/s; each row is divided by the mean of the two around it"
    )
    if not gpu:
        print(
            f"  of which one process x {cpus} threads / {cpus} processes x 1 thread: "
            + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in found.kinds)
        )
    report_rows(found)
    n_best, conc_best = found.best_cell
    print(
        f"best batched cell ({n_best} domain(s), concurrency {conc_best}) and the limit in turns: "
        + ", ".join(f"{p[0]:.1f}/{p[1]:.1f}" for p in found.pairs)
        + " img/s"
    )
    kinds_of_limit = [(1, "the limit")]
    if not gpu:  # the limit was one process's forward; say both
        kinds_of_limit += [(2, f"1 process x {cpus} threads"), (3, f"{cpus} processes x 1 thread")]
    for column, name in kinds_of_limit:
        ratios = sorted(p[0] / p[column] for p in found.pairs)
        print(
            f"best batched / {name}, median of {len(ratios)} turns: {statistics.median(ratios):.2f} "
            f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}; goal >= 0.85)"
        )
    for n, mb in found.memory:
        print(f"RSS of one model replica with {n} domain(s) loaded: {mb:.0f} MB")


def report_rows(found: Measured) -> None:
    """Each cell, divided by the mean of the limits measured before and after its app."""
    print(
        f"{'app':<10} {'domains':>7} {'conc':>4} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'vs limit':>8}"
    )
    limits = found.limits
    around = {"batched": (limits[0] + limits[1]) / 2, "unbatched": (limits[1] + limits[2]) / 2}
    for label, n, conc, rps, p50, p99, errors in found.rows:
        ratio = rps / around[label]
        print(f"{label:<10} {n:>7} {conc:>4} {rps:>7.1f} {p50:>7.0f} {p99:>7.0f} {errors:>6} {ratio:>8.2f}")
    best = {lab: max(r[3] for r in found.rows if r[0] == lab) for lab in ("batched", "unbatched")}
    print(
        f"best batched / best unbatched:   {best['batched'] / best['unbatched']:.2f} "
        "(goal >= 3 on a GPU; CPU as measured)"
    )


def main() -> None:
    args = parse_args()
    layout = Layout.of(args)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "registry"
        make_registry(root)
        image, body = scene_png(args.height, args.width)
        own = InProcess(root, image, torch.device(args.device), layout.cpus)
        use_serve_process_env()
        ray.init(address="local", num_cpus=layout.cpus, num_gpus=1 if layout.gpu else 0, log_to_driver=False)
        port = 18000 + os.getpid() % 1000
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        try:
            if args.runtimes:
                conc = max(args.concurrency)
                replicas = layout.replicas_config(args, 8)
                rates = compare_runtimes(root, body, replicas, url, args.seconds, args.pairs, conc)
            else:
                found, cfg = measure_apps(args, layout, root, body, url, own)
        finally:
            serve.shutdown()
            ray.shutdown()
            own.close()
    if args.runtimes:
        report_runtimes(args, layout, rates, conc)
    else:
        report(args, layout, found, cfg)


if __name__ == "__main__":
    main()
