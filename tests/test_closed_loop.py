"""`raysegment loop` without a service: refusals, the search's promotion by the policy, retirement
when no shadow evidence comes, and the audit trail with its rollback. (With Serve mirroring:
tests/test_serving.py.)"""

from __future__ import annotations

import pytest
from conftest import miscalibrated

from raysegment.config import LoopConfig
from raysegment.data import open_split
from raysegment.distributed.closed_loop import run_loop
from raysegment.engine.signature import version_signatures
from raysegment.models.rebuild import load_model
from raysegment.registry import Registry
from raysegment.registry.promotion import rollback
from raysegment.registry.traffic import TrafficStore

QUICK = LoopConfig(tent_lr=[1e-3], epochs=1, batch_size=4, min_images=6, shadow_images=0)


@pytest.fixture
def drifted_registry(tmp_path, synth_root, source_model_dir):
    """fog@1 in production: the source with miscalibrated statistics; fog's traffic: 12 fog images."""
    return drifted(str(tmp_path / "registry"), synth_root, source_model_dir)


def drifted(uri: str, synth_root, source_model_dir) -> Registry:
    reg = Registry(uri)
    source, meta = load_model(source_model_dir)
    reg.register("clear", source, meta)
    broken = miscalibrated(load_model(source_model_dir)[0])
    images = open_split(synth_root, "fog", "all", unlabelled=True)
    signatures = version_signatures(broken, images, meta.resize, ("clear@1", source))
    reg.register("fog", broken, meta, parent="clear@1", signatures=signatures)
    reg.set_alias("fog", 1, "production")
    traffic = TrafficStore(uri)
    for path, _ in images.samples:
        traffic.capture("fog", path.read_bytes(), "png")
    return reg


def test_too_little_traffic_is_refused_and_recorded(tmp_path, drifted_registry):
    outcome = run_loop(drifted_registry.uri, "fog", QUICK.model_copy(update={"min_images": 50}), str(tmp_path))
    assert outcome.candidate is None and "12 captured images" in outcome.reason
    assert drifted_registry.versions("fog") == [1]
    assert drifted_registry.history("fog")[-1].loop.step == "refused"


def test_a_search_that_cannot_beat_production_registers_nothing(tmp_path, drifted_registry):
    outcome = run_loop(drifted_registry.uri, "fog", QUICK.model_copy(update={"margin": 1.0}), str(tmp_path))
    assert outcome.candidate is None and outcome.reason.startswith("no label-free method beats production")
    assert set(outcome.scores) == {"adabn", "tent lr=0.001"}
    assert drifted_registry.versions("fog") == [1] and drifted_registry.aliases("fog") == {"production": 1}


def test_the_winner_is_promoted_by_the_policy_recorded_and_rolled_back(tmp_path, drifted_registry):
    outcome = run_loop(drifted_registry.uri, "fog", QUICK, str(tmp_path), log=lambda line: None)
    assert outcome.promoted and outcome.candidate == 2, outcome
    assert outcome.scores["adabn"][0] > outcome.scores["adabn"][1]  # re-estimated statistics fix it
    assert set(outcome.timings) == {"freeze", "search", "register", "decide"}
    entry = drifted_registry.get_entry("fog", 2)
    assert entry.lineage.loop is True and entry.lineage.target_labels == 0
    assert set(entry.signatures) == {"own", "clear@1", "fog@1"}  # drift and routing keep working
    assert drifted_registry.aliases("fog") == {"production": 2}
    steps = [r.loop.step if r.loop else r.alias for r in drifted_registry.history("fog")]
    assert steps == ["production", "start", "search", "candidate", "production"]
    assert rollback(drifted_registry, "fog", actor="test") == 1
    assert drifted_registry.aliases("fog")["production"] == 1


def test_a_candidate_without_shadow_evidence_is_retired(tmp_path, drifted_registry):
    cfg = QUICK.model_copy(update={"shadow_images": 5, "shadow_timeout_s": 1.0, "shadow_poll_s": 0.2})
    outcome = run_loop(drifted_registry.uri, "fog", cfg, str(tmp_path), log=lambda line: None)
    assert not outcome.promoted and outcome.reason == "retired: 0 of 5 shadow images within 1 s"
    assert drifted_registry.aliases("fog") == {"production": 1}  # no candidate left, production untouched
    retired = drifted_registry.history("fog")[-1]
    assert retired.alias == "candidate" and retired.retired.version == outcome.candidate
    assert drifted_registry.versions("fog") == [1, 2]  # the version stays registered, for the record


def test_the_loop_reads_traffic_captured_in_a_bucket_where_it_lies(tmp_path, s3_bucket, synth_root, source_model_dir):
    """An S3 registry: the turn's runs read the captured images from a snapshot inside the bucket
    (server-side copies), nothing of them lands on this disk, and the snapshot goes afterwards."""
    reg = drifted(f"{s3_bucket}/registry", synth_root, source_model_dir)
    lines: list[str] = []
    outcome = run_loop(reg.uri, "fog", QUICK, str(tmp_path), log=lines.append)
    assert outcome.promoted and outcome.candidate == 2, outcome
    assert any(f"read there: {s3_bucket}/registry/traffic/fog/snapshots/" in line for line in lines), lines
    assert reg.get_entry("fog", 2).lineage.model_dump()["traffic_images"] == 12
    assert reg.store.children("traffic/fog/snapshots") == []  # dropped after the turn
    assert not list(tmp_path.rglob("*.png")), "captured images were downloaded"
