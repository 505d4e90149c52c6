"""`raysegment serve | token`: the HTTP service and its tokens."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
