"""ASHA vs the same search without early stopping, per target domain: epochs spent and best
val mIoU of each, and the ratio (goal: within 1 mIoU point at <= 40% of the epochs). The same
seed samples the same trial configs for every scheduler, so the full-budget (FIFO) search is the
reference each ASHA setting (grace period, reduction factor, searcher: random or Optuna's TPE) is
measured against.
Also reports registry bytes per domain model stored as a delta vs a full checkpoint at
freeze_depth 0, 2 and 4 (skip with --no-sizes).

    python benchmarks/bench_tune.py [--samples 8] [--epochs 6] [--targets fog night]
                                    [--asha 1:2 2:3 1:4:tpe] [--cpus 2]
Embedded local Ray (--cpus, default 2); synthetic domains at 64x128.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
import torch  # noqa: E402

from raysegment.config import parse_config  # noqa: E402
from raysegment.data import open_split, synth  # noqa: E402
from raysegment.distributed.spec import TuneJob  # noqa: E402
from raysegment.distributed.tune import run_search  # noqa: E402
from raysegment.engine.epochs import fit  # noqa: E402
from raysegment.registry import Registry  # noqa: E402


def delta_sizes(source_dir: Path, root: Path, tmp: Path) -> list[tuple[int, int, int]]:
    """(freeze_depth, delta bytes, full bytes) for a short target fine-tune from the source."""
    reg = Registry(tmp / "delta-registry")
    from raysegment.models.rebuild import load_model

    model, meta = load_model(source_dir)
    reg.register("source", model, meta)
    rows = []
    for depth in (0, 2, 4):
        cfg = parse_config(
            {
                "data": {"root": str(root), "domain": "fog"},
                "model": {"freeze_depth": depth, "pretrained": {"source": "checkpoint", "uri": str(source_dir)}},
                "optim": {"epochs": 1, "batch_size": 4},
                "output_dir": str(tmp / f"d{depth}"),
            }
        )
        learner = fit(cfg, open_split(root, "fog", "train"), resume=False, log=lambda s: None)
        delta = reg.register("fog", learner.method.model, meta, parent="source@1")
        full = reg.register(f"fog-full{depth}", learner.method.model, meta)
        rows.append(
            (
                depth,
                reg.get_entry("fog", delta).bytes,
                reg.get_entry(f"fog-full{depth}", full).bytes,
            )
        )
    return rows


Setting = tuple[int, float, str] | None  # ASHA (grace period, reduction factor, searcher); None: full budget


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--targets", nargs="+", default=["fog", "night"])
    parser.add_argument(
        "--asha",
        nargs="*",
        default=["1:2"],
        help="ASHA settings to compare, each GRACE:REDUCTION_FACTOR[:tpe] (tpe: Optuna's TPE draws the trials)",
    )
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the embedded Ray")
    parser.add_argument("--images", type=int, default=30, help="images per synthetic domain")
    parser.add_argument("--no-sizes", action="store_true", help="skip the registry delta-size table")
    parser.add_argument(
        "--curves", type=Path, help="write the full-budget search's per-trial score curves here (JSON, by domain)"
    )
    return parser.parse_args()


def train_source(root: Path, tmp: Path) -> Path:
    """A short source fine-tune on clear; its last checkpoint is every search's start."""
    source_cfg = parse_config(
        {
            "data": {"root": str(root)},
            "optim": {"epochs": 4, "batch_size": 6, "lr": 2e-3},
            "output_dir": str(tmp / "source"),
        }
    )
    fit(source_cfg, open_split(root, "clear", "train"), resume=False, log=lambda s: None)
    return tmp / "source" / "checkpoints" / "epoch_0004"


def search_spec(args: argparse.Namespace, k: int, setting: Setting, root: Path, source: Path, tmp: Path) -> TuneJob:
    """The same search (same seed, same trial configs) under one scheduler setting."""
    return TuneJob.model_validate(
        {
            "job": "tune",
            "name": f"search{k}",
            "targets": args.targets,
            "registry": str(tmp / f"registry-{k}"),
            "source": str(source),
            "search": {
                "num_samples": args.samples,
                "max_epochs": args.epochs,
                "early_stopping": setting is not None,
                "grace_period": setting[0] if setting else 1,
                "reduction_factor": setting[1] if setting else 2.0,
                "searcher": setting[2] if setting else "random",
                "seed": 0,
            },
            "run": {
                "data": {"root": str(root), "labelled_limit": 10},
                "optim": {"batch_size": 5},
                "scale": {"num_workers": 1},
                "output_dir": str(tmp / "tune"),
            },
        }
    )


def print_header(args: argparse.Namespace) -> None:
    print(
        f"{args.samples} trials x up to {args.epochs} epochs per domain, EfficientNet-Lite0 + FPN, "
        f"64x128, 10 labels, {args.cpus} CPUs"
    )
    print(
        f"{'domain':<8} {'ASHA g:rf':>9} {'ASHA epochs':>11} {'ASHA best':>9} {'full epochs':>11} "
        f"{'full best':>9} {'epoch ratio':>11} {'mIoU diff':>9}",
        flush=True,
    )


def print_rows(targets: list[str], setting: tuple[int, float, str], asha: dict, full: dict) -> None:
    """One row per domain: the ASHA setting against the full-budget search."""
    label = f"{setting[0]}:{setting[1]:g}" + (":tpe" if setting[2] == "tpe" else "")
    for d in targets:
        a, f = asha[d], full[d]
        print(
            f"{d:<8} {label:>9} {a.epochs_spent:>11} {100 * a.best_score:>8.1f}% "
            f"{f.epochs_spent:>11} {100 * f.best_score:>8.1f}% {a.epochs_spent / f.epochs_spent:>11.2f} "
            f"{100 * (a.best_score - f.best_score):>+9.1f}",
            flush=True,
        )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(2)
    settings: list[Setting] = [None] + [
        (int(g), float(r), (rest or ["random"])[0]) for g, r, *rest in (a.split(":") for a in args.asha)
    ]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = synth.generate(
            tmp / "data", domains=("clear", *args.targets), images_per_domain=args.images, height=64, width=128
        )
        source_dir = train_source(root, tmp)
        ray.init(address="local", num_cpus=args.cpus, log_to_driver=False)
        full: dict = {}
        for k, setting in enumerate(settings):
            spec = search_spec(args, k, setting, root, source_dir, tmp)
            found = {o.domain: o for o in run_search(spec, log=lambda s: None)}
            if setting is None:
                full = found
                if args.curves:
                    args.curves.write_text(json.dumps({d: o.curves for d, o in full.items()}, indent=1))
                print_header(args)
            else:
                print_rows(args.targets, setting, found, full)
        ray.shutdown()
        sizes = [] if args.no_sizes else delta_sizes(source_dir, root, tmp)
    if sizes:
        print("registry bytes per domain (delta on the source vs a full copy):")
    for depth, delta, full_bytes in sizes:
        print(
            f"  freeze_depth {depth}: delta {delta / 1e6:6.2f} MB  full {full_bytes / 1e6:6.2f} MB  "
            f"ratio {delta / full_bytes:.2f}"
        )


if __name__ == "__main__":
    main()
