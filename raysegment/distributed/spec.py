"""Job specs: one YAML file per Ray Job, `{job: <kind>, name: <run name>, run: <RunConfig>}`.

Relative data and output paths are resolved against the spec file's folder, so a spec works the
same when submitted from anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raysegment.config import LoopConfig, RunConfig, SearchConfig, format_validation_error, read_yaml_mapping
from raysegment.errors import ConfigError

SPEC_ENV = "RAYSEGMENT_SPEC_JSON"  # a submitted job's validated spec travels in its environment
FROM_ENV = "--from-env"


class JobSpec(BaseModel):
    """`fine_tune` uses `run`; `tune` also needs `targets`, `source` and `registry`; `loop` runs
    `raysegment loop` for each of `targets` on `registry` with the `loop` settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: Literal["fine_tune", "tune", "loop"]
    name: str = "raysegment"
    run: RunConfig | None = None
    targets: list[str] = Field(default_factory=list, description="target domains to search (tune) or adapt (loop)")
    loop: LoopConfig = LoopConfig()
    search: SearchConfig = SearchConfig()
    registry: str | None = Field(None, description="registry folder the winners go to (tune)")
    source: str | None = Field(None, description="source model: a model folder, or DOMAIN@VERSION in the registry")
    source_domain: str = Field("source", description="registry domain for a source given as a folder")

    @model_validator(mode="after")
    def _each_kind_has_what_it_needs(self) -> JobSpec:
        if self.job in ("fine_tune", "tune") and self.run is None:
            raise ValueError(f"a {self.job} spec needs run")
        if self.job == "tune" and not (self.targets and self.registry and self.source):
            raise ValueError("a tune spec needs targets, registry and source")
        if self.job == "loop" and not (self.targets and self.registry):
            raise ValueError("a loop spec needs targets (the domains) and registry")
        return self

    def require_run(self) -> RunConfig:
        if self.run is None:
            raise ConfigError(f"a {self.job} spec has no run section")
        return self.run


def load_job_spec(arg: str, expected: str) -> JobSpec:
    """A job entry point's spec: a YAML path, or `--from-env` for one shipped by `raysegment submit`."""
    if arg != FROM_ENV:
        return load_spec(arg, expected)
    try:
        spec = JobSpec.model_validate_json(os.environ[SPEC_ENV])
    except (KeyError, ValidationError) as exc:
        raise ConfigError(f"{FROM_ENV}: ${SPEC_ENV} is missing or invalid: {str(exc)[:300]}") from exc
    if spec.job != expected:
        raise ConfigError(f"the shipped spec is a {spec.job!r} spec, this entry point runs {expected!r}")
    return spec


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
    for key in ("registry", "source"):
        value = raw.get(key)
        if isinstance(value, str) and "://" not in value and "@" not in value:
            raw = {**raw, key: str((path.resolve().parent / value).resolve())}
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from exc
    if expected and spec.job != expected:
        raise ConfigError(f"{path} is a {spec.job!r} spec, this entry point runs {expected!r}")
    return spec
