"""Where a training step's time goes: load (uint8 decode + collate) / augment (Kornia, on the
device) / forward / backward+optimiser, for EfficientNet-Lite0 + FPN on synthetic domains.

    python benchmarks/bench_step.py [--device cuda] [--batch 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from raysegment.config import parse_config
from raysegment.data import open_split, synth
from raysegment.engine.epochs import finetune_runner
from raysegment.engine.loss import segmentation_loss


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = synth.generate(
            tmp, domains=("clear",), images_per_domain=args.batch * 3, height=args.height, width=args.width
        )
        cfg = parse_config(
            {"data": {"root": str(root)}, "optim": {"batch_size": args.batch}, "output_dir": f"{tmp}/run"}
        )
        runner = finetune_runner(cfg, open_split(root, "clear", "all"), device)
        times = {"load": 0.0, "augment": 0.0, "forward": 0.0, "backward": 0.0}
        steps = 0
        while steps < args.steps + 1:
            it = iter(runner.method.loader)
            while True:
                t0 = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    break
                images, masks = runner.compute.to_device(batch)
                sync(device)
                t1 = time.perf_counter()
                images, masks = runner.compute.augment(images, masks)
                sync(device)
                t2 = time.perf_counter()
                logits = runner.module(images)
                loss = segmentation_loss(logits, masks, 255)
                sync(device)
                t3 = time.perf_counter()
                runner.optimizer.zero_grad()
                loss.backward()
                runner.optimizer.step()
                sync(device)
                t4 = time.perf_counter()
                if steps > 0:  # first step is warm-up
                    for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                        times[key] += dt
                steps += 1
                if steps > args.steps:
                    break
    total = sum(times.values())
    print(f"device={device} batch={args.batch} size={args.height}x{args.width} steps={args.steps}")
    for key, value in times.items():
        print(f"{key:<9} {1000 * value / args.steps:8.1f} ms/step  {100 * value / total:5.1f}%")
    print(f"step      {1000 * total / args.steps:8.1f} ms  ({args.batch * args.steps / total:.1f} img/s)")
    print(f"ratio augment/step {times['augment'] / total:.3f}  load/step {times['load'] / total:.3f}")


if __name__ == "__main__":
    main()
