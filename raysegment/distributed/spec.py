"""Job specs: one YAML file per Ray Job, `{job: <kind>, name: <run name>, ...}`: one typed model per
kind (`FineTuneJob | TuneJob | LoopJob`, told apart by `job`), each with what it needs.

Relative data and output paths are resolved against the spec file's folder, so a spec works the
same when submitted from anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from raysegment.config import LoopConfig, RunConfig, SearchConfig, format_validation_error, read_yaml_mapping
from raysegment.errors import ConfigError
from raysegment.storage import is_uri

SPEC_ENV = "RAYSEGMENT_SPEC_JSON"  # a submitted job's validated spec travels in its environment
FROM_ENV = "--from-env"


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "raysegment"


class FineTuneJob(_Job):
    """One Ray Train run of `run` (`raysegment train` on a cluster)."""

    job: Literal["fine_tune"]
    run: RunConfig


class TuneJob(_Job):
    """Per-domain search of `targets` from `source`; the winners go to `registry`. The source's own
    images are `run.data.domain` (every trial's `adapt.source_domain`); a source given as a model
    folder is registered once under that domain, with the drift and routing signatures of those images."""

    job: Literal["tune"]
    run: RunConfig
    targets: list[str] = Field(min_length=1, description="target domains to search")
    registry: str = Field(description="registry folder or URI the winners go to")
    source: str = Field(description="source model: a model folder, or DOMAIN@VERSION in the registry")
    search: SearchConfig = SearchConfig()


class LoopJob(_Job):
    """`raysegment loop` for each of `targets` on `registry` with the `loop` settings."""

    job: Literal["loop"]
    targets: list[str] = Field(min_length=1, description="target domains to adapt")
    registry: str = Field(description="registry folder or URI")
    loop: LoopConfig = LoopConfig()


JobSpec = Annotated[FineTuneJob | TuneJob | LoopJob, Field(discriminator="job")]
JOB_SPECS: TypeAdapter[FineTuneJob | TuneJob | LoopJob] = TypeAdapter(JobSpec)  # validates any kind


AnyJob = FineTuneJob | TuneJob | LoopJob
J = TypeVar("J", FineTuneJob, TuneJob, LoopJob)


def kind_of(job: type[AnyJob]) -> str:
    """The `job:` value a spec class is told apart by."""
    return str(get_args(job.model_fields["job"].annotation)[0])


def expect(spec: AnyJob, kind: type[J], where: str) -> J:
    if not isinstance(spec, kind):
        raise ConfigError(f"{where} is a {spec.job!r} spec, this entry point runs {kind_of(kind)!r}")
    return spec


def load_job_spec(arg: str, kind: type[J]) -> J:
    """A job entry point's spec: a YAML path, or `--from-env` for one shipped by `raysegment submit`."""
    if arg != FROM_ENV:
        return load_spec(arg, kind)
    try:
        spec = JOB_SPECS.validate_json(os.environ[SPEC_ENV])
    except (KeyError, ValidationError) as exc:
        raise ConfigError(f"{FROM_ENV}: ${SPEC_ENV} is missing or invalid: {str(exc)[:300]}") from exc
    return expect(spec, kind, "the shipped spec")


def load_spec(path: str | Path, kind: type[J]) -> J:
    return expect(read_spec(path), kind, str(path))


def read_spec(path: str | Path) -> AnyJob:
    """A spec file of any kind, its relative paths resolved against the file's folder."""
    path = Path(path)
    raw = read_yaml_mapping(path, "job spec")
    run = raw.get("run")
    if isinstance(run, dict):
        base = path.resolve().parent
        data = dict(run.get("data", {}))
        if "root" in data and not is_uri(str(data["root"])):
            data["root"] = str((base / data["root"]).resolve())
        run = {**run, "data": data}
        if not is_uri(str(run.get("output_dir", "runs/default"))):
            run["output_dir"] = str((base / run.get("output_dir", "runs/default")).resolve())
        raw = {**raw, "run": run}
    for key in ("registry", "source"):
        value = raw.get(key)
        if isinstance(value, str) and not is_uri(value) and "@" not in value:
            raw = {**raw, key: str((path.resolve().parent / value).resolve())}
    try:
        return JOB_SPECS.validate_python(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from exc
