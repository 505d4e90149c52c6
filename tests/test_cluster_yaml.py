from pathlib import Path

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
    with pytest.raises(Exception):
        validate_config(prepare_config(config))
