"""`raysegment registry | traffic | loop`: the registry, captured traffic and closed-loop turns."""

from __future__ import annotations

import argparse
import sys

from raysegment.cli.common import _parse_overrides, registry_option
from raysegment.errors import ConfigError


def cmd_loop(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from raysegment.config import LoopConfig
    from raysegment.distributed.closed_loop import run_loop
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
            print(json.dumps(record.model_dump(mode="json"), sort_keys=True))
        return 0
    entry = reg.resolve(args.ref)
    if args.action == "show":
        print(entry.model_dump_json(indent=2))
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

    from raysegment.registry.audit import Added, AuditRecord
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
        reg.set_alias(args.domain, version, CANDIDATE, record=AuditRecord(added=Added(by=args.by or getpass.getuser())))
        print(f"{ref} registered as {CANDIDATE} (not judged)")
        return 0
    decision = promote_version(reg, ref)
    alias = "production" if decision.promoted else CANDIDATE
    print(
        f"{ref} registered, now {alias}: {decision.reason}"
        + (f" (against {decision.incumbent})" if decision.incumbent else "")
    )
    return 0


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
