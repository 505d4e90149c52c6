"""Runtimes of one model, in one run on the same images: torch eager, torch.compile, ONNX Runtime
FP32 and INT8 (static QDQ, calibrated on each target's own unlabelled train images).

Speed: img/s at batch 1 and 8, at 128x256 and 512x1024 (EfficientNet-Lite0 + FPN), ratio to torch
eager, model size. Accuracy: test mIoU of each runtime on the synthetic targets (the source model,
trained on `clear`) and on CHASE_DB1 (a DRIVE-trained model; vessel IoU too), at the working scale.

Goals (issue 25, 2 CPU cores): ORT FP32 >= 1.5x eager at batch 1; INT8 >= 2x with <= 0.5 mIoU
points lost on every synthetic target and on chase.

    python benchmarks/bench_runtime.py [--retina data/retina] [--out bench_out/runtime]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from common import synthetic_source

from raysegment.apps.export import at_working_scale
from raysegment.config import EvalConfig, parse_config
from raysegment.data import open_split, synth
from raysegment.engine.epochs import fit
from raysegment.engine.evaluate import evaluate
from raysegment.export.graph import export_onnx
from raysegment.export.quantize import quantize_int8
from raysegment.export.runtime import OrtSegmenter
from raysegment.models.io import save_model
from raysegment.models.rebuild import load_model
from raysegment.models.weights_import import bundled_efficientnet_lite0, import_weights

SIZES = [(128, 256), (512, 1024)]
BATCHES = [1, 8]


def img_per_s(model: torch.nn.Module, batch: int, size: tuple[int, int], seconds: float) -> float:
    x = torch.rand(batch, 3, *size)
    with torch.no_grad():
        model(x)  # warm-up (compile, session allocation)
        n, start = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - start < seconds:
            model(x)
            n += 1
    return n * batch / (time.perf_counter() - start)


def runtimes(model, graph: bytes, int8: bytes | None) -> dict[str, Any]:
    # torch eager, torch.compile and ONNX Runtime segmenters: each is called, and evaluated, like the model
    found: dict[str, Any] = {"torch eager": model}
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled(torch.rand(1, 3, 64, 128))
        found["torch.compile"] = compiled
    except Exception as exc:  # inductor needs a C++ compiler: say why it is absent
        print(f"[bench] torch.compile unavailable: {type(exc).__name__}: {str(exc)[:200]}")
    found["ORT FP32"] = OrtSegmenter.like(model, graph, threads=torch.get_num_threads())
    if int8 is not None:
        found["ORT INT8"] = OrtSegmenter.like(model, int8, threads=torch.get_num_threads())
    return found


def retina_source(root: Path, out: Path, epochs: int) -> Path:
    model_dir = out / "retina_source" / "model"
    if not (model_dir / "model.safetensors").is_file():
        weights, _, _ = import_weights(bundled_efficientnet_lite0(), "efficientnet_lite0", out / "lite0.safetensors")
        cfg = parse_config(
            {
                "data": {"root": str(root), "domain": "drive", "resize": {"short_side": 320}},
                "model": {"pretrained": {"source": "file", "uri": str(weights)}},
                "optim": {"epochs": epochs, "batch_size": 4, "lr": 2e-3, "decay": 0.95},
                "augment": {"rotate_degrees": 10, "jitter": 0.2},
                "output_dir": str(out / "retina_source" / "run"),
            }
        )
        runner = fit(cfg, open_split(root, "drive", "train"), open_split(root, "drive", "val"), resume=False)
        save_model(model_dir, runner.selected_model(), runner.meta)
    return model_dir


def accuracy(model_dir: Path, root: Path, targets: list[str], calibration: int) -> dict[str, dict[str, float]]:
    """Test mIoU (and per-class IoU of the last class) of each runtime per target; INT8 calibrated on
    the target's unlabelled train images."""
    model, meta = load_model(model_dir)
    model.eval()
    graph = export_onnx(model)
    rows: dict[str, dict[str, float]] = {}
    for target in targets:
        train = open_split(root, target, "train", unlabelled=True)
        calib = at_working_scale([train[k][0] for k in range(min(calibration, len(train)))], meta)
        int8 = quantize_int8(graph, calib, model.stride, model.mean)
        test = open_split(root, target, "test")
        for name, runner in runtimes(model, graph, int8).items():
            if name == "torch.compile":
                continue  # the same numbers as eager by construction; its speed is what is measured
            result = evaluate(runner, test, EvalConfig(), "cpu", resize=meta.resize)
            rows.setdefault(target, {})[f"{name} mIoU"] = 100 * result.miou
            rows[target][f"{name} {meta.classes[-1]} IoU"] = 100 * list(result.per_class.values())[-1]
        print(f"[bench] {target}: " + ", ".join(f"{k} {v:.2f}" for k, v in rows[target].items() if "mIoU" in k))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--retina", help="data/retina: also measure on CHASE_DB1")
    p.add_argument("--retina-epochs", type=int, default=20)
    p.add_argument("--source-epochs", type=int, default=8)
    p.add_argument("--seconds", type=float, default=4.0, help="per speed measurement")
    p.add_argument("--calibration", type=int, default=32)
    p.add_argument("--out", default="bench_out/runtime")
    args = p.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    root = synth.generate(out / "data", domains=("clear", "fog", "night"), images_per_domain=40, height=128, width=256)
    source_dir = synthetic_source(root, out, args.source_epochs)
    model, meta = load_model(source_dir)
    model.eval()
    graph = export_onnx(model)
    calib = at_working_scale([open_split(root, "fog", "train")[k][0] for k in range(args.calibration // 2)], meta)
    int8 = quantize_int8(graph, calib, model.stride, model.mean)
    sizes = {
        "torch eager": (source_dir / "model.safetensors").stat().st_size,
        "ORT FP32": len(graph),
        "ORT INT8": len(int8),
    }
    speed: dict[str, dict[str, float]] = {}
    for name, runner in runtimes(model, graph, int8).items():
        for size in SIZES:
            for batch in BATCHES:
                key = f"b{batch} {size[0]}x{size[1]}"
                speed.setdefault(name, {})[key] = img_per_s(runner, batch, size, args.seconds)
                print(f"[bench] {name:14s} {key:14s} {speed[name][key]:8.2f} img/s", flush=True)
    acc = accuracy(source_dir, root, ["fog", "night"], args.calibration)
    if args.retina:
        acc |= accuracy(retina_source(Path(args.retina), out, args.retina_epochs), Path(args.retina), ["chase"], 16)
    report = {"speed_img_per_s": speed, "bytes": sizes, "accuracy": acc, "threads": torch.get_num_threads()}
    (out / "runtime.json").write_text(json.dumps(report, indent=2))
    print(table(report))


def table(report: dict) -> str:
    speed = report["speed_img_per_s"]
    keys = list(next(iter(speed.values())))
    lines = ["| runtime | " + " | ".join(keys) + " | size |", "|---" * (len(keys) + 2) + "|"]
    eager = speed["torch eager"]
    for name, row in speed.items():
        cells = [f"{row[k]:.2f} ({row[k] / eager[k]:.2f}x)" for k in keys]
        size = report["bytes"].get(name)
        lines.append(f"| {name} | " + " | ".join(cells) + (f" | {size / 1e6:.2f} MB |" if size else " | - |"))
    columns = [
        k.replace(k.split(" IoU")[0].split()[-1] + " IoU", "last-class IoU")
        for k in next(iter(report["accuracy"].values()))
    ]
    lines += ["", "| target | last class | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for target, row in report["accuracy"].items():
        last = next(k for k in row if not k.endswith("mIoU")).split(" IoU")[0].split()[-1]
        lines.append(f"| {target} | {last} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--table"]:  # the table of a saved runtime.json
        print(table(json.loads(Path(sys.argv[2]).read_text())))
    else:
        main()
