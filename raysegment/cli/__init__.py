"""`raysegment` command line, a module per command area. Library errors become one line on stderr
and exit code 2."""

from __future__ import annotations

import argparse
import sys

from raysegment.cli.common import EXIT_USAGE
from raysegment.cli.data import add_demo_and_data
from raysegment.cli.jobs import add_jobs
from raysegment.cli.labelling import add_label_studio, add_labelling
from raysegment.cli.models import add_model_tools
from raysegment.cli.operations import add_operations
from raysegment.cli.serving import add_serving
from raysegment.cli.training import add_compare, add_training


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
