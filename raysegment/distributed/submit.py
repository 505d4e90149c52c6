"""Submit job specs to a Ray cluster and follow them (`raysegment submit`, `raysegment jobs ...`)."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

from raysegment.distributed.spec import FROM_ENV, SPEC_ENV, read_spec
from raysegment.errors import RaySegmentError

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # raysegment/distributed/submit.py -> the repository
EXCLUDES = [".venv", ".venv-ls", ".git", "runs", "demo_out", ".gpu_wheels", "**/__pycache__", "*.egg-info", "data"]
TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


OVERRIDING_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")  # Ray lets these replace an explicit address


def client(address: str) -> JobSubmissionClient:
    """A job client of `address` itself: Ray's client would silently take RAY_API_SERVER_ADDRESS or
    RAY_ADDRESS instead (the CLI's --address already defaults to the former)."""
    saved = {key: os.environ.pop(key) for key in OVERRIDING_ENV if key in os.environ}
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # connection refused, 401, bad URL: all user-facing
        raise RaySegmentError(f"cannot reach the Ray dashboard at {address}: {str(exc).splitlines()[0][:200]}") from exc
    finally:
        os.environ.update(saved)


def submit(spec_path: str | Path, address: str) -> str:
    """Submit a spec; the job runs `jobs/<kind>.py` with the project shipped as its working_dir and the
    validated spec in its environment, so the entrypoint (quoted) names no path of this machine."""
    spec_path = Path(spec_path).resolve()
    spec = read_spec(spec_path)
    entry = PROJECT_ROOT / "jobs" / f"{spec.job}.py"
    if not entry.is_file():
        raise RaySegmentError(f"no job entry point {entry} for job kind {spec.job!r}")
    runtime_env = {
        "working_dir": str(PROJECT_ROOT),
        "excludes": EXCLUDES,
        "env_vars": {"PYTHONPATH": ".", SPEC_ENV: spec.model_dump_json()},
    }
    entrypoint = shlex.join(["python", f"jobs/{spec.job}.py", FROM_ENV])
    return client(address).submit_job(
        entrypoint=entrypoint, runtime_env=runtime_env, metadata={"raysegment_job": spec.job, "name": spec.name}
    )


def follow(job_id: str, address: str, out=sys.stdout, timeout_s: float | None = None) -> JobStatus:
    """Stream the job's logs until it ends; returns its final status."""
    c = client(address)
    printed = 0
    start = time.monotonic()
    while True:
        status = c.get_job_status(job_id)
        logs = c.get_job_logs(job_id)
        if len(logs) > printed:
            out.write(logs[printed:])
            out.flush()
            printed = len(logs)
        if status in TERMINAL:
            return status
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise RaySegmentError(f"job {job_id} still {status} after {timeout_s:.0f} s")
        time.sleep(1.0)


def status(job_id: str, address: str) -> str:
    info = client(address).get_job_info(job_id)
    return f"{job_id}: {info.status} {info.message or ''}".strip()


def logs(job_id: str, address: str) -> str:
    return client(address).get_job_logs(job_id)


def stop(job_id: str, address: str) -> bool:
    return client(address).stop_job(job_id)
