"""Is the training device fed? Images/s of the real engine (PNG decode in loader workers -> pinned
copy -> resize + Kornia augmentation on the device -> forward/backward/step, the Learner's own
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
from raysegment.engine.learner import Finetune
from raysegment.engine.loss import segmentation_loss


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def engine_rate(learner: Finetune, steps: int, warmup: int) -> float:
    """Images/s through the Learner's loader and train_step (what `fit` and Ray Train run)."""
    learner.module.train()
    batches = itertools.chain.from_iterable(learner.batches() for _ in itertools.count())
    for _ in range(warmup):
        learner.train_step(next(batches))
    sync(learner.device)
    start, seen = time.perf_counter(), 0
    for _ in range(steps):
        batch = next(batches)
        learner.train_step(batch)
        seen += batch.images.shape[0]
    sync(learner.device)
    return seen / (time.perf_counter() - start)


def synthetic_rate(learner: Finetune, batch: int, height: int, width: int, steps: int, warmup: int) -> float:
    """Images/s of forward+backward+step alone, on tensors that never leave the device."""
    device = learner.device
    images = torch.rand(batch, 3, height, width, device=device)
    masks = torch.randint(0, learner.info.num_classes, (batch, height, width), device=device)

    def step() -> None:
        loss = segmentation_loss(learner.forward(images), masks, learner.info.ignore_index)
        learner.optimizer.zero_grad(set_to_none=True)
        learner.scaler.scale(loss).backward()
        learner.scaler.step(learner.optimizer)
        learner.scaler.update()

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
        learner = Finetune(cfg, open_split(root, "clear", "all"), device)
        sample: Batch = next(iter(learner.loader))
        h, w = learner.to_device(sample)[0].shape[-2:]
        engine = engine_rate(learner, args.steps, args.warmup)
        pure = synthetic_rate(learner, args.batch, h, w, args.steps, args.warmup)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device={name} batch={args.batch} size={h}x{w} amp={cfg.optim.amp if device.type == 'cuda' else 'none'} "
        f"loader_workers={learner.loader.num_workers} compile={args.compile} steps={args.steps}"
    )
    print(f"engine (decode -> device -> augment -> step) {engine:8.1f} img/s")
    print(f"model alone (synthetic device tensors)      {pure:8.1f} img/s")
    print(f"ratio engine/model {engine / pure:.3f}")


if __name__ == "__main__":
    main()
