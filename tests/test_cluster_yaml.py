from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parent.parent / "cluster.yaml"


def test_cluster_yaml_passes_rays_autoscaler_schema():
    config = yaml.safe_load(CLUSTER.read_text())
    validate_config(prepare_config(config))
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 < workers["max_workers"] <= config["max_workers"]
    assert any("-c constraints.txt" in cmd for cmd in config["setup_commands"])


def test_schema_check_would_catch_a_broken_config():
    config = yaml.safe_load(CLUSTER.read_text())
    config["available_node_types"]["gpu_worker"]["max_workerz"] = 3
    with pytest.raises(jsonschema.ValidationError, match="max_workerz"):
        validate_config(prepare_config(config))


def test_the_cluster_is_not_open_to_the_world():
    """ShadowRay (CVE-2023-48022): whoever reaches an open dashboard runs code with the head's role."""
    config = yaml.safe_load(CLUSTER.read_text())
    starts = config["head_start_ray_commands"][-1:] + config["worker_start_ray_commands"][-1:]
    assert all("RAY_AUTH_MODE=token" in cmd for cmd in starts)
    assert "--dashboard-host=127.0.0.1" in starts[0] and "0.0.0.0" not in CLUSTER.read_text()
    assert any(target.endswith(".ray/auth_token") for target in config["file_mounts"])
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]


def test_every_node_starts_with_serves_throughput_settings():
    from raysegment.serving.config import SERVE_PROCESS_ENV

    config = yaml.safe_load(CLUSTER.read_text())
    starts = config["head_start_ray_commands"][-1:] + config["worker_start_ray_commands"][-1:]
    assert all(f"{key}={value}" in cmd for cmd in starts for key, value in SERVE_PROCESS_ENV.items())
