"""Continual adaptation on a stream, with and without the guard (raysegment.engine.continual).

The stream cycles the target domains for --rounds rounds (each round: every target's test images,
in batches, in order); each configuration adapts online from the same source model and predicts
each batch right after adapting to it. Reported: mIoU per round (all of the round's images, full
resolution) for static source-only, online AdaBN, online Tent, each with and without the guard
(restore to the snapshot when the paired consistency proxy over the last --window images says
the adapted model lost to it). Goal (issue 14): no round ends below static source-only.

    python benchmarks/bench_continual.py [--rounds 10] [--out bench_out/continual]
    python benchmarks/bench_continual.py --retina data/retina --retina-source runs/retina_source/model
Synthetic: EfficientNet-Lite0 (ImageNet weights) + FPN trained on `clear` in this process.
Retina: a DRIVE-trained source model (README: examples/retina_source.yaml); the stream cycles
drive and chase test images. One process, no Ray; torch threads = 2.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from common import synthetic_source
from torchmetrics.classification import MulticlassJaccardIndex

from raysegment.config import SYNTH_DOMAINS
from raysegment.data import open_split, synth
from raysegment.engine.continual import OnlineAdapter
from raysegment.engine.evaluate import scaled_batches
from raysegment.models.io import ModelMeta
from raysegment.models.outputs import class_map
from raysegment.models.rebuild import load_model
from raysegment.viz import curves_png

CONFIGS: dict[str, tuple[Literal["none", "adabn", "tent"], bool]] = {  # name: (method, guard)
    "static": ("none", False),
    "adabn": ("adabn", False),
    "adabn+guard": ("adabn", True),
    "tent": ("tent", False),
    "tent+guard": ("tent", True),
}


def run_stream(
    source_dir: Path, root: Path, domains: list[str], rounds: int, batch: int, args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """mIoU per round for each configuration, and how often each guard restored."""
    per_round: dict[str, list[float]] = {}
    restores: dict[str, int] = {}
    sets = {d: open_split(root, d, "test") for d in domains}
    for name in args.configs:
        method, guard = CONFIGS[name]
        model, meta = load_model(source_dir)
        assert isinstance(meta, ModelMeta)
        adapter = OnlineAdapter(model, meta.num_classes, method, guard, args.window, args.momentum, args.tent_lr)
        per_round[name] = []
        start = time.perf_counter()
        for _ in range(rounds):
            iou = MulticlassJaccardIndex(meta.num_classes, ignore_index=meta.ignore_index, average="macro")
            for domain in domains:
                for images, masks, size in scaled_batches(sets[domain], batch, meta.resize, torch.device("cpu")):
                    logits = adapter.step(images)
                    pred = class_map(F.interpolate(logits.detach(), size=size, mode="bilinear", align_corners=False))
                    iou.update(pred, masks)
            per_round[name].append(100 * float(iou.compute()))
            print(f"  {name}: round {len(per_round[name])}: {per_round[name][-1]:.1f}", flush=True)
        restores[name] = adapter.restores
        print(f"[bench] {name}: {time.perf_counter() - start:.0f} s, restores {adapter.restores}", flush=True)
    return per_round, restores


def table(title: str, per_round: dict[str, list[float]], restores: dict[str, int]) -> str:
    names = list(per_round)
    lines = [f"### {title}", "", "| round | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in range(len(per_round[names[0]])):
        lines.append(f"| {r + 1} | " + " | ".join(f"{per_round[n][r]:.1f}" for n in names) + " |")
    lines.append("| restores | " + " | ".join(str(restores[n]) for n in names) + " |")
    if "static" in per_round:
        worst = {n: min(a - s for a, s in zip(per_round[n], per_round["static"])) for n in names if n != "static"}
        lines += ["", "worst round vs static: " + ", ".join(f"{n} {v:+.1f}" for n, v in worst.items())]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--images", type=int, default=40, help="synthetic images per domain")
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--source-epochs", type=int, default=10)
    p.add_argument("--window", type=int, default=16, help="images the guard scores at a time")
    p.add_argument("--momentum", type=float, default=0.1, help="online BatchNorm statistics momentum")
    p.add_argument("--tent-lr", type=float, default=1e-3)
    p.add_argument("--retina", help="data/retina: also run the stream on DRIVE/CHASE")
    p.add_argument("--retina-source", help="a DRIVE-trained model folder")
    p.add_argument("--no-synthetic", action="store_true")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--out", default="bench_out/continual")
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    out = Path(args.out)
    reports = []
    if not args.no_synthetic:
        root = synth.generate(out / "data", images_per_domain=args.images, height=args.height, width=args.width)
        source_dir = synthetic_source(root, out, args.source_epochs)
        targets = list(SYNTH_DOMAINS[1:])
        per_round, restores = run_stream(source_dir, root, targets, args.rounds, 4, args)
        reports.append(table(f"synthetic stream: {', '.join(targets)} x {args.rounds} rounds", per_round, restores))
        curves_png(
            out / "continual_synthetic.png", per_round, "online adaptation, synthetic stream", "mIoU (%)", "round"
        )
    if args.retina and args.retina_source:
        per_round, restores = run_stream(
            Path(args.retina_source), Path(args.retina), ["drive", "chase"], args.rounds, 2, args
        )
        reports.append(table(f"retina stream: drive, chase x {args.rounds} rounds", per_round, restores))
        curves_png(
            out / "continual_retina.png", per_round, "online adaptation, DRIVE/CHASE stream", "mIoU (%)", "round"
        )
    print("\n\n".join(reports))


if __name__ == "__main__":
    main()
