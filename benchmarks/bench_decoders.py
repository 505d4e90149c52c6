"""Do raysegment's own decoders earn their place beside SMP's? Each pair is trained the same way (the
ImageNet EfficientNet-Lite0 encoder, raysegment's training loop, same epochs, lr, batch, augmentation)
and scored on the source's test split, on every synthetic target (source-only), and for speed.

    python benchmarks/bench_decoders.py [--epochs 8] [--retina data/retina --retina-epochs 12]
        [--out bench_out/decoders]

Pairs: raysegment fpn / unet / deeplabv3plus / segformer against SMP FPN / Unet / DeepLabV3Plus /
Segformer on `tu-efficientnet_lite0`. Speed: images per second of a forward pass (eval, batch 8 at
the working size, 2 threads), median of 5 timed batches after 2 warm-ups. One process, no Ray.
Writes OUT/decoders.json and OUT/decoders.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from raysegment.config import SYNTH_DOMAINS, ResizeConfig, parse_config
from raysegment.data import open_split, synth
from raysegment.engine.epochs import fit
from raysegment.engine.evaluate import evaluate

PAIRS = [("fpn", "FPN"), ("unet", "Unet"), ("deeplabv3plus", "DeepLabV3Plus"), ("segformer", "Segformer")]


def model_section(library: str, name: str) -> dict:
    if library == "raysegment":
        return {"decoder": name, "pretrained": {"source": "imagenet"}}
    return {"library": "smp", "arch": name, "backbone": "tu-efficientnet_lite0", "pretrained": {"source": "imagenet"}}


def images_per_second(model: torch.nn.Module, height: int, width: int, batch: int = 8) -> float:
    model.eval()
    x = torch.rand(batch, 3, height, width)
    times = []
    with torch.no_grad():
        for i in range(7):
            start = time.perf_counter()
            model(x)
            if i >= 2:
                times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


@dataclass(frozen=True)
class Setting:
    """Where each decoder trains and is scored: the data, the source domain, the targets scored
    source-only, the working scale, the epochs and the image size of the speed test."""

    root: Path
    domain: str
    targets: list[str]
    resize: ResizeConfig | None
    epochs: int
    size: tuple[int, int]
    out: Path


def train_and_score(where: Setting, library: str, name: str, args: argparse.Namespace) -> dict:
    root, domain, resize, out = where.root, where.domain, where.resize, where.out
    cfg = parse_config(
        {
            "data": {"root": str(root), "domain": domain, "resize": resize.model_dump() if resize else None},
            "model": model_section(library, name),
            "optim": {"epochs": where.epochs, "batch_size": args.batch_size, "lr": args.lr, "decay": 0.95},
            "output_dir": str(out / f"{library}-{name}"),
        }
    )
    start = time.perf_counter()
    runner = fit(cfg, open_split(root, domain, "train"), open_split(root, domain, "val"), resume=False, progress=False,
                 log=lambda line: None)  # fmt: skip
    seconds = time.perf_counter() - start
    model = runner.selected_model()
    scores = {
        d: evaluate(model, open_split(root, d, "test"), cfg.eval, resize=resize).miou for d in [domain, *where.targets]
    }
    params = sum(p.numel() for p in model.parameters())
    return {
        "library": library,
        "decoder": name,
        "test_miou": scores,
        "params": params,
        "train_seconds": seconds,
        "images_per_second": images_per_second(model, *where.size),
    }


def table(rows: list[dict], domains: list[str]) -> str:
    head = "| library | decoder | params | img/s | train s | " + " | ".join(domains) + " | mean |"
    lines = [head, "|" + "---|" * (6 + len(domains))]
    for r in rows:
        values = [100 * r["test_miou"][d] for d in domains]
        lines.append(
            f"| {r['library']} | {r['decoder']} | {r['params'] / 1e6:.2f}M | {r['images_per_second']:.1f} | "
            f"{r['train_seconds']:.0f} | "
            + " | ".join(f"{v:.1f}" for v in values)
            + f" | {statistics.mean(values):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--retina")
    p.add_argument("--retina-epochs", type=int, default=12)
    p.add_argument("--retina-short-side", type=int, default=320)
    p.add_argument("--out", default="bench_out/decoders")
    args = p.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    targets = list(SYNTH_DOMAINS[1:])
    root = synth.generate(out / "data", ("clear", *targets), args.images, 64, 128, seed=0)
    sections = []
    synthetic = []
    where = Setting(root, "clear", targets, None, args.epochs, (64, 128), out)
    for ours, theirs in PAIRS:
        for library, name in (("raysegment", ours), ("smp", theirs)):
            synthetic.append(train_and_score(where, library, name, args))
            print(json.dumps(synthetic[-1]), flush=True)
    sections.append(
        "## Synthetic (64x128, source clear, source-only on the targets)\n\n" + table(synthetic, ["clear", *targets])
    )
    retina = []
    if args.retina:
        resize = ResizeConfig(short_side=args.retina_short_side)
        where = Setting(Path(args.retina), "drive", ["chase"], resize, args.retina_epochs, (320, 320), out / "retina")
        for ours, theirs in PAIRS:
            for library, name in (("raysegment", ours), ("smp", theirs)):
                retina.append(train_and_score(where, library, name, args))
                print(json.dumps(retina[-1]), flush=True)
        sections.append(
            "## Retina (DRIVE source, short side 320; CHASE source-only)\n\n" + table(retina, ["drive", "chase"])
        )
    text = "\n\n".join(sections)
    print(text)
    (out / "decoders.md").write_text(text + "\n")
    (out / "decoders.json").write_text(json.dumps({"synthetic": synthetic, "retina": retina}, indent=1))


if __name__ == "__main__":
    main()
