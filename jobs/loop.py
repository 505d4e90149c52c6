"""Ray Job entry point: one turn of the closed loop per target domain (`job: loop`).

python jobs/loop.py jobs/specs/loop.yaml
Run it on a schedule (a Kubernetes CronJob that calls `raysegment submit`), or when
`GET /v1/domains` shows a domain as drifted.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from raysegment.distributed.closed_loop import run_loop
from raysegment.distributed.spec import LoopJob, load_job_spec


def main(path: str) -> int:
    spec = load_job_spec(path, LoopJob)
    for domain in spec.targets:
        print(json.dumps(asdict(run_loop(spec.registry, domain, spec.loop))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
