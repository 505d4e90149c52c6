"""`raysegment demo | data synth | data check | data import`: datasets and the demo."""

from __future__ import annotations

import argparse
from pathlib import Path


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
