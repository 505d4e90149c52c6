"""Adaptation methods on the synthetic domains: source-only, each label-free method (0 target
labels), few-shot fine-tuning (k = 1, 5, 10) and the oracle (all target labels); test mIoU and
the share of the source-only -> oracle gap closed, plus how often the unsupervised proxy picks
what the val labels would pick.

Goals (issue 7): zero-label self-training closes >= 50% of the gap on average; AdaBN gains over
source-only on the photometric shifts (fog, night).

    python benchmarks/bench_adapt.py [--targets fog night rain sensor texture] [--images 60]
                                     [--height 96 --width 192] [--variants ...] [--canary K]
                                     [--out bench_out/adapt]
Prints every label-free criterion's score per candidate, its Spearman correlation with test mIoU
and its regret, per target and averaged over the targets.
One process, no Ray; EfficientNet-Lite0 (ImageNet weights from the bundled package) + FPN.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import synthetic_source

from raysegment.apps.study import run_study
from raysegment.apps.study_config import StudyConfig
from raysegment.apps.study_report import format_table
from raysegment.config import LABEL_FREE_METHODS, STUDY_VARIANTS, SYNTH_DOMAINS
from raysegment.data import synth


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="+", default=list(SYNTH_DOMAINS[1:]))
    p.add_argument("--methods", nargs="+", default=list(LABEL_FREE_METHODS))
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5, 10])
    p.add_argument("--images", type=int, default=60)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--source-epochs", type=int, default=10)
    p.add_argument("--st-epochs", type=int, default=8, help="self-training epochs")
    p.add_argument("--ft-epochs", type=int, default=8, help="few-shot and oracle fine-tuning epochs")
    p.add_argument("--variants", nargs="*", default=[], choices=sorted(STUDY_VARIANTS))
    p.add_argument("--canary", type=int, default=0, help="k labelled val images judge the label-free candidates")
    p.add_argument("--out", default="bench_out/adapt")
    args = p.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    start = time.perf_counter()
    root = synth.generate(
        out / "data",
        domains=("clear", *args.targets),
        images_per_domain=args.images,
        height=args.height,
        width=args.width,
    )
    source_dir = synthetic_source(root, out, args.source_epochs)
    print(f"[bench] source model ready after {time.perf_counter() - start:.0f} s")
    cfg = StudyConfig(
        source=str(source_dir),
        data_root=str(root),
        source_domain="clear",
        targets=args.targets,
        methods=tuple(args.methods),
        shots=tuple(args.shots),
        out=str(out),
        epochs={"self_training": args.st_epochs, "finetune": args.ft_epochs, "oracle": args.ft_epochs},
        variants=tuple(args.variants),
        canary=args.canary,
    )
    reports = run_study(cfg)
    print(format_table(reports))
    print(f"[bench] {time.perf_counter() - start:.0f} s in all; chart {out / 'adapt_miou.png'}")


if __name__ == "__main__":
    main()
