"""In-process forward throughput of the served model at batch 1 vs larger batches: the most
dynamic batching (`@serve.batch`) can gain on this device. On a GPU batching pays; on 2 CPU cores
it does not (measured on this 2-core machine), which is why bench_serve compares against the best in-process figure.

    python benchmarks/bench_batching.py [--device cuda] [--height 352 --width 480]
"""

from __future__ import annotations

import argparse
import time

import torch

from raysegment.config import ModelConfig
from raysegment.models.segmenter import build_segmenter


def throughput(
    model: torch.nn.Module, batch: int, height: int, width: int, device: torch.device, seconds: float
) -> float:
    x = torch.rand(batch, 3, height, width, device=device)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    with torch.inference_mode(), amp:
        for _ in range(3):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            model(x)
            n += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--height", type=int, default=352)
    p.add_argument("--width", type=int, default=480)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    device = torch.device(args.device)
    model = build_segmenter(ModelConfig(backbone="efficientnet_lite0"), 19).eval().to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    rates = {b: throughput(model, b, args.height, args.width, device, args.seconds) for b in args.batches}
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    for b, r in rates.items():
        print(
            f"{name} Lite0+FPN {args.height}x{args.width} batch {b:>3}: {r:8.1f} img/s  "
            f"({r / rates[args.batches[0]]:.2f}x batch {args.batches[0]})"
        )


if __name__ == "__main__":
    main()
