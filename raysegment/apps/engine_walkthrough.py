"""`raysegment demo`: the whole story on generated data, in one process, in a few minutes.

Synthesises a clear source domain and shifted targets, fine-tunes EfficientNet-Lite0 (real
ImageNet weights) + FPN on the source, measures the drop on every target, fine-tunes per target
with a few labelled images, and writes a table, a bar chart, learning curves and overlays.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from raysegment.config import SYNTH_DOMAINS, DataConfig, ModelConfig, OptimConfig, PretrainedConfig, RunConfig
from raysegment.data import open_split, synth
from raysegment.engine.epochs import fit
from raysegment.engine.evaluate import evaluate
from raysegment.engine.predict import segment
from raysegment.models.rebuild import load_model
from raysegment.models.weights_import import bundled_efficientnet_lite0, import_weights
from raysegment.viz import bar_chart_png, curves_png, overlay_png

QUICK = {
    "images_per_domain": 24,
    "source_epochs": 2,
    "target_epochs": 1,
    "shots": 4,
    "height": 64,
    "width": 128,
}  # `demo --engine-only --quick`


def few_shot_target(
    source_cfg: RunConfig, source_dir: Path, data_root: Path, domain: str, epochs: int, shots: int, out: Path, log
) -> tuple[list[float], float]:
    """Fine-tune the source on `shots` labelled images of `domain`; its loss curve and test mIoU,
    and an overlay of its first test image."""
    cfg = source_cfg.model_copy(
        update={
            "data": source_cfg.data.model_copy(update={"domain": domain, "labelled_limit": shots}),
            "model": source_cfg.model.model_copy(
                update={"freeze_depth": 1, "pretrained": PretrainedConfig(source="checkpoint", uri=str(source_dir))}
            ),
            "optim": source_cfg.optim.model_copy(update={"epochs": epochs, "batch_size": 5, "lr": 1e-3}),
            "output_dir": str(out / "runs" / domain),
        }
    )
    log(f"[demo] fine-tuning on target '{domain}' with {shots} labelled images")
    train, val = open_split(data_root, domain, "train").labelled(shots), open_split(data_root, domain, "val")
    runner = fit(cfg, train, val, resume=False)
    test = open_split(data_root, domain, "test")
    model = runner.selected_model()
    image, _ = test[0]
    title = f"{domain}: fine-tuned with {shots} labels"
    overlay_png(
        out / "overlays" / f"{domain}.png",
        image,
        segment(model, image),
        test.info.classes,
        test.info.palette,
        title=title,
    )
    return [h["loss"] for h in runner.history], evaluate(model, test, cfg.eval).miou


def report(table: dict[str, dict[str, float]], curves: dict[str, list[float]], shots: int, out: Path, log) -> Path:
    """The table as text, the per-domain chart and the learning curves as PNGs."""
    src = table["clear"]["source_only"]
    lines = [f"{'domain':<10} {'source-only':>12} {'drop':>8} {'fine-tuned':>11} {'gain':>8}"]
    for domain, row in table.items():
        lines.append(
            f"{domain:<10} {100 * row['source_only']:>11.1f}% {100 * (src - row['source_only']):>7.1f} "
            f"{100 * row['fine_tuned']:>10.1f}% {100 * (row['fine_tuned'] - row['source_only']):>+7.1f}"
        )
    log("\n".join(lines))
    chart = bar_chart_png(
        out / "miou_per_domain.png",
        {
            "source-only": {d: 100 * r["source_only"] for d, r in table.items()},
            f"fine-tuned ({shots} labels)": {d: 100 * r["fine_tuned"] for d, r in table.items()},
        },
    )
    curves_png(out / "learning_curves.png", curves, "training loss", "cross-entropy")
    return chart


def run_walkthrough(
    out: str | Path = "demo_out",
    images_per_domain: int = 80,
    source_epochs: int = 12,
    target_epochs: int = 8,
    shots: int = 10,
    height: int = 128,
    width: int = 256,
    log=print,
) -> dict:
    """The engine alone, in this process: a source model on clear, then a few-shot fine-tune per target."""
    out = Path(out)
    start = time.perf_counter()
    data_root = synth.generate(out / "data", images_per_domain=images_per_domain, height=height, width=width)
    log(
        f"[demo] synthesised {len(SYNTH_DOMAINS)} domains x {images_per_domain} images "
        f"at {height}x{width} -> {data_root}"
    )
    weights, mode, n = import_weights(
        bundled_efficientnet_lite0(), "efficientnet_lite0", out / "weights" / "efficientnet_lite0_imagenet.safetensors"
    )
    log(f"[demo] imported ImageNet EfficientNet-Lite0 ({n} tensors matched by {mode}) -> {weights}")
    source_cfg = RunConfig(
        data=DataConfig(root=str(data_root), domain="clear"),
        model=ModelConfig(
            backbone="efficientnet_lite0", decoder="fpn", pretrained=PretrainedConfig(source="file", uri=str(weights))
        ),
        optim=OptimConfig(epochs=source_epochs, batch_size=8, lr=2e-3, decay=0.9),
        output_dir=str(out / "runs" / "source"),
    )
    log("[demo] fine-tuning on the source domain 'clear'")
    source = fit(
        source_cfg, open_split(data_root, "clear", "train"), open_split(data_root, "clear", "val"), resume=False
    )
    source_dir = out / "runs" / "source" / "checkpoints" / f"epoch_{source_epochs:04d}" / "selected"
    curves = {"source (clear)": [h["loss"] for h in source.history]}
    table: dict[str, dict[str, float]] = {}
    for domain in SYNTH_DOMAINS:
        test = open_split(data_root, domain, "test")
        table[domain] = {"source_only": evaluate(source.selected_model(), test, source_cfg.eval).miou}
    for domain in SYNTH_DOMAINS[1:]:
        curve, miou = few_shot_target(source_cfg, source_dir, data_root, domain, target_epochs, shots, out, log)
        curves[f"target {domain}"], table[domain]["fine_tuned"] = curve, miou
    model, meta = load_model(source_dir)
    image, _ = open_split(data_root, "clear", "test")[0]
    overlay_png(
        out / "overlays" / "clear.png",
        image,
        segment(model, image),
        meta.classes,
        meta.palette,
        title="clear: source model",
    )
    table["clear"]["fine_tuned"] = table["clear"]["source_only"]
    chart = report(table, curves, shots, out, log)
    result = {"table": table, "seconds": time.perf_counter() - start, "chart": str(chart)}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    log(f"[demo] done in {result['seconds']:.0f} s: {chart}, {out / 'learning_curves.png'}, {out / 'overlays'}/")
    return result
