"""`raysegment` command line. Library errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from raysegment.config import RunConfig, deep_merge
from raysegment.errors import ConfigError

EXIT_USAGE = 2


def _parse_overrides(pairs: list[str]) -> dict:
    """`a.b=3` -> {"a": {"b": 3}}; values are parsed as YAML scalars."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


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
    from raysegment.apps.study import epochs_per_method, format_table, run_study
    from raysegment.config import ResizeConfig

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

    reports = run_study(
        args.source,
        args.data,
        args.source_domain,
        args.targets,
        tuple(args.methods),
        tuple(args.shots),
        oracle=not args.no_oracle,
        out=args.out,
        epochs=epochs_per_method(args.epochs),
        lr=args.lr,
        batch_size=args.batch_size,
        resize=resize,
        unlabelled=args.unlabelled,
        layout=args.layout,
        adapt_overrides={"criterion": args.criterion} if args.criterion else None,
        variants=tuple(args.variants),
        canary=args.canary,
        target_short_sides=args.target_short_sides,
        registry=args.registry,
        ship=ship,
        select=args.select,
    )
    print(format_table(reports))
    print(f"results {Path(args.out) / 'results.json'}, chart {Path(args.out) / 'adapt_miou.png'}")
    if args.registry:
        print(f"registered in {args.registry}: `raysegment registry ls --registry {args.registry}` lists them")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from raysegment.apps.select import run_selection

    if args.budget < 1:
        raise ConfigError(f"--budget must be at least 1, got {args.budget}")
    if args.strategy == "active-novel" and not args.source_images:
        raise ConfigError("--strategy active-novel needs --source-images DIR (the source's own images)")
    done = run_selection(args.model, args.images, args.budget, args.out, args.strategy, args.seed, args.source_images)
    print(f"label these {done.selection.budget} first ({args.strategy}):")
    for path in done.files[: done.selection.budget]:
        print(f"  {path}")
    print(f"ranking {done.listing}, contact sheet {done.sheet}, pre-labels (the model's masks) in {done.prelabels}/")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from raysegment.apps.label_studio import LabelStudio, pull, push

    token = args.token or os.environ.get(LABEL_STUDIO_TOKEN_ENV)
    if not token:
        raise ConfigError(f"a Label Studio token is needed: --token T or ${LABEL_STUDIO_TOKEN_ENV}")
    client = LabelStudio(args.label_studio, token)
    if args.action == "push":
        if not (args.model and args.images and args.budget):
            raise ConfigError("label push needs --model M --images DIR --budget K")
        title = args.project or f"raysegment {Path(args.images).resolve().name}"
        pushed = push(client, args.model, args.images, args.budget, title, args.out or "label_out")
        print(
            f"project {pushed.title!r} (id {pushed.project}) at {client.url}: {len(pushed.uploaded)} images uploaded "
            f"with the model's masks as pre-annotations, {len(pushed.already)} already there"
        )
        return 0
    if not (args.project and args.out):
        raise ConfigError("label pull needs --project TITLE --out ROOT/DOMAIN")
    pulled = pull(client, args.project, args.out)
    print(f"{len(pulled.written)} labelled images written to {args.out}; {pulled.unfinished} unfinished tasks skipped")
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


