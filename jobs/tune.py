"""Ray Job entry point: per-domain Tune search from one YAML spec (`job: tune`).

python jobs/tune.py jobs/specs/tune.yaml
"""

from __future__ import annotations

import sys

from raysegment.distributed.spec import TuneJob, load_job_spec
from raysegment.distributed.tune import format_table, run_search


def main(path: str) -> int:
    spec = load_job_spec(path, TuneJob)
    print(format_table(run_search(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
