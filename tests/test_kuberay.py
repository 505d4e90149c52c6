"""deploy/kuberay: each manifest's spec against KubeRay's CRD schema (OpenAPI v3; a copy of the CRDs
of ray-project/kuberay at feeaf72f in tests/data/kuberay, see its README),
checked as the API server's strict field validation would (unknown fields are errors), and the
Serve config / job spec they embed against what raysegment itself accepts."""

from __future__ import annotations

import copy
import gzip
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "deploy" / "kuberay"
CRDS = Path(__file__).resolve().parent / "data" / "kuberay"
KINDS = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}


def strict(schema: dict) -> dict:
    """Unknown fields rejected wherever the schema lists properties and does not say to keep them
    (`kubectl apply --validate=strict`, the default field validation of the API server)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    crd = yaml.load(gzip.decompress((CRDS / f"{KINDS[kind]}.gz").read_bytes()), Loader=yaml.CSafeLoader)
    assert crd["spec"]["names"]["kind"] == kind
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


def manifest(kind: str) -> dict:
    name = {"RayCluster": "raycluster.yaml", "RayJob": "rayjob.yaml", "RayService": "rayservice.yaml"}[kind]
    return yaml.safe_load((MANIFESTS / name).read_text())


def cluster_specs() -> list[dict]:
    return [manifest("RayCluster")["spec"], manifest("RayService")["spec"]["rayClusterConfig"]]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_manifest_passes_its_crd_schema(kind):
    doc = manifest(kind)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", kind)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in crd_validator(kind).iter_errors(doc)]
    assert not errors, errors


def test_the_schema_check_catches_a_typo_and_a_wrong_type():
    validator = crd_validator("RayCluster")
    doc = manifest("RayCluster")
    doc["spec"]["workerGroupSpecs"][0]["maxReplica"] = 8  # typo of maxReplicas
    assert any("maxReplica" in e.message for e in validator.iter_errors(doc))
    doc = manifest("RayCluster")
    doc["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    assert any("eight" in e.message for e in validator.iter_errors(doc))


def test_clusters_are_token_authenticated_autoscale_gpus_and_carry_serves_settings():
    from raysegment.serving.config import SERVE_PROCESS_ENV

    for spec in cluster_specs():
        assert spec["authOptions"]["mode"] == "token" and spec["enableInTreeAutoscaling"] is True
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        workers = spec["workerGroupSpecs"][0]
        assert workers["maxReplicas"] > workers["minReplicas"]
        pods = [spec["headGroupSpec"]["template"]] + [w["template"] for w in spec["workerGroupSpecs"]]
        for pod in pods:
            (container,) = pod["spec"]["containers"]
            assert {e["name"]: e["value"] for e in container["env"]} == SERVE_PROCESS_ENV
            assert container["envFrom"] == [{"secretRef": {"name": "raysegment-s3"}}]  # credentials from a Secret
        assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_rayservice_embeds_a_serve_config_ray_and_raysegment_accept():
    from ray.serve.schema import ServeDeploySchema

    from raysegment.serving.app import build_app
    from raysegment.serving.config import ServeConfig

    serve_config = yaml.safe_load(manifest("RayService")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    (app,) = serve_config["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert (module, attr) == (build_app.__module__, build_app.__name__)
    cfg = ServeConfig.model_validate(app["args"])
    assert cfg.auth == "token" and cfg.registry.startswith("s3://")
    assert cfg.bind_host == serve_config["http_options"]["host"]
    # The token file the config names is mounted from a Secret on every pod that runs replicas.
    spec = manifest("RayService")["spec"]["rayClusterConfig"]
    for pod in [spec["headGroupSpec"]["template"]] + [w["template"] for w in spec["workerGroupSpecs"]]:
        mounts = pod["spec"]["containers"][0]["volumeMounts"]
        assert any(cfg.token_file.startswith(m["mountPath"] + "/") for m in mounts)


def test_the_rayjob_ships_a_tune_spec_with_object_storage():
    from raysegment.distributed.spec import JOB_SPECS, SPEC_ENV

    job = manifest("RayJob")["spec"]
    env = yaml.safe_load(job["runtimeEnvYAML"])["env_vars"]
    spec = JOB_SPECS.validate_json(env[SPEC_ENV])
    assert spec.job == "tune" and job["entrypoint"].endswith("jobs/tune.py --from-env")
    assert spec.registry and spec.registry.startswith("s3://")
    assert spec.run.scale.storage_path and spec.run.scale.storage_path.startswith("s3://")
    assert job["clusterSelector"] == {"ray.io/cluster": manifest("RayCluster")["metadata"]["name"]}
