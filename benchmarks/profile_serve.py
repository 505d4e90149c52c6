"""Where a served request's CPU goes: py-spy on every process of a loaded Serve app, one runtime per run.

The app of `bench_serve.py --runtimes` (4 domains, 128x256 PNG, concurrency 16, 2 model replicas and a
gateway on this node) under load, while py-spy samples the load generator, Serve's HTTP proxy, the
gateway and each model replica at 100 Hz (on-CPU samples only), and /proc counts each one's CPU
time over the same window. Each process's CPU-seconds and the
share of the replicas' time spent in the model's forward say how much a faster forward can move the
request rate: if the forward is a small part of the CPU the whole node spends per request, a 2x
faster forward is a small gain in req/s.

    python benchmarks/profile_serve.py [--runtime onnxruntime|torch|both] [--seconds 10] [--py-spy PATH]

py-spy is a tool, not a dependency: `pip install py-spy` (any venv) and pass its path.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serve  # noqa: E402  (the same registry, image and load generator)

RATE_HZ = 100
# What each sampled stack is doing, by the first of these frames found from the leaf up.
ACTIVITIES = [
    ("model forward (onnxruntime)", ("onnxruntime", "OrtSegmenter")),
    ("model forward (torch)", ("conv2d", "_conv_forward", "forward (torch/nn", "batch_norm", "interpolate")),
    ("class map / mask copy", ("class_map",)),
    ("PNG decode", ("decode_upload", "decode_png", "decode_image", "ImageFile.load")),
    ("PNG encode", ("mask_png", "overlay_png", "encode_png")),
    ("drift statistics", ("batchnorm_inputs", "RunningSignature")),
    ("HTTP client (load generator)", ("httpx", "httpcore", "h11")),
    ("HTTP server / ASGI", ("uvicorn", "starlette", "fastapi", "h11_impl", "httptools")),
    ("Ray calls / serialisation", ("ray/_private", "ray/serve/_private", "cloudpickle", "_raylet", "serialization")),
    ("asyncio / threads", ("asyncio", "threading", "selectors", "concurrent/futures")),
]


def serve_pids() -> dict[str, int]:
    """name -> pid of the Serve proxy, gateway and model replicas of this cluster."""
    import ray
    from ray.util.state import list_actors

    alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")])
    found: dict[str, int] = {}
    for actor in alive:
        name = actor.class_name or ""
        for key in ("ProxyActor", "Gateway", "SegmentModels", "SegmentService"):
            if key in name and actor.pid is not None:
                label = "model replica" if key in ("SegmentModels", "SegmentService") else key
                n = sum(1 for k in found if k.startswith(label))
                found[f"{label} {n + 1}" if label == "model replica" else label] = actor.pid
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def every_process() -> dict[int, tuple[str, float]]:
    """pid -> (command line, CPU-seconds so far) of every process on the machine."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                found[int(entry.name)] = (args[:70] or entry.name, cpu_seconds(int(entry.name)))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
    return found


