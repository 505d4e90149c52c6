"""Is the training device fed? Images/s of the real engine (PNG decode in loader workers -> pinned
copy -> resize + Kornia augmentation on the device -> forward/backward/step, the Runner's own
`train_step`) against the same model's forward+backward+step on synthetic tensors already on the
device, same batch, resolution, AMP and memory format, measured in one run. Prints the ratio
(goal on a GPU: >= 0.8).

    python benchmarks/bench_train_gpu.py [--device cuda] [--batch 8] [--height 360] [--width 480]
                                         [--steps 30] [--workers N] [--compile]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time

import torch

from raysegment.config import parse_config
from raysegment.data import open_split, synth
from raysegment.data.dataset import Batch
from raysegment.engine.epochs import finetune_runner
from raysegment.engine.loss import segmentation_loss
from raysegment.engine.runner import Runner


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def engine_rate(runner: Runner, steps: int, warmup: int) -> float:
    """Images/s through the Runner's loader and train_step (what `fit` and Ray Train run)."""
    runner.module.train()
    batches = itertools.chain.from_iterable(runner.method.batches(0) for _ in itertools.count())
    for _ in range(warmup):
        runner.train_step(next(batches))
    sync(runner.method.device)
    start, seen = time.perf_counter(), 0
    for _ in range(steps):
        batch = next(batches)
        runner.train_step(batch)
        seen += batch.images.shape[0]
    sync(runner.method.device)
    return seen / (time.perf_counter() - start)


def synthetic_rate(runner: Runner, batch: int, height: int, width: int, steps: int, warmup: int) -> float:
    """Images/s of forward+backward+step alone, on tensors that never leave the device."""
    device = runner.method.device
    images = torch.rand(batch, 3, height, width, device=device)
    masks = torch.randint(0, runner.method.info.num_classes, (batch, height, width), device=device)

    def step() -> None:
        loss = segmentation_loss(runner.compute.forward(images), masks, runner.method.info.ignore_index)
        runner.optimizer.zero_grad(set_to_none=True)
        runner.scaler.scale(loss).backward()
        runner.scaler.step(runner.optimizer)
        runner.scaler.update()

    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--images", type=int, default=64, help="distinct PNGs on disk")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the engine's choice)")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = synth.generate(
            tmp, domains=("clear",), images_per_domain=args.images, height=args.height, width=args.width
        )  # 64..512 px per side
        cfg = parse_config(
            {
                "data": {"root": str(root), "num_workers": args.workers},
                "optim": {"batch_size": args.batch, "compile": args.compile},
                "output_dir": f"{tmp}/run",
            },
            "bench",
        )
        runner = finetune_runner(cfg, open_split(root, "clear", "all"), device)
        sample: Batch = next(iter(runner.method.loader))
        h, w = runner.compute.to_device(sample)[0].shape[-2:]
        engine = engine_rate(runner, args.steps, args.warmup)
        pure = synthetic_rate(runner, args.batch, h, w, args.steps, args.warmup)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device={name} batch={args.batch} size={h}x{w} amp={cfg.optim.amp if device.type == 'cuda' else 'none'} "
        f"loader_workers={getattr(runner.method.loader, 'num_workers', 'n/a')} "
        f"compile={args.compile} steps={args.steps}"
    )
    print(f"engine (decode -> device -> augment -> step) {engine:8.1f} img/s")
    print(f"model alone (synthetic device tensors)      {pure:8.1f} img/s")
    print(f"ratio engine/model {engine / pure:.3f}")


if __name__ == "__main__":
    main()
