"""`raysegment submit | jobs`: work shipped to a Ray cluster through Ray Jobs."""

from __future__ import annotations

import argparse

from raysegment.cli.common import address_option


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
