"""Ray Job entry point: distributed fine-tune from one YAML spec.

    python jobs/fine_tune.py jobs/specs/fine_tune.yaml
The spec is `{job: fine_tune, name: ..., run: <RunConfig>}`. Runs on the cluster the job was
submitted to (RAY_ADDRESS is set by Ray Jobs), or on an embedded local Ray when run by hand.
"""

from __future__ import annotations

import sys

from raysegment.distributed.spec import FineTuneJob, load_job_spec
from raysegment.distributed.train import train_on_ray


def main(path: str) -> int:
    spec = load_job_spec(path, FineTuneJob)
    result = train_on_ray(spec.run, name=spec.name)
    print(
        f"fine-tune {spec.name} finished in {result.seconds:.0f} s: epoch {result.metrics.get('epoch')} "
        f"score {100 * result.metrics.get('score', float('nan')):.1f}; selected model {result.model_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