def cmd_submit(args: argparse.Namespace) -> int:
    from raysegment.distributed import submit as ray_jobs

    job_id = ray_jobs.submit(args.spec, args.address)
    print(f"submitted {job_id} to {args.address}", flush=True)
    if args.no_wait:
        return 0
    final = ray_jobs.follow(job_id, args.address)
    print(f"job {job_id} {final}")
    return 0 if str(final) == "SUCCEEDED" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    from raysegment.distributed import submit as ray_jobs

    if args.action == "status":
        print(ray_jobs.status(args.job_id, args.address))
    elif args.action == "logs":
        print(ray_jobs.logs(args.job_id, args.address), end="")
    else:
        print(f"stop {args.job_id}: {'requested' if ray_jobs.stop(args.job_id, args.address) else 'already finished'}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from raysegment.distributed.spec import TuneJob, load_spec
    from raysegment.distributed.tune import format_table, run_search

    spec = load_spec(args.spec, TuneJob)
    print(format_table(run_search(spec)))
    print(f"plots: {Path(spec.run.output_dir) / spec.name}/tune_curves.png, tune_winners.png")
    return 0


def cmd_loop(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from raysegment.apps.closed_loop import run_loop
    from raysegment.config import LoopConfig
    from raysegment.distributed.spec import LoopJob, load_spec

    if args.spec:
        spec = load_spec(args.spec, LoopJob)
        registry, cfg, domains = spec.registry, spec.loop, spec.targets
    else:
        if not args.domain:
            raise ConfigError("raysegment loop needs DOMAIN (or --spec SPEC)")
        registry, cfg, domains = args.registry, LoopConfig(), [args.domain]
    cfg = LoopConfig.model_validate({**cfg.model_dump(), **_parse_overrides(args.set)})
    for domain in domains:
        print(json.dumps(asdict(run_loop(registry, domain, cfg))), flush=True)
    return 0


def cmd_traffic(args: argparse.Namespace) -> int:
    import time

    from raysegment.registry.traffic import TrafficStore

    store = TrafficStore(args.registry, max_age_s=float("inf"))
    domains = [args.domain] if args.domain else store.domains()
    if args.action == "purge":
        if not args.domain:
            raise ConfigError("raysegment traffic purge needs DOMAIN")
        removed = store.purge(args.domain, args.older_than)
        print(f"{args.domain}: removed {removed} captured images")
        return 0
    now = time.time()
    for domain in domains:
        items = store.items(domain)
        oldest = f", oldest {(now - items[0].time) / 3600:.1f} h ago" if items else ""
        print(
            f"{domain}: {len(items)} images kept of {store.seen(domain)} seen, {sum(i.bytes for i in items)} B{oldest}"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from raysegment.registry import Registry
    from raysegment.serving.config import Replicas, ServeConfig
    from raysegment.serving.startup import serve_until_stopped, start_serving

    auth = "token" if args.token_file else "none"
    replicas = Replicas(max_replicas=args.max_replicas, **({"topology": args.topology} if args.topology else {}))
    cfg = ServeConfig(
        registry=str(Path(args.registry).resolve()),
        auth=auth,
        token_file=str(Path(args.token_file).resolve()) if args.token_file else None,
        bind_host=args.host,
        replicas=replicas,
    )
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    owns_ray = start_serving(cfg, args.host, args.port, args.start_timeout, log=say)
    url = f"http://{args.host}:{args.port}"
    print(
        f"serving {len(Registry(cfg.registry).domains())} domains on {url} (console at {url}/ui, API docs at "
        f"{url}/docs; auth: {cfg.auth}); Ctrl-C stops",
        flush=True,
    )
    serve_until_stopped(owns_ray, log=say)
    print("stopped", flush=True)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from raysegment.serving.auth import add_token

    print(add_token(args.file, args.name, args.role))
    print(f"(added {args.name} as {args.role} to {args.file}; the token above is not stored: keep it)", file=sys.stderr)
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    import getpass
    import json

    from raysegment.registry import Registry
    from raysegment.registry.promotion import promote_version, rollback

    reg = Registry(args.registry)
    if args.action == "add":
        return registry_add(reg, args)
    if args.action == "ls":
        for row in reg.list():
            base = f" base={row['base']['domain']}@{row['base']['version']}" if row["base"] else ""
            metrics = " ".join(f"{k}={v:.4g}" for k, v in row["metrics"].items() if isinstance(v, (int, float)))
            print(
                f"{row['domain']}@{row['version']} {','.join(row['aliases']) or '-'} {row['bytes']} B{base} {metrics}"
            )
        return 0
    if not args.ref:
        raise ConfigError(
            f"raysegment registry {args.action} needs "
            + ("DOMAIN" if args.action in ("rollback", "history") else "DOMAIN@VERSION")
        )
    if args.action == "rollback":
        version = rollback(reg, args.ref, actor=args.by or getpass.getuser())
        print(f"{args.ref}: production is back at {args.ref}@{version}")
        return 0
    if args.action == "history":
        for record in reg.history(args.ref):
            print(json.dumps(record, sort_keys=True))
        return 0
    entry = reg.resolve(args.ref)
    if args.action == "show":
        print(entry.manifest.model_dump_json(indent=2))
    elif args.action == "promote" and args.alias == "production":
        decision = promote_version(reg, entry.ref, force=args.force, actor=args.by or getpass.getuser())
        alias = "production" if decision.promoted else "candidate"
        print(
            f"{entry.ref} is now {alias}: {decision.reason}"
            + (f" (against {decision.incumbent})" if decision.incumbent else "")
        )
    elif args.action == "promote":
        reg.set_alias(entry.domain, entry.version, args.alias)
        print(f"{entry.ref} is now {args.alias}")
    else:
        reg.remove(entry.domain, entry.version)
        print(f"removed {entry.ref}")
    return 0


def registry_add(reg, args: argparse.Namespace) -> int:  # noqa: ANN001 (a Registry)
    """`raysegment registry add MODEL_DIR --domain D`: register, then judge against production (or
    only `candidate`, with `--alias candidate`)."""
    import getpass

    from raysegment.registry.intake import register_folder
    from raysegment.registry.promotion import CANDIDATE, promote_version

    if not args.ref or not args.domain:
        raise ConfigError("raysegment registry add needs MODEL_DIR and --domain DOMAIN")
    if args.alias not in ("production", CANDIDATE):
        raise ConfigError(f"registry add: --alias is production (judged) or {CANDIDATE} (not judged)")
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    version = register_folder(reg, args.ref, args.domain, args.data, args.layout, log=say)
    ref = f"{args.domain}@{version}"
    if args.alias == CANDIDATE:
        reg.set_alias(args.domain, version, CANDIDATE, record={"added": {"by": args.by or getpass.getuser()}})
        print(f"{ref} registered as {CANDIDATE} (not judged)")
        return 0
    decision = promote_version(reg, ref)
    alias = "production" if decision.promoted else CANDIDATE
    print(
        f"{ref} registered, now {alias}: {decision.reason}"
        + (f" (against {decision.incumbent})" if decision.incumbent else "")
    )
    return 0


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


def cmd_demo(args: argparse.Namespace) -> int:
    if args.engine_only:
        from raysegment.apps.engine_walkthrough import QUICK, run_walkthrough

        run_walkthrough(args.out, **(QUICK if args.quick else {}))
        return 0
    from raysegment.apps.demo import DemoSettings, ray_console_to, run_demo

    console_log = Path(args.out).resolve() / "ray_console.log"
    with ray_console_to(console_log) as say:
        say(f"[demo] Ray's own console output (banners, Tune tables, warnings) goes to {console_log}")
        run_demo(args.out, DemoSettings.quick() if args.quick else DemoSettings(), storage=args.storage, log=say)
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from raysegment.data import synth

    root = synth.generate(args.out, tuple(args.domains), args.images, args.height, args.width, args.seed)
    print(f"wrote {len(args.domains)} domains x {args.images} images to {root}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from raysegment.data import open_split

    data = open_split(args.root, args.domain, args.split, args.layout)
    read = data.verify()  # pairs in a bucket are checked as they are read: read them all here
    print(
        f"{args.root} {args.domain}/{args.split}: {len(data)} images, {data.labelled_count} labelled, "
        f"{data.info.num_classes} classes" + (f" ({read} pairs read from object storage and checked)" if read else "")
    )
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from raysegment.data.importers import import_dataset

    counts = import_dataset(args.name, args.src, args.out)
    print(f"{args.out}/{args.name}: " + ", ".join(f"{n} {split}" for split, n in counts.items()))
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


REGISTRY_ENV, JOBS_ADDRESS_ENV = "RAYSEGMENT_REGISTRY", "RAY_API_SERVER_ADDRESS"


def registry_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", default=os.environ.get(REGISTRY_ENV, "registry"), help=f"default: ${REGISTRY_ENV}")


def address_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=os.environ.get(JOBS_ADDRESS_ENV, "http://127.0.0.1:8265"))


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


def add_compare(sub: argparse._SubParsersAction) -> None:
    from raysegment.config import (  # `--help`: no torch
        CRITERIA,
        LABEL_FREE_METHODS,
        LAYOUTS,
        SELECT_STRATEGIES,
        STUDY_VARIANTS,
    )

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
    p.add_argument("--out", default="adapt_out")
    p.set_defaults(func=cmd_compare)


def add_labelling(sub: argparse._SubParsersAction) -> None:
    from raysegment.config import SELECT_STRATEGIES

    p = sub.add_parser("select", help="which target images to label first (uncertain, diverse; rare classes count)")
    p.add_argument("--model", required=True, help="model folder (the source model)")
    p.add_argument("--images", required=True, help="folder of unlabelled target images (any file names)")
    p.add_argument("--budget", type=int, required=True, help="how many images you can label")
    p.add_argument("--strategy", default="active", choices=list(SELECT_STRATEGIES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--source-images", help="folder of the source's own images: active-novel prefers target images unlike them"
    )
    p.add_argument("--out", default="select_out")
    p.set_defaults(func=cmd_select)


LABEL_STUDIO_URL_ENV, LABEL_STUDIO_TOKEN_ENV = "LABEL_STUDIO_URL", "LABEL_STUDIO_TOKEN"


def add_label_studio(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="a labelling round trip through Label Studio: push the picks, pull the masks")
    p.add_argument("action", choices=["push", "pull"])
    p.add_argument(
        "--label-studio",
        default=os.environ.get(LABEL_STUDIO_URL_ENV, "http://127.0.0.1:8080"),
        help=f"Label Studio's URL (default: ${LABEL_STUDIO_URL_ENV}, else http://127.0.0.1:8080)",
    )
    p.add_argument("--token", help=f"Label Studio API token (default: ${LABEL_STUDIO_TOKEN_ENV})")
    p.add_argument("--project", help="project title (push: default 'raysegment <images folder>')")
    p.add_argument("--model", help="push: the model whose masks pre-annotate")
    p.add_argument("--images", help="push: folder of unlabelled target images")
    p.add_argument("--budget", type=int, help="push: how many images to label")
    p.add_argument("--out", help="push: where the selection is written (default label_out); pull: ROOT/DOMAIN")
    p.set_defaults(func=cmd_label)


def add_jobs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a job spec (jobs/specs/*.yaml) to a Ray cluster and stream its logs")
    p.add_argument("spec")
    address_option(p)
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser("jobs", help="status, logs or stop of a submitted job")
    p.add_argument("action", choices=["status", "logs", "stop"])
    p.add_argument("job_id")
    address_option(p)
    p.set_defaults(func=cmd_jobs)


def add_operations(sub: argparse._SubParsersAction) -> None:
    """The registry, its traffic and the closed loop."""
    from raysegment.config import LAYOUTS

    p = sub.add_parser(
        "loop", help="adapt a domain's production model to its captured traffic, shadow it, promote or retire"
    )
    p.add_argument("domain", nargs="?", help="the domain (or --spec with targets)")
    registry_option(p)
    p.add_argument("--spec", help="a `job: loop` spec (jobs/specs/loop.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. shadow_images=0")
    p.set_defaults(func=cmd_loop)
    p = sub.add_parser("traffic", help="list or purge the captured request images")
    p.add_argument("action", choices=["ls", "purge"])
    p.add_argument("domain", nargs="?")
    registry_option(p)
    p.add_argument("--older-than", type=float, metavar="SECONDS", help="purge: only images older than this")
    p.set_defaults(func=cmd_traffic)
    p = sub.add_parser(
        "registry", help="add a model folder, list, show, promote (judged), roll back or remove domain models"
    )
    p.add_argument("action", choices=["add", "ls", "show", "promote", "rollback", "history", "rm"])
    p.add_argument("ref", nargs="?", help="DOMAIN@VERSION or DOMAIN@ALIAS (rollback, history: DOMAIN; add: MODEL_DIR)")
    p.add_argument("--domain", help="add: the domain the model serves")
    p.add_argument("--data", help="add: dataset root holding --domain; its val images judge the model")
    p.add_argument("--layout", default="raysegment", choices=list(LAYOUTS), help="add: --data's")
    registry_option(p)
    p.add_argument(
        "--alias", default="production", help="production goes through the promotion policy; other aliases just move"
    )
    p.add_argument("--force", action="store_true", help="promote without beating production (recorded as forced)")
    p.add_argument("--by", help="who forces or rolls back (recorded; default: the login name)")
    p.set_defaults(func=cmd_registry)


def add_serving(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve every registered domain over HTTP (Ray Serve, embedded default)")
    p.add_argument("--registry", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-replicas", type=int, default=2)
    p.add_argument(
        "--topology",
        choices=["split", "fused"],
        help="split: gateway + model deployments (the default); fused: one deployment, a hop less (CPU nodes)",
    )
    p.add_argument(
        "--token-file",
        help="bearer tokens (hashes) for every request; without one the API is open, "
        "which is refused unless --host is loopback",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the proxy and replicas to come up (a busy machine is slow; progress is printed)",
    )
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("token", help="make an API token: printed once, its hash appended to the token file")
    p.add_argument("action", choices=["add"])
    p.add_argument("name", help="client name (one word)")
    p.add_argument("role", choices=["read", "admin"])
    p.add_argument("--file", required=True, help="token file (created with mode 0600)")
    p.set_defaults(func=cmd_token)


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


def add_demo_and_data(sub: argparse._SubParsersAction) -> None:
    from raysegment.config import LAYOUTS, PUBLIC_SETS
    from raysegment.config import SYNTH_DOMAINS as DOMAINS

    p = sub.add_parser("demo", help="the end-to-end demo on generated domains")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument(
        "--storage",
        help="object storage for the registry and Ray checkpoints (s3://bucket/prefix; credentials and "
        "AWS_ENDPOINT_URL from the environment), as on a cluster whose nodes share no disk",
    )
    p.add_argument(
        "--engine-only",
        action="store_true",
        help="the one-process version (no Ray): source fine-tune + few-shot per target",
    )
    p.set_defaults(func=cmd_demo)
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="generate procedural street-scene domains")
    p.add_argument("--out", required=True)
    p.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    p.add_argument("--images", type=int, default=60, help="images per domain")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser("import", help="a public set's download (drive, chase, hrf, camvid) into raysegment's layout")
    p.add_argument("name", choices=list(PUBLIC_SETS))
    p.add_argument("src", help="the unpacked download (see `raysegment.data.importers` for where to get each)")
    p.add_argument("out", help="dataset root to write domain NAME into (shared by sets with the same classes)")
    p.set_defaults(func=cmd_data_import)
    p = data.add_parser("check", help="validate a dataset split (missing masks, sizes, labels)")
    p.add_argument("--root", required=True)
    p.add_argument("--domain", default="clear")
    p.add_argument("--split", default="all")
    p.add_argument("--layout", default="raysegment", choices=list(LAYOUTS))
    p.set_defaults(func=cmd_data_check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysegment", description="Domain adaptation for semantic segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        add_training,
        add_compare,
        add_labelling,
        add_label_studio,
        add_jobs,
        add_operations,
        add_serving,
        add_model_tools,
        add_demo_and_data,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from raysegment.errors import RaySegmentError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RaySegmentError as exc:
        print(f"raysegment: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"raysegment: error: {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("raysegment: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
