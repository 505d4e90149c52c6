"""`raysegment train | train-on-ray | tune | compare`: a model trained, searched, or compared across targets."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from raysegment.cli.common import REGISTRY_ENV, _parse_overrides
from raysegment.config import RunConfig, deep_merge
from raysegment.errors import ConfigError


def train_config(args: argparse.Namespace) -> RunConfig:
    """`raysegment train`'s run: the YAML config, or the embedded defaults around --data (an
    EfficientNet-Lite0 FPN from the ImageNet weights installed with raysegment); --set on top."""
    from raysegment.config import load_config, parse_config

    overrides = _parse_overrides(args.set)
    if args.unlabelled:
        overrides.setdefault("data", {})["unlabelled"] = True
    if args.config:
        return load_config(args.config, overrides)
    if not args.data:
        raise ConfigError("raysegment train needs --data ROOT (embedded defaults) or --config RUN.yaml")
    base = {
        "data": {"root": args.data, "domain": args.domain}
        | ({"resize": {"short_side": args.short_side}} if args.short_side else {}),
        "model": {"pretrained": {"source": "imagenet"}},
        "optim": {"epochs": args.epochs},
        "output_dir": args.out,
    }
    return parse_config(deep_merge(base, overrides), "raysegment train")


def cmd_train(args: argparse.Namespace) -> int:
    from raysegment.engine.adapt import adapt
    from raysegment.models.io import save_model

    cfg = train_config(args)
    result = adapt(cfg, resume=not args.restart)
    metrics = {k: v for k, v in result.scores.items() if isinstance(v, (int, float))}
    final = save_model(
        Path(cfg.output_dir) / "model", result.model, result.meta.model_copy(update={"metrics": metrics})
    )
    if cfg.judge == "labels":
        judge = f"val mIoU {100 * result.scores['val_miou']:.1f}"
    else:
        judge = f"proxy score {100 * result.scores['score']:.1f} (judge: proxy, no target labels read)"
    epoch = result.scores.get("selected_epoch")
    print(
        f"{cfg.adapt.method}: {judge}"
        + (f" at epoch {epoch}" if epoch is not None else "")
        + f"; model written to {final}"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from raysegment.apps.study import run_study
    from raysegment.apps.study_config import StudyConfig, epochs_per_method
    from raysegment.apps.study_report import format_table
    from raysegment.config import ResizeConfig, format_validation_error

    resize = None
    if args.short_side or args.scale:
        resize = ResizeConfig(short_side=args.short_side, scale=args.scale)
    ship = None
    if args.registry:
        from raysegment.apps.ship import ship_pick
        from raysegment.models.io import read_meta
        from raysegment.registry import Registry

        registry, source, meta = Registry(args.registry), Path(args.source).resolve(), read_meta(args.source)
        evidence = (Path(args.out) / "results.json").resolve()

        def ship(run):  # noqa: ANN001, ANN202 (a TargetRun)
            return ship_pick(registry, run, source, meta, evidence)

    try:
        cfg = StudyConfig(
            source=str(args.source),
            data_root=str(args.data),
            source_domain=args.source_domain,
            targets=args.targets,
            methods=tuple(args.methods),
            shots=tuple(args.shots),
            oracle=not args.no_oracle,
            out=str(args.out),
            epochs=epochs_per_method(args.epochs),
            lr=args.lr,
            batch_size=args.batch_size,
            resize=resize,
            unlabelled=args.unlabelled,
            layout=args.layout,
            criterion=args.criterion,
            variants=tuple(args.variants),
            canary=args.canary,
            target_short_sides=args.target_short_sides,
            registry=args.registry,
            select=args.select,
        )
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "raysegment compare")) from exc
    reports = run_study(cfg, ship=ship)
    print(format_table(reports))
    print(f"results {Path(args.out) / 'results.json'}, chart {Path(args.out) / 'adapt_miou.png'}")
    if args.registry:
        print(f"registered in {args.registry}: `raysegment registry ls --registry {args.registry}` lists them")
    return 0


def cmd_train_on_ray(args: argparse.Namespace) -> int:
    from raysegment.config import load_config
    from raysegment.distributed.train import train_on_ray

    cfg = load_config(args.config, _parse_overrides(args.set))
    result = train_on_ray(cfg, name=args.name)
    print(
        f"epoch {result.metrics.get('epoch')} score {100 * result.metrics.get('score', float('nan')):.1f} "
        f"in {result.seconds:.0f} s; selected model {result.model_dir}"
    )
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from raysegment.distributed.spec import TuneJob, load_spec
    from raysegment.distributed.tune import format_table, run_search

    spec = load_spec(args.spec, TuneJob)
    print(format_table(run_search(spec)))
    print(f"plots: {Path(spec.run.output_dir) / spec.name}/tune_curves.png, tune_winners.png")
    return 0


def add_training(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train or adapt one model (config adapt.method) in this process from a YAML config"
    )
    p.add_argument("--config", help="YAML RunConfig (data, model, optim, augment, eval); or the defaults below")
    p.add_argument("--data", help="dataset root (without --config: embedded defaults, ImageNet-initialised)")
    p.add_argument("--domain", default="clear", help="with --data: the domain to train on")
    p.add_argument("--out", default="runs/source", help="with --data: output folder (the model lands in OUT/model)")
    p.add_argument("--epochs", type=int, default=20, help="with --data: training epochs")
    p.add_argument("--short-side", type=int, help="with --data: working scale (short side in pixels)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=3e-4")
    p.add_argument("--restart", action="store_true", help="ignore existing checkpoints instead of resuming")
    p.add_argument(
        "--unlabelled",
        action="store_true",
        help="read the target domain as unlabelled even where masks exist (label-free methods)",
    )
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("train-on-ray", help="train or adapt one model on Ray Train (config's scale section)")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--name", help="Ray Train run name (default: output_dir's name)")
    p.set_defaults(func=cmd_train_on_ray)
    p = sub.add_parser("tune", help="per-domain Ray Tune search from a tune spec; winners into the registry")
    p.add_argument("spec", help="YAML spec with job: tune (see jobs/specs/tune.yaml)")
    p.set_defaults(func=cmd_tune)


def judging_options(p: argparse.ArgumentParser) -> None:
    """`compare`'s options on how candidates are read and judged."""
    from raysegment.config import CRITERIA, LAYOUTS, STUDY_VARIANTS  # `--help`: no torch

    p.add_argument(
        "--unlabelled",
        action="store_true",
        help="read the targets as unlabelled: no target mask is opened, candidates are judged by the proxy",
    )
    p.add_argument("--layout", default="raysegment", choices=list(LAYOUTS))
    p.add_argument(
        "--variants",
        nargs="*",
        default=[],
        choices=sorted(STUDY_VARIANTS),
        help="extra label-free candidates (partial AdaBN, class-balanced / MIC self-training)",
    )
    p.add_argument("--criterion", choices=list(CRITERIA), help="the proxy judge's criterion (default: the config's)")
    p.add_argument(
        "--canary", type=int, default=0, help="k labelled val images judge the label-free candidates (0: the proxy)"
    )
    p.add_argument(
        "--target-short-sides",
        nargs="+",
        type=int,
        help="pick each target's working scale among these short sides without labels (BatchNorm statistics)",
    )


