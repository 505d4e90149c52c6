"""Per-domain Ray Tune search on the session's two-node cluster, winners into the registry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_BACKBONE
from PIL import Image

from raysegment.config import RunConfig, SearchConfig
from raysegment.data import open_split
from raysegment.distributed.spec import TuneJob, load_spec
from raysegment.distributed.trials import param_space, search_algorithm
from raysegment.distributed.tune import format_table, run_search
from raysegment.engine.epochs import fit
from raysegment.errors import ConfigError
from raysegment.registry import Registry


@pytest.fixture(scope="module")
def source_model(synth_root, tmp_path_factory):
    from raysegment.config import parse_config

    out = tmp_path_factory.mktemp("source")
    cfg = parse_config(
        {
            "data": {"root": str(synth_root)},
            "model": {"backbone": TINY_BACKBONE, "decoder_channels": 16},
            "optim": {"epochs": 3, "batch_size": 4, "lr": 5e-3},
            "output_dir": str(out),
        }
    )
    fit(cfg, open_split(synth_root, "clear", "train"), resume=False, log=lambda s: None)
    return out / "checkpoints" / "epoch_0003"


def _spec(tmp_path, synth_root, source_model, num_samples=4, max_epochs=3):
    spec = {
        "job": "tune",
        "name": "search",
        "targets": ["fog"],
        "registry": str(tmp_path / "registry"),
        "source": str(source_model),
        "search": {
            "num_samples": num_samples,
            "max_epochs": max_epochs,
            "grace_period": 1,
            "freeze_depth": [0, 2, 4],
            "lr": [1e-3, 1e-2],
        },
        "run": {
            "data": {"root": str(synth_root), "domain": "clear"},
            "model": {"backbone": TINY_BACKBONE, "decoder_channels": 16},
            "optim": {"batch_size": 4},
            "scale": {"num_workers": 1},
            "output_dir": str(tmp_path / "tune"),
        },
    }
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _suggestions(searcher, n: int) -> list[dict | None]:
    return [searcher.suggest(f"t{i}") for i in range(n)]


def test_tpe_searcher_is_seeded_bounded_and_limited():
    """Same seed, same trials; every draw inside the spec's ranges; never more trials out than allowed."""
    search = SearchConfig(searcher="tpe", num_samples=8, lr=(1e-4, 1e-2), freeze_depth=[0, 2], seed=3)
    space = param_space(search, RunConfig.model_validate({"data": {"root": "unused"}}), num_stages=4)
    searchers = [search_algorithm(search, 2) for _ in range(2)]
    for searcher in searchers:
        assert searcher.set_search_properties("score", "max", space)
    first, again = (_suggestions(s, 3) for s in searchers)
    assert first[:2] == again[:2] and first[2] is None  # two out at once: the third waits
    tpe = searchers[0]
    for round_ in range(4):  # past the random start-up trials, TPE proposes from the scores
        for i, config in enumerate(first[:2]):
            tpe.on_trial_complete(f"t{round_}-{i}" if round_ else f"t{i}", {"score": config["lr"] * 10})
        first = [tpe.suggest(f"t{round_ + 1}-{i}") for i in range(2)]
        for config in first:
            assert 1e-4 <= config["lr"] <= 1e-2 and config["freeze_depth"] in (0, 2)
            assert 0.85 <= config["decay"] <= 0.999  # constants (max_epochs, judge) are merged in by Tune


def test_a_foreign_models_search_space_counts_its_encoders_stages_and_searches_no_decoder():
    run = RunConfig.model_validate(
        {"data": {"root": "unused"}, "model": {"library": "smp", "arch": "Unet", "backbone": "tu-efficientnet_lite0"}}
    )
    space = param_space(SearchConfig(), run, num_stages=5)
    assert space["freeze_depth"].categories == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ConfigError, match="leave search.decoder out"):
        param_space(SearchConfig(decoder=["fpn", "unet"]), run, num_stages=5)


