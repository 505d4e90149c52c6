"""Job specs: one YAML file per Ray Job, `{job: <kind>, name: <run name>, run: <RunConfig>}`.

Relative data and output paths are resolved against the spec file's folder, so a spec works the
same when submitted from anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from raysegment.config import RunConfig, format_validation_error, read_yaml_mapping
from raysegment.errors import ConfigError

JOB_KINDS = ("fine_tune",)


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job: Literal["fine_tune"]
    name: str = "raysegment"
    run: RunConfig


def load_spec(path: str | Path, expected: str | None = None) -> JobSpec:
    path = Path(path)
    raw = read_yaml_mapping(path, "job spec")
    run = raw.get("run")
    if isinstance(run, dict):
        base = path.resolve().parent
        data = dict(run.get("data", {}))
        if "root" in data and "://" not in str(data["root"]):
            data["root"] = str((base / data["root"]).resolve())
        run = {**run, "data": data}
        if "://" not in str(run.get("output_dir", "runs/default")):
            run["output_dir"] = str((base / run.get("output_dir", "runs/default")).resolve())
        raw = {**raw, "run": run}
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from exc
    if expected and spec.job != expected:
        raise ConfigError(f"{path} is a {spec.job!r} spec, this entry point runs {expected!r}")
    return spec