def add_compare(sub: argparse._SubParsersAction) -> None:
    from raysegment.config import LABEL_FREE_METHODS, SELECT_STRATEGIES  # `--help`: no torch

    p = sub.add_parser("compare", help="compare adaptation methods per target domain: 0 labels, k labels, oracle")
    p.add_argument("--source", required=True, help="source model folder (raysegment train output)")
    p.add_argument("--data", required=True, help="dataset root holding the source and target domains")
    p.add_argument("--source-domain", required=True)
    p.add_argument(
        "--targets",
        nargs="+",
        required=True,
        help="target domains of --data, plain folders of unlabelled images (any file names), or traffic:DOMAIN "
        "(what the service captured)",
    )
    p.add_argument(
        "--registry",
        default=os.environ.get(REGISTRY_ENV),
        help=f"register each target's judge's pick here, through the promotion policy (default: ${REGISTRY_ENV})",
    )
    p.add_argument("--methods", nargs="+", default=list(LABEL_FREE_METHODS), choices=list(LABEL_FREE_METHODS))
    p.add_argument("--shots", nargs="*", type=int, default=[1, 5, 10], help="few-shot label counts")
    p.add_argument(
        "--select",
        default="first",
        choices=list(SELECT_STRATEGIES),
        help="which k train images the k-shot rows label: active (uncertain and diverse, `raysegment select`), "
        "random, or first (file order)",
    )
    p.add_argument("--no-oracle", action="store_true", help="skip the all-labels fine-tune")
    p.add_argument("--epochs", type=int, default=8, help="self-training and fine-tuning epochs (tent: a quarter)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--short-side", type=int, help="working scale: resize so the short side has this many px")
    scale.add_argument("--scale", type=float, help="working scale: resize by this factor")
    judging_options(p)
    p.add_argument("--out", default="adapt_out")
    p.set_defaults(func=cmd_compare)
