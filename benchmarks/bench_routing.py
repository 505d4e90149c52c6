"""Automatic domain routing, offline: how often does the nearest domain signature name the domain
an image came from? Confusion matrices on the synthetic domains and on the real retina shift
(DRIVE vs CHASE_DB1, data/retina), the per-image routing cost, and how well the distance
flags a domain that has no signature (each domain left out in turn: its images should be farther
than the 95th percentile of in-domain distances).

Signatures come from each domain's train split, routed images from its test split, all under one
model: EfficientNet-Lite0 (ImageNet weights, the source model's initialisation) + FPN.

    python benchmarks/bench_routing.py [--retina data/retina] [--png routing.png]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raysegment.config import SYNTH_DOMAINS, ResizeConfig, parse_config
from raysegment.data import open_split, synth
from raysegment.engine.evaluate import scaled_batches
from raysegment.engine.signature import distance, domain_signature, image_signatures, nearest
from raysegment.models.segmenter import build_segmenter
from raysegment.models.weights_import import bundled_efficientnet_lite0, import_weights

Distances = dict[str, list[dict[str, float]]]  # per true domain, per test image: distance to each signature


def route_all(
    model: torch.nn.Module, root: Path, domains: list[str], resize: ResizeConfig | None
) -> tuple[np.ndarray, float, Distances]:
    """Confusion matrix of nearest-signature routing, ms per routed image, and every distance."""
    signatures = {
        d: domain_signature(model, open_split(root, d, "train", unlabelled=True), resize=resize) for d in domains
    }
    confusion = np.zeros((len(domains), len(domains)), dtype=int)
    per_domain: Distances = {d: [] for d in domains}
    seconds, count = 0.0, 0
    for i, d in enumerate(domains):
        for batch, _, _ in scaled_batches(open_split(root, d, "test", unlabelled=True), 1, resize, torch.device("cpu")):
            start = time.perf_counter()
            (image,) = image_signatures(model, batch)
            name, _ = nearest(image, signatures)
            seconds += time.perf_counter() - start
            count += 1
            confusion[i, domains.index(name)] += 1
            per_domain[d].append({k: distance(image, s) for k, s in signatures.items()})
    return confusion, 1000 * seconds / max(count, 1), per_domain


def unknown_detection(domains: list[str], per_domain: Distances) -> list[tuple[str, float, float]]:
    """Each domain left out: share of its images beyond the 95th percentile of in-domain distances,
    and share of in-domain images beyond it (false alarms)."""
    rows = []
    for left_out in domains:
        known = [d for d in domains if d != left_out]
        inside = [min(x[k] for k in known) for d in known for x in per_domain[d]]
        threshold = float(np.quantile(inside, 0.95))
        outside = [min(x[k] for k in known) for x in per_domain[left_out]]
        rows.append(
            (
                left_out,
                float(np.mean([v > threshold for v in outside])),
                float(np.mean([v > threshold for v in inside])),
            )
        )
    return rows


def print_confusion(title: str, domains: list[str], confusion: np.ndarray, ms: float) -> None:
    accuracy = confusion.trace() / confusion.sum()
    print(f"\n{title}: accuracy {100 * accuracy:.1f}% over {confusion.sum()} test images, routing {ms:.1f} ms/image")
    header = "true / routed"
    print(f"{header:<14}" + "".join(f"{d:>9}" for d in domains))
    for d, row in zip(domains, confusion):
        print(f"{d:<14}" + "".join(f"{v:>9}" for v in row))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--retina", default=str(Path(__file__).resolve().parents[1] / "data" / "retina"))
    parser.add_argument("--png", default=None, help="write both confusion matrices to this PNG")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        weights, _, _ = import_weights(
            bundled_efficientnet_lite0(), "efficientnet_lite0", Path(tmp) / "lite0.safetensors"
        )
        cfg = parse_config({"data": {"root": tmp}, "model": {"pretrained": {"source": "file", "uri": str(weights)}}})
        model = build_segmenter(cfg.model, 2).eval()
        synth_root = synth.generate(
            Path(tmp) / "synth", domains=SYNTH_DOMAINS, images_per_domain=30, height=128, width=256
        )
        results = []
        domains = list(SYNTH_DOMAINS)
        confusion, ms, distances = route_all(model, synth_root, domains, None)
        print_confusion("synthetic domains (128x256)", domains, confusion, ms)
        results.append(("synthetic", domains, confusion))
        for left_out, caught, false_alarm in unknown_detection(domains, distances):
            print(
                f"  {left_out:<8} without a signature: {100 * caught:5.1f}% flagged unknown "
                f"({100 * false_alarm:.1f}% of known images)"
            )
        retina = Path(args.retina)
        if retina.is_dir():
            resize = ResizeConfig(short_side=320)
            confusion, ms, _ = route_all(model, retina, ["drive", "chase"], resize)
            print_confusion("retina DRIVE vs CHASE_DB1 (short side 320)", ["drive", "chase"], confusion, ms)
            results.append(("retina", ["drive", "chase"], confusion))
        else:
            print(f"\nretina: {retina} not found, skipped")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 5))
        for ax, (title, names, conf) in zip(np.atleast_1d(axes), results):
            ax.imshow(conf, cmap="Blues")
            ax.set_xticks(range(len(names)), names, rotation=45)
            ax.set_yticks(range(len(names)), names)
            for (r, c), v in np.ndenumerate(conf):
                ax.text(c, r, str(v), ha="center", va="center")
            ax.set_title(f"{title}: routed (x) vs true (y)")
        fig.tight_layout()
        fig.savefig(args.png)
        print(f"\nconfusion matrices: {args.png}")


if __name__ == "__main__":
    main()
