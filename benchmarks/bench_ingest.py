"""Training ingest at Cityscapes size: a local folder through the torch DataLoader against the S3
server on loopback through Ray Data (`distributed.ingest`), in one run, both inside one Ray
actor that holds 1 CPU as a Ray Train worker does (the other CPU left to decode tasks).

For each source: images/s delivered to the worker (batches of uint8 tensors, nothing else done with
them), then the engine's training rate with that ingest (`Runner.train_epoch`, the first epoch a
warm-up; EfficientNet-Lite0 + FPN, the 1024x2048 images resized on the device to `--short-side`).
The images are synthetic street scenes upscaled to 1024x2048 with sensor noise, so a PNG is at
least as large and as slow to decode as a real frame (~3.9 MB here; Cityscapes' are ~2 MB). moto's
threaded server stands in for S3.

    python benchmarks/bench_ingest.py [--images 24] [--batch 4] [--short-side 256] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from raysegment.config import parse_config
from raysegment.data import EpochSampler, open_split, synth
from raysegment.storage import upload_tree

S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private embedded cluster: no token file written


def cityscapes_sized(out: Path, images: int, seed: int = 0) -> Path:
    """`images` 1024x2048 frames of one labelled domain (`clear`), with masks."""
    small = synth.generate(
        out / "small", domains=("clear",), images_per_domain=images, height=256, width=512, seed=seed
    )
    root = out / "big"
    (root / "clear" / "images").mkdir(parents=True, exist_ok=True)
    (root / "clear" / "masks").mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_bytes((small / "dataset.json").read_bytes())
    rng = np.random.default_rng(seed)
    for path in sorted((small / "clear" / "images").glob("*.png")):
        image = Image.open(path).convert("RGB").resize((2048, 1024), Image.Resampling.BICUBIC)
        noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (1024, 2048, 3)).astype(np.int16)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(root / "clear" / "images" / path.name)
        mask = Image.open(small / "clear" / "masks" / path.name).resize((2048, 1024), Image.Resampling.NEAREST)
        mask.save(root / "clear" / "masks" / path.name)
    return root


def start_s3() -> tuple[Any, str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": endpoint})
    return server, endpoint


def run_config(root: str, args: argparse.Namespace, out: Path, ingest: str):
    return parse_config(
        {
            "data": {
                "root": root,
                "domain": "clear",
                "train_split": "all",
                "ingest": ingest,
                "resize": {"short_side": args.short_side},
                "decode_cpus": args.decode_cpus,
            },
            "optim": {"epochs": args.epochs, "batch_size": args.batch, "lr": 1e-3},
            "augment": {"jitter": 0.1},
            "output_dir": str(out / f"run-{ingest}"),
        }
    )


def worker_class():
    import ray

    @ray.remote(num_cpus=1)
    class TrainingWorker:
        """Stands where a Ray Train worker stands: 1 CPU, torch on 1 thread, batches from a loader."""

        def __init__(self) -> None:
            torch.set_num_threads(1)

        def deliver(self, cfg_json: dict, epochs: int) -> dict:
            from raysegment.config import RunConfig
            from raysegment.distributed.ingest import loader_factory

            cfg = RunConfig.model_validate(cfg_json)
            data = open_split(cfg.data.root, "clear", "all")
            sampler = EpochSampler(len(data), 0)
            loader = loader_factory(cfg)(data, cfg, sampler, torch.device("cpu"))
            rates = []
            for epoch in range(epochs):
                sampler.set_epoch(epoch)
                start, seen = time.perf_counter(), 0
                for batch in loader:
                    seen += batch.images.shape[0]
                rates.append(seen / (time.perf_counter() - start))
            return {"images_per_s": rates, "loader": type(loader).__name__}

        def train(self, cfg_json: dict) -> list[dict[str, float]]:
            from raysegment.config import RunConfig
            from raysegment.distributed.ingest import loader_factory
            from raysegment.engine.adapt import build_runner
            from raysegment.engine.method import Placement

            cfg = RunConfig.model_validate(cfg_json)
            runner = build_runner(cfg, Placement.of("cpu", loader=loader_factory(cfg)))
            return [runner.train_epoch() for _ in range(cfg.optim.epochs)]

    return TrainingWorker


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--short-side", type=int, default=256)
    parser.add_argument("--decode-cpus", type=float, default=0.5)
    parser.add_argument(
        "--epochs", type=int, default=3, help="delivery passes per source (the first warms up), then 1 training epoch"
    )
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def measure(worker: Any, name: str, cfg: dict, passes: int) -> dict:
    """One source: its delivery passes and training epochs in the worker, the medians after the first."""
    import ray

    delivered = ray.get(worker.deliver.remote(cfg, passes))
    epochs = ray.get(worker.train.remote(cfg))
    steady = delivered["images_per_s"][1:] or delivered["images_per_s"]
    trained = [e["images_per_s"] for e in epochs]
    found = {
        "delivered_images_per_s": float(np.median(steady)),
        "delivered_runs": delivered["images_per_s"],
        "loader": delivered["loader"],
        "train_images_per_s": float(np.median(trained[1:] or trained)),
        "train_epochs_images_per_s": trained,
    }
    print(
        f"{name:>18}: delivered {found['delivered_images_per_s']:.2f} img/s "
        f"(passes {', '.join(f'{r:.2f}' for r in delivered['images_per_s'])}), "
        f"training {found['train_images_per_s']:.2f} img/s "
        f"(epochs {', '.join(f'{r:.2f}' for r in trained)})",
        flush=True,
    )
    return found


def report(args: argparse.Namespace, png_mb: float, results: dict[str, dict]) -> None:
    local_r, s3_r = results["folder+DataLoader"], results["s3+Ray Data"]
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "images": args.images,
        "batch": args.batch,
        "short_side": args.short_side,
        "decode_cpus": args.decode_cpus,
        "png_mb": float(png_mb),
        "results": results,
        "delivery_ratio": s3_r["delivered_images_per_s"] / local_r["delivered_images_per_s"],
        "training_ratio": s3_r["train_images_per_s"] / local_r["train_images_per_s"],
    }
    print(
        f"Ray Data from S3 / local DataLoader: delivery {summary['delivery_ratio']:.2f}x, "
        f"training {summary['training_ratio']:.2f}x"
    )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_ingest.json").write_text(json.dumps(summary, indent=2))


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import boto3
    import ray

    server, endpoint = start_s3()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        local = cityscapes_sized(Path(tmp), args.images)
        png_mb = float(np.mean([p.stat().st_size for p in (local / "clear" / "images").glob("*.png")]) / 2**20)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        remote = upload_tree(local, "s3://bench/cityscapes-sized")
        print(
            f"{args.images} frames of 1024x2048 ({png_mb:.2f} MB per PNG) in {local} and {remote} "
            f"({time.perf_counter() - t0:.0f} s to make)",
            flush=True,
        )
        ray.init(
            address="local",
            num_cpus=2,
            log_to_driver=False,
            include_dashboard=False,
            runtime_env={"env_vars": {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}},
        )
        worker = worker_class().remote()
        sources = {"folder+DataLoader": (str(local), "loader"), "s3+Ray Data": (remote, "ray_data")}
        results = {
            name: measure(worker, name, run_config(root, args, Path(tmp), ingest).model_dump(mode="json"), args.epochs)
            for name, (root, ingest) in sources.items()
        }
        ray.shutdown()
    server.stop()
    report(args, png_mb, results)


if __name__ == "__main__":
    main()
