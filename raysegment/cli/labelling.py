"""`raysegment select | label push | label pull`: which images to label, and a Label Studio round trip."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from raysegment.errors import ConfigError


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


LABEL_STUDIO_URL_ENV, LABEL_STUDIO_TOKEN_ENV = "LABEL_STUDIO_URL", "LABEL_STUDIO_TOKEN"


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
