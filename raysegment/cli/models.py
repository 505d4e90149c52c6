"""`raysegment evaluate | predict | export | weights import | import-model`: one model at a time."""

from __future__ import annotations

import argparse
from pathlib import Path

from raysegment.cli.common import registry_option
from raysegment.errors import ConfigError


def cmd_evaluate(args: argparse.Namespace) -> int:
    from raysegment.config import EvalConfig
    from raysegment.data import open_split
    from raysegment.engine.evaluate import evaluate
    from raysegment.models.rebuild import load_model

    model, meta = load_model(args.model)
    data = open_split(args.data, args.domain, args.split, args.layout)
    cfg = EvalConfig(mode=args.mode, window=tuple(args.window) if args.window else None)
    result = evaluate(model, data, cfg, resize=meta.resize)
    scale = f", model working scale {meta.resize.model_dump(exclude_none=True)}" if meta.resize else ""
    print(
        f"{args.domain}/{args.split}: mIoU {100 * result.miou:.2f} ({result.images} labelled images, "
        f"scored at full resolution{scale})"
    )
    for name, iou in result.per_class.items():
        print(f"  {name:<16} {100 * iou:6.2f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import torch
    from torchvision.io import write_png

    from raysegment.data.dataset import read_image
    from raysegment.engine.predict import segment
    from raysegment.errors import DatasetError
    from raysegment.models.rebuild import load_model
    from raysegment.viz import overlay_png

    model, meta = load_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in map(Path, args.images):
        if not path.is_file():
            raise DatasetError(f"{path} does not exist")
        image = read_image(path)
        mask = segment(model, image, resize=meta.resize)
        write_png(mask.to(torch.uint8)[None], str(out / f"{path.stem}_mask.png"))
        overlay_png(out / f"{path.stem}_overlay.png", image, mask, meta.classes, meta.palette, title=path.name)
        print(f"{path} -> {out / (path.stem + '_overlay.png')}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A model folder (to --out) or a registry version (stored with it; --out also writes it), as
    ONNX; --quantize int8 registers the INT8 graph as a new version, judged against its parent."""
    from raysegment.apps.export import export_folder, export_version, quantize_version
    from raysegment.export.graph import DEFAULT_OPSET
    from raysegment.registry import Registry

    out, opset = (Path(args.out) if args.out else None), args.opset or DEFAULT_OPSET
    if Path(args.ref).is_dir():
        if args.quantize or out is None or not args.images:
            raise ConfigError("exporting a model folder needs --out F and --images DIR (and no --quantize)")
        export_folder(args.ref, out, args.images, opset)
        print(f"wrote {out}")
        return 0
    registry = Registry(args.registry)
    if args.quantize:
        done = quantize_version(
            registry, args.ref, args.calibration, args.max_drop, opset, args.images, args.calibration_images
        )
        print(f"{done.parent} -> INT8 {done.parent.split('@')[0]}@{done.version}: {done.decision.reason}")
        return 0
    exported = export_version(registry, args.ref, opset, out, args.images)
    print(f"{exported.ref}: onnx {exported.record.bytes} B stored ({exported.record.sha256[:12]})")
    return 0


def cmd_weights_import(args: argparse.Namespace) -> int:
    from raysegment.models.weights_import import import_weights

    path, mode, n = import_weights(args.src, args.arch, args.out)
    print(f"{n} tensors mapped onto {args.arch} by {mode} -> {path}")
    return 0


def cmd_import_model(args: argparse.Namespace) -> int:
    from raysegment.config import ModelConfig, ResizeConfig
    from raysegment.models.model_import import import_model, read_info

    if args.classes < 2:
        raise ConfigError(f"--classes must be at least 2, got {args.classes}")
    try:
        cfg = ModelConfig(library=args.library, arch=args.arch, backbone=args.encoder or "efficientnet_lite0")
    except ValueError as exc:
        raise ConfigError(f"import-model: {str(exc).splitlines()[-1]}") from exc
    resize = ResizeConfig(short_side=args.short_side) if args.short_side else None
    done = import_model(args.checkpoint, cfg, read_info(args.dataset_info, args.classes), args.out, resize)
    dropped = f"; dropped {len(done.dropped)} keys of parts raysegment does not use (e.g. {done.dropped[:1]})"
    print(
        f"{done.tensors} tensors checked and loaded into {args.library} {args.arch} -> {done.folder}"
        + (dropped if done.dropped else "")
    )
    return 0


def add_model_tools(sub: argparse._SubParsersAction) -> None:
    from raysegment.config import LAYOUTS

    p = sub.add_parser("evaluate", help="mIoU and per-class IoU of a saved model on a split")
    p.add_argument("--model", required=True, help="model folder (model.safetensors + model.json)")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--domain", default="clear")
    p.add_argument("--split", default="test")
    p.add_argument("--layout", default="raysegment", choices=list(LAYOUTS))
    p.add_argument("--mode", default="whole", choices=["whole", "slide"])
    p.add_argument("--window", type=int, nargs=2, metavar=("H", "W"))
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("predict", help="segment images; write masks and overlay PNGs")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("images", nargs="+")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("export", help="export a model as ONNX (checked against torch); --quantize int8 (judged)")
    p.add_argument("ref", help="DOMAIN@VERSION (or alias) in the registry, or a model folder")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--opset", type=int, help="ONNX opset (default: raysegment.export.graph.DEFAULT_OPSET)")
    p.add_argument("--out", help="also write the graph to this file (required for a model folder)")
    p.add_argument("--images", help="folder of the domain's images to check on (default: its val split)")
    p.add_argument("--quantize", choices=["int8"], help="static INT8 (QDQ), registered as a judged candidate")
    p.add_argument("--calibration", type=int, default=32, help="unlabelled images to calibrate INT8 on")
    p.add_argument("--calibration-images", help="folder to calibrate on (default: the domain's train split)")
    p.add_argument("--max-drop", type=float, default=0.5, help="INT8 may lose at most this many mIoU points")
    registry_option(p)
    p.set_defaults(func=cmd_export)
    weights = sub.add_parser("weights", help="pretrained weights").add_subparsers(dest="weights_command", required=True)
    p = weights.add_parser("import", help="convert a foreign .pth state dict to timm-named safetensors")
    p.add_argument("src", help="state dict (.pth), local path or URI; loaded with weights_only=True")
    p.add_argument("--arch", required=True, help="timm architecture name, e.g. efficientnet_lite0")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.set_defaults(func=cmd_weights_import)
    p = sub.add_parser("import-model", help="a trained SMP or torchvision checkpoint as a raysegment model folder")
    p.add_argument("checkpoint", help="state dict: .safetensors, or a PyTorch file (loaded with weights_only=True)")
    p.add_argument("--library", required=True, choices=["smp", "torchvision"])
    p.add_argument(
        "--arch", required=True, help="smp: Unet, FPN, DeepLabV3Plus, ...; torchvision: deeplabv3_resnet50, ..."
    )
    p.add_argument("--encoder", help="smp: the encoder it was built with, e.g. tu-efficientnet_lite0")
    p.add_argument("--classes", type=int, required=True, help="how many classes it predicts")
    p.add_argument("--dataset-info", help="dataset.json with the class names and palette (default: class_0..)")
    p.add_argument("--short-side", type=int, help="the short side (px) it was trained at: its working scale")
    p.add_argument("--out", required=True, help="the model folder to write")
    p.set_defaults(func=cmd_import_model)