def test_label_free_search_is_judged_by_the_proxy(ray_cluster, tmp_path, synth_root, source_model_dir, s3_bucket):
    """On a target domain with no masks folder at all, in a bucket (trials read it through Ray
    Data): the search, its judge and registration never need a mask. Night's production is already
    a model no proxy can fault (one class everywhere is perfectly stable: consistency 1), so the
    winner is registered but must stay `candidate`."""
    import shutil

    from conftest import constant_model

    from raysegment.models.rebuild import load_model
    from raysegment.storage import upload_tree

    _, meta = load_model(source_model_dir)
    registry = Registry(tmp_path / "registry")
    registry.register("night", constant_model(meta, 0), meta, lineage={"method": "constant"})
    registry.set_alias("night", 1, "production")
    data = tmp_path / "data"
    shutil.copytree(synth_root, data, ignore=shutil.ignore_patterns("fog"))
    shutil.rmtree(data / "night" / "masks")
    bucket = upload_tree(data, f"{s3_bucket}/data")
    raw = yaml.safe_load(_spec(tmp_path, bucket, source_model_dir, num_samples=2, max_epochs=2).read_text())
    raw["run"]["scale"]["cpus_per_worker"] = 0.5  # two trials at once, and CPU left for decode tasks
    raw["targets"] = ["night"]
    raw["search"].update(method=["adabn", "self_training"], freeze_depth=[0], ema_alpha=[0.9], searcher="tpe")
    (tmp_path / "label_free.yaml").write_text(yaml.safe_dump(raw))
    spec = load_spec(tmp_path / "label_free.yaml", TuneJob)
    assert spec.search.judged_by == "proxy"
    (night,) = run_search(spec, log=lambda s: None)
    assert night.trials == 2
    entry = Registry(tmp_path / "registry").get_entry("night", night.version)
    lineage, metrics = entry.lineage, entry.metrics
    assert lineage.method in ("adabn", "self_training") and lineage.method == night.config["method"]
    assert lineage.target_labels == 0 and lineage.judge == "proxy"
    assert metrics["score"] == pytest.approx(metrics["proxy_consistency"]) == pytest.approx(night.best_score)
    # estimated on night's held-back images, with the confidence fit of the source's labelled val
    assert 0 <= metrics["estimated_miou_low"] <= metrics["estimated_miou"] <= metrics["estimated_miou_high"] <= 1
    assert night.version == 2 and registry.aliases("night") == {"production": 1, "candidate": 2}
    (decision,) = [r.decision for r in registry.history("night") if r.decision and r.decision.version == 2]
    assert decision.judge == "proxy" and decision.incumbent == "night@1" and not decision.promoted
    assert decision.incumbent_score == pytest.approx(1.0) and "does not beat" in decision.reason
    # The folder source was registered under its own domain with the signatures serving routes by.
    (source,) = registry.entries("clear")
    assert source.lineage.method == "source" and source.signatures
    assert source.lineage.fact("confidence_fit")["classes"] == meta.classes


@pytest.mark.slow
def test_an_interrupted_search_resumes_and_registers_one_winner(ray_cluster, tmp_path, synth_root, source_model):
    """The search killed mid-run (its driver, SIGKILL), run again: it resumes the same trials, then
    registers and judges the winner; a third run finds the winner registered and searches nothing.
    One trial: what resumes is the search's state and the trial's Ray Train checkpoint, the same
    machinery for one trial as for many (each more costs three more worker processes per run)."""
    import ray

    spec_path = _spec(tmp_path, synth_root, source_model, num_samples=1, max_epochs=2)
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
    cmd = [sys.executable, str(Path(__file__).resolve().parent.parent / "jobs" / "tune.py"), str(spec_path)]
    idle_cpus = ray.available_resources().get("CPU", 0)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs = tmp_path / "tune" / "search" / "trial_train"  # each trial's Ray Train run, in the search's storage
    experiment = tmp_path / "tune" / "search" / "search-fog"
    deadline = time.monotonic() + 240
    # Killed the moment the search is restorable (its state saved) and a trial has checkpointed: the
    # rest of the search (two more epochs, the judge) takes seconds, so no fixed sleep may precede it.
    while time.monotonic() < deadline and not (
        any(runs.glob("train-*/checkpoint_*")) and any(experiment.glob("experiment_state*.json"))
    ):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name for p in runs.iterdir()}
    assert before and not (experiment / "winner.json").exists()
    deadline = time.monotonic() + 30  # the cluster notices the dead driver and frees its trials' CPUs
    while time.monotonic() < deadline and ray.available_resources().get("CPU", 0) < idle_cpus:
        time.sleep(0.5)
    lines: list[str] = []  # run again from this process, a driver like the first (no second interpreter)
    (fog,) = run_search(load_spec(spec_path, TuneJob), log=lines.append)
    assert any("resuming the interrupted search" in line for line in lines), lines
    winner = json.loads((experiment / "winner.json").read_text())
    assert winner["trials"] == 1 == fog.trials  # the first run's trial, resumed, not a second one
    assert before <= {p.name for p in runs.iterdir()}

    (again,) = run_search(load_spec(spec_path, TuneJob), log=lines.append)  # registered already: nothing searched
    assert again.trials == 1 and again.version == fog.version == winner["version"]
    assert set(fog.config) == {"method", "decay", "lr", "freeze_depth", "decoder", "jitter"}
    assert fog.config["method"] == "finetune"
    assert 0.85 <= fog.config["decay"] <= 0.999 and fog.config["freeze_depth"] in (0, 2, 4)
    reg = Registry(tmp_path / "registry")
    assert reg.versions("fog") == [fog.version]
    entry = reg.get_entry("fog", fog.version)
    assert entry.lineage.trial_id == fog.trial_id
    assert entry.base is not None and entry.base.ref == "clear@1"  # a delta on the source, in its own domain
    assert entry.metrics["val_miou"] == pytest.approx(fog.best_score)
    assert entry.config["model"]["freeze_depth"] == fog.config["freeze_depth"]
    assert entry.lineage.method == "finetune" and entry.lineage.judge == "labels"
    assert entry.lineage.target_labels == len(open_split(synth_root, "fog", "train"))
    assert fog.best_score > fog.source_score  # fog labels teach what clear's did not: the winner goes live
    assert reg.aliases("fog") == {"production": fog.version}
    reg.load(f"fog@{fog.version}")
    storage = tmp_path / "tune" / "search"
    for png in ("tune_curves.png", "tune_winners.png"):
        assert Image.open(storage / png).format == "PNG"
    assert "fog@1" in format_table([fog])