def node_ticks() -> tuple[int, int, int]:
    """(busy, idle, steal) clock ticks of the whole machine so far, from /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return user + nice + system + irq + softirq, idle + iowait, steal


def record(
    py_spy: str, pids: dict[str, int], seconds: float, out: Path, idle: bool = False
) -> tuple[dict[str, Path], dict[str, float]]:
    """One `py-spy record` per process at once, raw (collapsed) stacks, for `seconds`; and each
    process's CPU-seconds over the same window (py-spy's samples say where, /proc says how much)."""
    procs, files = [], {}
    out.mkdir(parents=True, exist_ok=True)
    for name, pid in pids.items():
        files[name] = out / f"{name.replace(' ', '_')}.txt"
        procs.append(
            subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(RATE_HZ)]
                + ["--format", "raw", "--nonblocking", "--output", str(files[name])]
                + (["--idle"] if idle else []),
                stdout=subprocess.DEVNULL,
                stderr=open(out / f"{name.replace(' ', '_')}.log", "wb"),
            )
        )
    before, start, ticks = {name: cpu_seconds(pid) for name, pid in pids.items()}, time.monotonic(), node_ticks()
    others = every_process()
    for proc in procs:
        proc.wait(timeout=seconds + 60)
    elapsed = time.monotonic() - start
    used = {name: (cpu_seconds(pid) - before[name]) / elapsed for name, pid in pids.items()}
    busy, _, steal = (b - a for a, b in zip(ticks, node_ticks()))  # busy, idle, stolen ticks
    mine = set(pids.values())
    rest: dict[str, float] = collections.defaultdict(float)
    for pid, (args, cpu) in every_process().items():
        if pid not in mine and pid in others:
            rest[" ".join(args.split()[:2])[:60]] += (cpu - others[pid][1]) / elapsed
    for args, cpu in sorted(rest.items(), key=lambda item: -item[1])[:6]:
        used[f"(other: {args})"] = cpu
    used["(whole machine, busy)"] = busy / os.sysconf("SC_CLK_TCK") / elapsed
    used["(whole machine, stolen by the hypervisor)"] = steal / os.sysconf("SC_CLK_TCK") / elapsed
    return {name: f for name, f in files.items() if f.is_file()}, used


def activity(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):  # from the leaf up: the innermost recognisable frame says what runs
        for label, needles in ACTIVITIES:
            if any(n in frame for n in needles):
                return label
    return "other Python"


def summarise(files: dict[str, Path], used: dict[str, float]) -> dict[str, dict]:
    table = {}
    for name in [n for n in used if n.startswith("(")]:
        table[name] = {"cpu_s_per_s": used[name], "activities": {}}
    for name, path in files.items():
        by_activity: collections.Counter[str] = collections.Counter()
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                by_activity[activity(stack)] += int(count)
        total = sum(by_activity.values())
        table[name] = {
            "cpu_s_per_s": used[name],
            "activities": {k: v / max(total, 1) for k, v in by_activity.most_common()},
        }
    return table


def profile(runtime: str, args: argparse.Namespace, root: Path, body: bytes, url: str, out: Path) -> dict:
    from ray import serve

    from raysegment.serving.app import build_app
    from raysegment.serving.config import Replicas, ServeConfig

    replicas = Replicas(
        max_batch_size=8,
        max_replicas=2,
        min_replicas=2,
        cpus_per_replica=0.95,
        ingress_cpus=0.1 if args.topology == "split" else 0.0,
        runtime=runtime,
        topology=args.topology,
    )
    cfg = ServeConfig(registry=str(root), auth="none", replicas=replicas)
    serve.run(build_app(cfg.model_dump()), name="raysegment", route_prefix="/")
    mix = bench_serve.DOMAINS[:4]
    bench_serve.load(url, body, mix, 2, 2.0)  # every model (and session) loaded before sampling
    pids = {"load generator": os.getpid(), **serve_pids()}
    box: dict = {}
    loader = threading.Thread(
        target=lambda: box.update(r=bench_serve.load(url, body, mix, args.concurrency, args.seconds + 4))
    )
    loader.start()
    time.sleep(2)
    files, used = record(args.py_spy, pids, args.seconds, out / runtime, args.idle)
    loader.join()
    serve.delete("raysegment")
    rps, p50, p99, errors = box["r"]
    table = summarise(files, used)
    node_cpu = table["(whole machine, busy)"]["cpu_s_per_s"]
    replicas_cpu = sum(row["cpu_s_per_s"] for name, row in table.items() if name.startswith("model replica"))
    forward = sum(
        row["cpu_s_per_s"] * share
        for name, row in table.items()
        if name.startswith("model replica")
        for act, share in row["activities"].items()
        if act.startswith("model forward")
    )
    return {
        "runtime": runtime,
        "req_per_s": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": errors,
        "processes": table,
        "cpu_ms_per_request": {
            "node": 1000 * node_cpu / rps,
            "serve processes": 1000 * sum(r["cpu_s_per_s"] for n, r in table.items() if not n.startswith("(")) / rps,
            "model replicas": 1000 * replicas_cpu / rps,
            "model forward": 1000 * forward / rps,
        },
    }


def report(result: dict) -> str:
    lines = [
        f"## runtime {result['runtime']}: {result['req_per_s']:.1f} req/s, p50 {result['p50_ms']:.0f} ms, "
        f"p99 {result['p99_ms']:.0f} ms, errors {result['errors']}",
        "",
        "| process | CPU-s per s | top activities (share of its samples) |",
        "|---|---|---|",
    ]
    for name, row in result["processes"].items():
        top = ", ".join(f"{k} {v:.0%}" for k, v in list(row["activities"].items())[:4])
        lines.append(f"| {name} | {row['cpu_s_per_s']:.2f} | {top} |")
    per = result["cpu_ms_per_request"]
    lines += [
        "",
        f"CPU per request: {per['node']:.0f} ms on the machine, {per['serve processes']:.0f} ms in the processes "
        f"above, of which model replicas {per['model replicas']:.0f} ms "
        f"and the model's forward {per['model forward']:.0f} ms ({per['model forward'] / max(per['node'], 1e-9):.0%}).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runtime", choices=["torch", "onnxruntime", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--py-spy", default=os.environ.get("PY_SPY") or shutil.which("py-spy") or "py-spy")
    parser.add_argument("--idle", action="store_true", help="sample waiting threads too (where requests wait)")
    parser.add_argument("--topology", choices=["split", "fused"], default="split")
    parser.add_argument("--out", type=Path, default=None, help="folder for the raw stacks and profile.md/json")
    args = parser.parse_args()
    if not Path(args.py_spy).exists() and not shutil.which(args.py_spy):
        sys.exit(f"no py-spy at {args.py_spy}: `pip install py-spy` and pass --py-spy PATH")

    import io

    import numpy as np
    import ray
    import torch
    from PIL import Image
    from ray import serve

    from raysegment.apps.export import export_version
    from raysegment.data import synth
    from raysegment.registry import Registry
    from raysegment.serving.config import use_serve_process_env

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "profile"
        root = Path(tmp) / "registry"
        bench_serve.make_registry(root)
        scene = synth.render_scene(np.random.default_rng(0), args.height, args.width)
        image = torch.from_numpy((scene.image * 255).round().astype(np.uint8))
        buf = io.BytesIO()
        Image.fromarray(image.numpy()).save(buf, "PNG")
        body = buf.getvalue()
        images = Path(tmp) / "images"
        images.mkdir()
        (images / "scene.png").write_bytes(body)
        for domain in bench_serve.DOMAINS[:4]:
            export_version(Registry(root), domain, images=images, say=lambda line: None)
        use_serve_process_env()
        ray.init(address="local", num_cpus=2, num_gpus=0, log_to_driver=False)
        port = 18000 + os.getpid() % 1000
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        runtimes = ["torch", "onnxruntime"] if args.runtime == "both" else [args.runtime]
        results = [profile(r, args, root, body, url, out) for r in runtimes]
        serve.shutdown()
        ray.shutdown()
        text = "\n".join(report(r) for r in results)
        print(text)
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.md").write_text(text)
        (out / "profile.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
