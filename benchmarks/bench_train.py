"""Ray Train overhead: per-step time of one Ray Train worker vs the plain engine loop on the same
work, and 2 workers x 1 CPU vs 1 worker x 2 CPU on this machine. Ratios from one run.

    python benchmarks/bench_train.py [--epochs 4] [--images 48] [--rounds 3]
The plain loop (no Ray running) and one Ray worker (an embedded local Ray, 2 CPUs, started for it)
alternate for `--rounds` rounds and the ratio is the median of the rounds' ratios: this host's
speed drifts by minutes (2026-11-28: 1.026 and 1.243 from single back-to-back pairs an hour apart).
The first epoch of each run is warm-up and not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
import torch  # noqa: E402

from raysegment.config import parse_config  # noqa: E402
from raysegment.data import open_split, synth  # noqa: E402
from raysegment.distributed.train import PROGRESS_FILE, train_on_ray  # noqa: E402
from raysegment.engine.epochs import fit  # noqa: E402


def steady(history: list[dict]) -> float:
    """Mean seconds per epoch, skipping the warm-up epoch."""
    rest = history[1:] or history
    return sum(h["seconds"] for h in rest) / len(rest)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="(plain, 1 Ray worker) pairs, alternating")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = synth.generate(
            Path(tmp) / "data", domains=("clear",), images_per_domain=args.images, height=128, width=256
        )

        def cfg(name: str, workers: int, cpus: float, batch: int):
            return parse_config(
                {
                    "data": {"root": str(root), "train_split": "all", "val_split": "test"},
                    "model": {"backbone": "efficientnet_lite0"},
                    "optim": {"epochs": args.epochs, "batch_size": batch},
                    "scale": {"num_workers": workers, "cpus_per_worker": cpus},
                    "output_dir": f"{tmp}/{name}",
                }
            )

        torch.set_num_threads(2)

        def ray_epoch_seconds(c) -> float:
            train_on_ray(c)
            records = [json.loads(line) for line in (Path(c.output_dir) / PROGRESS_FILE).read_text().splitlines()]
            return steady(records)

        pairs = []
        for k in range(args.rounds):
            plain = fit(cfg(f"plain{k}", 1, 2, args.batch), open_split(root, "clear", "all"), resume=False,
                        progress=False, log=lambda s: None)  # fmt: skip
            ray.init(address="local", num_cpus=2, log_to_driver=False)  # dashboard on: Train V2 needs the State API
            pairs.append((steady(plain.history), ray_epoch_seconds(cfg(f"ray1-{k}", 1, 2, args.batch))))
            if k == args.rounds - 1:
                # Two ranks share the same global batch: each takes half of every batch of the 1-worker run.
                two_s = ray_epoch_seconds(cfg("ray2", 2, 1, max(1, args.batch // 2)))
            ray.shutdown()
        plain_s, one_s = pairs[-1]
    steps = -(-args.images // args.batch)
    print(
        f"work: {args.images} images/epoch at 128x256, global batch {args.batch}, {args.epochs} epochs "
        f"(first not counted), EfficientNet-Lite0 + FPN, {os.cpu_count()} CPUs"
    )
    for k, (plain_k, one_k) in enumerate(pairs):
        print(
            f"round {k + 1}: plain {plain_k:5.2f} s/epoch ({1000 * plain_k / steps:5.1f} ms/step), 1 Ray worker "
            f"{one_k:5.2f} s/epoch ({1000 * one_k / steps:5.1f} ms/step), ratio {one_k / plain_k:5.3f}"
        )
    print(f"Ray Train, 2 workers{two_s:7.2f} s/epoch  {1000 * two_s / steps:7.1f} ms/step (last round)")
    ratios = sorted(one_k / plain_k for plain_k, one_k in pairs)
    print(
        f"overhead ratio (1 Ray worker / plain), median of {len(ratios)} rounds: {statistics.median(ratios):5.3f}  "
        f"(range {ratios[0]:.3f}-{ratios[-1]:.3f}; goal <= 1.05)"
    )
    print(f"speed-up (2 workers x 1 CPU vs 1 x 2 CPU)  {one_s / two_s:5.3f}")


if __name__ == "__main__":
    main()
