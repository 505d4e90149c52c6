"""Ray Jobs against the session's real head node: submit a fine-tune spec, follow it to SUCCEEDED."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_BACKBONE

from raysegment.distributed import submit as ray_jobs
from raysegment.distributed.spec import FineTuneJob, LoopJob, TuneJob, load_spec, read_spec
from raysegment.errors import ConfigError
from raysegment.models.rebuild import load_model


def _spec(tmp_path, synth_root, **run_extra):
    spec = {
        "job": "fine_tune",
        "name": "job-test",
        "run": {
            "data": {"root": str(synth_root), "domain": "clear"},
            "model": {"backbone": TINY_BACKBONE, "decoder_channels": 8},
            "optim": {"epochs": 2, "batch_size": 4},
            "scale": {"num_workers": 1},
            "output_dir": "out",
            **run_extra,
        },
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_spec_paths_resolve_against_the_spec_folder(tmp_path, synth_root):
    spec = read_spec(_spec(tmp_path, synth_root))
    assert spec.run.output_dir == str(tmp_path / "out")
    bad = tmp_path / "bad.yaml"
    bad.write_text("job: train_everything\nrun: {data: {root: x}}\n")
    with pytest.raises(ConfigError, match="job"):
        read_spec(bad)


SPECS = Path(__file__).resolve().parent.parent / "jobs" / "specs"


def test_example_spec_is_valid():
    spec = read_spec(SPECS / "fine_tune.yaml")
    assert spec.job == "fine_tune" and spec.run.scale.num_workers == 2


@pytest.mark.parametrize("name", ["fine_tune.yaml", "tune.yaml"])
def test_cluster_specs_keep_everything_durable_in_object_storage(name):
    from raysegment.distributed.train import storage_path
    from raysegment.errors import RaySegmentError
    from raysegment.registry import Registry

    spec = read_spec(SPECS / "cluster" / name)
    assert isinstance(spec, FineTuneJob | TuneJob)
    assert spec.run.scale.storage_path and spec.run.scale.storage_path.startswith("s3://")
    # Until the placeholder bucket is replaced, every use says so instead of failing somewhere in S3.
    with pytest.raises(RaySegmentError, match="replace YOUR-BUCKET"):
        storage_path(spec.run)
    if isinstance(spec, TuneJob):
        assert spec.registry.startswith("s3://")
        with pytest.raises(RaySegmentError, match="replace YOUR-BUCKET"):
            Registry(spec.registry)


def test_submitted_fine_tune_job_succeeds_leaves_a_checkpoint_and_logs(ray_cluster, tmp_path, synth_root, cli):
    """One job through the CLI (`raysegment submit` follows it to the end), checked through the API.
    The CLI runs in this process (the `cli` fixture; the entry point itself is tested in test_cli)."""
    done = cli("submit", _spec(tmp_path, synth_root), "--address", ray_cluster.dashboard_url)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "SUCCEEDED" in done.stdout
    job_id = done.stdout.split()[1]
    assert "SUCCEEDED" in ray_jobs.status(job_id, ray_cluster.dashboard_url)
    checkpoints = sorted((tmp_path / "out" / "ray" / "job-test").glob("checkpoint_*/engine"))
    assert checkpoints, "no checkpoint in the job's storage"
    model, meta = load_model(checkpoints[-1])
    assert meta.model.backbone == TINY_BACKBONE
    # The spec travels in the job's environment: the entrypoint names no path of this machine.
    assert (
        ray_jobs.client(ray_cluster.dashboard_url).get_job_info(job_id).entrypoint
        == "python jobs/fine_tune.py --from-env"
    )
    logs = cli("jobs", "logs", job_id, "--address", ray_cluster.dashboard_url)
    assert logs.returncode == 0 and "fine-tune job-test finished" in logs.stdout


def test_an_unreachable_cluster_is_one_line_and_exit_2():
    refused = subprocess.run(
        [sys.executable, "-m", "raysegment.cli", "jobs", "status", "x", "--address", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "cannot reach the Ray dashboard" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_loop_specs_name_their_domains_and_the_registry(tmp_path):
    from raysegment.distributed.closed_loop import run_loop
    from raysegment.errors import RaySegmentError

    local = load_spec(SPECS / "loop.yaml", LoopJob)
    assert local.targets == ["fog"] and local.loop.shadow_images == 32 and "run" not in LoopJob.model_fields
    assert local.registry == str((SPECS / ".." / ".." / "registry").resolve())
    cluster = load_spec(SPECS / "cluster" / "loop.yaml", LoopJob)
    assert cluster.registry is not None and cluster.registry.startswith("s3://")
    with pytest.raises(RaySegmentError, match="replace YOUR-BUCKET"):
        run_loop(cluster.registry, "fog", cluster.loop)
    bad = tmp_path / "bad.yaml"
    bad.write_text("job: tune\ntargets: [fog]\nregistry: r\nsource: s@1\n")
    with pytest.raises(ConfigError, match="tune.run: Field required"):
        read_spec(bad)
    bad.write_text("job: loop\ntargets: []\nregistry: r\n")
    with pytest.raises(ConfigError, match="loop.targets"):
        read_spec(bad)
    bad.write_text("job: tune\ntargets: [fog]\nregistry: r\nsource: s@1\nsource_domain: clear\n")
    with pytest.raises(ConfigError, match="source_domain"):  # not a field of a spec
        read_spec(bad)
    with pytest.raises(ConfigError, match="is a 'loop' spec, this entry point runs 'tune'"):
        load_spec(SPECS / "loop.yaml", TuneJob)
